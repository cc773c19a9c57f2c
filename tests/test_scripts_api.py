"""scripts/ and examples/ use the installed package's public API: no `sys.path` edits, no
underscore names of a `gdw_tf` module."""

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROGRAMS = sorted([*REPO.glob("scripts/*.py"), *REPO.glob("examples/*.py")])


def _private(name):
    """True for `_name`, False for `name` and `__dunder__`."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _root_and_path(node):
    """`(root name, [attributes])` of `a.b.c`, or `(None, [])` if it is not a dotted name."""
    path = []
    while isinstance(node, ast.Attribute):
        path.append(node.attr)
        node = node.value
    return (node.id, path[::-1]) if isinstance(node, ast.Name) else (None, [])


def violations(source):
    """What in `source` goes round the public API: `sys.path` used, a `gdw_tf` private name
    imported, or an underscore attribute of a name bound to something imported from `gdw_tf`."""
    tree = ast.parse(source)
    from_gdw_tf = set()  # names bound by `import gdw_tf...` / `from gdw_tf... import ...`
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gdw_tf":
                    from_gdw_tf.add(alias.asname or "gdw_tf")
                    found += [
                        f"line {node.lineno}: imports {alias.name}"
                        for part in alias.name.split(".")
                        if _private(part)
                    ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "gdw_tf":
            found += [
                f"line {node.lineno}: imports {node.module}"
                for part in node.module.split(".")
                if _private(part)
            ]
            for alias in node.names:
                from_gdw_tf.add(alias.asname or alias.name)
                if _private(alias.name):
                    found.append(f"line {node.lineno}: imports {node.module}.{alias.name}")
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        root, path = _root_and_path(node)
        if root == "sys" and path[:1] == ["path"]:
            found.append(f"line {node.lineno}: uses sys.path")
        elif root in from_gdw_tf and any(_private(part) for part in path):
            found.append(f"line {node.lineno}: uses {root}.{'.'.join(path)}")
    return sorted(set(found))


@pytest.mark.parametrize("path", PROGRAMS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_program_uses_only_the_public_api(path):
    assert violations(path.read_text()) == []


def test_the_check_finds_each_way_round_the_api():
    source = "\n".join(
        [
            "import os, sys",
            "sys.path.insert(0, os.getcwd())",
            "from gdw_tf.labels import wrong_count",
            "from gdw_tf.labels.wrong_count import _private_helper",
            "import gdw_tf.core._internal as internal",
            "import gdw_tf",
            "wrong_count._wrong_per_given_label(1, 2)",
            "gdw_tf.labels.label_issues._lowest",
            "wrong_count.estimate_wrong_labels(1)",  # public: not reported
            "other._private",  # not gdw_tf: not reported
            "print(gdw_tf.__version__)",  # dunder: not reported
        ]
    )
    assert violations(source) == [
        "line 2: uses sys.path",
        "line 4: imports gdw_tf.labels.wrong_count._private_helper",
        "line 5: imports gdw_tf.core._internal",
        "line 7: uses wrong_count._wrong_per_given_label",
        "line 8: uses gdw_tf.labels.label_issues._lowest",
    ]
