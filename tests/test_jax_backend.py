"""GDW on Keras' JAX backend: the core tests under `KERAS_BACKEND=jax`, and TF–JAX agreement.

Keras picks its backend once, at import, so the JAX side runs in a subprocess. Skipped when JAX is
not installed (`pip install "gdw_tf[jax]"`, or `pip install "jax[cpu]"`).

Run this file as a script (`KERAS_BACKEND=jax python tests/test_jax_backend.py IN OUT`) to train
the cross-backend models from `IN`'s weights and data and write theirs to `OUT` (the test does it).
"""

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import model_state

import gdw_tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE_TESTS = [
    "tests/test_weighting.py",
    "tests/test_step.py",
    "tests/test_model.py",
    "tests/test_meta_stream.py",
    "tests/test_optimizers.py",
    # The head meta scope's meta-gradient (the whole file passes on JAX too, in ~9 min on 2 cores).
    "tests/test_meta_scope.py::test_head_meta_gradient_is_that_of_the_restricted_objective",
]
METHODS = ("gdw", "mwnet", "l2rw", "ce")


needs_jax = pytest.mark.skipif(
    importlib.util.find_spec("jax") is None, reason="JAX is not installed"
)
from_tensorflow = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="compares against JAX in a subprocess; run from the TensorFlow backend",
)


def _run_on_jax(args, timeout):
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, KERAS_BACKEND="jax", PYTHONPATH=path, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("JAX_ENABLE_X64", None)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
@needs_jax
@from_tensorflow
def test_core_tests_pass_on_jax():
    args = ["-m", "pytest", *CORE_TESTS, "-q", "-p", "no:cacheprovider"]
    result = _run_on_jax(args, timeout=1800)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert " passed" in result.stdout, result.stdout[-2000:]


@pytest.mark.slow
@needs_jax
@from_tensorflow
def test_the_benchmark_runs_on_jax():
    args = [
        "-m",
        "gdw_tf.bench",
        "--model=small_cnn",
        "--batch_size=8",
        "--steps=1",
        "--warmup=1",
        "--methods=ce,gdw",
        "--json",
    ]
    result = _run_on_jax(args, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["backend"] == "jax" and figures["jit_compile"] is True
    assert set(figures["ms_per_step"]) == {"ce", "gdw"}
    assert all(v > 0 for v in figures["ms_per_step"].values())
    assert figures["peak_memory_mb"]["gdw"] > figures["peak_memory_mb"]["ce"] > 0


# ------------------------------------------------------------------------------------------------
# The same fit on both backends.


def _problem(seed=0, n=60, meta=30, inputs=8, classes=3):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(n, inputs)).astype("float32"),
        "y": rng.integers(0, classes, n).astype("int32"),
        "x_meta": rng.normal(size=(meta, inputs)).astype("float32"),
        "y_meta": (np.arange(meta) % classes).astype("int32"),
    }


def _model(method, data):
    backbone = keras.Sequential(
        [
            keras.Input((8,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(3),
        ]
    )
    model = gdw_tf.GDWModel(
        backbone,
        3,
        method=method,
        meta_data=(data["x_meta"], data["y_meta"]),
        meta_batch_size=10,
        track_examples=len(data["y"]),
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    return model


def _fit(model, data):
    """Two epochs of three batches in order, the learning rate halved each epoch by a callback."""
    import tensorflow as tf

    index = np.arange(len(data["y"]), dtype="int32")
    dataset = tf.data.Dataset.from_tensor_slices((data["x"], data["y"], index)).batch(20)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch: 0.1 * 0.5**epoch)
    history = model.fit(dataset, epochs=2, callbacks=[schedule], verbose=0).history
    out = model_state(model)
    out.update({f"history/{k}": np.asarray(v) for k, v in history.items()})
    return out


def _initial_weights(method, data, seed):
    keras.utils.set_random_seed(seed)
    model = _model(method, data)
    return {
        **{f"init_backbone/{i}": w for i, w in enumerate(model.backbone.get_weights())},
        **{f"init_weight_net/{i}": w for i, w in enumerate(model.weight_net.get_weights())},
    }, model


def _train_from(arrays, method):
    """Builds `method`'s model with the weights in `arrays` and fits it; its state as a dict."""
    data = {k: arrays[k] for k in ("x", "y", "x_meta", "y_meta")}
    model = _model(method, data)
    for part, net in (("init_backbone", model.backbone), ("init_weight_net", model.weight_net)):
        count = len([k for k in arrays if k.startswith(f"{method}:{part}/")])
        net.set_weights([arrays[f"{method}:{part}/{i}"] for i in range(count)])
    return _fit(model, data)


@pytest.mark.slow
@needs_jax
@from_tensorflow
def test_tensorflow_and_jax_fit_to_the_same_weights(tmp_path):
    data = _problem()
    arrays = dict(data)
    expected = {}
    for seed, method in enumerate(METHODS):
        init, model = _initial_weights(method, data, seed)
        arrays.update({f"{method}:{k}": v for k, v in init.items()})
        expected[method] = _fit(model, data)
        keras.backend.clear_session()
    np.savez(tmp_path / "in.npz", **arrays)

    args = [__file__, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")]
    result = _run_on_jax(args, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    actual = np.load(tmp_path / "out.npz")

    for method in METHODS:
        keys = sorted(expected[method])
        assert sorted(k.split(":", 1)[1] for k in actual if k.startswith(f"{method}:")) == keys
        for key in keys:
            np.testing.assert_allclose(
                actual[f"{method}:{key}"],
                expected[method][key],
                rtol=2e-4,
                atol=2e-6,
                err_msg=f"{method} {key}",
            )
        # The step did something: the weights moved, the weight net learned (not CE, L2RW).
        assert not np.allclose(expected[method]["backbone/0"], arrays[f"{method}:init_backbone/0"])
        if method in ("gdw", "mwnet"):
            assert not np.allclose(
                expected[method]["weight_net/0"], arrays[f"{method}:init_weight_net/0"]
            )
            assert int(actual[f"{method}:weight_net_optimizer/0"]) == 6  # its iterations


def main(argv):
    """The JAX side of the cross-backend test: `IN.npz` → fit every method → `OUT.npz`."""
    assert keras.backend.backend() == "jax", keras.backend.backend()
    arrays = dict(np.load(argv[1]))
    out = {}
    for method in METHODS:
        out.update({f"{method}:{k}": v for k, v in _train_from(arrays, method).items()})
        keras.backend.clear_session()
    np.savez(argv[2], **out)


if __name__ == "__main__":
    main(sys.argv)
