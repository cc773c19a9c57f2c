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


# Import names of the distributions that install them, where the two differ.
_DISTRIBUTIONS = {
    "absl": "absl-py",
    "tensorflow_datasets": "tensorflow-datasets",
    "sklearn": "scikit-learn",
}


def _requirement_name(requirement):
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower()


def test_the_readme_test_command_installs_what_the_tests_import_and_ci_runs_it():
    import sys

    try:
        import tomllib  # novermin (3.11+; tomli below on 3.10)
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    # The first command of "Tests" runs every test; the second, the fast tier.
    command, fast = re.findall(r"```bash\n(.*?)\n```", _section("Tests"), flags=re.S)
    assert fast == 'python3 -m pytest -q -n auto -m "not slow" tests'
    assert command == 'python3 -m pip install -e ".[test]" && python3 -m pytest -q -n auto tests'
    ci = (README.parent / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == command  # CI ends with exactly the README's command

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
