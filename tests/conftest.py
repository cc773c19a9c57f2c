"""Shared test set-up: quiet, deterministic TensorFlow (or JAX: KERAS_BACKEND=jax) on the CPU;
and the helpers several test files use (training runs through the CLI, run-directory readers)."""

import csv
import gc
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402
from absl import flags  # noqa: E402
from absl.testing import flagsaver  # noqa: E402

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


# The Debian packages some tests need, by the file each installs. `.ci/run` installs them.
DEBIAN_PACKAGES = {
    "dataset-fashion-mnist": "/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
    "chromium": "/usr/bin/chromium",
}


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "needs_debian(package): the test needs a Debian package of DEBIAN_PACKAGES; without "
        "it the test skips, or fails under CI (CI=true)",
    )


def require_debian_package(package):
    """Skips the calling test if Debian's `package` is not installed; under CI (`CI` set and
    not false), fails it instead, so that CI never passes without running it."""
    if os.path.exists(DEBIAN_PACKAGES[package]):
        return
    message = f"needs Debian's {package} ({DEBIAN_PACKAGES[package]}): apt-get install {package}"
    if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
        pytest.fail(f"CI: {message}", pytrace=False)
    pytest.skip(message)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """`@pytest.mark.needs_debian(package)`: `require_debian_package(package)` before the test."""
    for marker in item.iter_markers("needs_debian"):
        require_debian_package(*marker.args)


def pytest_collection_finish(session):
    """Moves what the imports made (TensorFlow's and Keras' objects, hundreds of thousands) out
    of the garbage collector's sight: each test's `clear_session` collects, and scanning them
    all again took about half the fast tier's time."""
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def _seed_and_clean():
    """Each test starts from the same seeds and a fresh Keras session."""
    keras.utils.set_random_seed(0)
    yield
    keras.backend.clear_session()


# --------------------------------------------------------------------------------------------
# Helpers shared by the test files: `from conftest import ...`.

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOCK_EXAMPLES = 60  # tfds.testing.mock_data's examples per split
TINY_FASHION_MNIST = [
    "--dataset=fashion_mnist",
    "--max_train_examples=300",
    "--max_test_examples=100",
    "--num_meta=50",
    "--batch_size=50",
    "--meta_batch_size=50",
    "--model=small_cnn",
    "--epochs=1",
    "--verbose=0",
]


def train_main(*args):
    """Runs `python -m gdw_tf.train` in this process: `args` parsed into its flags (restored
    after), then its `main`."""
    from gdw_tf import train

    with flagsaver.flagsaver():
        flags.FLAGS(["prog", *args])
        train.main(["prog"])


def train_main_mock(*args):
    """`train_main` on TFDS' mock data."""
    with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
        train_main(*args)


def train_exit_message(capsys, *args, mock=False):
    """Runs `train_main`, expecting it to exit; returns (status, stderr)."""
    with pytest.raises(SystemExit) as exit_info:
        (train_main_mock if mock else train_main)(*args)
    return exit_info.value.code, capsys.readouterr().err


def make_config(**overrides):
    """A `Config` with the flags' defaults but `overrides` (and an unused output_dir)."""
    from gdw_tf.runs import config as config_lib

    return config_lib.Config(output_dir="unused", **overrides)


def write_png(path, image):
    """Writes a uint8 image `[H, W, C]` as a PNG file, making its folder."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))


def prepare_tfds_images(data_dir, name, splits, *, num_classes, num_shards=None):
    """Prepares, offline, a TFDS image-classification dataset `name` in `data_dir` (TFRecord
    files, as `tfds build` writes them): `splits` maps a split's name to its `(image, label)`
    pairs, uint8 RGB images of any size; each split in `num_shards` files if given (TFDS
    chooses otherwise: one file for small splits). Returns its builder."""
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": tfds.features.ClassLabel(num_classes=num_classes),
        }
    )
    examples = {
        split: [
            (i, {"image": image, "label": int(label)}) for i, (image, label) in enumerate(pairs)
        ]
        for split, pairs in splits.items()
    }
    return tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version="1.0.0",
        features=features,
        split_datasets=examples,
        data_dir=str(data_dir),
        download_config=tfds.download.DownloadConfig(try_download_gcs=False, num_shards=num_shards),
    )


def random_sized_images(rng, count, *, num_classes=3):
    """`count` `(image, label)` pairs: RGB images of random sizes (5 to 29 pixels a side) whose
    mean depends on the label."""
    pairs = []
    for _ in range(count):
        label = int(rng.integers(num_classes))
        height, width = rng.integers(5, 30, 2)
        image = rng.normal(60 + 140 * label / max(num_classes - 1, 1), 40, (height, width, 3))
        pairs.append((np.clip(image, 0, 255).astype(np.uint8), label))
    return pairs


class Killed(Exception):
    """Stands for the process being killed."""


def train_killed_in_epoch_3(monkeypatch, train, *args):
    """Runs `train(*args)` (`train_main` or `train_main_mock`) until the third batch of its
    third epoch, where it stops as a killed process would: with `Killed`, raised from the
    callback that replays the data order, after that batch's step."""
    from gdw_tf.runs import callbacks

    def kill_in_epoch_3(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == 2 * self.steps_per_epoch + 2:
            raise Killed()

    with monkeypatch.context() as patch:
        patch.setattr(
            callbacks._ReplayDataOrder, "on_train_batch_end", kill_in_epoch_3, raising=False
        )
        with pytest.raises(Killed):
            train(*args)


def load_script(name):
    """`scripts/<name>.py` as a module, imported once per process (the scripts define absl
    flags, which a second import would define again; one script imports another by name)."""
    import importlib

    scripts = os.path.join(REPO, "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    return importlib.import_module(name)


def read_json(path):
    with open(path) as file:
        return json.load(file)


def history_rows(run_dir):
    with open(os.path.join(run_dir, "history.csv"), newline="") as file:
        return list(csv.DictReader(file))


def backbone_weights(run_dir):
    return keras.saving.load_model(os.path.join(run_dir, "model.keras")).get_weights()


def model_state(model):
    """A GDWModel's state as `{"<part>/<i>": array}`: backbone, weight net, both optimizers,
    the meta-batch cursor and the per-example weights."""
    state = {
        "backbone": model.backbone.variables,
        "weight_net": model.weight_net.variables,
        "optimizer": model.optimizer.variables,
        "weight_net_optimizer": model.weight_net_optimizer.variables,
        "meta": [model.meta_epoch, model.meta_cursor],
        "examples": [model.example_weights, model.example_label_weights],
    }
    return {f"{k}/{i}": np.asarray(v.numpy()) for k, vs in state.items() for i, v in enumerate(vs)}


@pytest.fixture
def no_data_loading(monkeypatch):
    """Fails the test if the run loads any data."""
    from gdw_tf.runs import run as run_lib

    def refuse(*args, **kwargs):
        raise AssertionError("data was loaded")

    monkeypatch.setattr(run_lib.datasets, "load_dataset", refuse)
