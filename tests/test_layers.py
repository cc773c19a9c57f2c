"""The package's layers: imports run one way, the public API resolves, arguments stay keyword."""

import ast
import importlib
import pathlib
import subprocess
import sys
import textwrap

import pytest

import gdw_tf

PACKAGE = pathlib.Path(gdw_tf.__file__).parent
# Bottom to top; the modules directly in gdw_tf/ (the programs) come last.
LAYERS = ("backend", "core", "nets", "data", "labels", "pages", "runs")
PROGRAMS = len(LAYERS)


def _rank(parts):
    """The layer index of a module given by its dotted path below `gdw_tf`."""
    return LAYERS.index(parts[0]) if parts and parts[0] in LAYERS else PROGRAMS


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, path.relative_to(PACKAGE).with_suffix("").parts


def _imported(tree):
    """The gdw_tf modules a module imports, as dotted paths below `gdw_tf`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gdw_tf"):
            below = node.module.split(".")[1:]
            yield from ([[a.name] for a in node.names] if not below else [below])
        elif isinstance(node, ast.Import):
            yield from (a.name.split(".")[1:] for a in node.names if a.name.startswith("gdw_tf."))


def test_every_module_sits_in_a_layer_and_imports_only_from_below():
    upward = []
    for path, parts in _modules():
        if parts[-1] == "__init__" and len(parts) == 1:
            continue  # gdw_tf/__init__.py: the public API, over every layer
        rank = _rank(parts if len(parts) > 1 else ())
        for target in _imported(ast.parse(path.read_text())):
            if _rank(target) > rank:
                upward.append(f"{'/'.join(parts)} imports gdw_tf.{'.'.join(target)}")
    assert not upward, upward
    top_level = {parts[0] for _, parts in _modules() if len(parts) == 1}
    assert top_level == {"__init__", "train", "export", "bench"}  # the programs, thin


def _module_name(parts):
    """The dotted name of a module given by its path parts below `gdw_tf` (a package's
    `__init__` is the package)."""
    return ".".join(("gdw_tf", *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _import_graph():
    """Module name -> the gdw_tf modules it imports anywhere in its text (at the top, inside a
    function or under `TYPE_CHECKING`). `from package import name` points at the module
    `package.name` where there is one, else at the package."""
    names = {_module_name(parts) for _, parts in _modules()}
    graph = {}
    for path, parts in _modules():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    module = f"{node.module}.{alias.name}"
                    targets.add(module if module in names else node.module)
            elif isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
        graph[_module_name(parts)] = sorted(targets & names)
    return graph


def _import_cycle(graph):
    """One circle of imports in `graph` as `[a, b, ..., a]`, or None."""
    state = {}  # module -> "open" while its imports are walked, "done" after

    def walk(module, trail):
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                return trail[trail.index(target) :] + [module, target]
            if target not in state:
                cycle = walk(target, trail + [module])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = walk(module, [])
            if cycle:
                return cycle
    return None


def test_no_module_imports_itself_through_others():
    """No circle of imports between modules, inside a package or across, `TYPE_CHECKING` and
    function-local imports included (the layer test above only sees imports between layers)."""
    graph = _import_graph()
    assert graph["gdw_tf.core.step"] and graph["gdw_tf.runs.run"]  # the graph sees the imports
    cycle = _import_cycle(graph)
    assert cycle is None, " -> ".join(cycle)
    assert _import_cycle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert _import_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


def test_the_public_api_resolves_and_the_readme_uses_only_it():
    for name in gdw_tf.__all__:
        assert getattr(gdw_tf, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gdw_tf.nope  # noqa: B018
    readme = (PACKAGE.parent / "README.md").read_text()
    blocks = "\n".join(
        block for block in readme.split("```python")[1:] for block in [block.split("```")[0]]
    )
    assert "from gdw_tf." not in blocks and "import gdw_tf." not in blocks
    used = {name for name in gdw_tf.__all__ if f"gdw_tf.{name}" in readme}
    assert {"GDWModel", "find_label_issues", "train_dataset", "export_serving"} <= used


def test_no_function_takes_more_than_six_arguments_by_position():
    crowded = []
    for path, parts in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                positional = [
                    a.arg
                    for a in node.args.posonlyargs + node.args.args
                    if a.arg not in ("self", "cls")
                ]
                if len(positional) > 6:
                    crowded.append(f"{'/'.join(parts)}:{node.lineno} {node.name}")
    assert not crowded, crowded


def test_the_step_functions_take_their_tensors_by_keyword():
    step = importlib.import_module("gdw_tf.core.step")
    with pytest.raises(TypeError, match="positional"):
        step.meta_gradient(*range(13))
    with pytest.raises(TypeError, match="positional"):
        step.forward(*range(7))


def test_the_model_trains_with_keras_on_jax_and_no_tensorflow():
    """`GDWModel.fit`, `find_label_issues` and the benchmark's module import without TensorFlow
    (the GPU machines have Keras and JAX only), and `import gdw_tf` registers the backbones'
    layers for `keras.saving.load_model`."""
    pytest.importorskip("jax")
    script = textwrap.dedent(
        """
        import importlib.abc, sys

        class NoTensorFlow(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split(".")[0] in ("tensorflow", "tensorflow_datasets"):
                    raise ImportError(f"{name} is blocked")

        sys.meta_path.insert(0, NoTensorFlow())
        import numpy as np, keras, gdw_tf, gdw_tf.bench
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(40, 4)).astype("float32"), rng.integers(0, 2, 40)
        backbone = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model = gdw_tf.GDWModel(backbone, 2, meta_data=(x[:10], np.arange(10) % 2),
                                meta_batch_size=10)
        model.compile(keras.optimizers.SGD(0.1))
        model.fit(x, y, batch_size=20, epochs=1, verbose=0)
        issues = gdw_tf.find_label_issues(model, x, y)
        for layer in ("OptionAShortcut", "ApplicationPreprocessing"):
            assert keras.saving.get_registered_object(f"gdw_tf>{layer}"), layer
        assert "tensorflow" not in sys.modules
        print("ok", keras.backend.backend(), len(issues))
        """
    )
    env = {
        "KERAS_BACKEND": "jax",
        "PATH": "/usr/bin:/bin",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(PACKAGE.parent),  # this tree's gdw_tf, wherever the installed one is
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split()[-3:] == ["ok", "jax", "40"]
