"""The input pipeline: normalisation and augmentation of uint8 images, and the `tf.data`
pipelines that feed `GDWModel.fit` and evaluation.

It mirrors the reference's CIFAR transform: reflect-pad 4, random crop, horizontal flip,
per-channel mean/std normalisation, with the reference's CIFAR statistics
(`normalization_stats`).

`x` may be an array in memory (the benchmarks, `.npz` files) or streamed images
(`gdw_tf.data.image_files.StreamedImages`: image files on disk, records of a TFDS split): those
are decoded and resized in a parallel map right after the shuffle (which then shuffles keys,
such as paths, not pixels), so both give the same batches; under `tf.distribute` each input
pipeline decodes only its replicas' share of each batch (`train_dataset`'s and
`eval_dataset`'s `input_context`), and in a cluster each worker only its block of the
normalisation sample (`normalization_stats`'s `share`).

A streamed image that cannot be read when its turn comes (a file deleted or truncated during
the run, a network share that hiccups) does not end the run: it is left out of its batch, which
is one row shorter (the batches of an epoch stay as many, and each replica's share stays its
own), and named once in a warning line and in the run's `skipped_files.txt`
(`StreamedImages.decode_batch`).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from gdw_tf.data import image_files
from gdw_tf.data.worker_share import WorkerShare

# Images of a stream whose pixels give its normalisation statistics (`normalization_stats`).
NORMALIZATION_SAMPLE = 2000

# The reference's per-channel statistics of CIFAR images scaled to [0, 1], for both CIFARs.
CIFAR_MEAN = np.array([125.3, 123.0, 113.9]) / 255.0
CIFAR_STD = np.array([63.0, 62.1, 66.7]) / 255.0


def normalization_stats(
    name: str, x_train: np.ndarray, *, share: WorkerShare | None = None
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of images scaled to [0, 1].

    CIFAR-10 and CIFAR-100 use the reference code's constants (the CIFAR-10 statistics, for
    both); any other dataset gets those of `x_train` (uint8 `[N, H, W, C]`), computed exactly;
    for image files (`ImageFiles`), exactly over a sample of `NORMALIZATION_SAMPLE` of them
    (all, if there are fewer; else drawn with NumPy's seed 0, `normalization_sample`). With a
    `share` (a worker of a cluster), this worker decodes only its block of the sample, and the
    workers' pixel counts are added up: the statistics are the same.

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
    if image_files.is_streamed(x_train):
        positions = normalization_sample(len(x_train))
        if share is not None:
            positions = positions[share.rows(len(positions))]
        all_counts = np.zeros((x_train.shape[-1], 256), np.int64)
        for images in x_train[positions].dataset().batch(64).as_numpy_iterator():
            for channel in range(x_train.shape[-1]):
                all_counts[channel] += np.bincount(images[..., channel].ravel(), minlength=256)
        if share is not None:
            all_counts = share.sum(all_counts)
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
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """A shuffled (every epoch anew), optionally augmented, normalised, batched `tf.data` set.

    Streamed images (`image_files.StreamedImages`) are shuffled as keys and decoded after the
    shuffle in a parallel, order-keeping map, so the batches equal those of the decoded array.
    With `input_context` (a streamed `x` under a `tf.distribute` strategy,
    `distribute_datasets_from_function`) the pipeline decodes only the rows of its own
    replicas: every input pipeline draws the same shuffle and crops (the same seeds), each
    global batch of `batch_size` is cut into one contiguous share per replica
    (`replica_shares`), the other replicas' rows are dropped before decoding, and the pipeline
    yields the shares of its replicas in turn. A streamed image that cannot be read is left
    out of its batch (see the module doc).

    Args:
        x: uint8 images `[N, H, W, C]`: an array, or `StreamedImages` (decoded after the
            shuffle).
        y: their labels.
        batch_size: examples per (global) batch.
        seed: seed of the shuffle and of the augmentation; the same seed gives the same
            sequence of epochs.
        augment: apply `random_crop_and_flip` (the reference's CIFAR augmentation).
        mean, std: per-channel statistics of images scaled to [0, 1] (`normalization_stats`).
        with_index: also yield each example's position in `x`.
        drop_remainder: drop the last, smaller batch.
        input_context: this input pipeline's place among the strategy's (streamed `x` only).

    Returns:
        A `tf.data.Dataset` of `(images float32, labels int64)` or, with `with_index`,
        `(images, labels, positions int64)`.

    Raises:
        ValueError: for images that are neither, labels of another length, bad statistics or
            batch size, or an `input_context` with images in memory.
    """
    _check_images(x, y)
    check_statistics(mean, std, x.shape[-1])
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}.")
    streamed = image_files.is_streamed(x)
    if input_context is not None and not streamed:
        raise ValueError(
            "train_dataset shares out streamed images only; give images in memory to "
            "tf.distribute whole (experimental_distribute_dataset shards them)."
        )
    # Positions permuted, rows gathered: nothing per example is held but the table itself
    # (a shuffle buffer would hold every example, or every position, as tensors of its own).
    table = row_tables(x, y)
    dataset = shuffled_positions(len(x), seed).map(
        lambda i: tuple(column(i) for column in table) + ((i,) if with_index else ())
    )
    if input_context is not None:
        return _own_shares(
            dataset,
            x,
            batch_size,
            input_context,
            seed=seed,
            augment=augment,
            mean=mean,
            std=std,
            drop_remainder=drop_remainder,
        ).prefetch(tf.data.AUTOTUNE)
    if augment:
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
        dataset = tf.data.Dataset.zip(dataset, seeds)
        if streamed:  # Each key with its seeds, cropped once decoded.
            dataset = dataset.map(lambda columns, pair: columns + (pair,))
        else:
            dataset = dataset.map(
                lambda columns, pair: (random_crop_and_flip(columns[0], pair),) + columns[1:],
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if streamed:
        dataset = dataset.map(
            lambda *columns: _decoded(x, columns, augment), num_parallel_calls=tf.data.AUTOTUNE
        )
    dataset = dataset.map(
        lambda images, *rest: (normalize(images, mean, std),) + rest,
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return dataset.prefetch(tf.data.AUTOTUNE)


def row_tables(x, y) -> tuple[image_files.RowTable, image_files.RowTable]:
    """The tables a pipeline looks its rows up in by position: `x`'s (streamed images: their
    keys) and `y`'s, as int64 labels."""
    rows = x.keys if image_files.is_streamed(x) else x
    return image_files.RowTable(rows), image_files.RowTable(np.asarray(y, np.int64))


