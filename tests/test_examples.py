"""Tests of `examples/own_data.py`: it runs, GDW learns, and low weights find wrong labels."""

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "own_data.py"


@pytest.fixture(scope="module")
def own_data():
    """The example script, imported as a module."""
    spec = importlib.util.spec_from_file_location("own_data", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_tabular_example_from_the_command_line_flags_wrong_labels(own_data):
    results = own_data.main(["--part=tabular"])

    assert list(results) == ["tabular"]
    result = results["tabular"]
    assert 0.35 < result.noise_rate < 0.45
    assert result.precision > 0.9  # Against a base rate of about 0.4.
    assert len(result.flagged) == len(set(result.flagged)) == 400
    assert result.test_accuracy > 0.8


@pytest.mark.slow
def test_image_example_on_a_small_fashion_mnist_subset(own_data):
    noisy = own_data.make_image_data(num_train=1000, num_trusted=150, num_test=500)
    assert noisy.x_train.dtype == np.uint8 and noisy.x_train.shape == (1000, 28, 28, 1)
    assert set(np.unique(noisy.y_trusted)) == {0, 1, 2, 3}

    result = own_data.image_example(noisy, per_class=25)  # 6 epochs at most

    assert result.precision > 0.8  # Against a base rate of about 0.4.
    assert result.test_accuracy > 0.85


def test_split_trusted_gives_a_balanced_meta_set_and_the_rest_for_validation(own_data):
    noisy = own_data.make_tabular_data(num_train=100, num_trusted=300, num_test=10)

    (x_meta, y_meta), (x_val, y_val) = own_data.split_trusted(noisy, per_class=20, seed=0)

    np.testing.assert_array_equal(np.bincount(y_meta), [20] * 5)
    assert len(y_meta) + len(y_val) == 300
    trusted_rows = {row.tobytes() for row in noisy.x_trusted}
    meta_rows = {row.tobytes() for row in x_meta}
    val_rows = {row.tobytes() for row in x_val}
    assert meta_rows | val_rows == trusted_rows and not meta_rows & val_rows
