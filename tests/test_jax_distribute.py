"""GDWModel under `keras.distribution.DataParallel` on Keras' JAX backend, two host CPU devices.

Under `keras.distribution` the JAX step is written for the global batch: Keras shards each batch
along the batch axis and the state per its layouts, and XLA (GSPMD) partitions the compiled step,
inserting the collectives. So two devices must take the steps one device takes on the whole batch:
backbone, weight net, both optimizers, the meta cursor, the per-example weights, the logged metrics
and BatchNorm's statistics (over the global batch under GSPMD) alike.

Keras picks its backend once, at import, and JAX its devices once, at start-up
(`XLA_FLAGS=--xla_force_host_platform_device_count=2`), so the JAX side runs in a subprocess: this
file, run as a script (`python tests/test_jax_distribute.py OUT`), fits each case with and without
`DataParallel` from the same weights and writes both to `OUT`. Skipped when JAX is not installed.
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
DEVICES = 2
# (method, BatchNorm in the backbone, meta_interval)
CASES = (
    ("gdw", False, 1),
    ("mwnet", False, 1),
    ("l2rw", False, 1),
    ("ce", False, 1),
    ("gdw", True, 1),
    ("gdw", False, 2),
)
N, NUM_META, META_BATCH, BATCH = 60, 25, 10, 20


def _case_name(method, batch_norm, meta_interval):
    return (
        method + ("_bn" if batch_norm else "") + (f"_k{meta_interval}" if meta_interval > 1 else "")
    )


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="runs JAX in a subprocess; run from the TensorFlow backend",
)
def test_data_parallel_takes_the_steps_of_one_device(tmp_path):
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}"
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=flags.strip(),
        PYTHONPATH=path,
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.pop("JAX_ENABLE_X64", None)
    result = subprocess.run(
        [sys.executable, __file__, str(tmp_path / "out.npz")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    facts = json.loads(result.stdout.strip().splitlines()[-1])
    out = np.load(tmp_path / "out.npz")

    # The distributed run really was distributed: every variable (the weight net's optimizer's
    # too) lives on both devices, and the compiled step has cross-device reductions.
    assert facts["devices"] == DEVICES
    assert facts["variable_devices"] == [DEVICES], facts
    assert facts["all_reduces"] > 0, facts
    # The meta batch is split over the devices too, not repeated on each.
    assert facts["meta_share"], facts

    for method, batch_norm, meta_interval in CASES:
        case = _case_name(method, batch_norm, meta_interval)
        keys = sorted(k.split(":", 2)[2] for k in out if k.startswith(f"{case}:one:"))
        assert keys == sorted(k.split(":", 2)[2] for k in out if k.startswith(f"{case}:two:"))
        for key in keys:
            np.testing.assert_allclose(
                out[f"{case}:two:{key}"],
                out[f"{case}:one:{key}"],
                rtol=1e-5,
                atol=1e-6,
                err_msg=f"{case} {key}",
            )
        # The comparison has substance: the step moved the backbone, drew meta batches across a
        # pass boundary, and wrote every example's weight.
        one = {k.split(":", 2)[2]: out[k] for k in out if k.startswith(f"{case}:one:")}
        assert not np.allclose(one["backbone/0"], one["init/backbone/0"])
        if method == "l2rw":  # max(s, 0), normalised: some examples may get no weight
            assert np.any(one["examples/0"] > 0)
        else:
            assert np.all(one["examples/0"] > 0)
        meta_steps = 3 // meta_interval
        if method != "ce":  # (epoch, cursor): the third meta batch wraps around the meta set
            assert (int(one["meta/0"]), int(one["meta/1"])) == (meta_steps // 3, META_BATCH)
            assert {"history/meta/loss", "history/weights/instance_mean"} <= set(one)
        if method in ("gdw", "mwnet"):
            assert not np.allclose(one["weight_net/0"], one["init/weight_net/0"])
            assert int(one["weight_net_optimizer/0"]) == meta_steps  # its iterations
        if batch_norm:  # backbone/4: BatchNorm's moving mean (after Dense, gamma and beta)
            assert np.any(one["backbone/4"] != 0)


# ------------------------------------------------------------------------------------------------
# The JAX side (a subprocess, KERAS_BACKEND=jax, two host devices).


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x": rng.normal(size=(N, 8)).astype("float32"),
        "y": rng.integers(0, 3, N).astype("int32"),
        "x_meta": rng.normal(size=(NUM_META, 8)).astype("float32"),
        "y_meta": (np.arange(NUM_META) % 3).astype("int32"),
    }


def _model(method, batch_norm, meta_interval, data):
    layers = [keras.Input((8,)), keras.layers.Dense(16, activation="relu")]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(3))
    model = gdw_tf.GDWModel(
        keras.Sequential(layers),
        3,
        method=method,
        meta_data=(data["x_meta"], data["y_meta"]),
        meta_batch_size=META_BATCH,
        track_examples=N,
        meta_interval=meta_interval,
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    return model


def _fit(model, data):
    """Three steps of 20 examples, in order (the third wraps around the 25-example meta set),
    then an evaluation; the model's state, the logged metrics and the evaluation as a dict."""
    import tensorflow as tf

    index = np.arange(N, dtype="int32")
    dataset = tf.data.Dataset.from_tensor_slices((data["x"], data["y"], index)).batch(BATCH)
    history = model.fit(dataset, epochs=1, verbose=0).history
    evaluation = model.evaluate(data["x"], data["y"], batch_size=BATCH, verbose=0, return_dict=True)
    out = model_state(model)
    out.update({f"history/{k}": np.asarray(v) for k, v in history.items()})
    out.update({f"evaluate/{k}": np.asarray(v) for k, v in evaluation.items()})
    return out


