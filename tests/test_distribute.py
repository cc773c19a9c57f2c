"""GDWModel under tf.distribute.MirroredStrategy on two logical CPUs (tests/conftest.py).

Two replicas, each with half of every training and meta batch, must take the steps one device
takes on the whole batch: every mean and normaliser of the step is over the global batch.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import gdw_tf

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow" or len(tf.config.list_logical_devices("CPU")) < 2,
    reason="needs TensorFlow with two logical CPU devices (tests/conftest.py)",
)

NUM_CLASSES = 3
BATCH = 16


@pytest.fixture(scope="module")
def strategy():
    # One strategy for the module: collectives of two strategies in one process can collide.
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


def _data(n=48, num_meta=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = rng.integers(0, NUM_CLASSES, n)
    x_meta = rng.normal(size=(num_meta, 6)).astype("float32")
    y_meta = np.arange(num_meta) % NUM_CLASSES
    return x, y, x_meta, y_meta


def _backbone(batch_norm=False, synchronized=False):
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8)(inputs)
    if batch_norm:
        h = keras.layers.BatchNormalization(synchronized=synchronized)(h)
    h = keras.layers.ReLU()(h)
    return keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(h))


def _model(method, meta_data, n, batch_norm=False, **kwargs):
    keras.utils.set_random_seed(1)
    model = gdw_tf.GDWModel(
        _backbone(batch_norm, kwargs.pop("synchronized", False)),
        NUM_CLASSES,
        method=method,
        meta_data=meta_data,
        meta_batch_size=kwargs.pop("meta_batch_size", 4),
        track_examples=n,
        l2=1e-3,
        **kwargs,
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    return model


def _fit(model, x, y, steps, batch_size=BATCH):
    dataset = tf.data.Dataset.from_tensor_slices((x, y, np.arange(len(x)))).batch(batch_size)
    return model.fit(dataset, epochs=1, steps_per_epoch=steps, verbose=0).history


def _replica_values(variable):
    """The per-replica components of a variable created under a strategy."""
    return [np.asarray(v) for v in variable.value.values]


@pytest.mark.parametrize("method", ["gdw", "mwnet", "l2rw", "ce"])
def test_two_replicas_take_the_steps_of_one_device(method, strategy):
    x, y, x_meta, y_meta = _data()
    single = _model(method, (x_meta, y_meta), len(x))
    # Three steps: the third wraps around the 8-example meta set (a new meta permutation).
    single_history = _fit(single, x, y, steps=3)
    with strategy.scope():
        mirrored = _model(method, (x_meta, y_meta), len(x))
    mirrored_history = _fit(mirrored, x, y, steps=3)

    # All variables: backbone, weight net, meta cursor, per-example weights (each replica's
    # examples written by both), equal to one device's and the same on both replicas.
    for one, two in zip(single.variables, mirrored.variables):
        np.testing.assert_allclose(
            np.asarray(two), np.asarray(one), rtol=1e-5, atol=1e-6, err_msg=one.path
        )
        replicas = _replica_values(two)
        assert len(replicas) == 2
        np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=two.path)
    # The optimizers' state too: momentum, Adam's moments and step counts.
    for one, two in zip(
        single.optimizer.variables + single.weight_net_optimizer.variables,
        mirrored.optimizer.variables + mirrored.weight_net_optimizer.variables,
    ):
        np.testing.assert_allclose(
            np.asarray(two), np.asarray(one), rtol=1e-5, atol=1e-6, err_msg=one.path
        )
    if method != "ce":
        assert int(mirrored.meta_epoch.numpy()) == 1
    assert single_history.keys() == mirrored_history.keys()
    for name in single_history:
        np.testing.assert_allclose(
            mirrored_history[name], single_history[name], rtol=1e-5, err_msg=name
        )


def test_batch_norm_keeps_per_replica_statistics_and_averages_the_moving_ones(strategy):
    # Batches of 64, meta batches of 32: 32 and 16 examples per replica.
    x, y, x_meta, y_meta = _data(n=256, num_meta=64)
    kwargs = dict(batch_norm=True, meta_batch_size=32)
    with strategy.scope():
        model = _model("gdw", (x_meta, y_meta), len(x), **kwargs)
    dense, norm = model.backbone.layers[1], model.backbone.layers[2]
    kernel, bias = (np.asarray(v) for v in dense.variables)
    _fit(model, x, y, steps=1, batch_size=64)

    # Each replica normalised its half of the batch with that half's statistics; the moving
    # statistics moved by their average, the same on both replicas.
    hidden = x[:64] @ kernel + bias
    halves = hidden[:32], hidden[32:]
    momentum = norm.momentum
    expected_mean = (1 - momentum) * np.mean([h.mean(0) for h in halves], axis=0)
    expected_variance = momentum + (1 - momentum) * np.mean([h.var(0) for h in halves], axis=0)
    for variable, expected in (
        (norm.moving_mean, expected_mean),
        (norm.moving_variance, expected_variance),
    ):
        for value in _replica_values(variable):
            np.testing.assert_allclose(value, expected, rtol=1e-5, atol=1e-7)

    # A few more steps train as one device does, up to the statistics of half batches.
    history = _fit(model, x, y, steps=3, batch_size=64)
    single = _model("gdw", (x_meta, y_meta), len(x), **kwargs)
    _fit(single, x, y, steps=1, batch_size=64)
    single_history = _fit(single, x, y, steps=3, batch_size=64)
    for name in ("train/loss", "meta/loss", "weights/labelled_mean"):
        np.testing.assert_allclose(history[name], single_history[name], atol=0.05, err_msg=name)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_norm": True, "synchronized": True}, "synchronized=True"),
        ({"meta_batch_size": 5}, "multiple of the number of replicas"),
        ({"meta_grad": "nested"}, "one replica only"),
        ({"meta_interval": 2}, "meta_interval=2 runs on one replica only"),
    ],
    ids=["synchronized_batch_norm", "uneven_meta_split", "nested_meta_gradient", "meta_interval"],
)
def test_what_one_replica_only_runs_is_refused_across_replicas(strategy, kwargs, message):
    x, y, x_meta, y_meta = _data()
    with strategy.scope():
        model = _model("gdw", (x_meta, y_meta), len(x), **kwargs)
    with pytest.raises(ValueError, match=message):
        _fit(model, x, y, steps=1)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gdw", "mwnet", "l2rw"])
def test_two_replicas_take_the_steps_of_one_device_with_a_head_meta_scope(method, strategy):
    x, y, x_meta, y_meta = _data()
    single = _model(method, (x_meta, y_meta), len(x), meta_scope="head")
    single_history = _fit(single, x, y, steps=3)
    with strategy.scope():
        mirrored = _model(method, (x_meta, y_meta), len(x), meta_scope="head")
    mirrored_history = _fit(mirrored, x, y, steps=3)
    for one, two in zip(single.variables, mirrored.variables):
        np.testing.assert_allclose(
            np.asarray(two), np.asarray(one), rtol=1e-5, atol=1e-6, err_msg=one.path
        )
    np.testing.assert_allclose(
        mirrored_history["meta/loss"], single_history["meta/loss"], rtol=1e-5
    )
    # The head scope's steps differ from the whole network's.
    full = _model(method, (x_meta, y_meta), len(x))
    _fit(full, x, y, steps=3)
    assert not np.allclose(
        np.asarray(full.backbone.variables[0]), np.asarray(single.backbone.variables[0]), rtol=1e-6
    )
