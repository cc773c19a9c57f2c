"""GDWModel under `fit`: meta sampling, execution modes, metrics, example weights, learning."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import config as tf_config

import gdw_tf


def _mlp(inputs=8, classes=3, batch_norm=True):
    layers = [keras.Input((inputs,)), keras.layers.Dense(16, activation="relu")]
    if batch_norm:
        layers.append(keras.layers.BatchNormalization())
    layers.append(keras.layers.Dense(classes))
    return keras.Sequential(layers)


def _data(n=120, meta=30, inputs=8, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, inputs)).astype("float32")
    y = rng.integers(0, classes, n)
    x_meta = rng.normal(size=(meta, inputs)).astype("float32")
    y_meta = np.arange(meta) % classes
    return x, y, x_meta, y_meta


@pytest.mark.parametrize("num_meta, meta_batch", [(12, 4), (10, 4), (9, 9)])
def test_meta_batches_are_drawn_without_replacement_pass_by_pass(num_meta, meta_batch):
    x_meta = np.zeros((num_meta, 8), "float32")
    x_meta[:, 0] = np.arange(num_meta)  # the first feature names the example
    y_meta = np.arange(num_meta) % 3
    model = gdw_tf.GDWModel(_mlp(), 3, meta_data=(x_meta, y_meta), meta_batch_size=meta_batch)
    per_pass = num_meta // meta_batch
    passes = []
    for _ in range(3):
        drawn = [model._next_meta_batch() for _ in range(per_pass)]
        ids = np.concatenate([np.asarray(x)[:, 0] for x, _ in drawn]).astype(int)
        labels = np.concatenate([np.asarray(y) for _, y in drawn])
        np.testing.assert_array_equal(labels, y_meta[ids])
        assert len(set(ids)) == len(ids)  # no example twice within a pass
        passes.append(ids)
    if per_pass * meta_batch == num_meta:
        for ids in passes:
            assert sorted(ids) == list(range(num_meta))  # every example once
    assert not all(np.array_equal(passes[0], ids) for ids in passes[1:])  # reshuffled


def test_meta_order_depends_only_on_the_seed():
    _, _, x_meta, y_meta = _data()
    orders = []
    for seed in (3, 3, 4):
        model = gdw_tf.GDWModel(_mlp(), 3, meta_data=(x_meta, y_meta), meta_batch_size=10, seed=seed)
        orders.append(np.concatenate([np.asarray(model._next_meta_batch()[0]) for _ in range(6)]))
    np.testing.assert_array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], orders[2])


def _train(method, x, y, x_meta, y_meta, steps=3, **compile_kwargs):
    keras.utils.set_random_seed(1)
    model = gdw_tf.GDWModel(
        _mlp(), 3, method=method, meta_data=(x_meta, y_meta), meta_batch_size=10,
        meta_grad=compile_kwargs.pop("meta_grad", "jvp"),
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), **compile_kwargs)
    model.fit(x[: 20 * steps], y[: 20 * steps], batch_size=20, epochs=1, shuffle=False, verbose=0)
    # Keras' default (jit_compile="auto") is XLA on JAX, unless run eagerly; not on TensorFlow.
    default_jit = keras.backend.backend() == "jax" and not compile_kwargs.get("run_eagerly")
    assert model.jit_compile == compile_kwargs.get("jit_compile", default_jit)
    return [v.numpy() for v in model.backbone.variables + model.weight_net.variables]


@pytest.fixture
def xla_allowed():
    """Keras turns XLA off while TF's op determinism (set in conftest) is on."""
    tf_config.disable_op_determinism()
    yield
    tf_config.enable_op_determinism()


