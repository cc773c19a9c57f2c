"""The README's minimal example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section(title):
    text = README.read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def test_readme_minimal_example_runs(capsys):
    (block,) = re.findall(r"```python\n(.*?)```", _section("Minimal example"), flags=re.S)
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    assert "accuracy" in capsys.readouterr().out
