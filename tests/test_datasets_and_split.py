"""Tests of the data protocol: noise models, long tail, split, loaders and input pipeline."""

import gzip
import os
import struct

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import prepare_tfds_images
from conftest import random_sized_images

from gdw_tf.data import datasets
from gdw_tf.data import input_pipeline
from gdw_tf.data import noise as noise_lib
from gdw_tf.data import split as split_lib

C = 10


def balanced_labels(per_class, num_classes=C, seed=0):
    """`per_class` labels of each class, shuffled."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(num_classes), per_class))


# --------------------------------------------------------------------------------------------
# Noise models


def test_uniform_and_symmetric_matrices_match_their_definitions():
    r = 0.4
    uniform = noise_lib.noise_transition_matrix("uniform", r, C, np.random.default_rng(0))
    symmetric = noise_lib.noise_transition_matrix("symmetric", r, C, np.random.default_rng(0))
    for k in range(C):
        for j in range(C):
            assert uniform[k, j] == pytest.approx(r / C + (1 - r) * (k == j))
            assert symmetric[k, j] == pytest.approx(1 - r if k == j else r / (C - 1))


def test_pair_matrix_moves_each_class_to_the_next():
    matrix = noise_lib.noise_transition_matrix("pair", 0.3, C, np.random.default_rng(0))
    expected = 0.7 * np.eye(C)
    for k in range(C):
        expected[k, (k + 1) % C] = 0.3
    np.testing.assert_allclose(matrix, expected)


def test_flip_has_one_other_target_per_class_drawn_from_the_seed():
    def targets(seed):
        matrix = noise_lib.noise_transition_matrix("flip", 0.4, C, np.random.default_rng(seed))
        np.testing.assert_allclose(np.diag(matrix), 0.6)
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0)
        off_diagonal = matrix - np.diag(np.diag(matrix))
        assert ((off_diagonal > 0).sum(axis=1) == 1).all()
        return off_diagonal.argmax(axis=1)

    assert (targets(0) != np.arange(C)).all()
    np.testing.assert_array_equal(targets(0), targets(0))
    assert len({tuple(targets(seed)) for seed in range(5)}) == 5


def test_none_is_the_identity():
    np.testing.assert_array_equal(
        noise_lib.noise_transition_matrix("none", 0.4, C, np.random.default_rng(0)), np.eye(C)
    )


@pytest.mark.parametrize(
    "noise, expected_rate",
    [
        ("none", 0.0),
        ("uniform", 0.4 * (C - 1) / C),
        ("symmetric", 0.4),
        ("flip", 0.4),
        ("pair", 0.4),
    ],
)
def test_corruption_statistics_on_60k_labels(noise, expected_rate):
    labels = balanced_labels(6000)
    noisy, matrix = noise_lib.corrupt_labels(labels, noise, 0.4, C, seed=3)
    # 6000 labels per row: an entry's standard error is at most 0.0065.
    assert noise_lib.realised_noise_rate(labels, noisy) == pytest.approx(expected_rate, abs=0.01)
    np.testing.assert_allclose(
        noise_lib.empirical_transition_matrix(labels, noisy, C), matrix, atol=0.03
    )
    again, _ = noise_lib.corrupt_labels(labels, noise, 0.4, C, seed=3)
    np.testing.assert_array_equal(noisy, again)


def test_empirical_transition_matrix_counts_pairs():
    true = np.array([0, 0, 0, 1, 1, 2])
    noisy = np.array([0, 1, 1, 1, 1, 0])
    expected = [[1 / 3, 2 / 3, 0, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_allclose(noise_lib.empirical_transition_matrix(true, noisy, 4), expected)
    assert noise_lib.realised_noise_rate(true, noisy) == pytest.approx(3 / 6)


@pytest.mark.parametrize("noise, ratio", [("gaussian", 0.2), ("uniform", 1.5), ("flip", -0.1)])
def test_bad_noise_arguments_raise(noise, ratio):
    with pytest.raises(ValueError):
        noise_lib.corrupt_labels(balanced_labels(2), noise, ratio, C, seed=0)


# --------------------------------------------------------------------------------------------
# Long tail and split


def test_long_tail_counts_are_cifar10_lt():
    # CIFAR-10-LT with imbalance 100, as published (Cao et al. 2019, LDAM).
    expected = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    np.testing.assert_array_equal(noise_lib.long_tail_counts(5000, 100, C), expected)
    np.testing.assert_array_equal(noise_lib.long_tail_counts(5000, 1, C), [5000] * C)


def test_split_long_tail_subsamples_by_true_class():
    labels = balanced_labels(5100)
    split = split_lib.make_split(
        labels, C, num_meta=1000, noise="uniform", ratio=0.4, imbalance=100, seed=0
    )
    expected = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    np.testing.assert_array_equal(np.bincount(split.train_true_labels, minlength=C), expected)
    assert (np.bincount(split.train_noisy_labels, minlength=C) != expected).any()
    np.testing.assert_array_equal(np.bincount(split.meta_labels, minlength=C), [100] * C)


def test_split_is_disjoint_balanced_and_consistent():
    labels = balanced_labels(300)
    split = split_lib.make_split(
        labels, C, num_meta=100, noise="symmetric", ratio=0.5, imbalance=1, seed=7
    )
    assert np.intersect1d(split.meta_indices, split.train_indices).size == 0
    np.testing.assert_array_equal(
        np.sort(np.concatenate([split.meta_indices, split.train_indices])), np.arange(len(labels))
    )
    np.testing.assert_array_equal(split.meta_labels, labels[split.meta_indices])
    np.testing.assert_array_equal(np.bincount(split.meta_labels, minlength=C), [10] * C)
    np.testing.assert_array_equal(split.train_true_labels, labels[split.train_indices])
    np.testing.assert_array_equal(
        split.train_corrupted, split.train_true_labels != split.train_noisy_labels
    )
    assert split.realised_noise_rate == pytest.approx(split.train_corrupted.mean())
    assert split.realised_noise_rate == pytest.approx(0.5, abs=0.05)
    np.testing.assert_allclose(
        split.empirical_transition_matrix,
        noise_lib.empirical_transition_matrix(split.train_true_labels, split.train_noisy_labels, C),
    )


def test_split_is_determined_by_the_seed():
    labels = balanced_labels(100)
    first, same, other = (
        split_lib.make_split(
            labels, C, num_meta=50, noise="flip", ratio=0.4, imbalance=10, seed=seed
        )
        for seed in (1, 1, 2)
    )
    for name in ("meta_indices", "train_indices", "train_noisy_labels", "transition_matrix"):
        np.testing.assert_array_equal(getattr(first, name), getattr(same, name))
    assert not np.array_equal(first.meta_indices, other.meta_indices)
    assert not np.array_equal(first.transition_matrix, other.transition_matrix)


def test_split_round_trips_through_npz(tmp_path):
    split = split_lib.make_split(
        balanced_labels(40), C, num_meta=20, noise="pair", ratio=0.3, imbalance=5, seed=4
    )
    path = os.path.join(tmp_path, "split.npz")
    split.save(path)
    loaded = split_lib.Split.load(path)
    for field, value in vars(split).items():
        np.testing.assert_array_equal(getattr(loaded, field), value)
        assert type(getattr(loaded, field)) is type(value)
    np.savez(os.path.join(tmp_path, "other.npz"), meta_indices=split.meta_indices)
    with pytest.raises(ValueError, match="lacks"):
        split_lib.Split.load(os.path.join(tmp_path, "other.npz"))


def test_split_rejects_too_small_classes_and_bad_meta_sizes():
    labels = balanced_labels(20)
    labels = np.concatenate([labels[labels != 4], [4, 4, 4]])
    with pytest.raises(ValueError, match=r"Class 4 has 3 examples, fewer than the 5"):
        split_lib.make_split(labels, C, num_meta=50, noise="none", ratio=0.0, imbalance=1, seed=0)
    with pytest.raises(ValueError, match="multiple"):
        split_lib.make_split(
            balanced_labels(20), C, num_meta=55, noise="none", ratio=0.0, imbalance=1, seed=0
        )
    with pytest.raises(ValueError, match="multiple"):
        split_lib.make_split(
            balanced_labels(20), C, num_meta=0, noise="none", ratio=0.0, imbalance=1, seed=0
        )
    with pytest.raises(ValueError, match=">= 1"):
        split_lib.make_split(
            balanced_labels(20), C, num_meta=10, noise="none", ratio=0.0, imbalance=0.5, seed=0
        )
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        split_lib.make_split(
            balanced_labels(20) + 1, C, num_meta=10, noise="none", ratio=0.0, imbalance=1, seed=0
        )


def _apply_on_dicts(split, relabel_at, new_labels, meta_at, meta_new, move):
    """The changes of `test_split_changes_recompute_the_training_statistics` on plain dicts
    (example index → label): `(given, true, meta)` afterwards."""
    given = dict(zip(split.train_indices.tolist(), split.train_noisy_labels.tolist()))
    true = dict(zip(split.train_indices.tolist(), split.train_true_labels.tolist()))
    meta = dict(zip(split.meta_indices.tolist(), split.meta_labels.tolist()))
    for position, label in zip(relabel_at, new_labels):
        given[int(split.train_indices[position])] = int(label)
    for position, label in zip(meta_at, meta_new):
        meta[int(split.meta_indices[position])] = int(label)
    for position in move:
        index = int(split.train_indices[position])
        meta[index] = given.pop(index)
    return given, true, meta


def test_split_changes_recompute_the_training_statistics():
    labels = np.arange(400) % 5
    split = split_lib.make_split(
        labels, 5, num_meta=25, noise="uniform", ratio=0.5, imbalance=2.0, seed=4
    )
    before = split.train_noisy_labels.copy()
    rng = np.random.default_rng(0)
    n = len(split.train_indices)
    relabel_at = rng.choice(n, 40, replace=False)
    new_labels = rng.integers(0, 5, 40)
    meta_at, meta_new = [1, 8], [4, 0]
    # Some moved examples were relabelled first: they join the meta set with the new label.
    move = np.r_[relabel_at[:6], rng.choice(np.setdiff1d(np.arange(n), relabel_at), 9, False)]
    changed = (
        split.relabel_train(relabel_at, new_labels)
        .relabel_meta(meta_at, meta_new)
        .move_to_meta(move)
    )

    given, true, meta = _apply_on_dicts(split, relabel_at, new_labels, meta_at, meta_new, move)
    assert changed.meta_indices.tolist() == sorted(meta)
    assert changed.meta_labels.tolist() == [meta[i] for i in sorted(meta)]
    assert changed.train_indices.tolist() == sorted(given)
    assert changed.train_noisy_labels.tolist() == [given[i] for i in sorted(given)]
    assert changed.train_true_labels.tolist() == [true[i] for i in sorted(given)]
    wrong = [given[i] != true[i] for i in sorted(given)]
    assert changed.train_corrupted.tolist() == wrong
    assert changed.realised_noise_rate == pytest.approx(sum(wrong) / len(wrong))
    counts = np.zeros((5, 5))
    for index, label in given.items():
        counts[true[index], label] += 1
    np.testing.assert_allclose(
        changed.empirical_transition_matrix, counts / counts.sum(axis=1, keepdims=True)
    )
    # The noise model, the seed and the split it came from stay as they were.
    np.testing.assert_array_equal(changed.transition_matrix, split.transition_matrix)
    assert (changed.noise, changed.seed, changed.meta_source) == ("uniform", 4, "clean")
    np.testing.assert_array_equal(split.train_noisy_labels, before)
    with pytest.raises(AttributeError):
        split.noise = "none"  # A Split changes only into a new one.
    emptied = changed.without_meta()
    assert len(emptied.meta_indices) == len(emptied.meta_labels) == 0
    np.testing.assert_array_equal(emptied.train_noisy_labels, changed.train_noisy_labels)


def test_split_changes_of_data_whose_truth_is_unknown_record_no_corruption():
    from gdw_tf.data import own_data

    labels = np.arange(30) % 3
    trusted = np.isin(np.arange(30), [0, 1, 2, 10])
    split = own_data.own_split(labels, trusted, 3, seed=0)
    changed = split.relabel_train([0, 5], [2, 2]).move_to_meta([0, 7])
    assert not changed.truth_known and not changed.train_corrupted.any()
    assert np.isnan(changed.realised_noise_rate)
    assert np.isnan(changed.empirical_transition_matrix).all()
    np.testing.assert_array_equal(changed.train_true_labels, -1)
    # Training positions 0 and 7 are examples 3 and 11; 3 took label 2 before it moved.
    np.testing.assert_array_equal(changed.meta_indices, [0, 1, 2, 3, 10, 11])
    np.testing.assert_array_equal(changed.meta_labels, [0, 1, 2, 2, 1, 2])
    assert len(changed.train_indices) == 24 and changed.meta_source == "trusted"


def test_balanced_meta_subset():
    y = balanced_labels(30)
    x = np.arange(len(y))  # Each example names its own position.
    x_meta, y_meta = split_lib.balanced_meta_subset(x, y, C, per_class=5, seed=0)
    np.testing.assert_array_equal(np.bincount(y_meta, minlength=C), [5] * C)
    np.testing.assert_array_equal(y[x_meta], y_meta)
    assert len(set(x_meta)) == 5 * C
    with pytest.raises(ValueError, match=r"Class \d has 30 examples, fewer than the 31"):
        split_lib.balanced_meta_subset(x, y, C, per_class=31, seed=0)


# --------------------------------------------------------------------------------------------
# Loading


def write_idx(path, array):
    """Writes a uint8 array as a gzip-compressed idx file."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion_mnist(directory, n_train=12, n_test=6):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28)),
        "y_train": rng.integers(0, 10, n_train),
        "x_test": rng.integers(0, 256, (n_test, 28, 28)),
        "y_test": rng.integers(0, 10, n_test),
    }
    for key, name in datasets.FASHION_MNIST_FILES.items():
        write_idx(os.path.join(directory, name), arrays[key])
    return arrays