@pytest.mark.parametrize("method", ["gdw", "mwnet", "l2rw", "ce"])
def test_eager_graph_and_xla_give_the_same_weights(method, xla_allowed):
    x, y, x_meta, y_meta = _data()
    graph = _train(method, x, y, x_meta, y_meta)
    eager = _train(method, x, y, x_meta, y_meta, run_eagerly=True)
    xla = _train(method, x, y, x_meta, y_meta, jit_compile=True)
    nested = _train(method, x, y, x_meta, y_meta, meta_grad="nested")
    assert not np.allclose(graph[0], _train(method, x, y, x_meta, y_meta, steps=1)[0])
    for other in (eager, xla, nested):
        for a, b in zip(graph, other):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_metrics_report_the_forward_pass_and_the_weights():
    x, y, x_meta, y_meta = _data(n=20)
    backbone = _mlp(batch_norm=False)
    logits = np.asarray(backbone(x))
    ce = -np.log(np.exp(logits[np.arange(20), y]) / np.exp(logits).sum(1))
    model = gdw_tf.GDWModel(backbone, 3, method="gdw", meta_data=(x_meta, y_meta), meta_batch_size=10)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    logs = model.fit(x, y, batch_size=20, epochs=1, verbose=0).history
    assert logs["train/loss"][0] == pytest.approx(ce.mean(), rel=1e-5)
    assert logs["train/accuracy"][0] == pytest.approx(np.mean(logits.argmax(1) == y))
    assert 0 < logs["weights/instance_mean"][0] < 1  # a sigmoid's output
    assert logs["weights/other_mean"][0] > 0
    assert np.isfinite(logs["meta/loss"][0])
    evaluation = model.evaluate(x, y, verbose=0, return_dict=True)
    logits = np.asarray(model.backbone(x))
    assert evaluation["accuracy"] == pytest.approx(np.mean(logits.argmax(1) == y))


@pytest.mark.parametrize("method", ["gdw", "mwnet", "l2rw", "ce"])
def test_example_weights_are_recorded_by_index(method):
    x, y, x_meta, y_meta = _data(n=60)
    dataset = tf.data.Dataset.from_tensor_slices((x, y, np.arange(60))).shuffle(60, seed=0).batch(20)
    model = gdw_tf.GDWModel(
        _mlp(), 3, method=method, meta_data=(x_meta, y_meta), meta_batch_size=10, track_examples=60
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    model.fit(dataset, epochs=1, verbose=0)
    weights = model.example_weights.numpy()
    label_weights = model.example_label_weights.numpy()
    if method == "ce":
        np.testing.assert_array_equal(weights, 1.0)
    elif method == "l2rw":
        assert np.all(weights >= 0)
        # Each batch's weights sum to 1, recorded ×B: the 3 batches sum to 60 (or 0 if silent).
        assert weights.sum() == pytest.approx(20 * round(weights.sum() / 20), rel=1e-5)
    else:
        assert np.all((weights > 0) & (weights < 1))  # every example written, sigmoid outputs
    if method != "gdw":
        np.testing.assert_array_equal(label_weights, weights)
    else:
        assert np.all(label_weights > 0) and not np.allclose(label_weights, weights)


def test_fit_without_indices_refuses_a_tracking_model():
    x, y, x_meta, y_meta = _data(n=20)
    model = gdw_tf.GDWModel(_mlp(), 3, meta_data=(x_meta, y_meta), meta_batch_size=10, track_examples=20)
    model.compile(keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="track_examples"):
        model.fit(x, y, batch_size=10, epochs=1, verbose=0)


def _noisy_blobs(seed, classes=4, features=16, n_train=2000, ratio=0.6):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, features))

    def sample(n):
        y = rng.integers(0, classes, n)
        return (centers[y] + rng.normal(size=(n, features))).astype("float32"), y

    x, y = sample(n_train)
    noisy = np.where(rng.random(n_train) < ratio, rng.integers(0, classes, n_train), y)
    x_meta, y_meta = sample(40 * classes)
    x_test, y_test = sample(2000)
    return x, noisy, x_meta, y_meta, x_test, y_test


@pytest.mark.parametrize("seed", [0, 1])
def test_meta_weighting_beats_ce_under_heavy_uniform_noise(seed):
    """60% uniform noise: an over-parameterised MLP memorises it under CE; GDW and MW-Net don't."""
    x, noisy, x_meta, y_meta, x_test, y_test = _noisy_blobs(seed)
    accuracy = {}
    for method in ("ce", "mwnet", "gdw"):
        keras.utils.set_random_seed(seed)
        backbone = keras.Sequential(
            [
                keras.Input((16,)),
                keras.layers.Dense(256, activation="relu"),
                keras.layers.Dense(256, activation="relu"),
                keras.layers.Dense(4),
            ]
        )
        model = gdw_tf.GDWModel(backbone, 4, method=method, meta_data=(x_meta, y_meta), meta_batch_size=50)
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
        model.fit(x, noisy, batch_size=50, epochs=20, verbose=0)
        accuracy[method] = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    assert accuracy["gdw"] > accuracy["ce"] + 0.15, accuracy
    assert accuracy["mwnet"] > accuracy["ce"] + 0.15, accuracy
