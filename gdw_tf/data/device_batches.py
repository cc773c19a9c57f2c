"""Batches whose rows the devices divide, as Keras' JAX distribution needs them.

Under `keras.distribution.DataParallel` (`--distribute=mirrored` on JAX) Keras splits every
batch of `fit`, `evaluate` and `predict` into equal parts, one per device
(`gdw_tf.backend.batch_devices`), and refuses a batch that the devices do not divide: the last,
smaller batch of a pass, most of the time. `even_batches` is the one rule for every pass:

- training: each batch is cut to a multiple of the devices, and a batch left empty is dropped
  (`steps_per_epoch` counts those that stay). At most `devices - 1` rows of an epoch are left out
  of it, the last rows of its last batch; the next epoch reshuffles, so other rows are left out.
- evaluation and prediction: each batch is padded with copies of its last row up to a multiple
  of the devices, and carries a last column of weights, 1 for its own rows and 0 for the copies.
  Keras passes that column to the test step as `sample_weight`, so the copies count in no metric,
  and the prediction passes keep only the outputs of weight 1: every row counts once.

`tf.distribute` shares out an uneven batch itself, so on TensorFlow the devices are 1 and the
datasets stay as they are.
"""

import numpy as np
import tensorflow as tf


def even_batches(dataset: tf.data.Dataset, devices: int, *, pad: bool) -> tf.data.Dataset:
    """`dataset`'s batches (a tensor, or a tuple of tensors with rows on axis 0) with a multiple
    of `devices` rows each: cut (`pad=False`, empty batches dropped), or padded with copies of
    their last row, with a float32 weight column of 1s and (for the copies) 0s at the end of each
    element (`pad=True`); `dataset` itself with one device."""
    if devices == 1:
        return dataset
    single = not isinstance(dataset.element_spec, tuple)

    def even(*columns):
        rows = tf.shape(columns[0])[0]
        if not pad:
            kept = tuple(column[: rows - rows % devices] for column in columns)
            return kept[0] if single else kept
        copies = -rows % devices
        padded = tuple(
            tf.concat([column, tf.repeat(column[-1:], copies, axis=0)], 0) for column in columns
        )
        return (*padded, tf.concat([tf.ones([rows]), tf.zeros([copies])], 0))

    dataset = dataset.map(even)
    if pad:
        return dataset
    return dataset.filter(lambda *columns: tf.shape(columns[0])[0] > 0)


def steps_per_epoch(rows: int, batch_size: int, devices: int) -> int:
    """The training batches of a pass over `rows` in batches of `batch_size` that
    `even_batches(..., devices, pad=False)` keeps: the last one only if it holds at least
    `devices` rows."""
    return rows // batch_size + (rows % batch_size >= devices)


def predict(model, dataset: tf.data.Dataset, devices: int):
    """`model.predict` of `dataset` (batches of x, or of tuples that start with x) as NumPy
    arrays (a list for several outputs), one row per row of `dataset`: with several devices each
    batch is padded (`even_batches`) and the padding's outputs dropped."""
    if devices == 1:
        out = model.predict(dataset, verbose=0)
        if isinstance(out, (list, tuple)):
            return [np.asarray(value) for value in out]
        return np.asarray(out)
    parts = []
    for *columns, weights in even_batches(dataset, devices, pad=True).as_numpy_iterator():
        values = model.predict_on_batch(columns[0])
        values = values if isinstance(values, (list, tuple)) else [values]
        parts.append([np.asarray(value)[weights > 0] for value in values])
    if not parts:
        raise ValueError("the dataset has no batches to predict.")
    joined = [np.concatenate(column) for column in zip(*parts)]
    return joined if len(joined) > 1 else joined[0]
