"""The README is a front door: short, its two set-up commands are the quick start and CI's test
command, its `model.fit` example runs as written, and its links lead somewhere."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"


def _section(title, path=README):
    """The text under the heading `title` (of any level), up to the next heading of its level or
    above."""
    text = path.read_text()
    heading = re.search(rf"^(#+) {re.escape(title)}\n", text, flags=re.M)
    end = re.compile(rf"^#{{1,{len(heading.group(1))}}} ", flags=re.M).search(text, heading.end())
    return text[heading.end() : end.start() if end else len(text)]


def _blocks(language, text):
    return re.findall(rf"```{language}\n(.*?)\n```", text, flags=re.S)


def test_the_readme_fits_on_a_few_screens_and_its_links_lead_to_files():
    text = README.read_text()
    assert len(text.splitlines()) <= 200
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    assert {"docs/CLI.md", "docs/OWN_DATA.md", "docs/MODEL.md", "docs/api.md"} <= set(links)
    missing = [link for link in links if "://" not in link and not (REPO / link).exists()]
    assert not missing, missing


def test_readme_model_fit_example_runs(capsys):
    (block,) = _blocks("python", _section("3. In Python: `model.fit`"))
    exec(compile(block, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out
    assert "accuracy" in printed
    assert re.search(r"^\d+ \[", printed, flags=re.M)  # issues.num_flagged, issues.id[:10]


# Import names of the distributions that install them, where the two differ.
_DISTRIBUTIONS = {
    "absl": "absl-py",
    "tensorflow_datasets": "tensorflow-datasets",
    "sklearn": "scikit-learn",
}


def _requirement_name(requirement):
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_the_readme_set_up_commands_are_the_quick_start_and_the_ci_test_command():
    import sys

    try:
        import tomllib  # novermin (3.11+; tomli below on 3.10)
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    # The main job, then every test; docs/DEVELOPMENT.md repeats the second, then the fast tier.
    main, command = _blocks("bash", _section("Set up and run"))
    assert main == "bash scripts/quickstart_fashion_mnist.sh"
    assert (REPO / "scripts" / "quickstart_fashion_mnist.sh").is_file()
    assert command == 'python3 -m pip install -e ".[test]" && python3 -m pytest -q -n auto tests'
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == command  # CI ends with exactly the README's command
    tests = _section("Tests", REPO / "docs" / "DEVELOPMENT.md")
    assert _blocks("bash", tests) == [command, 'python3 -m pytest -q -n auto -m "not slow" tests']

    project = tomllib.loads((README.parent / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    requirements = project["dependencies"] + extras["test"]
    for requirement in extras["test"]:  # "gdw_tf[scripts]": another extra of this project
        if requirement.startswith("gdw_tf["):
            requirements += extras[requirement[len("gdw_tf[") : -1]]
    installed = {_requirement_name(r) for r in requirements}
    imported = set()
    for path in (README.parent / "tests").glob("*.py"):
        imported |= set(re.findall(r"^\s*(?:import|from) (\w+)", path.read_text(), flags=re.M))
        imported |= set(re.findall(r"(?:importorskip|find_spec)\(\"(\w+)", path.read_text()))
    local = {"gdw_tf", "conftest"} | {p.stem for p in (README.parent / "tests").glob("*.py")}
    third_party = {name for name in imported - local if name not in sys.stdlib_module_names}
    needed = {_DISTRIBUTIONS.get(name, name).replace("_", "-") for name in third_party}
    assert needed <= installed, f"tests import {sorted(needed - installed)}, not installed"
