"""Shared test set-up: quiet, deterministic TensorFlow on the CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

# Deterministic kernels and no TF32 on GPUs, so float comparisons mean something.
tf.config.experimental.enable_op_determinism()
tf.config.experimental.enable_tensor_float_32_execution(False)


@pytest.fixture(autouse=True)
def _seed_and_clean():
    """Each test starts from the same seeds and a fresh Keras session."""
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()
