"""Data protocol: datasets as NumPy arrays, the meta/training split, label noise, long tail.

The protocol (`make_split`) follows Meta-Weight-Net and the GDW reference code: a small clean,
class-balanced meta set is taken out of the training set, the rest gets label noise from one
of the noise models below, and is then subsampled into a long tail by true class.

Noise models (`noise_transition_matrix`), `r` the ratio and `C` the number of classes:

- `none`: labels stay as they are (the ratio is ignored).
- `uniform`: `T = r/C 11' + (1 - r) I`; a label is replaced with probability `r` by a class
  drawn from all `C`, so it may stay correct: the expected fraction of wrong labels is
  `r (C - 1) / C`. This is Meta-Weight-Net's and the reference's definition, kept so that
  numbers compare with the paper's.
- `symmetric`: with probability `r` the label is replaced by one of the *other* classes, so
  the expected fraction of wrong labels is `r`.
- `flip`: class `k` moves with probability `r` to one other class drawn once per run;
  targets are drawn independently per class, so two classes may share one.
- `pair`: class `k` moves with probability `r` to class `(k + 1) mod C`.

Where we depart from the reference code, and why:

- The reference draws the meta set with seed 1 and the training set with `--seed`, so most
  "clean" meta images also sit, with noisy labels, in the training set. Here one seeded
  permutation gives both, and they are disjoint (asserted).
- The reference's flip noise reseeds NumPy with 1, so its flip targets are the same in every
  run. Here they come from the run's seed; `pair` is the fixed permutation of other papers.
- The reference's `flip2` is not offered (it fails an assert there).
- Its `uniform` leaves about 36% of labels wrong at "40%"; we keep that definition, add
  `symmetric`, and record the realised noise rate and transition matrix in every `Split`.

The input pipeline (`train_dataset`, `eval_dataset`) mirrors the reference's CIFAR transform:
reflect-pad 4, random crop, horizontal flip, per-channel mean/std normalisation, with the
reference's CIFAR statistics (`normalization_stats`).
"""

import dataclasses
import gzip
import os
import typing
import zlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

NOISE_MODELS = ("none", "uniform", "symmetric", "flip", "pair")

# The reference's per-channel statistics of CIFAR images scaled to [0, 1], for both CIFARs.
CIFAR_MEAN = np.array([125.3, 123.0, 113.9]) / 255.0
CIFAR_STD = np.array([63.0, 62.1, 66.7]) / 255.0

FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# idx type codes (http://yann.lecun.com/exdb/mnist/): big-endian element types.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


# --------------------------------------------------------------------------------------------
# Noise models


def noise_transition_matrix(noise, ratio, num_classes, rng):
    """The `C x C` matrix `T[true, noisy]` of a noise model.

    Args:
        noise: one of `NOISE_MODELS`.
        ratio: the noise ratio `r` in [0, 1].
        num_classes: `C`, at least 2.
        rng: a `np.random.Generator`; only `flip` draws from it (its targets).

    Returns:
        A float64 row-stochastic matrix.

    Raises:
        ValueError: for an unknown noise model, a ratio outside [0, 1] or fewer than 2 classes.
    """
    if noise not in NOISE_MODELS:
        raise ValueError(f"Unknown noise model {noise!r}; expected one of {NOISE_MODELS}.")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"The noise ratio must lie in [0, 1]; got {ratio}.")
    if num_classes < 2:
        raise ValueError(f"Need at least 2 classes; got {num_classes}.")
    classes = np.arange(num_classes)
    identity = np.eye(num_classes)
    if noise == "none":
        return identity
    if noise == "uniform":
        return ratio / num_classes * np.ones((num_classes, num_classes)) + (1 - ratio) * identity
    if noise == "symmetric":
        off_diagonal = ratio / (num_classes - 1) * (np.ones((num_classes, num_classes)) - identity)
        return (1 - ratio) * identity + off_diagonal
    if noise == "flip":
        targets = (classes + rng.integers(1, num_classes, size=num_classes)) % num_classes
    else:  # pair
        targets = (classes + 1) % num_classes
    matrix = (1 - ratio) * identity
    matrix[classes, targets] += ratio
    return matrix


