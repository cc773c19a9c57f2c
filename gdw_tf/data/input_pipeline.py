"""The input pipeline: normalisation and augmentation of uint8 images, and the `tf.data`
pipelines that feed `GDWModel.fit` and evaluation.

It mirrors the reference's CIFAR transform: reflect-pad 4, random crop, horizontal flip,
per-channel mean/std normalisation, with the reference's CIFAR statistics
(`normalization_stats`).

`x` may be an array in memory (the benchmarks, `.npz` files) or image files on disk
(`gdw_tf.data.image_files.ImageFiles`): those are decoded and resized in a parallel map right
after the shuffle (which then shuffles paths, not pixels), so both give the same batches.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from gdw_tf.data import image_files

# Images of a stream whose pixels give its normalisation statistics (`normalization_stats`).
NORMALIZATION_SAMPLE = 2000

# The reference's per-channel statistics of CIFAR images scaled to [0, 1], for both CIFARs.
CIFAR_MEAN = np.array([125.3, 123.0, 113.9]) / 255.0
CIFAR_STD = np.array([63.0, 62.1, 66.7]) / 255.0


def normalization_stats(name: str, x_train: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images scaled to [0, 1].

    CIFAR-10 and CIFAR-100 use the reference code's constants (the CIFAR-10 statistics, for
    both); any other dataset gets those of `x_train` (uint8 `[N, H, W, C]`), computed exactly;
    for image files (`ImageFiles`), exactly over a sample of `NORMALIZATION_SAMPLE` of them
    (all, if there are fewer; else drawn with NumPy's seed 0, `normalization_sample`).

    Returns:
        `(mean, std)`, float64 arrays with one entry per channel.
    """
    if name in ("cifar10", "cifar100"):
        return CIFAR_MEAN.copy(), CIFAR_STD.copy()
    _check_images(x_train)
    if x_train.ndim == 2:  # Features: per column, in the units of x / 255 as `normalize` uses.
        std = x_train.std(0, dtype=np.float64)
        return x_train.mean(0, dtype=np.float64) / 255.0, np.where(std > 0, std, 1.0) / 255.0
    values = np.arange(256)
    mean, std = [], []
    if image_files.is_image_files(x_train):
        sample = x_train[normalization_sample(len(x_train))].dataset().batch(64)
        all_counts = np.zeros((x_train.shape[-1], 256), np.int64)
        for images in sample.as_numpy_iterator():
            for channel in range(x_train.shape[-1]):
                all_counts[channel] += np.bincount(images[..., channel].ravel(), minlength=256)
    else:
        all_counts = [
            np.bincount(x_train[..., channel].ravel(), minlength=256)
            for channel in range(x_train.shape[-1])
        ]
    for counts in all_counts:
        channel_mean = counts @ values / counts.sum()
        mean.append(channel_mean)
        std.append(np.sqrt(counts @ (values - channel_mean) ** 2 / counts.sum()))
    return np.array(mean) / 255.0, np.array(std) / 255.0


def normalization_sample(n: int) -> np.ndarray:
    """The sorted positions of the images whose statistics stand for `n` streamed images."""
    if n <= NORMALIZATION_SAMPLE:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, NORMALIZATION_SAMPLE, replace=False))


def normalize(images: Any, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
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
            raise ValueError(
                f"normalize needs one {name} per channel ({channels}); got {name}={value.tolist()}."
            )
        if not np.all(np.isfinite(value)) or (name == "std" and not np.all(value > 0)):
            raise ValueError(
                f"normalize needs a finite {name}"
                + (" > 0" if name == "std" else "")
                + f"; got {name}={value.tolist()}."
            )


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


def train_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    seed: int,
    augment: bool,
    mean: Sequence[float],
    std: Sequence[float],
    with_index: bool = False,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """A shuffled (every epoch anew), optionally augmented, normalised, batched `tf.data` set.

    Args:
        x: uint8 images `[N, H, W, C]`: an array, or `ImageFiles` (decoded after the shuffle).
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
    streamed = image_files.is_image_files(x)
    columns = (x.paths if streamed else x, np.asarray(y, np.int64))
    if with_index:
        columns += (np.arange(len(x), dtype=np.int64),)
    dataset = tf.data.Dataset.from_tensor_slices(columns)
    dataset = dataset.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    if streamed:
        dataset = dataset.map(
            lambda path, *rest: (x.decode(path),) + rest, num_parallel_calls=tf.data.AUTOTUNE
        )
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds).map(
            lambda columns, pair: (random_crop_and_flip(columns[0], pair),) + columns[1:],
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    dataset = dataset.map(
        lambda images, *rest: (normalize(images, mean, std),) + rest,
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def eval_dataset(
    x: Any,
    y: np.ndarray,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
) -> tf.data.Dataset:
    """Normalised batches of `(images float32, labels int64)` in order, for evaluation (`x`: an
    array, or `ImageFiles` decoded in a parallel, order-keeping map)."""
    _check_images(x, y)
    check_statistics(mean, std, x.shape[-1])
    if image_files.is_image_files(x):
        labels = tf.data.Dataset.from_tensor_slices(np.asarray(y, np.int64))
        dataset = tf.data.Dataset.zip(x.dataset(), labels)
    else:
        dataset = tf.data.Dataset.from_tensor_slices((x, np.asarray(y, np.int64)))
    dataset = dataset.batch(batch_size).map(
        lambda images, labels: (normalize(images, mean, std), labels),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_images(x, y=None):
    """Checks `x` is uint8 `[N, H, W, C]` or float32 features `[N, D]` (and `y` has N entries)."""
    if not ((x.ndim == 4 and x.dtype == np.uint8) or (x.ndim == 2 and x.dtype == np.float32)):
        raise ValueError(
            f"Expected uint8 images [N, H, W, C] or float32 features [N, D]; got "
            f"{x.dtype} {x.shape}."
        )
    if y is not None and len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels.")