def test_read_idx_round_trip_and_corrupt_files(tmp_path):
    array = np.arange(2 * 3 * 5).reshape(2, 3, 5).astype(np.uint8)
    path = os.path.join(tmp_path, "a-idx3-ubyte.gz")
    write_idx(path, array)
    np.testing.assert_array_equal(datasets.read_idx(path), array)

    with gzip.open(path, "rb") as file:
        content = file.read()
    truncated = os.path.join(tmp_path, "truncated.gz")
    with gzip.open(truncated, "wb") as file:
        file.write(content[:-4])
    with pytest.raises(ValueError, match="truncated.gz.*truncated"):
        datasets.read_idx(truncated)

    bad_magic = os.path.join(tmp_path, "magic.gz")
    with gzip.open(bad_magic, "wb") as file:
        file.write(b"\x01\x02" + content[2:])
    with pytest.raises(ValueError, match="magic.gz.*magic"):
        datasets.read_idx(bad_magic)

    not_gzip = os.path.join(tmp_path, "garbage.gz")
    with open(not_gzip, "wb") as file:
        file.write(b"this is not gzip data")
    with pytest.raises(ValueError, match="garbage.gz"):
        datasets.read_idx(not_gzip)

    cut_stream = os.path.join(tmp_path, "cut.gz")
    with open(path, "rb") as source, open(cut_stream, "wb") as file:
        file.write(source.read()[:-10])
    with pytest.raises(ValueError, match="cut.gz"):
        datasets.read_idx(cut_stream)