def corrupt_labels(labels, noise, ratio, num_classes, seed):
    """Draws each label's noisy value from its row of the noise model's transition matrix.

    Args:
        labels: integer array of true labels in [0, num_classes).
        noise: one of `NOISE_MODELS`.
        ratio: the noise ratio in [0, 1].
        num_classes: number of classes.
        seed: an int or a `np.random.Generator` (then it is advanced).

    Returns:
        `(noisy_labels, transition_matrix)`: int64 labels shaped like `labels`, and the matrix.
    """
    rng = np.random.default_rng(seed)
    labels = _check_labels(labels, num_classes)
    matrix = noise_transition_matrix(noise, ratio, num_classes, rng)
    cumulative = np.cumsum(matrix, axis=1)
    cumulative[:, -1] = 1.0  # Rounding must not leave a gap below 1.
    uniforms = rng.random(labels.shape)
    noisy = np.empty_like(labels)
    for k in range(num_classes):
        in_class = labels == k
        noisy[in_class] = np.searchsorted(cumulative[k], uniforms[in_class], side="right")
    return noisy, matrix


def empirical_transition_matrix(true_labels, noisy_labels, num_classes):
    """Row-normalised counts of (true, noisy) label pairs; rows of absent classes are zero."""
    pairs = np.asarray(true_labels) * num_classes + np.asarray(noisy_labels)
    counts = np.bincount(pairs.ravel(), minlength=num_classes**2).reshape(num_classes, -1)
    totals = counts.sum(axis=1, keepdims=True)
    return counts / np.maximum(totals, 1)


def realised_noise_rate(true_labels, noisy_labels):
    """Fraction of labels whose noisy value differs from the true one."""
    return float(np.mean(np.asarray(true_labels) != np.asarray(noisy_labels)))


# --------------------------------------------------------------------------------------------
# Long tail


def long_tail_counts(n_max, imbalance, num_classes):
    """Per-class sizes of a long tail: class `k` keeps `int(n_max * imbalance**(-k/(C-1)))`.

    Args:
        n_max: size of the largest (first) class.
        imbalance: `rho = n_max / n_min`, at least 1 (1 keeps every class at `n_max`).
        num_classes: `C`, at least 2.

    Returns:
        An int64 array of `C` sizes.
    """
    if imbalance < 1:
        raise ValueError(f"The imbalance factor n_max/n_min must be >= 1; got {imbalance}.")
    if num_classes < 2:
        raise ValueError(f"Need at least 2 classes; got {num_classes}.")
    exponents = -np.arange(num_classes) / (num_classes - 1)
    counts = np.array([int(n_max * imbalance**e) for e in exponents], dtype=np.int64)
    if not np.isfinite(imbalance) or counts[-1] < 1:
        raise ValueError(
            f"The imbalance factor {imbalance} leaves the last class without training examples "
            f"(the largest class keeps {n_max}); use a smaller --imbalance (below {n_max}).")
    return counts


# --------------------------------------------------------------------------------------------
# The split


@dataclasses.dataclass(eq=False)
class Split:
    """A meta/training split with its noisy labels, as drawn by `make_split`.

    Indices point into the arrays the split was drawn from; training arrays are aligned with
    `train_indices`.
    """

    num_classes: int
    noise: str
    ratio: float
    imbalance: float
    seed: int
    meta_indices: np.ndarray
    meta_labels: np.ndarray
    train_indices: np.ndarray
    train_true_labels: np.ndarray
    train_noisy_labels: np.ndarray
    train_corrupted: np.ndarray
    transition_matrix: np.ndarray
    empirical_transition_matrix: np.ndarray
    realised_noise_rate: float

    def save(self, path):
        """Writes the split to a `.npz` file at `path`."""
        with open(path, "wb") as file:
            np.savez(file, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path):
        """Reads a split written by `save`.

        Raises:
            ValueError: if the file lacks any of the split's fields.
        """
        with np.load(path, allow_pickle=False) as stored:
            fields = {field.name: stored[field.name] for field in dataclasses.fields(cls)
                      if field.name in stored}
        missing = [field.name for field in dataclasses.fields(cls) if field.name not in fields]
        if missing:
            raise ValueError(f"{path} is not a saved Split: it lacks {missing}.")
        scalars = {"num_classes": int, "noise": str, "ratio": float, "imbalance": float,
                   "seed": int, "realised_noise_rate": float}
        for name, cast in scalars.items():
            fields[name] = cast(fields[name])
        return cls(**fields)


