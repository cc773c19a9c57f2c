"""A meta set streamed from files: each training step's meta batch decoded by `tf.data`, next to
the training batch, so that memory does not grow with the trusted set.

`GDWModel` holds an in-memory meta set (`set_meta_data`) as one tensor and draws its meta
batches inside the step. With `GDWModel.stream_meta_data` it holds only the labels, and the data
`fit` reads brings each step's meta batch: `with_meta_batches` reads the rows from
`GDWModel.meta_draws` (the same seeded permutation per pass over the meta set, the same steps
under `meta_interval`, from the model's saved position, so that a resumed run draws what an
uninterrupted one does) and decodes them as the training images are decoded
(`StreamedImages.decode_batch`, then `input_pipeline.normalize`). The step then augments them
(`MetaAugmentation`) as it augments a meta batch held in memory: the numbers are the same.
"""

from collections.abc import Callable
from collections.abc import Iterator
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from gdw_tf.data import image_files
from gdw_tf.data import input_pipeline


def with_meta_batches(
    dataset: tf.data.Dataset,
    x_meta: image_files.StreamedImages,
    y_meta: np.ndarray,
    draws: Callable[[], Iterator[np.ndarray | None]],
    *,
    meta_batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """`dataset`, each element followed by its step's meta batch: `(*element, x_meta, y_meta)`.

    The rows are drawn when an iterator over the result starts (`fit` makes one after restoring
    a backup), then decoded in a parallel, order-keeping map: only the rows drawn are ever read.
    A step that takes no meta step gets zeros. A meta image that cannot be read (a file deleted
    or truncated during the run) is listed as `StreamedImages.decode_batch` lists it, and the
    batch's other images stand in for it, in turn: every meta batch keeps its static shape, the
    shape of one held in memory, so that the step's kernels, and its numbers, are the same.

    Args:
      dataset: the batches `fit` reads, one element per step (with `input_context`, one per
        replica of this input pipeline, in turn: `input_pipeline.train_dataset`'s shares).
      x_meta: the meta set's images, streamed.
      y_meta: their labels.
      draws: called as an iterator over the data starts; returns, per step, the rows of
        `x_meta` its meta batch holds, or None for a step that draws none
        (`GDWModel.meta_draws`).
      meta_batch_size: the rows of a meta batch (over all replicas).
      mean, std: the normalisation of the training images (`input_pipeline.normalize`).
      input_context: this input pipeline's place among the strategy's: it yields the contiguous
        share of each meta batch of each of its replicas, in turn.

    Returns:
      A `tf.data.Dataset` whose elements end with `(images float32, labels int64)`.

    Raises:
      ValueError: if `x_meta` is not streamed or `y_meta` has another length.
    """
    if not image_files.is_streamed(x_meta):
        raise ValueError(
            "with_meta_batches streams image files (StreamedImages); give a meta set in memory "
            "to GDWModel(meta_data=...) instead."
        )
    if len(y_meta) != len(x_meta):
        raise ValueError(f"{len(x_meta)} meta images but {len(y_meta)} labels.")
    total, first, local = 1, 0, 1
    if input_context is not None:
        total = input_context.num_replicas_in_sync
        local = total // input_context.num_input_pipelines
        first = input_context.input_pipeline_id * local
    share = meta_batch_size // total

    def rows():
        for drawn in draws():
            if drawn is None:
                yield np.zeros(meta_batch_size, np.int64), False
            else:
                yield np.asarray(drawn, np.int64), True

    steps = tf.data.Dataset.from_generator(
        rows,
        output_signature=(
            tf.TensorSpec([meta_batch_size], tf.int64),
            tf.TensorSpec([], tf.bool),
        ),
    )
    # Each of this pipeline's replicas' shares of a step's rows, in turn.
    steps = steps.flat_map(
        lambda drawn, draw: tf.data.Dataset.from_tensor_slices(
            (tf.reshape(drawn, [total, share])[first : first + local], tf.fill([local], draw))
        )
    )
    keys, labels = input_pipeline.row_tables(x_meta, y_meta)

    def meta_batch(drawn, draw):
        def decoded():
            images, ok = x_meta.decode_batch(keys(drawn))
            read = tf.shape(images)[0]
            check = tf.debugging.assert_positive(
                read,
                message="none of the images of a meta batch could be read (see the warnings, "
                "and skipped_files.txt in a run's directory); check the trusted folder",
            )
            # The rows read stand in, in turn, for any that could not be: the batch keeps its
            # static shape (that of a meta batch held in memory: the same kernels, the same
            # numbers).
            with tf.control_dependencies([check]):
                refill = tf.range(share) % read
            images = input_pipeline.normalize(tf.gather(images, refill), mean, std)
            return images, tf.gather(tf.boolean_mask(labels(drawn), ok), refill)

        def unused():  # A step without a meta step reads no image.
            return tf.zeros([share, *x_meta.shape[1:]], tf.float32), tf.zeros([share], tf.int64)

        return tf.cond(draw, decoded, unused)

    meta = steps.map(meta_batch, num_parallel_calls=tf.data.AUTOTUNE)
    combined = tf.data.Dataset.zip(dataset, meta).map(lambda element, batch: (*element, *batch))
    return combined.prefetch(tf.data.AUTOTUNE)