def _compiled_step(model, data):
    """The HLO text of `model`'s compiled train step on a distributed batch."""
    import jax

    distribution = keras.distribution.distribution()
    batch = tuple(
        keras.distribution.distribute_tensor(v, distribution.get_data_layout(v.shape))
        for v in (data["x"][:BATCH], data["y"][:BATCH], np.arange(BATCH, dtype="int32"))
    )
    state = model._get_jax_state(True, True, True, True)
    step = jax.jit(model.train_step, out_shardings=(None, model._get_state_sharding_spec()))
    return step.lower(state, batch).compile().as_text()


def main(argv):
    """`OUT.npz` ← each case fitted on one device (`CASE:one:KEY`) and under `DataParallel` over
    two devices from the same initial weights (`CASE:two:KEY`); facts about the run on stdout."""
    import jax

    assert keras.backend.backend() == "jax", keras.backend.backend()
    devices = jax.devices()
    data = _problem()
    out, variable_devices, all_reduces, meta_share = {}, set(), None, None
    distribution = keras.distribution.DataParallel(devices=devices)
    for method, batch_norm, meta_interval in CASES:
        case = _case_name(method, batch_norm, meta_interval)
        keras.distribution.set_distribution(None)
        keras.utils.set_random_seed(0)
        single = _model(method, batch_norm, meta_interval, data)
        weights = single.get_weights()
        out[f"{case}:one:init/backbone/0"] = single.backbone.get_weights()[0]
        out[f"{case}:one:init/weight_net/0"] = single.weight_net.get_weights()[0]
        out.update({f"{case}:one:{k}": v for k, v in _fit(single, data).items()})

        keras.distribution.set_distribution(distribution)
        parallel = _model(method, batch_norm, meta_interval, data)
        parallel.set_weights(weights)
        out[f"{case}:two:init/backbone/0"] = parallel.backbone.get_weights()[0]
        out[f"{case}:two:init/weight_net/0"] = parallel.weight_net.get_weights()[0]
        out.update({f"{case}:two:{k}": v for k, v in _fit(parallel, data).items()})
        variables = (
            parallel.variables
            + parallel.optimizer.variables
            + parallel.weight_net_optimizer.variables
        )
        variable_devices |= {len(v.value.sharding.device_set) for v in variables}
        if case == "gdw":
            hlo = _compiled_step(parallel, data)
            all_reduces = hlo.count("all-reduce(")
            # Each device's share of the meta batch: META_BATCH / DEVICES rows of 8 features.
            meta_share = f"f32[{META_BATCH // DEVICES},8]" in hlo
        keras.distribution.set_distribution(None)
        keras.backend.clear_session()
    np.savez(argv[1], **out)
    print(
        json.dumps(
            {
                "devices": len(devices),
                "variable_devices": sorted(variable_devices),
                "all_reduces": all_reduces,
                "meta_share": meta_share,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv)
