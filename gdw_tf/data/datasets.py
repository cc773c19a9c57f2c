"""Image-classification datasets as NumPy arrays: Fashion-MNIST from its original idx files
(offline), everything else through TensorFlow Datasets (whose datasets of varying image size
are streamed from their prepared files: `gdw_tf.data.tfds_records`).
"""

import gzip
import os
import socket
import typing
import zlib

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from gdw_tf.data import tfds_records

FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
# A TFDS dataset without a `test` split is tested on every HELD_OUT_EVERY-th example of its
# `train` split (positions 9, 19, 29, ...: 10%) and trained on the others.
HELD_OUT_EVERY = 10
# Where TFDS downloads from first (prepared data on Google Cloud Storage): probed before a
# download so that a machine without internet fails in seconds, not after minutes of retries.
_TFDS_HOST = ("storage.googleapis.com", 443)
# TFDS' own download (replaced by `tfds.testing.mock_data`, which needs no network).
_DOWNLOAD_AND_PREPARE = tfds.core.DatasetBuilder.download_and_prepare

# idx type codes (http://yann.lecun.com/exdb/mnist/): big-endian element types.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Dataset(typing.NamedTuple):
    """A dataset as arrays: uint8 images `[N, H, W, C]` (or float32 features `[N, D]`), int64
    labels.

    The optional fields describe own data (`gdw_tf.data.own_data`); the benchmarks leave them None.
    Own image files are not decoded: their `x_train`, `x_test` are `image_files.ImageFiles`,
    which act as read-only uint8 arrays and are decoded by the input pipeline; so are the
    records of a TFDS dataset of varying image size (`tfds_records.TfdsRecords`).
    `train_ids` names each row of `x_train` (file path, `<csv>:<line>` or `.npz` index; an
    `ids.Ids`, a sequence of `str`),
    `class_names` the classes in label order, `trusted` marks the rows of `x_train` that form
    the trusted (meta) set.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    train_ids: typing.Sequence[str] | None = None
    class_names: tuple | None = None
    trusted: np.ndarray | None = None


def load_dataset(name, data_dir=None, *, image_size=0, share=None):
    """Loads an image-classification dataset into NumPy arrays.

    `fashion_mnist` is read from the four original idx `.gz` files (or TFDS' prepared data) in
    `data_dir` if given, and from nowhere else; without `data_dir`, from Keras' cache
    (`$KERAS_HOME` or `~/.keras`, `datasets/fashion-mnist/`), then
    `/usr/share/datasets/fashion-mnist/` (Debian's `dataset-fashion-mnist`), then TFDS. Every
    other name goes through TFDS (`data_dir` is its data directory); it must
    have `image` and `label` features and a `train` split. Images of varying size (tf_flowers,
    food101, ...) need `image_size`; such a dataset is streamed, not loaded:
    its `x_train`, `x_test` are `tfds_records.TfdsRecords`, which the input pipeline reads from
    TFDS' prepared files and decodes, resizing every image bilinearly to `image_size` squares
    (rounded back to uint8). Datasets of one image size are loaded into arrays. A
    dataset without a `test` split is tested on every `HELD_OUT_EVERY`-th example of `train`
    (10%) and trained on the rest. An unprepared dataset on a machine that cannot reach TFDS'
    servers fails at once (no download retries). `share`: this worker's share, in a cluster,
    of the pass that indexes a streamed dataset's records (`tfds_records.split_records`).

    Returns:
        An `Dataset` `(x_train, y_train, x_test, y_test, num_classes)`: uint8 images
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
    return _load_tfds(name, data_dir, image_size, share)


def _fashion_mnist_in(data_dir):
    """Fashion-MNIST from `data_dir` only: its four idx files, or TFDS' data prepared there.

    Raises:
      ValueError: naming the files `data_dir` lacks, if it holds neither.
    """
    missing = [
        f for f in FASHION_MNIST_FILES.values() if not os.path.isfile(os.path.join(data_dir, f))
    ]
    if not missing:
        return load_fashion_mnist_idx(data_dir)
    if tfds.builder("fashion_mnist", data_dir=data_dir).is_prepared():
        return _load_tfds("fashion_mnist", data_dir)
    raise ValueError(
        f"--data_dir={data_dir} holds no Fashion-MNIST: {', '.join(missing)} missing there "
        "(nor is TFDS' fashion_mnist prepared there). Put the four original .gz files in it, or "
        f"leave --data_dir out to read them from {' or '.join(fashion_mnist_dirs())}."
    )


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
            raise ValueError(
                f"{images_file}: expected uint8 images [N, H, W], got "
                f"{images.dtype} {images.shape}."
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(
                f"{labels_file}: expected {len(images)} labels, got shape {labels.shape}."
            )
        if labels.size and labels.max() >= 10:
            raise ValueError(f"{labels_file}: labels must lie in [0, 10); max {labels.max()}.")
    return Dataset(
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
        raise ValueError(
            f"{path}: idx header announces shape {shape} ({expected} bytes) but the "
            f"file has {len(content)} bytes; it is truncated or corrupt."
        )
    data = np.frombuffer(content, dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _load_tfds(name, data_dir, image_size=0, share=None):
    """Loads the `train` and `test` splits of a TFDS image-classification dataset (see
    `load_dataset`: resizing to `image_size`, the held-out test split, `share`)."""
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
        raise ValueError(
            f"Dataset {name!r} is not an image-classification dataset: it needs "
            f"`image` and `label` features, it has {list(features.keys())}."
        )
    image_shape = features["image"].shape
    if features["image"].np_dtype != np.uint8:
        raise ValueError(
            f"Dataset {name!r} has images of dtype {features['image'].np_dtype}; we need uint8 "
            "images."
        )
    if None in image_shape[:2] and not image_size:
        raise ValueError(
            f"Dataset {name!r} has images of varying size {image_shape}; pass --image_size=N "
            "to resize them to NxN as they are read."
        )
    known_splits = list(builder.info.splits.keys())
    if known_splits and "train" not in known_splits:
        raise ValueError(f"Dataset {name!r} has splits {known_splits}; we need train.")
    held_out = bool(known_splits) and "test" not in known_splits
    unavailable = (
        f"Could not load {name!r} with TFDS (data_dir={data_dir}): {{}}. Without internet, "
        f"run `tfds build {name}` elsewhere and copy its data directory to --data_dir."
    )
    downloads = type(builder).download_and_prepare == _DOWNLOAD_AND_PREPARE  # (a wrapper)
    if downloads and not builder.is_prepared() and not _reachable(*_TFDS_HOST):
        raise ValueError(
            unavailable.format(f"it is not prepared there and {_TFDS_HOST[0]} is unreachable")
        )
    streamed = None in image_shape[:2]
    try:
        builder.download_and_prepare()
        if streamed:
            splits = [
                tfds_records.split_records(builder, part, image_size=image_size, share=share)
                for part in (["train"] if held_out else ["train", "test"])
            ]
        else:
            splits = builder.as_dataset(split=["train"] if held_out else ["train", "test"])
    except Exception as err:  # TFDS raises many kinds; all mean "not available here".
        raise ValueError(unavailable.format(err)) from err
    if streamed:
        arrays = [column for split in splits for column in split]
        return _held_out(arrays, held_out, features["label"].num_classes)
    arrays = []
    for dataset in splits:
        pairs = dataset.map(
            lambda example: (_resized(example["image"], image_size), example["label"]),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).batch(4096)
        images, labels = zip(*tfds.as_numpy(pairs))
        arrays += [np.concatenate(images), np.concatenate(labels).astype(np.int64)]
    return _held_out(arrays, held_out, features["label"].num_classes)


def _held_out(arrays, held_out, num_classes):
    """The `Dataset` of `[x_train, y_train(, x_test, y_test)]`; with `held_out`, the test set is
    every `HELD_OUT_EVERY`-th example of the train split."""
    if held_out:
        test = np.arange(len(arrays[1])) % HELD_OUT_EVERY == HELD_OUT_EVERY - 1
        arrays = [arrays[0][~test], arrays[1][~test], arrays[0][test], arrays[1][test]]
    return Dataset(*arrays, num_classes)


def _resized(image, image_size):
    """`image` resized bilinearly to `image_size` squares, rounded back to uint8 (as own images
    are); unchanged without `image_size` or at that size already."""
    if not image_size:
        return image
    size = (image_size, image_size)
    return tf.cond(
        tf.reduce_all(tf.shape(image)[:2] == size),
        lambda: image,
        lambda: tf.cast(
            tf.clip_by_value(tf.round(tf.image.resize(image, size, "bilinear")), 0, 255), tf.uint8
        ),
    )


def _reachable(host, port, timeout=3.0):
    """Whether a TCP connection to `host:port` opens within `timeout` seconds."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True
