"""Shared test set-up: quiet, deterministic TensorFlow (or JAX: KERAS_BACKEND=jax) on the CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Two logical CPU devices, so tf.distribute strategies have two replicas on this CPU
# (tests/test_distribute.py); set before TensorFlow's runtime starts. Ops still default to CPU:0.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)

# Deterministic kernels and no TF32 on GPUs, so float comparisons mean something.
tf.config.experimental.enable_op_determinism()
tf.config.experimental.enable_tensor_float_32_execution(False)

if keras.backend.backend() == "jax":
    import jax
    from keras.src.backend.common import dtypes as keras_dtypes

    # The float64 tests need JAX's 64-bit types (off by default: float64 would silently be float32).
    jax.config.update("jax_enable_x64", True)
    # Keras' type promotion on JAX also maps float64 to float32 (JAX's default), so tanh, mean,
    # BatchNorm moments... would run in float32 even with floatx float64, and float64 finite
    # differences would measure rounding noise. Here float64 stays float64, as on TensorFlow.
    getattr(keras_dtypes, "BIT64_TO_BIT32_DTYPE", {})["float64"] = "float64"


@pytest.fixture(autouse=True)
def _seed_and_clean():
    """Each test starts from the same seeds and a fresh Keras session."""
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()
