"""The Python API refuses bad input before training, and a `.keras` file restores a GDWModel.

Every refusal is a `ValueError` whose message names the problem, raised before any training
step, leaving the backbone's weights, the weight net and the meta set as they were.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gdw_tf import GDWModel
from gdw_tf.nets import backbones

NUM_CLASSES = 3
NUM_FEATURES = 6


def meta_set(n=30, seed=0):
    """A clean, class-balanced meta set of `n` feature vectors."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, NUM_FEATURES)).astype("float32")
    return x, np.arange(n) % NUM_CLASSES


def training_set(n=40, seed=1):
    """`n` feature vectors with labels in [0, NUM_CLASSES)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, NUM_FEATURES)).astype("float32")
    return x, rng.integers(0, NUM_CLASSES, n)


def make_model(**kwargs):
    """A compiled GDWModel on an MLP, with a 30-example meta set and meta batches of 10."""
    kwargs = {"meta_data": meta_set(), "meta_batch_size": 10, **kwargs}
    model = GDWModel(backbones.mlp((NUM_FEATURES,), NUM_CLASSES), NUM_CLASSES, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    return model


def snapshot(model):
    """Copies of every variable of the model and its optimizers."""
    variables = model.variables + model.optimizer.variables + model.weight_net_optimizer.variables
    return [np.array(v.numpy()) for v in variables]


def assert_untouched(model, before):
    """No variable changed and no optimizer step was taken."""
    for old, new in zip(before, snapshot(model), strict=True):
        np.testing.assert_array_equal(old, new)
    assert int(model.optimizer.iterations.numpy()) == 0


class RecordsCallbacks(keras.callbacks.Callback):
    """Records which callback hooks `fit` reached."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_train_begin(self, logs=None):
        self.calls.append("train_begin")

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append("batch_end")


# --------------------------------------------------------------------------------------------
# Constructor and meta set


def with_nan(x):
    x = x.copy()
    x[3, 2] = np.nan
    return x


def with_inf(x):
    x = x.copy()
    x[0, 0] = -np.inf
    return x


META_X, META_Y = meta_set()
BAD_META_SETS = {
    "label_too_large": ((META_X, np.where(META_Y == 2, 3, META_Y)), r"\[0, 3\)"),
    "label_negative": ((META_X, META_Y - 1), r"\[0, 3\)"),
    "labels_not_integers": ((META_X, META_Y + 0.5), "integer class indices"),
    "labels_are_strings": ((META_X, META_Y.astype(str)), "integer class indices"),
    "labels_one_hot": ((META_X, np.eye(NUM_CLASSES)[META_Y]), "one integer per example"),
    "nan_inputs": ((with_nan(META_X), META_Y), "NaN or infinite"),
    "inf_inputs": ((with_inf(META_X), META_Y), "NaN or infinite"),
    "inputs_of_wrong_rank": ((META_X[:, :, None], META_Y), r"the backbone expects \(6,\)"),
    "empty": ((META_X[:0], META_Y[:0]), "empty"),
    "empty_dataset": (tf.data.Dataset.from_tensor_slices((META_X[:0], META_Y[:0])), "empty"),
    "missing_a_class": ((META_X[META_Y != 1], META_Y[META_Y != 1]), r"class\(es\) \[1\]"),
    "smaller_than_a_meta_batch": ((META_X[:6], META_Y[:6]), "meta_batch_size=10 exceeds"),
    "not_a_pair": (META_X, "tuple \\(x_meta, y_meta\\)"),
}


@pytest.mark.parametrize("meta_data, message", BAD_META_SETS.values(), ids=BAD_META_SETS.keys())
def test_constructor_refuses_a_bad_meta_set(meta_data, message):
    backbone = backbones.mlp((NUM_FEATURES,), NUM_CLASSES)
    before = [np.array(v.numpy()) for v in backbone.weights]
    with pytest.raises(ValueError, match=message):
        GDWModel(backbone, NUM_CLASSES, meta_data=meta_data, meta_batch_size=10)
    for old, new in zip(before, backbone.weights):
        np.testing.assert_array_equal(old, new.numpy())


@pytest.mark.parametrize("meta_data, message", BAD_META_SETS.values(), ids=BAD_META_SETS.keys())
def test_set_meta_data_refuses_a_bad_meta_set_and_keeps_the_old_one(meta_data, message):
    model = make_model()
    x, y = training_set()
    model.fit(x, y, batch_size=20, epochs=1, verbose=0)
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        model.set_meta_data(meta_data)
    assert model.num_meta == 30
    for old, new in zip(before, snapshot(model), strict=True):
        np.testing.assert_array_equal(old, new)


