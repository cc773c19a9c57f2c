"""A trained backbone as a TensorFlow SavedModel for serving.

The SavedModel's `serve` signature (also its `serving_default`) takes raw `uint8` images
`[N, H, W, C]`, any `N`, and returns `{"probabilities": [N, C] float32, "classes": [N] int64}`.
Normalisation (`(x / 255 − mean) / std`, per channel, as in `gdw_tf.data.input_pipeline.normalize`)
is inside, and the backbone runs in inference mode (BatchNorm uses its moving statistics). The file
is written by Keras' `keras.export.ExportArchive`, so it loads with `tf.saved_model.load` (or
TF Serving) in a process that has neither gdw_tf nor its custom layers. A run directory is
exported by `gdw_tf.runs.run_dir.export_run` (`python -m gdw_tf.export`).
"""

from collections.abc import Callable
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from gdw_tf.core.model import GDWModel
from gdw_tf.data import input_pipeline

SIGNATURE = "serve"


def serving_function(
    backbone: keras.Model, mean: Sequence[float], std: Sequence[float]
) -> Callable:
    """The function `uint8 images [N, H, W, C] -> {"probabilities", "classes"}`.

    Args:
      backbone: a `keras.Model` from normalised float32 images to logits `[N, C]`.
      mean, std: per-channel statistics of images scaled to [0, 1].

    Returns:
      A Python function of one `uint8` tensor.
    """

    expected = tuple(backbone.inputs[0].shape[1:])

    def serve(images):
        # A loaded signature (and TF Serving) does not enforce its declared shape: images of
        # another size could be reshaped or pooled into a wrong answer. Refuse them instead.
        images = tf.ensure_shape(images, (None,) + expected)
        logits = backbone(input_pipeline.normalize(images, mean, std), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        classes = tf.argmax(probabilities, axis=-1, output_type=tf.int64)
        return {"probabilities": probabilities, "classes": classes}

    return serve


def export_serving(
    backbone: keras.Model, export_dir: str, mean: Sequence[float], std: Sequence[float]
) -> str:
    """Writes a SavedModel whose `serve` signature classifies raw `uint8` images.

    Args:
      backbone: a functional `keras.Model` from normalised float32 images `[N, H, W, C]` to
        logits `[N, C]`; for a `GDWModel`, its `backbone` is exported.
      export_dir: the SavedModel directory to write (files already there are replaced; see
        `gdw_tf.runs.run_dir.check_export_dir` to refuse a non-empty one).
      mean, std: per-channel statistics of the training images scaled to [0, 1], as used in
        training (`gdw_tf.data.input_pipeline.normalization_stats`).

    Returns:
      `export_dir`.

    Raises:
      ValueError: if the backbone does not take images `[N, H, W, C]` and give logits `[N, C]`,
        or `mean`/`std` do not have one finite entry per channel (`std` > 0).
    """
    if isinstance(backbone, GDWModel):
        backbone = backbone.backbone
    image_shape, mean, std = _check_backbone(backbone, mean, std)
    archive = keras.export.ExportArchive()
    archive.track(backbone)
    archive.add_endpoint(
        name=SIGNATURE,
        fn=serving_function(backbone, mean, std),
        input_signature=[tf.TensorSpec((None,) + image_shape, tf.uint8, name="images")],
    )
    archive.write_out(export_dir, verbose=False)
    return export_dir


def _check_backbone(backbone, mean, std):
    """`(image_shape, mean, std)` after checking the backbone and the statistics fit."""
    if not isinstance(backbone, keras.Model) or not getattr(backbone, "inputs", None):
        raise ValueError(
            "backbone must be a functional keras.Model (built from keras.Input) from images "
            "[N, H, W, C] to logits [N, C]."
        )
    image_shape = tuple(backbone.inputs[0].shape[1:])
    output_shape = tuple(backbone.outputs[0].shape)
    if len(backbone.inputs) != 1 or len(image_shape) != 3 or image_shape[-1] is None:
        raise ValueError(
            f"backbone must take one input of images [N, H, W, C] with C known; it takes "
            f"{[tuple(x.shape) for x in backbone.inputs]}."
        )
    if len(output_shape) != 2:
        raise ValueError(f"backbone must give logits [N, C]; it gives {output_shape}.")
    channels = image_shape[-1]
    mean = np.asarray(mean, np.float64).reshape(-1)
    std = np.asarray(std, np.float64).reshape(-1)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ValueError(
            f"mean and std need one entry per channel ({channels}); got {mean.size} and {std.size}."
        )
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError(f"mean and std must be finite and std > 0; got {mean}, {std}.")
    return image_shape, mean, std
