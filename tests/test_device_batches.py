"""`gdw_tf.data.device_batches`: batches whose rows the devices divide (Keras' JAX
`DataParallel`), checked here on one device with the device count given; the run on two JAX
devices is in tests/test_distribute_train.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import gdw_tf
from gdw_tf.data import device_batches


def _batches(dataset):
    return list(dataset.as_numpy_iterator())


@pytest.mark.parametrize("rows", [12, 13, 14, 15, 16, 20, 2, 1])
@pytest.mark.parametrize("devices", [2, 3])
def test_training_batches_are_cut_to_a_multiple_of_the_devices(rows, devices):
    batch_size = 6
    dataset = tf.data.Dataset.from_tensor_slices(
        (np.arange(rows, dtype=np.float32)[:, None], np.arange(rows) % 4, np.arange(rows))
    ).batch(batch_size)
    kept = _batches(device_batches.even_batches(dataset, devices, pad=False))
    assert len(kept) == device_batches.steps_per_epoch(rows, batch_size, devices)
    positions = np.concatenate([index for _, _, index in kept]) if kept else np.zeros(0)
    # Each batch keeps its first rows, a multiple of the devices; the columns stay together.
    expected = [
        start + i
        for start in range(0, rows, batch_size)
        for i in range(min(batch_size, rows - start) // devices * devices)
    ]
    np.testing.assert_array_equal(positions, expected)
    for x, y, index in kept:
        assert len(index) % devices == 0 and len(index) > 0
        np.testing.assert_array_equal(x[:, 0], index)
        np.testing.assert_array_equal(y, index % 4)
    # At most devices - 1 rows of the pass are left out.
    assert rows - len(positions) == (rows % batch_size) % devices


def test_steps_per_epoch_counts_a_last_batch_only_if_it_holds_a_row_per_device():
    assert device_batches.steps_per_epoch(1951, 64, 1) == 31  # ceil(1951 / 64)
    assert device_batches.steps_per_epoch(1951, 64, 2) == 31  # the last 31 rows cut to 30
    assert device_batches.steps_per_epoch(1921, 64, 2) == 30  # the last row alone: dropped
    assert device_batches.steps_per_epoch(1920, 64, 8) == 30


@pytest.mark.parametrize("single", [False, True])
def test_evaluation_batches_are_padded_with_rows_of_zero_weight(single):
    rows, batch_size, devices = 11, 4, 3
    x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    y = np.arange(rows)
    dataset = tf.data.Dataset.from_tensor_slices(x if single else (x, y)).batch(batch_size)
    padded = _batches(device_batches.even_batches(dataset, devices, pad=True))
    assert [len(batch[-1]) for batch in padded] == [6, 6, 3]  # 4, 4, 3 rows
    for batch, start in zip(padded, range(0, rows, batch_size)):
        *columns, weights = batch
        own = min(batch_size, rows - start)
        np.testing.assert_array_equal(weights, [1.0] * own + [0.0] * (len(weights) - own))
        assert weights.dtype == np.float32
        np.testing.assert_array_equal(columns[0][:own], x[start : start + own])
        np.testing.assert_array_equal(
            columns[0][own:], np.repeat(x[start + own - 1 : start + own], len(weights) - own, 0)
        )
        if not single:
            np.testing.assert_array_equal(columns[1][:own], y[start : start + own])


def test_one_device_leaves_the_dataset_as_it_is():
    dataset = tf.data.Dataset.range(5).batch(2)
    assert device_batches.even_batches(dataset, 1, pad=True) is dataset
    assert device_batches.even_batches(dataset, 1, pad=False) is dataset


def _two_outputs_model():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    return keras.Model(inputs, [hidden, keras.layers.Dense(2)(hidden)])


def test_padded_prediction_gives_one_row_per_row_as_one_device():
    keras.utils.set_random_seed(0)
    model = _two_outputs_model()
    x = np.random.default_rng(0).normal(size=(23, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(23))).batch(5)
    expected = model.predict(x, verbose=0)
    for devices in (1, 2, 4):
        got = device_batches.predict(model, dataset, devices)
        for value, want in zip(got, expected):
            assert value.shape == want.shape
            np.testing.assert_allclose(value, want, rtol=1e-6, atol=1e-6)


def test_gdw_model_evaluation_counts_no_row_of_zero_weight():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(13, 3)).astype(np.float32)
    y = rng.integers(0, 2, 13)
    backbone = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model = gdw_tf.GDWModel(backbone, 2, meta_data=(x[:4], y[:4]), meta_batch_size=4)
    model.compile(keras.optimizers.SGD(0.1))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(4)
    padded = device_batches.even_batches(dataset, 3, pad=True)  # 21 rows, 8 of them copies
    whole = model.evaluate(dataset, return_dict=True, verbose=0)
    logits = backbone.predict(x, verbose=0)
    assert whole["accuracy"] == pytest.approx(np.mean(logits.argmax(-1) == y))
    got = model.evaluate(padded, return_dict=True, verbose=0)
    assert got["accuracy"] == pytest.approx(whole["accuracy"])
    assert got["loss"] == pytest.approx(whole["loss"], rel=1e-6)
