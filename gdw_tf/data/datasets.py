"""Image-classification datasets as NumPy arrays: Fashion-MNIST from its original idx files
(offline), everything else through TensorFlow Datasets.
"""

import gzip
import os
import typing
import zlib

import numpy as np
import tensorflow_datasets as tfds

FASHION_MNIST_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

# idx type codes (http://yann.lecun.com/exdb/mnist/): big-endian element types.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class Dataset(typing.NamedTuple):
    """A dataset as arrays: uint8 images `[N, H, W, C]` (or float32 features `[N, D]`), int64
    labels.

    The optional fields describe own data (`gdw_tf.data.own_data`); the benchmarks leave them None.
    `train_ids` names each row of `x_train` (file path, `<csv>:<line>` or `.npz` index),
    `class_names` the classes in label order, `trusted` marks the rows of `x_train` that form
    the trusted (meta) set.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    train_ids: tuple | None = None
    class_names: tuple | None = None
    trusted: np.ndarray | None = None


def load_dataset(name, data_dir=None):
    """Loads an image-classification dataset into NumPy arrays.

    `fashion_mnist` is read from the four original idx `.gz` files (or TFDS' prepared data) in
    `data_dir` if given, and from nowhere else; without `data_dir`, from Keras' cache
    (`$KERAS_HOME` or `~/.keras`, `datasets/fashion-mnist/`), then
    `/usr/share/datasets/fashion-mnist/` (Debian's `dataset-fashion-mnist`), then TFDS. Every
    other name goes through TFDS (`data_dir` is its data directory); it must
    have `image` and `label` features, fixed-size images and `train`/`test` splits.

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
    return _load_tfds(name, data_dir)


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
        raise ValueError(
            f"Dataset {name!r} is not an image-classification dataset: it needs "
            f"`image` and `label` features, it has {list(features.keys())}."
        )
    image_shape = features["image"].shape
    if None in image_shape or features["image"].np_dtype != np.uint8:
        raise ValueError(
            f"Dataset {name!r} has images of shape {image_shape} and dtype "
            f"{features['image'].np_dtype}; we need fixed-size uint8 images."
        )
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
    return Dataset(*arrays, features["label"].num_classes)