def shuffled_positions(n: int, seed: int) -> tf.data.Dataset:
    """The positions `0 … n-1` (int64) in a new random order on each pass (each iterator made).

    A pass draws one number from `seed`'s stream (`Dataset.random`, a new one per pass) and
    shuffles the positions with it (`stateless_shuffle`): the pass holds its order, 8 bytes a
    position, where a shuffle buffer holds a tensor per position (about 200 bytes). The same
    seed gives the same sequence of orders. (`index_shuffle`, which holds nothing, reads 16
    bits of its seed: 65,536 orders in all.)
    """
    draws = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(1)
    return draws.flat_map(
        lambda draw: tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(
                tf.range(n, dtype=tf.int64), seed=tf.stack([draw, tf.constant(seed, tf.int64)])
            )
        )
    )


def replica_shares(batch_size: int, num_replicas: int) -> np.ndarray:
    """Where each replica's rows of a global batch begin: `num_replicas + 1` offsets.

    Replica `r` takes the rows `[offsets[r], offsets[r + 1])` of a full batch (sizes differ
    by at most one, the larger first) and of a last, smaller batch the part of them it still
    has: possibly none, an empty batch, as `tf.distribute`'s own split of a batch can give.
    """
    sizes = [
        batch_size // num_replicas + (r < batch_size % num_replicas) for r in range(num_replicas)
    ]
    return np.cumsum([0] + sizes)


