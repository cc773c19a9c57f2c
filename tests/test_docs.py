"""The documentation site: every page of docs/ in it, the public API in its reference, and a
strict build (a broken link, anchor or API reference fails)."""

import pathlib
import re
import subprocess
import sys

import gdw_tf

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_every_page_is_in_the_nav_and_the_reference_covers_the_public_api():
    nav = re.findall(r"^  - [^:\n]+: (\S+\.md)$", (REPO / "mkdocs.yml").read_text(), flags=re.M)
    assert sorted(nav) == sorted(path.name for path in (REPO / "docs").glob("*.md"))

    referenced = re.findall(r"^::: ([\w.]+)$", (REPO / "docs" / "api.md").read_text(), flags=re.M)
    assert sorted(path.rsplit(".", 1)[1] for path in referenced) == sorted(gdw_tf.__all__)
    for path in referenced:  # A public name, or the object the public name loads.
        module, name = path.rsplit(".", 1)
        assert module == "gdw_tf" or getattr(gdw_tf, name).__module__ == module, path


def test_the_site_builds_strictly(tmp_path):
    built = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-3000:]
    api = (tmp_path / "api" / "index.html").read_text()
    for name in gdw_tf.__all__:
        assert re.search(rf'id="gdw_tf(\.\w+)*\.{name}"', api), name
