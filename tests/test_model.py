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
        model = gdw_tf.GDWModel(
            _mlp(), 3, meta_data=(x_meta, y_meta), meta_batch_size=10, seed=seed
        )
        orders.append(np.concatenate([np.asarray(model._next_meta_batch()[0]) for _ in range(6)]))
    np.testing.assert_array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], orders[2])


def _train(method, x, y, x_meta, y_meta, steps=3, **compile_kwargs):
    keras.utils.set_random_seed(1)
    model = gdw_tf.GDWModel(
        _mlp(),
        3,
        method=method,
        meta_data=(x_meta, y_meta),
        meta_batch_size=10,
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


# XLA compiles are the slow part: GDW and MW-Net in the full suite, L2RW and CE in the fast tier.
@pytest.mark.parametrize(
    "method",
    [pytest.param("gdw", marks=pytest.mark.slow), pytest.param("mwnet", marks=pytest.mark.slow)]
    + ["l2rw", "ce"],
)
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
    model = gdw_tf.GDWModel(
        backbone, 3, method="gdw", meta_data=(x_meta, y_meta), meta_batch_size=10
    )
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
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y, np.arange(60))).shuffle(60, seed=0).batch(20)
    )
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
    model = gdw_tf.GDWModel(
        _mlp(), 3, meta_data=(x_meta, y_meta), meta_batch_size=10, track_examples=20
    )
    model.compile(keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="track_examples"):
        model.fit(x, y, batch_size=10, epochs=1, verbose=0)


def _state_variables(model):
    """Every variable a step reads or writes, by part: backbone, weight net, both optimizers,
    meta-set position."""
    return {
        "backbone": model.backbone.variables,
        "weight_net": model.weight_net.variables,
        "optimizer": model.optimizer.variables,
        "weight_net_optimizer": model.weight_net_optimizer.variables,
        "meta_position": [model.meta_epoch, model.meta_cursor],
    }


def _state(model):
    return {
        name: [np.array(v.numpy()) for v in variables]
        for name, variables in _state_variables(model).items()
    }


def _set_state(model, state):
    variables = _state_variables(model)
    for name, values in state.items():
        for variable, value in zip(variables[name], values):
            variable.assign(value)


@pytest.mark.parametrize("method", [pytest.param("gdw", marks=pytest.mark.slow), "mwnet"])
def test_meta_interval_takes_the_meta_step_on_every_kth_step_only(method):
    """k = 3: steps 3 and 6 are the usual step (as a meta_interval=1 model's from the same
    state); steps 1, 2, 4, 5 are SGD on the CE weighted by the current weight net (NumPy below)
    and leave the weight net, its optimizer and the meta-set position alone."""
    x, y, x_meta, y_meta = _data(n=120)
    lr, momentum, l2, batch = 0.1, 0.9, 5e-4, 20

    def model(meta_interval):
        keras.utils.set_random_seed(2)
        backbone = keras.Sequential(
            [keras.Input((8,)), keras.layers.Dense(3)]
        )  # softmax regression
        gdw = gdw_tf.GDWModel(
            backbone,
            3,
            method=method,
            meta_data=(x_meta, y_meta),
            meta_batch_size=10,
            l2=l2,
            meta_interval=meta_interval,
        )
        gdw.compile(keras.optimizers.SGD(lr, momentum=momentum))
        return gdw

    every_third, every = model(3), model(1)
    for step in range(6):
        xb, yb = x[batch * step : batch * (step + 1)], y[batch * step : batch * (step + 1)]
        before = _state(every_third)
        velocities = [np.array(m.numpy()) for m in every_third.optimizer.momentums]
        logs = every_third.train_on_batch(xb, yb, return_dict=True)
        after = _state(every_third)
        if (step + 1) % 3 == 0:
            _set_state(every, before)
            expected_logs = every.train_on_batch(xb, yb, return_dict=True)
            expected = _state(every)
            assert logs["meta/loss"] == pytest.approx(expected_logs["meta/loss"], rel=1e-5)
        else:
            kernel, bias = before["backbone"]
            logits = xb @ kernel + bias
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            loss = -np.log(p[np.arange(batch), yb])
            v = every_third.weight_net.predict(loss[:, None], verbose=0)[:, 0]
            e = (p - np.eye(3)[yb]) * v[:, None] / batch  # ∂(mean v·ℓ)/∂logits
            grads = [xb.T @ e + l2 * kernel, e.sum(0) + l2 * bias]
            velocities = [momentum * m - lr * g for m, g in zip(velocities, grads)]
            expected = dict(
                before, backbone=[w + m for w, m in zip(before["backbone"], velocities)]
            )
            expected["optimizer"] = after["optimizer"]  # momentum checked through the weights
            assert logs["weights/instance_mean"] == pytest.approx(v.mean(), rel=1e-5)
        for name in expected:
            for a, b in zip(after[name], expected[name]):
                np.testing.assert_allclose(
                    a, b, rtol=1e-5, atol=1e-7, err_msg=f"step {step + 1}: {name}"
                )
    assert every_third.weight_net_optimizer.iterations.numpy() == 2
    assert every_third.meta_cursor.numpy() == 20  # two meta batches of 10 drawn


def test_meta_interval_refuses_l2rw_and_non_positive_values():
    _, _, x_meta, y_meta = _data()
    with pytest.raises(ValueError, match="l2rw has none"):
        gdw_tf.GDWModel(
            _mlp(),
            3,
            method="l2rw",
            meta_data=(x_meta, y_meta),
            meta_batch_size=10,
            meta_interval=2,
        )
    with pytest.raises(ValueError, match="meta_interval must be a positive integer"):
        gdw_tf.GDWModel(_mlp(), 3, meta_data=(x_meta, y_meta), meta_batch_size=10, meta_interval=0)


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


@pytest.mark.slow
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
        model = gdw_tf.GDWModel(
            backbone, 4, method=method, meta_data=(x_meta, y_meta), meta_batch_size=50
        )
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
        model.fit(x, noisy, batch_size=50, epochs=20, verbose=0)
        accuracy[method] = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    assert accuracy["gdw"] > accuracy["ce"] + 0.15, accuracy
    assert accuracy["mwnet"] > accuracy["ce"] + 0.15, accuracy