def test_meta_inputs_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match="backbone expects"):
        make_model(meta_data=(np.zeros((30, NUM_FEATURES + 1), "float32"), META_Y))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_classes": 4}, "num_classes=4"),
        ({"num_classes": 1}, "num_classes must be an integer ≥ 2"),
        ({"method": "mentornet"}, "method must be one of"),
        ({"meta_grad": "finite_differences"}, "meta_grad must be one of"),
        ({"meta_batch_size": 0}, "meta_batch_size must be a positive integer"),
        ({"meta_batch_size": -5}, "meta_batch_size must be a positive integer"),
        ({"meta_batch_size": 31}, "meta_batch_size=31 exceeds the 30 examples of the meta set"),
        ({"track_examples": 0}, "track_examples must be a positive integer"),
        ({"clip": 0.0}, "clip must be > 0"),
        ({"outer_lr": -1.0}, "outer_lr must be ≥ 0"),
        # Beyond the first pass: the values a hurried user gives.
        ({"outer_lr": float("inf")}, "outer_lr must be a finite number; got inf"),
        ({"clip": float("inf")}, "clip must be a finite number; got inf"),
        ({"l2": float("inf")}, "l2 must be a finite number; got inf"),
        ({"l2": "5e-4"}, "l2 must be a finite number; got '5e-4'"),
        ({"weight_net_lr": float("nan")}, "weight_net_lr must be a finite number; got nan"),
        ({"weight_net_lr": -1e-3}, "weight_net_lr must be > 0"),
        ({"weight_net_l2": -1e-4}, "weight_net_l2 must be ≥ 0"),
        ({"weight_net_hidden": 0}, "weight_net_hidden must be a positive integer; got 0"),
        ({"weight_net_hidden": 2.5}, "weight_net_hidden must be a positive integer; got 2.5"),
        ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\); got -1"),
        ({"seed": 2**40}, r"seed must be an integer in \[0, 2\*\*32\)"),
        ({"seed": "0"}, r"seed must be an integer in \[0, 2\*\*32\); got '0'"),
        ({"track_examples": 2.5}, "track_examples must be a positive integer; got 2.5"),
    ],
)
def test_constructor_refuses_bad_arguments(kwargs, message):
    kwargs = {"num_classes": NUM_CLASSES, "meta_data": meta_set(), "meta_batch_size": 10, **kwargs}
    with pytest.raises(ValueError, match=message):
        GDWModel(backbones.mlp((NUM_FEATURES,), NUM_CLASSES), **kwargs)


def test_constructor_refuses_an_unbuilt_backbone():
    with pytest.raises(ValueError, match="built keras.Model"):
        GDWModel(keras.Sequential([keras.layers.Dense(NUM_CLASSES)]), NUM_CLASSES)


def test_compile_refuses_a_loss():
    model = GDWModel(backbones.mlp((NUM_FEATURES,), NUM_CLASSES), NUM_CLASSES, method="ce")
    with pytest.raises(ValueError, match="without loss= and metrics="):
        model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")


# --------------------------------------------------------------------------------------------
# fit


def with_label(y, value):
    y = np.array(y, dtype=np.asarray(value).dtype)
    y[5] = value
    return y


X_TRAIN, Y_TRAIN = training_set()
BAD_TRAINING_SETS = {
    "label_too_large": (X_TRAIN, with_label(Y_TRAIN, 3), r"\[0, 3\)"),
    "label_negative": (X_TRAIN, with_label(Y_TRAIN, -1), r"\[0, 3\)"),
    "labels_not_integers": (X_TRAIN, with_label(Y_TRAIN, 1.5), "integer class indices"),
    "nan_inputs": (with_nan(X_TRAIN), Y_TRAIN, "NaN or infinite"),
    "inf_inputs": (with_inf(X_TRAIN), Y_TRAIN, "NaN or infinite"),
    "inputs_of_wrong_rank": (X_TRAIN[:, :, None], Y_TRAIN, r"the backbone expects \(6,\)"),
    "empty": (X_TRAIN[:0], Y_TRAIN[:0], "empty"),
}


@pytest.mark.parametrize("x, y, message", BAD_TRAINING_SETS.values(), ids=BAD_TRAINING_SETS.keys())
def test_fit_refuses_bad_numpy_training_data_before_any_step(x, y, message):
    model = make_model()
    before = snapshot(model)
    callback = RecordsCallbacks()
    with pytest.raises(ValueError, match=message):
        model.fit(x, y, batch_size=20, epochs=1, verbose=0, callbacks=[callback])
    assert callback.calls == []
    assert_untouched(model, before)


@pytest.mark.parametrize("inputs", ["x_only", "dataset_of_x"])
def test_fit_without_labels_says_how_to_give_them(inputs):
    model = make_model()
    before = snapshot(model)
    x = X_TRAIN if inputs == "x_only" else tf.data.Dataset.from_tensor_slices(X_TRAIN).batch(10)
    with pytest.raises(ValueError, match=r"trains on labelled examples: give fit\(x, y\)"):
        model.fit(x, epochs=1, verbose=0)
    assert_untouched(model, before)


