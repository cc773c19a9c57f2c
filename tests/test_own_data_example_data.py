"""examples/own_data.py's images: Fashion-MNIST where its files are, synthetic images said on
stderr where they are not, and an error, not a silent fallback, where a file is broken."""

import gzip
import importlib.util
import os
import pathlib

import numpy as np
import pytest

from gdw_tf.data import datasets

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "own_data.py"
CLASSES = (0, 2, 5)


@pytest.fixture(scope="module")
def own_data():
    """The example script, imported as a module."""
    spec = importlib.util.spec_from_file_location("own_data_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_idx(path, array):
    """`array` (uint8) as a gzip-compressed idx file."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">i4").tobytes()
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def _write_fashion_mnist(directory, rng):
    """Four idx files of random 28x28 images, labels 0..9; returns the arrays."""
    os.makedirs(directory, exist_ok=True)
    arrays = {
        "x_train": rng.integers(0, 256, (400, 28, 28)),
        "y_train": np.arange(400) % 10,
        "x_test": rng.integers(0, 256, (200, 28, 28)),
        "y_test": np.arange(200) % 10,
    }
    for key, name in datasets.FASHION_MNIST_FILES.items():
        _write_idx(os.path.join(directory, name), arrays[key])
    return arrays


def _rows(images):
    return {image.tobytes() for image in images}


def _searched(monkeypatch, own_data, *directories):
    monkeypatch.setattr(
        own_data.datasets, "fashion_mnist_dirs", lambda: [str(d) for d in directories]
    )


def test_without_the_files_it_says_so_on_stderr_and_uses_synthetic_images(
    own_data, monkeypatch, capsys, tmp_path
):
    _searched(monkeypatch, own_data, tmp_path / "keras", tmp_path / "debian")

    noisy = own_data.make_image_data(CLASSES, num_train=90, num_trusted=30, num_test=20)

    assert capsys.readouterr().err.splitlines() == [
        f"Fashion-MNIST is in none of {tmp_path / 'keras'}, {tmp_path / 'debian'} "
        "(apt-get install dataset-fashion-mnist): using synthetic images."
    ]
    synthetic, _ = own_data.synthetic_images(len(CLASSES) * 1000, max(CLASSES) + 1, 0)
    assert _rows(noisy.x_train) | _rows(noisy.x_trusted) <= _rows(synthetic)
    assert noisy.num_classes == 3 and noisy.x_train.shape == (90, 28, 28, 1)


def test_with_the_files_it_reads_them_and_says_nothing(own_data, monkeypatch, capsys, tmp_path):
    arrays = _write_fashion_mnist(tmp_path / "debian", np.random.default_rng(0))
    _searched(monkeypatch, own_data, tmp_path / "keras", tmp_path / "debian")

    noisy = own_data.make_image_data(CLASSES, num_train=90, num_trusted=30, num_test=20)

    assert capsys.readouterr().err == ""
    train = arrays["x_train"][np.isin(arrays["y_train"], CLASSES)].astype(np.uint8)
    test = arrays["x_test"][np.isin(arrays["y_test"], CLASSES)].astype(np.uint8)
    assert _rows(noisy.x_train[..., 0]) | _rows(noisy.x_trusted[..., 0]) <= _rows(train)
    assert _rows(noisy.x_test[..., 0]) <= _rows(test)
    # The trusted labels are the files' labels, renumbered 0, 1, 2.
    label_of = {
        image.tobytes(): label
        for image, label in zip(train, arrays["y_train"][np.isin(arrays["y_train"], CLASSES)])
    }
    np.testing.assert_array_equal(
        [CLASSES.index(label_of[image.tobytes()]) for image in noisy.x_trusted[..., 0]],
        noisy.y_trusted,
    )


def test_a_broken_file_is_an_error_not_a_fallback(own_data, monkeypatch, capsys, tmp_path):
    _write_fashion_mnist(tmp_path / "debian", np.random.default_rng(0))
    labels = tmp_path / "debian" / datasets.FASHION_MNIST_FILES["y_test"]
    labels.write_bytes(labels.read_bytes()[:20])  # truncated
    _searched(monkeypatch, own_data, tmp_path / "debian")

    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        own_data.make_image_data(CLASSES, num_train=90, num_trusted=30, num_test=20)
    assert capsys.readouterr().err == ""