def test_fashion_mnist_from_data_dir(tmp_path):
    arrays = write_fake_fashion_mnist(tmp_path)
    x_train, y_train, x_test, y_test, num_classes = datasets.load_dataset(
        "fashion_mnist", str(tmp_path)
    )[:5]
    assert num_classes == 10
    assert x_train.shape == (12, 28, 28, 1) and x_train.dtype == np.uint8
    assert x_test.shape == (6, 28, 28, 1) and y_test.dtype == np.int64
    np.testing.assert_array_equal(x_train[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(y_train, arrays["y_train"])


def test_fashion_mnist_missing_everywhere_says_where_to_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "debian"))

    def offline(name, data_dir):
        raise ValueError("offline")

    monkeypatch.setattr(datasets, "_load_tfds", offline)
    with pytest.raises(ValueError, match="dataset-fashion-mnist") as error:
        datasets.load_dataset("fashion_mnist")
    for directory in (os.path.join("datasets", "fashion-mnist"), "debian"):
        assert directory in str(error.value)


def test_an_explicit_data_dir_without_fashion_mnist_is_refused_naming_the_missing_files(
    tmp_path, monkeypatch
):
    # The files exist elsewhere (Keras' cache); an explicit --data_dir must not fall back there.
    (tmp_path / "datasets" / "fashion-mnist").mkdir(parents=True)
    write_fake_fashion_mnist(tmp_path / "datasets" / "fashion-mnist")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert len(datasets.load_dataset("fashion_mnist").y_train) == 12  # found without --data_dir
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / datasets.FASHION_MNIST_FILES["x_train"]).write_bytes(b"")  # one of four present
    with pytest.raises(ValueError) as error:
        datasets.load_dataset("fashion_mnist", str(mine))
    message = str(error.value)
    assert message.startswith(f"--data_dir={mine} holds no Fashion-MNIST: ")
    missing = [name for key, name in datasets.FASHION_MNIST_FILES.items() if key != "x_train"]
    assert f"{', '.join(missing)} missing there" in message
    assert "\n" not in message


