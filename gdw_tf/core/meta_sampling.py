"""Meta batches: their order (a seeded permutation per pass over the meta set) and their
augmentation (`MetaAugmentation`), both drawn from an integer hash so that every backend, graph
mode, XLA and a resumed run draw the same numbers.

`GDWModel` draws its meta batches in the training step (`next_draw`, `seeded_permutation`); a
meta set streamed from files is decoded by the input pipeline instead, which reads the same rows
ahead of the steps from `meta_draws`.
"""

import keras
import numpy as np
from keras import ops

from gdw_tf import backend


def hash_uint32(x):
    """A bijective hash of uint32 values (C. Wellons' "lowbias32"), the same on every backend."""
    x = ops.bitwise_xor(x, ops.right_shift(x, 16))
    x = ops.multiply(x, ops.convert_to_tensor(0x7FEB352D, "uint32"))
    x = ops.bitwise_xor(x, ops.right_shift(x, 15))
    x = ops.multiply(x, ops.convert_to_tensor(0x846CA68B, "uint32"))
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def seeded_permutation(n, seed, epoch):
    """A permutation of `range(n)` that depends only on `(seed, epoch)`.

    Integer arithmetic only, so it is the same eagerly, in graph mode and under XLA (TF's
    stateless random ops are not: XLA draws other numbers from the same seed). The hash is a
    bijection, so the sort keys are distinct and the permutation has no ties.
    """
    key = hash_uint32(
        ops.bitwise_xor(hash_uint32(ops.cast(seed, "uint32")), ops.cast(epoch, "uint32"))
    )
    indices = ops.cast(ops.arange(n, dtype="int32"), "uint32")  # XLA has no uint32 range
    hashes = hash_uint32(ops.bitwise_xor(indices, key))
    # Sort keys in int32 (JAX has no int64 by default): flipping the top bit, then casting, keeps
    # the order of the uint32 hashes, so both backends draw the same permutation.
    keys = ops.cast(ops.bitwise_xor(hashes, ops.convert_to_tensor(0x80000000, "uint32")), "int32")
    return ops.cast(ops.argsort(keys), "int32")


def is_meta_step(iterations, interval):
    """Whether the step after `iterations` optimizer steps takes the meta step: steps `interval`,
    `2 * interval`, ... counting from 1."""
    return ops.equal((iterations + 1) % interval, 0)


def next_draw(cursor, epoch, num_meta, batch_size):
    """Where the next meta batch begins: `(start, epoch)` of the pass it is drawn from.

    A batch is drawn at `cursor` in pass `epoch`, or at 0 in the next pass when fewer than
    `batch_size` rows of this pass are left (those are not drawn this pass).
    """
    wrap = ops.greater(cursor + batch_size, num_meta)
    return ops.where(wrap, 0, cursor), ops.where(wrap, epoch + 1, epoch)


def meta_draws(num_meta, batch_size, seed, *, epoch, cursor, iterations, interval):
    """The rows of the meta set that each training step draws, from the sampler's position.

    The draws of `GDWModel`'s step (`next_draw`, `seeded_permutation`, `is_meta_step`) for a
    pipeline that decodes the meta batches ahead of the steps.

    Args:
      num_meta, batch_size, seed: the meta set's size, the meta batch size, the order's seed.
      epoch, cursor: the sampler's position (`GDWModel.meta_epoch`, `meta_cursor`).
      iterations: the optimizer steps taken so far.
      interval: `meta_interval`.

    Yields:
      For each step from `iterations + 1` on: the int32 rows of its meta batch, or None on a step
      that takes no meta step.
    """
    permutation = None
    while True:
        meta = bool(is_meta_step(iterations, interval))
        iterations += 1
        if not meta:
            yield None
            continue
        start, new_epoch = (int(v) for v in next_draw(cursor, epoch, num_meta, batch_size))
        if permutation is None or new_epoch != epoch:
            permutation = np.asarray(seeded_permutation(num_meta, seed, new_epoch))
        epoch, cursor = new_epoch, start + batch_size
        yield permutation[start:cursor]


@keras.saving.register_keras_serializable(package="gdw_tf")
class MetaAugmentation(keras.layers.Layer):
    """Reflect-pad 4, random crop, horizontal flip of a batch of normalised meta images.

    The training images' augmentation (`gdw_tf.data.input_pipeline.random_crop_and_flip`),
    applied after normalisation: reflect padding copies pixels, so it commutes with per-channel
    normalisation. Written with `keras.ops`, so it runs on every backend. Call `n` draws its
    crops and flips from an integer hash of `(seed, n)`, `n` a variable saved with the model, so
    a resumed run augments its meta batches as an uninterrupted one does (a
    `keras.random.SeedGenerator`'s state is not saved with the weights).

    Args:
      seed: seed of the crops and flips.
      padding: pixels of reflection on each side.
    """

    def __init__(self, seed=0, padding=4, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(seed)
        self.padding = int(padding)
        self.calls = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="calls",
            aggregation="only_first_replica",
        )
        # Its one variable exists now: built, so that Keras' JAX trainer does not read a batch
        # of the training data to build it (an extra pass over a reshuffling dataset).
        self.built = True

    def call(self, images, training=False):
        if not training:
            return images
        p = self.padding
        batch = ops.shape(images)[0]
        height, width, channels = images.shape[1], images.shape[2], images.shape[3]
        padded = ops.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")
        key = hash_uint32(
            ops.bitwise_xor(
                hash_uint32(ops.cast(self.seed, "uint32")), ops.cast(self.calls, "uint32")
            )
        )
        self.calls.assign(self.calls + 1)
        # A replica's share of the meta batch draws what the same rows of the whole batch would.
        first = backend.replica_id() * 3 * batch
        draws = ops.reshape(first + ops.arange(3 * batch, dtype="int32"), (batch, 3))
        draws = ops.cast(draws, "uint32")
        draws = hash_uint32(ops.bitwise_xor(draws, key))
        offsets = ops.cast(ops.mod(draws[:, :2], ops.cast(2 * p + 1, "uint32")), "int32")
        flip = ops.equal(ops.bitwise_and(draws[:, 2:], ops.cast(1, "uint32")), 1)
        rows = offsets[:, :1] + ops.arange(height, dtype=offsets.dtype)  # [B, H]
        cols = offsets[:, 1:] + ops.arange(width, dtype=offsets.dtype)  # [B, W]
        cols = ops.where(flip, ops.flip(cols, axis=1), cols)  # a flip reverses the columns
        rows = ops.broadcast_to(rows[:, :, None, None], (batch, height, width + 2 * p, channels))
        cols = ops.broadcast_to(cols[:, None, :, None], (batch, height, width, channels))
        return ops.take_along_axis(ops.take_along_axis(padded, rows, axis=1), cols, axis=2)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "seed": self.seed, "padding": self.padding}
