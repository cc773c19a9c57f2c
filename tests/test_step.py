"""The step's gradients against independent computations, in float64.

Independent here means: written in the test from `docs/ALGORITHM.md` with plain TensorFlow (tapes,
explicit layer arithmetic, NumPy), without calling gdw_tf's own step helpers. Under
`KERAS_BACKEND=jax` the references that differentiate a Keras model use `jax.grad` instead of a
tape (`_gradient`); the spec step written out with explicit layers stays in TensorFlow.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

import gdw_tf
from gdw_tf.core import methods
from gdw_tf.core import step as step_lib

LR = 0.1


@pytest.fixture(autouse=True)
def float64():
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx("float32")


def _mlp(inputs=5, hidden=7, classes=3):
    return keras.Sequential(
        [
            keras.Input((inputs,)),
            keras.layers.Dense(hidden, activation="tanh"),
            keras.layers.Dense(classes),
        ]
    )


def _conv_bn(classes=3):
    return keras.Sequential(
        [
            keras.Input((6, 6, 2)),
            keras.layers.Conv2D(4, 3, padding="same"),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes),
        ]
    )


def _data(input_shape, classes, batch, meta_batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, *input_shape))
    y = rng.integers(0, classes, batch).astype("int32")
    x_meta = rng.normal(size=(meta_batch, *input_shape))
    y_meta = (np.arange(meta_batch) % classes).astype("int32")
    return x, y, x_meta, y_meta


def _values(variables):
    return [keras.ops.convert_to_tensor(v.numpy()) for v in variables]


def _gradient(fn, params):
    """`∇ fn(params)` with the backend's own autodiff (a TF tape, or `jax.grad` on JAX)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.grad(fn)(params)
    with tf.GradientTape() as tape:
        tape.watch(params)
        value = fn(params)
    return tape.gradient(value, params)


def _class_weighted_gradient(backbone, theta, non_trainable, x, cotangent):
    """G(ω) written directly: the gradient of Σ_ij c_ij z_ij with c held constant."""

    def surrogate(theta):
        logits, _ = backbone.stateless_call(theta, non_trainable, x, training=True)
        return keras.ops.sum(keras.ops.stop_gradient(cotangent) * logits)

    return _gradient(surrogate, theta)


def _per_example_ce(logits, labels):
    if keras.backend.backend() == "jax":
        return keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True)
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def _mean_ce(logits, labels):
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


def test_unit_weights_give_the_ce_gradient_and_row_weights_the_instance_weighted_one():
    backbone = _mlp()
    x, y, _, _ = _data((5,), 3, 8, 3)
    theta = _values(backbone.trainable_variables)
    fwd = step_lib.forward(
        methods.MWNET, backbone, trainable=theta, non_trainable=[], x=x, y=y, num_classes=3
    )
    batch = len(y)

    def ce(theta):
        logits, _ = backbone.stateless_call(theta, [], x, training=True)
        return keras.ops.mean(_per_example_ce(logits, y))

    expected = _gradient(ce, theta)
    actual = fwd.vjp_fn(np.ones((batch, 3)) * fwd.error / batch)
    for a, b in zip(actual, expected):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)

    v = np.linspace(0.1, 1.0, batch)

    def weighted(theta):
        logits, _ = backbone.stateless_call(theta, [], x, training=True)
        return keras.ops.mean(v * _per_example_ce(logits, y))

    expected = _gradient(weighted, theta)
    actual = fwd.vjp_fn(v[:, None] * fwd.error / batch)
    for a, b in zip(actual, expected):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


def _meta_loss_of_weights(backbone, theta, non_trainable, x, e, x_meta, y_meta, lr):
    """L_meta(θ − α G(ω)) as a function of ω, computed directly (for finite differences)."""
    batch = e.shape[0]

    def meta_loss(omega):
        grads = _class_weighted_gradient(backbone, theta, non_trainable, x, omega * e / batch)
        virtual = [t - lr * g for t, g in zip(theta, grads)]
        logits, _ = backbone.stateless_call(virtual, non_trainable, x_meta, training=True)
        return float(_mean_ce(np.asarray(logits), y_meta))

    return meta_loss


def _central_differences(fn, point, h=1e-6):
    grad = np.zeros_like(point)
    for index in np.ndindex(point.shape):
        up, down = point.copy(), point.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (fn(up) - fn(down)) / (2 * h)
    return grad