def test_fit_refuses_sample_weight_before_any_step():
    model = make_model()
    before = snapshot(model)
    with pytest.raises(ValueError, match="takes no sample_weight"):
        model.fit(X_TRAIN, Y_TRAIN, sample_weight=np.ones(len(Y_TRAIN)), batch_size=20, verbose=0)
    assert_untouched(model, before)


def test_fit_refuses_sample_weight_when_tracking_examples():
    model = make_model(track_examples=len(Y_TRAIN))
    with pytest.raises(ValueError, match="sample_weight"):
        model.fit(
            X_TRAIN, Y_TRAIN, sample_weight=np.full(len(Y_TRAIN), 0.5), batch_size=20, verbose=0
        )


def test_fit_refuses_out_of_range_labels_in_a_dataset():
    model = make_model()
    dataset = tf.data.Dataset.from_tensor_slices((X_TRAIN, with_label(Y_TRAIN, 7))).batch(20)
    with pytest.raises((ValueError, tf.errors.InvalidArgumentError)):
        model.fit(dataset, epochs=1, verbose=0)


def test_fit_without_a_meta_set_says_how_to_give_one():
    model = GDWModel(backbones.mlp((NUM_FEATURES,), NUM_CLASSES), NUM_CLASSES, meta_batch_size=10)
    model.compile(optimizer="sgd")
    before = snapshot(model)
    with pytest.raises(ValueError, match="set_meta_data"):
        model.fit(X_TRAIN, Y_TRAIN, batch_size=20, verbose=0)
    assert_untouched(model, before)


# --------------------------------------------------------------------------------------------
# .keras round trip


@pytest.fixture
def fitted_and_saved(tmp_path):
    """A GDWModel after one epoch (two steps), saved to a `.keras` file; (model, path)."""
    model = make_model(track_examples=len(Y_TRAIN))
    indexed = tf.data.Dataset.from_tensor_slices((X_TRAIN, Y_TRAIN, np.arange(len(Y_TRAIN)))).batch(
        20
    )
    model.fit(indexed, epochs=1, verbose=0)
    path = tmp_path / "gdw.keras"
    model.save(path)
    return model, path


def test_keras_file_restores_predictions_weight_net_and_meta_position(fitted_and_saved):
    model, path = fitted_and_saved
    loaded = keras.saving.load_model(path)

    assert isinstance(loaded, GDWModel)
    config, loaded_config = model.get_config(), loaded.get_config()
    del config["backbone"], loaded_config["backbone"]  # Compared through its outputs below.
    assert loaded_config == config
    np.testing.assert_array_equal(
        loaded.predict(X_TRAIN, verbose=0), model.predict(X_TRAIN, verbose=0)
    )
    for saved, restored in zip(model.weight_net.weights, loaded.weight_net.weights, strict=True):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    assert (int(loaded.meta_cursor.numpy()), int(loaded.meta_epoch.numpy())) == (20, 0)
    np.testing.assert_array_equal(
        loaded.example_label_weights.numpy(), model.example_label_weights.numpy()
    )
    assert loaded.num_meta == 0  # The meta set is data, not state: set it again.


def test_keras_file_restores_both_optimizers(fitted_and_saved):
    model, path = fitted_and_saved
    loaded = keras.saving.load_model(path)
    for saved, restored in zip(
        model.optimizer.variables + model.weight_net_optimizer.variables,
        loaded.optimizer.variables + loaded.weight_net_optimizer.variables,
        strict=True,
    ):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())


def test_a_loaded_model_resumes_training_exactly(fitted_and_saved):
    model, path = fitted_and_saved
    loaded = keras.saving.load_model(path)
    loaded.set_meta_data(meta_set())

    for saved, restored in zip(
        model.weight_net_optimizer.variables + model.optimizer.variables,
        loaded.weight_net_optimizer.variables + loaded.optimizer.variables,
        strict=True,
    ):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy(), err_msg=saved.path)
    assert int(loaded.weight_net_optimizer.iterations.numpy()) == 2

    # One more epoch on each gives the same weights: training continues where it stopped.
    indexed = tf.data.Dataset.from_tensor_slices((X_TRAIN, Y_TRAIN, np.arange(len(Y_TRAIN)))).batch(
        20
    )
    model.fit(indexed, epochs=1, verbose=0)
    loaded.fit(indexed, epochs=1, verbose=0)
    for trained, resumed in zip(model.variables, loaded.variables, strict=True):
        np.testing.assert_allclose(
            trained.numpy(), resumed.numpy(), rtol=1e-6, atol=1e-7, err_msg=trained.path
        )


# --------------------------------------------------------------------------------------------
# Keras' standard callbacks


