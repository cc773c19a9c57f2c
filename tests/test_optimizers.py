"""TorchAdam against PyTorch's Adam written out in NumPy."""

import keras
import numpy as np
import pytest

from gdw_tf import TorchAdam


@pytest.fixture(autouse=True)
def float64():
    keras.config.set_floatx("float64")
    yield
    keras.config.set_floatx("float32")


def _torch_adam(param, grads, lr, l2, beta_1=0.9, beta_2=0.999, eps=1e-8):
    m = np.zeros_like(param)
    v = np.zeros_like(param)
    for t, g in enumerate(grads, start=1):
        g = g + l2 * param
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        m_hat = m / (1 - beta_1**t)
        v_hat = v / (1 - beta_2**t)
        param = param - lr * m_hat / (np.sqrt(v_hat) + eps)
    return param


@pytest.mark.parametrize("scale", [1.0, 1e-6, 1e-9])
def test_matches_pytorch_adam_over_several_steps(scale):
    rng = np.random.default_rng(0)
    start = rng.normal(size=(3, 4))
    grads = [rng.normal(scale=scale, size=(3, 4)) for _ in range(5)]
    variable = keras.Variable(start)
    optimizer = TorchAdam(1e-3, l2=1e-4)
    for g in grads:
        optimizer.apply([g], [variable])
    np.testing.assert_allclose(variable.numpy(), _torch_adam(start, grads, 1e-3, 1e-4), rtol=1e-12)


def test_differs_from_keras_adam_on_tiny_gradients():
    """The reason TorchAdam exists: Keras' ε placement damps the first steps on ~1e-6 gradients."""
    rng = np.random.default_rng(1)
    start = np.zeros((5,))
    grads = [rng.normal(scale=1e-6, size=5) for _ in range(3)]
    ours, theirs = keras.Variable(start), keras.Variable(start)
    torch_adam, keras_adam = TorchAdam(1e-3), keras.optimizers.Adam(1e-3)
    for g in grads:
        torch_adam.apply([g], [ours])
        keras_adam.apply([g], [theirs])
    moved_ours = np.abs(ours.numpy()).sum()
    moved_theirs = np.abs(theirs.numpy()).sum()
    assert moved_ours > 2 * moved_theirs


def test_config_round_trip():
    optimizer = TorchAdam(2e-3, beta_2=0.99, l2=1e-4)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, TorchAdam)
    assert (restored.l2, restored.beta_2, restored.epsilon) == (1e-4, 0.99, 1e-8)
    assert float(restored.learning_rate) == pytest.approx(2e-3)