def make_split(labels, num_classes, num_meta, noise, ratio, imbalance, seed):
    """Draws the meta set, the noisy training labels and the long tail from one seed.

    One permutation from `np.random.default_rng(seed)` orders the examples; the meta set takes
    the first `num_meta / C` examples of each class in that order, the rest is the training
    set. The training labels are corrupted with the noise model, then each true class `k` is
    cut to `int(n_max * imbalance**(-k/(C-1)))` examples (its first ones in the permutation;
    all of them if it has fewer), `n_max` being the size of the largest training class.

    Args:
        labels: true labels of the whole original training set, ints in [0, num_classes).
        num_classes: number of classes `C`.
        num_meta: size of the clean meta set, a positive multiple of `C`.
        noise: one of `NOISE_MODELS`.
        ratio: noise ratio in [0, 1].
        imbalance: long-tail factor `n_max / n_min` >= 1 (1: no subsampling).
        seed: the run's seed.

    Returns:
        A `Split` (indices sorted ascending).

    Raises:
        ValueError: for a bad argument, or a class with fewer than `num_meta / C` examples.
    """
    labels = _check_labels(labels, num_classes)
    if num_meta < num_classes or num_meta % num_classes:
        raise ValueError(
            f"num_meta must be a positive multiple of the number of classes ({num_classes}) "
            f"so that the meta set is class-balanced; got {num_meta}."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    is_meta = np.zeros(len(labels), dtype=bool)
    is_meta[_first_per_class(labels[order], num_classes, num_meta // num_classes)] = True
    meta_indices = np.sort(order[is_meta])
    train_order = order[~is_meta]
    if np.intersect1d(meta_indices, train_order).size:
        raise AssertionError("The meta and training sets overlap.")

    true = labels[train_order]
    noisy, matrix = corrupt_labels(true, noise, ratio, num_classes, rng)

    class_sizes = np.bincount(true, minlength=num_classes)
    keep_sizes = np.minimum(long_tail_counts(class_sizes.max(), imbalance, num_classes),
                            class_sizes)
    rank_in_class = np.empty(len(true), dtype=np.int64)
    for k in range(num_classes):
        in_class = true == k
        rank_in_class[in_class] = np.arange(in_class.sum())
    kept = rank_in_class < keep_sizes[true]

    by_index = np.argsort(train_order[kept])
    train_indices = train_order[kept][by_index]
    true, noisy = true[kept][by_index], noisy[kept][by_index]
    return Split(
        num_classes=num_classes,
        noise=noise,
        ratio=float(ratio),
        imbalance=float(imbalance),
        seed=int(seed),
        meta_indices=meta_indices,
        meta_labels=labels[meta_indices],
        train_indices=train_indices,
        train_true_labels=true,
        train_noisy_labels=noisy,
        train_corrupted=true != noisy,
        transition_matrix=matrix,
        empirical_transition_matrix=empirical_transition_matrix(true, noisy, num_classes),
        realised_noise_rate=realised_noise_rate(true, noisy),
    )


def balanced_meta_subset(x, y, num_classes, per_class, seed):
    """Carves a class-balanced meta set out of a trusted, correctly labelled subset.

    Args:
        x: examples, first axis aligned with `y`.
        y: their (clean) labels in [0, num_classes).
        num_classes: number of classes.
        per_class: meta examples to take from each class.
        seed: seed of the random choice within each class.

    Returns:
        `(x_meta, y_meta)`: `num_classes * per_class` examples in random order.

    Raises:
        ValueError: if a class has fewer than `per_class` examples.
    """
    y = _check_labels(y, num_classes)
    order = np.random.default_rng(seed).permutation(len(y))
    chosen = order[_first_per_class(y[order], num_classes, per_class)]
    return x[chosen], y[chosen]


def _first_per_class(ordered_labels, num_classes, per_class):
    """Sorted positions of the first `per_class` labels of each class in `ordered_labels`."""
    if per_class < 1:
        raise ValueError(f"Need at least one meta example per class; got {per_class}.")
    positions = []
    for k in range(num_classes):
        in_class = np.flatnonzero(ordered_labels == k)
        if len(in_class) < per_class:
            raise ValueError(
                f"Class {k} has {len(in_class)} examples, fewer than the {per_class} "
                "needed for a class-balanced meta set."
            )
        positions.append(in_class[:per_class])
    return np.sort(np.concatenate(positions))


def _check_labels(labels, num_classes):
    """Returns `labels` as int64 after checking they are integers in [0, num_classes)."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Labels must be integers; got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Labels must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}]."
        )
    return labels.astype(np.int64)


# --------------------------------------------------------------------------------------------
# Loading datasets


class ImageDataset(typing.NamedTuple):
    """A dataset as arrays: uint8 images `[N, H, W, C]`, int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def load_dataset(name, data_dir=None):
    """Loads an image-classification dataset into NumPy arrays.

    `fashion_mnist` is read from the four original idx `.gz` files (or TFDS' prepared data) in
    `data_dir` if given, and from nowhere else; without `data_dir`, from Keras' cache
    (`$KERAS_HOME` or `~/.keras`, `datasets/fashion-mnist/`), then
    `/usr/share/datasets/fashion-mnist/` (Debian's `dataset-fashion-mnist`), then TFDS. Every other name goes through TFDS (`data_dir` is its data directory); it must
    have `image` and `label` features, fixed-size images and `train`/`test` splits.

    Returns:
        An `ImageDataset` `(x_train, y_train, x_test, y_test, num_classes)`: uint8 images
        `[N, H, W, C]` (grayscale keeps a channel axis) and int64 labels.

    Raises:
        ValueError: for an unknown or unsuitable dataset, a corrupt idx file, or a dataset that
            cannot be found or downloaded.
    """
    if name == "fashion_mnist" and data_dir:
        return _fashion_mnist_in(data_dir)
    if name == "fashion_mnist":
        for directory in fashion_mnist_dirs(data_dir):
            files = [os.path.join(directory, f) for f in FASHION_MNIST_FILES.values()]
            if all(os.path.isfile(f) for f in files):
                return load_fashion_mnist_idx(directory)
        try:
            return _load_tfds(name, data_dir)
        except ValueError as err:
            looked_in = "\n".join(f"  {d}" for d in fashion_mnist_dirs(data_dir))
            raise ValueError(
                "Could not find Fashion-MNIST. Put the four original files "
                f"({', '.join(FASHION_MNIST_FILES.values())}) in one of\n{looked_in}\n"
                "(pass the first with --data_dir; `apt-get install dataset-fashion-mnist` "
                f"fills the last), or prepare TFDS' fashion_mnist in --data_dir. TFDS said: {err}"
            ) from err
    return _load_tfds(name, data_dir)


def _fashion_mnist_in(data_dir):
    """Fashion-MNIST from `data_dir` only: its four idx files, or TFDS' data prepared there.

    Raises:
      ValueError: naming the files `data_dir` lacks, if it holds neither.
    """
    missing = [f for f in FASHION_MNIST_FILES.values()
               if not os.path.isfile(os.path.join(data_dir, f))]
    if not missing:
        return load_fashion_mnist_idx(data_dir)
    if tfds.builder("fashion_mnist", data_dir=data_dir).is_prepared():
        return _load_tfds("fashion_mnist", data_dir)
    raise ValueError(
        f"--data_dir={data_dir} holds no Fashion-MNIST: {', '.join(missing)} missing there "
        "(nor is TFDS' fashion_mnist prepared there). Put the four original .gz files in it, or "
        f"leave --data_dir out to read them from {' or '.join(fashion_mnist_dirs())}.")


def fashion_mnist_dirs(data_dir=None):
    """The directories searched for Fashion-MNIST's idx files, in order."""
    keras_home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    dirs = [os.path.join(keras_home, "datasets", "fashion-mnist"), DEBIAN_FASHION_MNIST_DIR]
    return ([data_dir] if data_dir else []) + dirs


def load_fashion_mnist_idx(directory):
    """Reads Fashion-MNIST (or MNIST) from the four original idx `.gz` files in `directory`.

    Raises:
        ValueError: if a file is corrupt, truncated or holds the wrong kind of array.
    """
    arrays = {key: read_idx(os.path.join(directory, f)) for key, f in FASHION_MNIST_FILES.items()}
    for part in ("train", "test"):
        images_file = os.path.join(directory, FASHION_MNIST_FILES[f"x_{part}"])
        labels_file = os.path.join(directory, FASHION_MNIST_FILES[f"y_{part}"])
        images, labels = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{images_file}: expected uint8 images [N, H, W], got "
                             f"{images.dtype} {images.shape}.")
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"{labels_file}: expected {len(images)} labels, got shape "
                             f"{labels.shape}.")
        if labels.size and labels.max() >= 10:
            raise ValueError(f"{labels_file}: labels must lie in [0, 10); max {labels.max()}.")
    return ImageDataset(
        arrays["x_train"][..., np.newaxis],
        arrays["y_train"].astype(np.int64),
        arrays["x_test"][..., np.newaxis],
        arrays["y_test"].astype(np.int64),
        10,
    )


def read_idx(path):
    """Parses an idx file (gzip-compressed if its name ends in `.gz`) into a NumPy array.

    Raises:
        ValueError: naming the file, if it is not a valid, complete idx file.
    """
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as file:
            content = file.read()
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path}: cannot read it ({err}); it is corrupt or truncated.") from err
    if len(content) < 4 or content[:2] != b"\x00\x00" or content[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: bad idx magic number {content[:4].hex() or '(empty file)'}.")
    dtype, ndim = np.dtype(_IDX_DTYPES[content[2]]), content[3]
    header_size = 4 + 4 * ndim
    if len(content) < header_size:
        raise ValueError(f"{path}: truncated idx header.")
    shape = tuple(int(d) for d in np.frombuffer(content, ">u4", count=ndim, offset=4))
    expected = header_size + int(np.prod(shape)) * dtype.itemsize
    if len(content) != expected:
        raise ValueError(f"{path}: idx header announces shape {shape} ({expected} bytes) but the "
                         f"file has {len(content)} bytes; it is truncated or corrupt.")
    data = np.frombuffer(content, dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _load_tfds(name, data_dir):
    """Loads the `train` and `test` splits of a TFDS image-classification dataset."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise ValueError(f"Unknown dataset {name!r}: not a TFDS dataset.") from None
    features = builder.info.features
    if not (
        "image" in features.keys()
        and "label" in features.keys()
        and isinstance(features["image"], tfds.features.Image)
        and isinstance(features["label"], tfds.features.ClassLabel)
    ):
        raise ValueError(f"Dataset {name!r} is not an image-classification dataset: it needs "
                         f"`image` and `label` features, it has {list(features.keys())}.")
    image_shape = features["image"].shape
    if None in image_shape or features["image"].np_dtype != np.uint8:
        raise ValueError(f"Dataset {name!r} has images of shape {image_shape} and dtype "
                         f"{features['image'].np_dtype}; we need fixed-size uint8 images.")
    known_splits = list(builder.info.splits.keys())
    if known_splits and not {"train", "test"} <= set(known_splits):
        raise ValueError(f"Dataset {name!r} has splits {known_splits}; we need train and test.")
    try:
        builder.download_and_prepare()
        splits = builder.as_dataset(split=["train", "test"])
    except Exception as err:  # TFDS raises many kinds; all mean "not available here".
        raise ValueError(
            f"Could not load {name!r} with TFDS (data_dir={data_dir}): {err}. Without internet, "
            f"run `tfds build {name}` elsewhere and copy its data directory to --data_dir."
        ) from err
    arrays = []
    for dataset in splits:
        pairs = dataset.map(lambda example: (example["image"], example["label"])).batch(4096)
        images, labels = zip(*tfds.as_numpy(pairs))
        arrays += [np.concatenate(images), np.concatenate(labels).astype(np.int64)]
    return ImageDataset(*arrays, features["label"].num_classes)


# --------------------------------------------------------------------------------------------
# Input pipeline


def normalization_stats(name, x_train):
    """Per-channel mean and std of images scaled to [0, 1].

    CIFAR-10 and CIFAR-100 use the reference code's constants (the CIFAR-10 statistics, for
    both); any other dataset gets those of `x_train` (uint8 `[N, H, W, C]`), computed exactly.

    Returns:
        `(mean, std)`, float64 arrays with one entry per channel.
    """
    if name in ("cifar10", "cifar100"):
        return CIFAR_MEAN.copy(), CIFAR_STD.copy()
    _check_images(x_train)
    values = np.arange(256)
    mean, std = [], []
    for channel in range(x_train.shape[-1]):
        counts = np.bincount(x_train[..., channel].ravel(), minlength=256)
        channel_mean = counts @ values / counts.sum()
        mean.append(channel_mean)
        std.append(np.sqrt(counts @ (values - channel_mean) ** 2 / counts.sum()))
    return np.array(mean) / 255.0, np.array(std) / 255.0


def normalize(images, mean, std):
    """Scales uint8 images to [0, 1], then standardises each channel: float32 out.

    Raises:
      ValueError: unless `mean` and `std` are finite, `std > 0`, one entry per channel.
    """
    check_statistics(mean, std, images.shape[-1])
    images = tf.cast(images, tf.float32) / 255.0
    return (images - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def check_statistics(mean, std, channels):
    """Refuses normalisation statistics that are not finite, `std > 0`, one per channel."""
    for name, value in (("mean", mean), ("std", std)):
        value = np.asarray(value, np.float64)
        if value.ndim != 1 or (channels is not None and len(value) != channels):
            raise ValueError(f"normalize needs one {name} per channel ({channels}); got {name}="
                             f"{value.tolist()}.")
        if not np.all(np.isfinite(value)) or (name == "std" and not np.all(value > 0)):
            raise ValueError(f"normalize needs a finite {name}" + (" > 0" if name == "std" else "")
                             + f"; got {name}={value.tolist()}.")


def random_crop_and_flip(image, seed, padding=4):
    """Reflect-pads an `[H, W, C]` image, crops a random `H x W` window, flips it half the time.

    Args:
        image: one image tensor.
        seed: shape-[2] int tensor; the result is a pure function of `(image, seed)`.
        padding: pixels of reflection added on each side before cropping.
    """
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]], mode="REFLECT")
    cropped = tf.image.stateless_random_crop(padded, tf.shape(image), seed=crop_seed)
    return tf.image.stateless_random_flip_left_right(cropped, seed=flip_seed)


def train_dataset(x, y, batch_size, seed, augment, mean, std, *, with_index=False,
                  drop_remainder=False):
    """A shuffled (every epoch anew), optionally augmented, normalised, batched `tf.data` set.

    Args:
        x: uint8 images `[N, H, W, C]`.
        y: their labels.
        batch_size: examples per batch.
        seed: seed of the shuffle and of the augmentation; the same seed gives the same
            sequence of epochs.
        augment: apply `random_crop_and_flip` (the reference's CIFAR augmentation).
        mean, std: per-channel statistics of images scaled to [0, 1] (`normalization_stats`).
        with_index: also yield each example's position in `x`.
        drop_remainder: drop the last, smaller batch.

    Returns:
        A `tf.data.Dataset` of `(images float32, labels int64)` or, with `with_index`,
        `(images, labels, positions int64)`.
    """
    _check_images(x, y)
    check_statistics(mean, std, x.shape[-1])
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    columns = (x, np.asarray(y, np.int64))
    if with_index:
        columns += (np.arange(len(x), dtype=np.int64),)
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda columns, pair: (random_crop_and_flip(columns[0], pair),) + columns[1:],
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(lambda images, *rest: (normalize(images, mean, std),) + rest,
                          num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def eval_dataset(x, y, batch_size, mean, std):
    """Normalised batches of `(images float32, labels int64)` in order, for evaluation."""
    _check_images(x, y)
    check_statistics(mean, std, x.shape[-1])
    dataset = tf.data.Dataset.from_tensor_slices((x, np.asarray(y, np.int64)))
    dataset = dataset.batch(batch_size).map(
        lambda images, labels: (normalize(images, mean, std), labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_images(x, y=None):
    """Checks `x` is uint8 `[N, H, W, C]` (and `y` has N entries)."""
    if x.ndim != 4 or x.dtype != np.uint8:
        raise ValueError(f"Expected uint8 images [N, H, W, C]; got {x.dtype} {x.shape}.")
    if y is not None and len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels.")
