"""The pages' package (`gdw_tf.pages`): its template files ship in the wheel and are filled in
one pass, the review page's JavaScript parses, and the charts put the numbers where they
belong. The pages themselves: tests/test_label_issues.py (report) and tests/test_review.py."""

import importlib.resources
import pathlib
import re
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import gdw_tf
from gdw_tf.labels import label_issues
from gdw_tf.pages import charts
from gdw_tf.pages import files
from gdw_tf.pages import report
from gdw_tf.pages import review

SOURCE = pathlib.Path(gdw_tf.__file__).parent.parent
TEMPLATES = pathlib.Path(gdw_tf.__file__).parent / "pages" / "templates"


def _issues():
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), 30)
    return label_issues.rank_label_issues(
        probabilities, rng.integers(0, 3, 30), class_names=["$a", "${title}", "{b}"]
    )


def test_every_template_file_is_package_data_read_by_importlib_resources():
    names = sorted(path.name for path in TEMPLATES.iterdir())
    assert names == ["report.css", "report.html", "review.css", "review.html", "review.js"]
    package = importlib.resources.files("gdw_tf.pages") / files.TEMPLATES
    for name in names:
        assert files.read(name) == (package / name).read_text("utf-8")


def test_pages_hold_their_css_and_script_and_user_text_with_dollars_stays_text():
    issues = _issues()
    page = report.render_report(issues, title="${body} $style")
    assert files.read("report.css") in page
    assert "<title>gdw_tf report: ${body} $style</title>" in page
    assert "<h1>gdw_tf report: ${body} $style</h1>" in page
    assert "<th title='${title}'>${title}</th>" in page  # a class name, as it is
    assert page.count("<section>") == 5  # no history: its section left out

    page = review.render_review(issues, run_name="$data ${script}")
    assert files.read("review.css") in page and files.read("review.js") in page
    assert "<title>gdw_tf review: $data ${script}</title>" in page
    assert page.count("<script") == 2  # the data, the script: nothing filled in twice
    data = re.search(r'<script id="review-data" type="application/json">(.*?)</script>', page)
    assert '"classes":["$a","${title}","{b}"]' in data.group(1)


def test_a_blank_left_unfilled_is_refused():
    with pytest.raises(KeyError, match="script"):
        files.fill("review.html", title="t", style="", data="{}")


def test_review_script_parses():
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node to parse review.js (apt install nodejs); the browser tests run it")
    result = subprocess.run(
        [node, "--check", str(TEMPLATES / "review.js")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def _numbers(svg, tag, attribute):
    return [float(v) for v in re.findall(rf"<{tag} [^>]*?\b{attribute}='([-\d.]+)'", svg)]


def test_bar_heights_are_proportional_to_the_shares_and_the_tallest_fills_the_plot():
    shares = np.array([0.5, 0.25, 0.1])
    svg = charts.bar_chart(["a", "b", "c"], [("x", charts.RED, shares)], "share", height=280)
    heights = _numbers(svg, "rect", "height")[:3]  # the legend's swatch comes last
    plot_height = 280 - 28 - 56  # the chart's top and bottom margins
    # The y axis ends at the largest share rounded up to a tenth: 0.5.
    np.testing.assert_allclose(heights, shares / 0.5 * plot_height, atol=0.06)


def test_line_chart_maps_the_data_range_onto_the_plot():
    svg = charts.line_chart(
        [1, 2, 3],
        [("acc", charts.BLUE, [0.0, 0.5, 1.0])],
        x_label="epoch",
        y_label="accuracy",
        y_range=(0.0, 1.0),
        width=560,
        height=280,
    )
    xs, ys = _numbers(svg, "circle", "cx"), _numbers(svg, "circle", "cy")
    np.testing.assert_allclose(xs, [50, 50 + (560 - 50 - 16) / 2, 560 - 16])
    np.testing.assert_allclose(ys, [280 - 40, (12 + 280 - 40) / 2, 12])


def test_colours_mix_linearly():
    assert charts.mix("#000000", "#ffffff", 0.5) == "#808080"
    assert charts.mix(charts.BLUE, charts.RED, 0.0) == charts.BLUE
    assert charts.mix(charts.BLUE, charts.RED, 2.0) == charts.RED  # clipped at 1


@pytest.mark.slow
def test_a_built_wheel_holds_the_template_files(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(SOURCE / name, source / name)
    shutil.copytree(
        SOURCE / "gdw_tf", source / "gdw_tf", ignore=shutil.ignore_patterns("__pycache__")
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--no-cache-dir", "-w", str(tmp_path / "wheel"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp_path / "wheel").glob("gdw_tf-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        for path in TEMPLATES.iterdir():
            assert archive.read(f"gdw_tf/pages/templates/{path.name}") == path.read_bytes()