@pytest.mark.needs_debian("dataset-fashion-mnist")
def test_real_fashion_mnist_from_the_debian_package():
    x_train, y_train, x_test, y_test, num_classes = datasets.load_fashion_mnist_idx(
        datasets.DEBIAN_FASHION_MNIST_DIR
    )[:5]
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(y_train), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test), [1000] * 10)


def test_tfds_loading_with_mock_data():
    with tfds.testing.mock_data(num_examples=12):
        x_train, y_train, x_test, y_test, num_classes = datasets.load_dataset("cifar10")[:5]
        mnist = datasets.load_dataset("mnist")
    assert num_classes == 10
    assert x_train.shape == (12, 32, 32, 3) and x_train.dtype == np.uint8
    assert y_train.dtype == np.int64 and ((0 <= y_train) & (y_train < 10)).all()
    assert x_test.shape == (12, 32, 32, 3)
    assert mnist.x_train.shape == (12, 28, 28, 1)


def test_unknown_or_unsuitable_datasets_raise():
    with pytest.raises(ValueError, match="Unknown dataset"):
        datasets.load_dataset("no_such_dataset_anywhere")
    with pytest.raises(ValueError, match="image-classification"):
        datasets.load_dataset("imdb_reviews")


# --------------------------------------------------------------------------------------------
# Input pipeline