def _own_shares(dataset, x, batch_size, input_context, *, seed, augment, mean, std, drop_remainder):
    """The shuffled examples of `dataset` → this input pipeline's replicas' shares of each
    global batch, decoded (and augmented) one image at a time in a parallel map, normalised.

    Every example keeps the seed pair of its place in the shuffled order; the examples of other
    replicas are dropped before they are decoded; `rebatch` then cuts the kept ones into the
    shares' sizes, in turn (an empty batch where a share is empty).
    """
    total = input_context.num_replicas_in_sync
    n = len(x) - len(x) % batch_size if drop_remainder else len(x)  # The rows trained on.
    local = total // input_context.num_input_pipelines
    first = input_context.input_pipeline_id * local
    offsets = replica_shares(batch_size, total)
    rows = np.minimum(batch_size, n - np.arange(0, n, batch_size))  # Each batch's rows.
    ends = np.minimum(offsets[None, first + 1 : first + local + 1], rows[:, None])
    sizes = (ends - np.minimum(offsets[None, first : first + local], rows[:, None])).ravel()
    owner = np.searchsorted(offsets, np.arange(batch_size), side="right") - 1  # Row → replica.
    kept = tf.constant((first <= owner) & (owner < first + local))
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    dataset = tf.data.Dataset.zip(dataset, seeds).enumerate()
    dataset = dataset.filter(lambda position, row: (position < n) & kept[position % batch_size])
    dataset = dataset.map(lambda position, row: row[0] + (row[1],) if augment else row[0])
    dataset = dataset.batch(1).rebatch(tf.constant(sizes, tf.int64))
    dataset = dataset.map(
        lambda *columns: _decoded(x, columns, augment), num_parallel_calls=tf.data.AUTOTUNE
    )
    return dataset.map(
        lambda images, *rest: (normalize(images, mean, std),) + rest,
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def _decoded(x, columns, augment):
    """A batch of `(keys, *rest[, seed pairs])` → `(images, *rest)` of the images that could be
    read (`StreamedImages.decode_batch`), cropped and flipped with their seeds if `augment`."""
    if augment:
        *columns, pairs = columns
        images, ok = x.decode_batch(columns[0], pairs, transform=random_crop_and_flip)
    else:
        images, ok = x.decode_batch(columns[0])
    return (images, *(tf.boolean_mask(column, ok) for column in columns[1:]))


def eval_dataset(
    x: Any,
    y: np.ndarray,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    *,
    aligned: bool = False,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """Normalised batches of `(images float32, labels int64)` in order, for evaluation (`x`: an
    array, or `StreamedImages` decoded in a parallel, order-keeping map).

    A streamed image that cannot be read (`StreamedImages.decode_batch`) is left out of its
    batch, or with `aligned` a zero image stands in for it, so that the batches keep one row
    per row of `y` (`x.readable()` then tells which rows were read).

    With `input_context` (`distribute_datasets_from_function`), the pipeline yields only its
    replicas' shares of each batch of `batch_size` (`replica_shares`, in turn; an empty one
    where the last batch leaves a replica none) and decodes only those.
    """
    _check_images(x, y)
    check_statistics(mean, std, x.shape[-1])
    if input_context is not None:
        total = input_context.num_replicas_in_sync
        local = total // input_context.num_input_pipelines
        first = input_context.input_pipeline_id * local
        offsets = replica_shares(batch_size, total)[first : first + local + 1]
        shares = tf.data.Dataset.from_tensor_slices((offsets[:-1], offsets[1:]))
    table = row_tables(x, y)
    dataset = tf.data.Dataset.range(len(y)).batch(batch_size)
    if input_context is not None:
        dataset = dataset.flat_map(lambda rows: shares.map(lambda a, b: rows[a:b]))
    dataset = dataset.map(lambda rows: tuple(column(rows) for column in table))
    if image_files.is_streamed(x):

        def decoded(keys, labels):
            images, ok = x.decode_batch(keys)
            if aligned:  # A zero image in each row that could not be read.
                shape = tf.concat([tf.shape(ok, out_type=tf.int64), x.shape[1:]], 0)
                return tf.scatter_nd(tf.where(ok), images, shape), labels
            return images, tf.boolean_mask(labels, ok)

        dataset = dataset.map(decoded, num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(
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