@pytest.mark.parametrize("make_backbone, input_shape", [(_mlp, (5,)), (_conv_bn, (6, 6, 2))])
def test_intermediate_gradients_jvp_nested_and_finite_differences_agree(make_backbone, input_shape):
    backbone = make_backbone()
    weight_net = gdw_tf.build_weight_net(10)
    x, y, x_meta, y_meta = _data(input_shape, 3, 4, 6)
    theta = _values(backbone.trainable_variables)
    non_trainable = _values(backbone.non_trainable_variables)
    phi = _values(weight_net.trainable_variables)

    fwd = step_lib.forward(
        methods.GDW, backbone, trainable=theta, non_trainable=non_trainable, x=x, y=y, num_classes=3
    )
    results = {
        mode: step_lib.meta_gradient(
            methods.GDW,
            fwd,
            backbone=backbone,
            weight_net=weight_net,
            trainable=theta,
            non_trainable=non_trainable,
            weight_net_trainable=phi,
            x=x,
            x_meta=x_meta,
            y_meta=y_meta,
            learning_rate=LR,
            num_classes=3,
            meta_grad=mode,
        )
        for mode in ("jvp", "nested")
    }
    omega0 = np.asarray(results["jvp"].weights)
    meta_loss = _meta_loss_of_weights(
        backbone, theta, non_trainable, x, np.asarray(fwd.error), x_meta, y_meta, LR
    )
    finite = _central_differences(meta_loss, omega0)

    assert np.abs(finite).max() > 1e-6  # a real signal, not a vacuous comparison
    for mode, result in results.items():
        np.testing.assert_allclose(
            result.dmeta_dweights, finite, rtol=1e-5, atol=1e-10, err_msg=mode
        )
        assert float(result.meta_loss) == pytest.approx(meta_loss(omega0), rel=1e-12)
    for a, b in zip(results["jvp"].weight_net_grads, results["nested"].weight_net_grads):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-16)


@pytest.mark.parametrize("method", ["mwnet", "l2rw"])
def test_instance_meta_gradients_match_finite_differences(method):
    backbone = _conv_bn()
    weight_net = gdw_tf.build_weight_net(10)
    x, y, x_meta, y_meta = _data((6, 6, 2), 3, 4, 6, seed=1)
    theta = _values(backbone.trainable_variables)
    non_trainable = _values(backbone.non_trainable_variables)
    phi = _values(weight_net.trainable_variables)
    fwd = step_lib.forward(
        methods.get(method),
        backbone,
        trainable=theta,
        non_trainable=non_trainable,
        x=x,
        y=y,
        num_classes=3,
    )
    e = np.asarray(fwd.error)

    results = [
        step_lib.meta_gradient(
            methods.get(method),
            fwd,
            backbone=backbone,
            weight_net=weight_net,
            trainable=theta,
            non_trainable=non_trainable,
            weight_net_trainable=phi,
            x=x,
            x_meta=x_meta,
            y_meta=y_meta,
            learning_rate=LR,
            num_classes=3,
            meta_grad=mode,
        )
        for mode in ("jvp", "nested")
    ]
    # MW-Net: derivative in v at v = V(ℓ), virtual lr α. L2RW: in ε at ε = 0, virtual lr 1.
    lr = LR if method == "mwnet" else 1.0
    meta_loss = _meta_loss_of_weights(backbone, theta, non_trainable, x, e, x_meta, y_meta, lr)
    point = np.asarray(results[0].weights)
    finite = _central_differences(lambda v: meta_loss(np.repeat(v[:, None], 3, axis=1)), point)
    assert np.abs(finite).max() > 1e-6
    for result in results:
        np.testing.assert_allclose(result.dmeta_dweights, finite, rtol=1e-5, atol=1e-10)


def _explicit_mlp(params, x):
    w1, b1, w2, b2 = params
    return tf.matmul(tf.tanh(tf.matmul(x, w1) + b1), w2) + b2


def _explicit_weight_net(phi, loss):
    a1, c1, a2, c2 = phi
    return tf.sigmoid(tf.matmul(tf.nn.relu(tf.matmul(loss[:, None], a1) + c1), a2) + c2)[:, 0]


def _torch_adam_first_step(params, grads, lr=1e-3, l2=1e-4, eps=1e-8):
    """PyTorch Adam's first step: m̂ = g, v̂ = g², with the L2 term in g."""
    out = []
    for p, g in zip(params, grads):
        g = g + l2 * p
        out.append(p - lr * g / (np.sqrt(g * g) + eps))
    return out