def test_normalization_stats():
    mean, std = input_pipeline.normalization_stats("cifar100", None)
    np.testing.assert_allclose(mean * 255, [125.3, 123.0, 113.9])
    np.testing.assert_allclose(std * 255, [63.0, 62.1, 66.7])
    x = np.random.default_rng(0).integers(0, 256, (20, 5, 5, 2), dtype=np.uint8)
    mean, std = input_pipeline.normalization_stats("svhn_cropped", x)
    np.testing.assert_allclose(mean, (x / 255).mean(axis=(0, 1, 2)))
    np.testing.assert_allclose(std, (x / 255).std(axis=(0, 1, 2)))


def test_random_crop_and_flip_is_a_window_of_the_reflected_image():
    image = np.arange(6 * 6 * 2).reshape(6, 6, 2).astype(np.uint8)
    padded = np.pad(image, [(2, 2), (2, 2), (0, 0)], mode="reflect")
    windows = [padded[i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
    windows += [w[:, ::-1] for w in windows]
    seen = set()
    for seed in range(40):
        out = input_pipeline.random_crop_and_flip(image, np.array([seed, 0]), padding=2).numpy()
        assert out.shape == image.shape and out.dtype == np.uint8
        matches = [i for i, w in enumerate(windows) if np.array_equal(out, w)]
        assert matches
        seen.add(matches[0])
    assert len(seen) > 10  # crops and flips actually vary


def test_train_dataset_shapes_normalisation_and_indices():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, 50)
    mean, std = input_pipeline.normalization_stats("other", x)
    plain = input_pipeline.train_dataset(
        x, y, 16, seed=0, augment=False, mean=mean, std=std, with_index=True
    )
    batches = list(plain)
    assert [len(b[0]) for b in batches] == [16, 16, 16, 2]
    images = np.concatenate([b[0] for b in batches])
    positions = np.concatenate([b[2] for b in batches])
    np.testing.assert_array_equal(np.sort(positions), np.arange(50))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y[positions])
    np.testing.assert_allclose(images, (x[positions] / 255 - mean) / std, atol=1e-5)
    np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1, atol=1e-4)

    augmented = input_pipeline.train_dataset(
        x, y, 16, seed=0, augment=True, mean=mean, std=std, drop_remainder=True
    )
    batches = list(augmented)
    assert len(batches) == 3
    assert batches[0][0].shape == (16, 32, 32, 3) and batches[0][0].dtype == "float32"