def test_terminate_on_nan_stops_a_diverging_fit_at_the_first_non_finite_loss():
    model = GDWModel(
        backbones.mlp((NUM_FEATURES,), NUM_CLASSES),
        NUM_CLASSES,
        meta_data=meta_set(),
        meta_batch_size=10,
    )
    model.compile(optimizer=keras.optimizers.SGD(1e30))  # diverges
    x, y = training_set(200)
    history = model.fit(
        x, y, batch_size=10, epochs=5, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()]
    )
    losses = history.history["loss"]
    assert len(losses) == 1 and not np.isfinite(losses[0])  # stopped in epoch 1
    assert int(model.optimizer.iterations.numpy()) < 20  # of 100 steps asked for


def test_loss_is_the_training_loss_and_val_loss_the_validation_loss():
    model = make_model()
    x, y = training_set()
    x_val, y_val = meta_set(seed=5)
    history = model.fit(
        x,
        y,
        batch_size=10,
        epochs=2,
        verbose=0,
        validation_data=(x_val, y_val),
        callbacks=[keras.callbacks.EarlyStopping(monitor="loss", patience=5)],
    )
    logs = history.history
    assert logs["loss"] == logs["train/loss"]
    assert len(logs["val_loss"]) == 2 and logs["val_loss"] != logs["loss"]
    evaluated = model.evaluate(x_val, y_val, verbose=0, return_dict=True)
    np.testing.assert_allclose(logs["val_loss"][-1], evaluated["loss"], rtol=1e-6)
    # The validation loss is the mean cross-entropy of the final weights' predictions.
    logits = model.predict(x_val, verbose=0).astype("float64")
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(
        evaluated["loss"], -log_probs[np.arange(len(y_val)), y_val].mean(), rtol=1e-5
    )


# --------------------------------------------------------------------------------------------
# Mixed precision


@pytest.fixture
def restore_dtype_policy():
    yield
    keras.mixed_precision.set_global_policy("float32")


def _one_step(policy, method):
    """One GDWModel step of 40 examples under `policy`: (initial weights, updated weights,
    weights on the given labels, loss, model)."""
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    x, y = training_set(40)
    model = GDWModel(
        backbones.mlp((NUM_FEATURES,), NUM_CLASSES),
        NUM_CLASSES,
        method=method,
        meta_data=meta_set(),
        meta_batch_size=10,
        track_examples=40,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    before = model.backbone.get_weights()
    batches = tf.data.Dataset.from_tensor_slices((x, y, np.arange(40))).batch(40)
    loss = model.fit(batches, epochs=1, verbose=0).history["loss"][0]
    keras.mixed_precision.set_global_policy("float32")
    return (
        before,
        model.backbone.get_weights(),
        np.asarray(model.example_label_weights),
        loss,
        model,
    )


# bfloat16 keeps 8 significant bits (relative rounding 2^-8 = 0.4% per operation); through the
# MLP's 256-term sums one step's update differed from float32's by 3-4% (GDW, MW-Net, CE) and
# 6% (L2RW, whose weights are clipped at 0) when this test was written.
@pytest.mark.parametrize(
    "method, update_rtol", [("gdw", 0.1), ("mwnet", 0.1), ("l2rw", 0.15), ("ce", 0.1)]
)
def test_mixed_bfloat16_takes_the_float32_step_within_bfloat16_rounding(
    method, update_rtol, restore_dtype_policy
):
    start, expected, expected_weights, expected_loss, _ = _one_step("float32", method)
    start_mixed, actual, weights, loss, model = _one_step("mixed_bfloat16", method)
    assert model.backbone.compute_dtype == "bfloat16"  # mixed precision was in use
    assert all(v.dtype == "float32" for v in model.backbone.weights + model.weight_net.weights)
    assert all(layer.compute_dtype == "float32" for layer in model.weight_net.layers[1:])
    for a, b in zip(start, start_mixed, strict=True):
        np.testing.assert_array_equal(a, b)  # the same initial weights
    update = np.concatenate([(e - s).ravel() for s, e in zip(start, expected)])
    mixed_update = np.concatenate([(e - s).ravel() for s, e in zip(start, actual)])
    assert np.linalg.norm(mixed_update - update) <= update_rtol * np.linalg.norm(update)
    assert loss == pytest.approx(expected_loss, rel=0.01)
    if method in ("gdw", "mwnet"):  # weights near 1, smooth in the loss
        np.testing.assert_allclose(weights, expected_weights, atol=0.01)


def test_mixed_float16_is_refused_with_the_policy_to_use(restore_dtype_policy):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = GDWModel(
        backbones.mlp((NUM_FEATURES,), NUM_CLASSES),
        NUM_CLASSES,
        meta_data=meta_set(),
        meta_batch_size=10,
    )
    with pytest.raises(ValueError, match="use keras.mixed_precision.set_global_policy"):
        model.compile(optimizer="sgd")
