"""Export a trained backbone as a TensorFlow SavedModel for serving.

The SavedModel's `serve` signature (also its `serving_default`) takes raw `uint8` images
`[N, H, W, C]`, any `N`, and returns `{"probabilities": [N, C] float32, "classes": [N] int64}`.
Normalisation (`(x / 255 − mean) / std`, per channel, as in `gdw_tf.data.input_pipeline.normalize`)
is inside, and the backbone runs in inference mode (BatchNorm uses its moving statistics). The file
is written by Keras' `keras.export.ExportArchive`, so it loads with `tf.saved_model.load` (or
TF Serving) in a process that has neither gdw_tf nor its custom layers.

From the command line, for a run directory written by `gdw_tf.train` (`model.keras`,
`config.json`):

    python -m gdw_tf.export --run_dir=RUN --export_dir=DIR [--overwrite]
"""

import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf
from absl import app
from absl import flags

from gdw_tf.core.model import GDWModel
from gdw_tf.data import input_pipeline
from gdw_tf.nets import backbones  # noqa: F401  Registers `gdw_tf>OptionAShortcut` for load_model.
from gdw_tf.runs.run_dir import CONFIG_FILE
from gdw_tf.runs.run_dir import MODEL_FILE

SIGNATURE = "serve"


def serving_function(backbone, mean, std):
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


def export_serving(backbone, export_dir, mean, std):
    """Writes a SavedModel whose `serve` signature classifies raw `uint8` images.

    Args:
      backbone: a functional `keras.Model` from normalised float32 images `[N, H, W, C]` to
        logits `[N, C]`; for a `GDWModel`, its `backbone` is exported.
      export_dir: the SavedModel directory to write (files already there are replaced; see
        `check_export_dir` to refuse a non-empty one).
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


def check_export_dir(export_dir, overwrite=False):
    """Refuses an export directory that holds files, unless `overwrite`.

    Raises:
      ValueError: if `export_dir` is a file, or a non-empty directory and `overwrite` is false.
    """
    if os.path.isfile(export_dir):
        raise ValueError(f"--export_dir={export_dir} is a file; give a directory path.")
    if os.path.isdir(export_dir) and os.listdir(export_dir) and not overwrite:
        raise ValueError(
            f"--export_dir={export_dir} is not empty; pass --overwrite to replace it, or choose "
            "another directory."
        )


def export_run(run_dir, export_dir, overwrite=False):
    """Exports the backbone of a finished run directory (`model.keras` + `config.json`).

    The SavedModel is written next to `export_dir` first and moved into place once complete, so
    an export that fails half-way leaves any earlier one intact.

    Args:
      run_dir: a run directory written by `gdw_tf.train`.
      export_dir: the SavedModel directory to write.
      overwrite: replace a non-empty `export_dir`.

    Returns:
      `export_dir`.

    Raises:
      ValueError: for a missing run directory or file, an unreadable model or config, a
        config without normalisation statistics, or a non-empty `export_dir` without `overwrite`.
    """
    check_export_dir(export_dir, overwrite)
    backbone, config = load_run(run_dir)
    normalization = config["normalization"]
    staging = os.path.normpath(export_dir) + ".partial"
    if os.path.exists(staging):
        shutil.rmtree(staging)
    try:
        export_serving(backbone, staging, normalization["mean"], normalization["std"])
    except (OSError, tf.errors.OpError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        reason = getattr(err, "message", None) or getattr(err, "strerror", None) or err
        raise ValueError(
            f"could not write the export next to {export_dir} ({reason}); give "
            "an --export_dir you may write to."
        ) from None
    if os.path.isdir(export_dir):
        shutil.rmtree(export_dir)
    os.replace(staging, export_dir)
    return export_dir


def load_run(run_dir):
    """Reads `(backbone, config)` from a run directory, checking they agree.

    A saved `GDWModel` is accepted too; its backbone is returned.

    Raises:
      ValueError: if the directory, `model.keras` or `config.json` is missing or unreadable,
        the config lacks `normalization.mean`/`std` or `num_classes`, or `num_classes` does not
        match the model's output.
    """
    if not os.path.isdir(run_dir):
        raise ValueError(f"--run_dir={run_dir} does not exist; give the directory of a run.")
    model_path = os.path.join(run_dir, MODEL_FILE)
    config_path = os.path.join(run_dir, CONFIG_FILE)
    for path in (model_path, config_path):
        if not os.path.isfile(path):
            raise ValueError(
                f"{path} is missing: is {run_dir} the directory of a finished gdw_tf.train run?"
            )
    config = _read_config(config_path)
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as err:  # Keras raises many kinds for a bad file; all mean "unreadable".
        raise ValueError(f"Could not load {model_path}: {type(err).__name__}: {err}.") from err
    backbone = model.backbone if isinstance(model, GDWModel) else model
    num_classes = backbone.outputs[0].shape[-1]
    if num_classes != config["num_classes"]:
        raise ValueError(
            f"{model_path} gives {num_classes} logits but {config_path} says num_classes="
            f"{config['num_classes']}; the two files come from different runs."
        )
    return backbone, config


def _read_config(path):
    """The run config at `path`, checked for `num_classes` and `normalization.mean`/`std`."""
    try:
        with open(path) as file:
            config = json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"Could not read {path} as JSON: {err}.") from err
    normalization = config.get("normalization") if isinstance(config, dict) else None
    if (
        not isinstance(normalization, dict)
        or not {"mean", "std"} <= normalization.keys()
        or "num_classes" not in config
    ):
        raise ValueError(
            f"{path} is not a gdw_tf run config: it needs num_classes and "
            '"normalization": {"mean": [...], "std": [...]}.'
        )
    return config


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


def define_flags():
    """Defines the command-line flags (only when run as a script, so importers are unaffected)."""
    flags.DEFINE_string("run_dir", None, "Run directory holding model.keras and config.json.")
    flags.DEFINE_string("export_dir", None, "Directory to write the SavedModel to.")
    flags.DEFINE_bool("overwrite", False, "Replace a non-empty --export_dir.")
    flags.mark_flags_as_required(["run_dir", "export_dir"])


def main(argv):
    """Exports `--run_dir` to `--export_dir`; a bad input exits with one line on stderr."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    try:
        export_run(FLAGS.run_dir, FLAGS.export_dir, overwrite=FLAGS.overwrite)
    except ValueError as err:
        raise SystemExit("gdw_tf.export: error: " + " ".join(str(err).split())) from None
    print(f"Wrote a SavedModel (signature {SIGNATURE!r}, uint8 images in) to {FLAGS.export_dir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