def test_train_dataset_is_seeded_and_reshuffles_each_epoch():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    y = np.arange(20)

    def epochs(seed):
        dataset = input_pipeline.train_dataset(
            x, y, 20, seed=seed, augment=True, mean=[0.5], std=[0.25]
        )
        return [next(iter(dataset)) for _ in range(2)]

    (first_x, first_y), (second_x, second_y) = epochs(1)
    (again_x, again_y), _ = epochs(1)
    (other_x, other_y), _ = epochs(2)
    np.testing.assert_array_equal(first_x, again_x)
    np.testing.assert_array_equal(first_y, again_y)
    assert not np.array_equal(first_y, second_y)
    assert not np.array_equal(first_y, other_y)


def test_each_pass_is_a_new_permutation_of_every_position_and_the_seed_fixes_them():
    def passes(seed, count, n=10):
        dataset = input_pipeline.shuffled_positions(n, seed)
        return np.array([list(dataset.as_numpy_iterator()) for _ in range(count)])

    orders = passes(3, 300)
    np.testing.assert_array_equal(np.sort(orders, axis=1), np.tile(np.arange(10), (300, 1)))
    assert len({tuple(order) for order in orders}) > 290  # 10! orders: repeats are rare.
    # Every position leads about as often (300 passes: 30 each, standard deviation 5.2).
    assert np.bincount(orders[:, 0], minlength=10).min() >= 14
    assert np.bincount(orders[:, 0], minlength=10).max() <= 46
    np.testing.assert_array_equal(passes(3, 4), orders[:4])  # The same sequence again.
    assert not np.array_equal(passes(4, 4), orders[:4])
    np.testing.assert_array_equal(passes(5, 2, n=1), [[0], [0]])


def test_augmentation_is_drawn_anew_each_epoch():
    x = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 1), dtype=np.uint8)
    dataset = input_pipeline.train_dataset(x, [0], 1, seed=0, augment=True, mean=[0.5], std=[0.25])
    views = {next(iter(dataset))[0].numpy().tobytes() for _ in range(6)}
    assert len(views) > 1


def test_eval_dataset_keeps_order():
    x = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 1), dtype=np.uint8)
    batches = list(input_pipeline.eval_dataset(x, np.arange(7), 3, mean=[0.5], std=[0.5]))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), np.arange(7))
    np.testing.assert_allclose(
        np.concatenate([b[0] for b in batches]), (x / 255 - 0.5) / 0.5, atol=1e-6
    )