def _spec_step(method, theta, phi, x, y, x_meta, y_meta, classes, l2=5e-4, beta=100.0, clip=0.2):
    """One GDW or MW-Net step written from the spec with nested tapes, returns (θ, φ) after it."""
    lr = LR
    theta = [tf.constant(t) for t in theta]
    phi = [tf.constant(f) for f in phi]
    batch = len(y)
    onehot = np.eye(classes)[y]
    rows = np.arange(batch)
    shifted = _explicit_mlp(theta, x).numpy()
    shifted -= shifted.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    loss = tf.constant(-log_p[rows, y])
    p = np.exp(log_p)
    if method == "gdw":
        p = np.minimum(p, 0.999)
    e = p - onehot

    def constrain(omega):
        label_weight = tf.reduce_sum(omega * p * (1 - onehot), axis=1) / (1 - p[rows, y])
        return omega * (1 - onehot) + label_weight[:, None] * onehot

    with tf.GradientTape(persistent=True) as outer:
        outer.watch(phi)
        v = _explicit_weight_net(phi, loss)
        omega0 = (
            constrain(tf.tile(v[:, None], [1, classes]))
            if method == "gdw"
            else v[:, None] * np.ones((1, classes))
        )
        outer.watch(omega0)
        with tf.GradientTape() as inner:
            inner.watch(theta)
            surrogate = tf.reduce_sum(omega0 * e / batch * _explicit_mlp(theta, x))
        grads = inner.gradient(surrogate, theta)
        virtual = [t - lr * g for t, g in zip(theta, grads)]
        meta_loss = _mean_ce(_explicit_mlp(virtual, x_meta), y_meta)
    dphi = [g.numpy() for g in outer.gradient(meta_loss, phi)]
    phi_new = _torch_adam_first_step([f.numpy() for f in phi], dphi)

    if method == "gdw":
        g = outer.gradient(meta_loss, omega0).numpy()
        step = np.clip(beta * g / np.abs(g).sum(), -clip, clip)
        omega1 = np.clip(omega0.numpy() - step, 1e-6, 1e6)
        omega1[rows, y] = (omega1 * p * (1 - onehot)).sum(1) / (1 - p[rows, y])
        real_cotangent = omega1 * e / batch
    else:
        w = _explicit_weight_net([tf.constant(f) for f in phi_new], loss).numpy()
        real_cotangent = w[:, None] * e / batch
    with tf.GradientTape() as tape:
        tape.watch(theta)
        surrogate = tf.reduce_sum(real_cotangent * _explicit_mlp(theta, x))
    real = tape.gradient(surrogate, theta)
    # Keras SGD(momentum) at its first step is θ − lr · gradient.
    theta_new = [t.numpy() - lr * (g.numpy() + l2 * t.numpy()) for t, g in zip(theta, real)]
    return theta_new, phi_new


@pytest.mark.parametrize("method", ["gdw", "mwnet"])
def test_one_full_step_equals_the_spec_written_out(method):
    classes, batch = 3, 6
    backbone = _mlp(classes=classes)
    x, y, x_meta, y_meta = _data((5,), classes, batch, 6, seed=2)
    x[0] *= 30.0  # push one example's p past 0.999, so the clipping matters
    model = gdw_tf.GDWModel(
        backbone,
        classes,
        method=method,
        meta_data=(x_meta, y_meta),
        meta_batch_size=6,
        weight_net_hidden=10,
    )
    model.compile(keras.optimizers.SGD(LR, momentum=0.9))
    theta0 = [v.numpy() for v in backbone.trainable_variables]
    phi0 = [v.numpy() for v in model.weight_net.trainable_variables]
    expected_theta, expected_phi = _spec_step(method, theta0, phi0, x, y, x_meta, y_meta, classes)

    model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)

    for actual, expected in zip(backbone.trainable_variables, expected_theta):
        np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-9, atol=1e-12)
    for actual, expected in zip(model.weight_net.trainable_variables, expected_phi):
        np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-7, atol=1e-12)
    for actual, before in zip(model.weight_net.trainable_variables, phi0):
        assert np.abs(actual.numpy() - before).max() > 1e-5  # the weight net did move


def test_batchnorm_statistics_move_once_as_in_a_ce_step():
    x, y, x_meta, y_meta = _data((6, 6, 2), 3, 8, 6, seed=3)
    moving = {}
    for method in ("ce", "gdw", "mwnet", "l2rw"):
        keras.utils.set_random_seed(0)
        backbone = _conv_bn()
        conv_output = np.asarray(backbone.layers[0](x))
        model = gdw_tf.GDWModel(
            backbone, 3, method=method, meta_data=(x_meta, y_meta), meta_batch_size=6
        )
        model.compile(keras.optimizers.SGD(LR, momentum=0.9))
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)
        moving[method] = [v.numpy() for v in backbone.non_trainable_variables]
    # One update from the training forward: moving_mean = 0.99 · 0 + 0.01 · batch mean.
    np.testing.assert_allclose(moving["ce"][0], 0.01 * conv_output.mean(axis=(0, 1, 2)), rtol=1e-10)
    for method in ("gdw", "mwnet", "l2rw"):
        for a, b in zip(moving[method], moving["ce"]):
            np.testing.assert_allclose(a, b, rtol=1e-12)