IMAGES = np.random.default_rng(0).integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
LABELS = np.arange(20) % 2


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: input_pipeline.normalize(IMAGES, [0.5, 0.5, 0.5], [0.2, 0.2, 0.2]),
            r"one mean per channel \(1\); got mean=\[0.5, 0.5, 0.5\]",
        ),  # was broadcast to 3 channels
        (
            lambda: input_pipeline.normalize(IMAGES, [0.5], [0.0]),
            r"finite std > 0; got std=\[0.0\]",
        ),
        (
            lambda: input_pipeline.normalize(IMAGES, [float("nan")], [0.2]),
            r"finite mean; got mean=\[nan\]",
        ),
        (
            lambda: input_pipeline.train_dataset(
                IMAGES, LABELS, 4, seed=0, augment=False, mean=[0.5], std=[0.0]
            ),
            r"finite std > 0",
        ),  # before tf.data traces anything
        (
            lambda: input_pipeline.eval_dataset(IMAGES, LABELS, 4, [0.5, 0.5], [0.2, 0.2]),
            "one mean per channel",
        ),
        (
            lambda: input_pipeline.train_dataset(
                IMAGES, LABELS, 0, seed=0, augment=False, mean=[0.5], std=[0.2]
            ),
            "batch_size must be a positive integer; got 0",
        ),
        (
            lambda: split_lib.make_split(
                np.arange(1000) % 10,
                10,
                num_meta=100,
                noise="uniform",
                ratio=0.2,
                imbalance=1e12,
                seed=0,
            ),
            r"leaves the last class without training examples \(the largest class keeps 90\)",
        ),
        (lambda: noise_lib.long_tail_counts(90, float("inf"), 10), "below 90"),
    ],
)
def test_data_helpers_refuse_what_would_train_on_wrong_data(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --------------------------------------------------------------------------------------------
# TFDS datasets of varying image sizes, without a test split, not prepared offline


def _tfds_images_in_file_order(builder, split):
    """A prepared split's `(image, label)` pairs as TFDS itself decodes them, in file order."""
    read_config = tfds.ReadConfig(interleave_cycle_length=1)
    return [
        (example["image"], int(example["label"]))
        for example in tfds.as_numpy(builder.as_dataset(split=split, read_config=read_config))
    ]


def test_a_tfds_dataset_of_varying_image_sizes_is_streamed_from_its_files(tmp_path):
    from gdw_tf.data import own_data
    from gdw_tf.data import tfds_records

    rng = np.random.default_rng(8)
    builder = prepare_tfds_images(
        tmp_path,
        "varsize_images",
        {"train": random_sized_images(rng, 23), "test": random_sized_images(rng, 6)},
        num_classes=3,
    )
    with pytest.raises(ValueError, match="varying size .*; pass --image_size=N"):
        datasets.load_dataset("varsize_images", str(tmp_path))
    dataset = datasets.load_dataset("varsize_images", str(tmp_path), image_size=16)
    assert dataset.num_classes == 3
    for part in ("train", "test"):
        x, y = getattr(dataset, f"x_{part}"), getattr(dataset, f"y_{part}")
        examples = _tfds_images_in_file_order(builder, part)
        assert len({image.shape for image, _ in examples}) > 1  # varying sizes
        # Nothing decoded yet: a key per record (file, offset, length).
        assert isinstance(x, tfds_records.TfdsRecords) and x.keys.shape == (len(examples), 3)
        expected = own_data._convert_arrays([image for image, _ in examples], 3, 16)
        np.testing.assert_array_equal(np.asarray(x), expected)  # TFDS' decode, then resized
        np.testing.assert_array_equal(x[4], expected[4])  # One record alone.
        np.testing.assert_array_equal(np.asarray(x[np.array([5, 1])]), expected[[5, 1]])
        np.testing.assert_array_equal(y, [label for _, label in examples])

    # Streamed batches (shuffled, cropped, two epochs) equal those of the decoded array.
    array = np.asarray(dataset.x_train)
    mean, std = input_pipeline.normalization_stats("varsize_images", array)
    args = dict(batch_size=5, seed=2, augment=True, mean=mean, std=std, with_index=True)
    streamed = input_pipeline.train_dataset(dataset.x_train, dataset.y_train, **args)
    in_memory = input_pipeline.train_dataset(array, dataset.y_train, **args)
    for _ in range(2):
        batches = zip(streamed.as_numpy_iterator(), in_memory.as_numpy_iterator(), strict=True)
        for got, expected in batches:
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b)


def test_a_tfds_dataset_without_a_test_split_holds_out_every_tenth_example(tmp_path):
    from gdw_tf.data import own_data

    builder = prepare_tfds_images(
        tmp_path,
        "train_only_images",
        {"train": random_sized_images(np.random.default_rng(9), 25)},
        num_classes=3,
    )
    examples = _tfds_images_in_file_order(builder, "train")
    dataset = datasets.load_dataset("train_only_images", str(tmp_path), image_size=8)
    labels = np.array([label for _, label in examples])
    test = np.arange(25) % datasets.HELD_OUT_EVERY == datasets.HELD_OUT_EVERY - 1  # 9 and 19
    np.testing.assert_array_equal(dataset.y_test, labels[test])
    np.testing.assert_array_equal(dataset.y_train, labels[~test])
    assert len(dataset.x_train) == 23 and len(dataset.x_test) == 2
    images = own_data._convert_arrays([image for image, _ in examples], 3, 8)
    np.testing.assert_array_equal(np.asarray(dataset.x_test), images[test])
    np.testing.assert_array_equal(np.asarray(dataset.x_train), images[~test])


def test_an_unprepared_tfds_dataset_fails_in_seconds_when_nothing_can_be_downloaded(
    monkeypatch, tmp_path
):
    import socket
    import time

    def no_network(self, address):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setattr(socket.socket, "connect", no_network)  # No download can start.
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        datasets.load_dataset("mnist", str(tmp_path))
    assert time.perf_counter() - start < 20
    message = str(error.value)
    assert message.startswith(f"Could not load 'mnist' with TFDS (data_dir={tmp_path}): ")
    assert "run `tfds build mnist` elsewhere" in message and "\n" not in message
