"""The run directory of `python -m gdw_tf.train`, and the one module that knows its files: their
names, their readers and atomic writers, the refusal of a finished or different run, resuming
with the same configuration, the split saved once, and the export of a finished run.

Run directory:

    config.json           the config, and what export needs: dataset, num_classes,
                          input_shape, normalization {mean, std} (per channel, of images
                          scaled to [0, 1])
    split.npz             `gdw_tf.data.split.Split`: meta/train indices, true and given labels
    history.csv           one row per epoch: train/…, meta/…, weights/…, test/loss and
                          test/accuracy (also as Keras' val_loss, val_accuracy),
                          learning_rate, time/epoch_seconds
    tensorboard/          the same scalars for TensorBoard (Keras prefixes `epoch_`)
    backup/               the last two epochs' state, `gdw_tf.runs.backup` (removed once the run is
                          finished)
    example_weights.npz   per training example: index, labels, corrupted flag, weights
                          (own data: no true label or corrupted flag, but an id)
    label_issues.csv      the training examples ranked by how suspicious their label is, with
                          a suggested label and a flag (`gdw_tf.labels.label_issues`)
    report.html           one self-contained page to look at: accuracy curves, estimated
                          noise, weight against loss, the most suspicious examples
                          (`gdw_tf.pages.report`)
    review.html           the flagged examples to review by keyboard; downloads the
                          corrections.csv that --corrections reads (`gdw_tf.pages.review`)
    model.keras           the trained backbone (normalised float images in, logits out)
    results.json          accuracies (fractions in [0, 1]), noise, detection AUROC, timing
                          (None where own data leaves them unknown); with
                          --trusted_data=auto, the chosen meta set (`auto_meta`); with
                          --corrections, the reviews' counts (`corrections`)
    image_scan.npz        own image files: the scan before training (`own_data`; read again
                          on resuming instead of decoding every file twice)
    skipped_files.txt     own image files that could not be read, one per line, if any: found
                          before training, or during the run (`image_files.list_skipped`)
    run.lock              locked by the process running there (`gdw_tf.runs.lock`); kept
    workers/              with --distribute=multi_worker: the other workers' run directories
"""

import contextlib
import csv
import dataclasses
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

from gdw_tf.core.model import GDWModel
from gdw_tf.data import own_data
from gdw_tf.data import split as split_lib
from gdw_tf.labels import label_issues
from gdw_tf.pages import report
from gdw_tf.pages import review
from gdw_tf.runs import serving
from gdw_tf.runs.config import Config

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.npz"
HISTORY_FILE = "history.csv"
TENSORBOARD_DIR = "tensorboard"
BACKUP_DIR = "backup"
EXAMPLE_WEIGHTS_FILE = "example_weights.npz"
LABEL_ISSUES_FILE = "label_issues.csv"
REPORT_FILE = "report.html"
REVIEW_FILE = "review.html"
MODEL_FILE = "model.keras"
RESULTS_FILE = "results.json"
WORKERS_DIR = "workers"
IMAGE_SCAN_FILE = own_data.SCAN_FILE
SKIPPED_FILE = own_data.SKIPPED_FILE
RUN_FILES = (
    CONFIG_FILE,
    SPLIT_FILE,
    HISTORY_FILE,
    TENSORBOARD_DIR,
    BACKUP_DIR,
    EXAMPLE_WEIGHTS_FILE,
    LABEL_ISSUES_FILE,
    REPORT_FILE,
    REVIEW_FILE,
    MODEL_FILE,
    RESULTS_FILE,
    IMAGE_SCAN_FILE,
    SKIPPED_FILE,
)


def prepare_output_dir(config):
    """Creates `output_dir`, or checks it may be used: a finished or different run is refused.

    With `overwrite`, the files of a previous run (and only those) are removed first.

    Raises:
      ValueError: if `output_dir` holds a finished run, or an unfinished run of another
        configuration, and `overwrite` is off; if it is a file; or if `export_dir` is a file
        or holds files and `overwrite` is off.
    """
    output_dir = config.output_dir
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir={output_dir} is a file; give a directory.")
    if config.overwrite:
        for name in RUN_FILES:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    elif os.path.exists(os.path.join(output_dir, RESULTS_FILE)):
        raise ValueError(
            f"{output_dir} holds a finished run (results.json); choose another --output_dir "
            "or pass --overwrite to replace it."
        )
    else:
        saved = read_json(os.path.join(output_dir, CONFIG_FILE))
        if saved is not None:
            differences = config_differences(saved.get("config", {}), config)
            if differences:
                raise ValueError(
                    f"{output_dir} holds an unfinished run with another configuration "
                    f"({'; '.join(differences)}); rerun with the same flags to resume it, "
                    "choose another --output_dir, or pass --overwrite to start over."
                )
    if config.export_dir:
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                "--export_dir writes a TensorFlow SavedModel, which needs "
                f"KERAS_BACKEND=tensorflow (now {keras.backend.backend()}); drop --export_dir "
                "and export the run afterwards with python -m gdw_tf.export."
            )
        check_export_dir(config.export_dir, config.overwrite)
        try:  # Now, not after training: a directory that cannot be made is refused up front.
            os.makedirs(config.export_dir, exist_ok=True)
        except OSError as err:
            raise ValueError(
                f"--export_dir={config.export_dir} cannot be created "
                f"({err.strerror or err}); give a directory you may write to."
            ) from None
    try:
        os.makedirs(output_dir, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--output_dir={output_dir} cannot be created ({err.strerror or err}); "
            "give a directory you may write to."
        ) from None
    if not os.access(output_dir, os.W_OK | os.X_OK):
        raise ValueError(
            f"--output_dir={output_dir} is not writable; give a directory you may write to."
        )


def config_differences(saved, config):
    """The run-defining fields in which a saved config dict differs from `config`, as text. A
    field the saved config lacks (a run from before the flag existed) ran with its default."""
    defaults = dataclasses.asdict(Config(output_dir=config.output_dir))
    saved = {**defaults, **saved}
    now = config.run_defining()
    return [
        f"{name}: saved {saved.get(name)!r}, now {value!r}"
        for name, value in now.items()
        if saved.get(name) != value
    ]


def load_or_make_split(config, labels, make):
    """The run's split: loaded from `split.npz` if present, else made by `make()` (the run's
    `gdw_tf.runs.run.build_split`) and saved atomically.

    Raises:
      ValueError: if a saved split does not fit the dataset (or as `make` raises).
    """
    path = os.path.join(config.output_dir, SPLIT_FILE)
    if os.path.exists(path):
        try:
            split = split_lib.Split.load(path)
        except (OSError, ValueError, KeyError, EOFError) as err:
            raise ValueError(
                f"{path} is unreadable ({_first_line(err)}); move it away or pass "
                "--overwrite to start the run over."
            ) from None
        indices = np.concatenate([split.meta_indices, split.train_indices])
        known = (
            split.train_true_labels if split.truth_known else split.train_noisy_labels
        )  # Own data: the given labels.
        if indices.max(initial=-1) >= len(labels) or not np.array_equal(
            labels[split.train_indices], known
        ):
            raise ValueError(
                f"{path} does not match the dataset's labels; the data changed "
                "since the run started. Use another --output_dir or --overwrite."
            )
        return split
    split = make()
    with atomic_path(path) as temporary:
        split.save(temporary)
    return split


def _first_line(err):
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside `path` to write to; renamed to `path` when the block ends without
    an error (a kill or a failure mid-write leaves any earlier `path` intact)."""
    temporary = path + ".tmp"
    try:
        yield temporary
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    os.replace(temporary, path)


def write_json(path, content):
    """Writes JSON atomically."""
    with atomic_path(path) as temporary, open(temporary, "w") as file:
        json.dump(content, file, indent=2)


def write_text(path, text):
    """Writes UTF-8 text atomically."""
    with atomic_path(path) as temporary, open(temporary, "w", encoding="utf-8") as file:
        file.write(text)


def write_npz(path, arrays):
    """Writes a dict of arrays as `.npz`, atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.savez(file, **arrays)


def read_json(path, required=False):
    """The JSON content of `path`; None if there is no such file, unless `required`.

    Raises:
      ValueError: if the file is unreadable or not JSON, or `required` and missing.
    """
    if not os.path.exists(path):
        if required:
            raise ValueError(f"{path} is missing.")
        return None
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is unreadable ({err}); move it away, or pass --overwrite to start a run "
            "there over."
        ) from None


def read_history(output_dir):
    """Rows of the run's `history.csv` as dicts of floats, one per epoch (a rerun epoch's last
    row); [] if there is no history yet. Values that are not numbers are left out."""
    path = os.path.join(output_dir, HISTORY_FILE)
    if not os.path.exists(path):
        return []
    by_epoch = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            values = {}
            for key, value in row.items():
                try:
                    values[key] = float(value)
                except (TypeError, ValueError):
                    pass
            by_epoch[int(values.get("epoch", len(by_epoch)))] = values
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def read_example_weights(output_dir):
    """The arrays of the run's `example_weights.npz` as a dict, but its ids (a string per
    example, which the report does not read), or None if there is none."""
    path = os.path.join(output_dir, EXAMPLE_WEIGHTS_FILE)
    if not os.path.exists(path):
        return None
    with np.load(path) as stored:
        return {name: stored[name] for name in stored.files if name != "id"}


def write_label_issues_and_report(
    output_dir, issues, images=None, stages=None, *, trusted_images=None
):
    """Writes the run's `label_issues.csv`, `report.html` and `review.html` for `issues` (its
    ranked labels).

    `images`: the training inputs in the order the issues were computed from, for the report's
    gallery (`gdw_tf.pages.report.render_report`); `trusted_images` the trusted examples'
    (`issues.trusted.position` indexes them), for the review page. `stages`: a
    `gdw_tf.runs.stages.Stages` that marks each file written.
    """
    mark = stages.mark if stages is not None else lambda stage: None
    with atomic_path(os.path.join(output_dir, LABEL_ISSUES_FILE)) as temporary:
        label_issues.write_label_issues_csv(temporary, issues)
    mark("label_issues_csv")
    write_report(output_dir, issues, images=images)
    mark("report")
    write_review(output_dir, issues, images=images, trusted_images=trusted_images)
    mark("review")


def write_report(output_dir, issues, images=None):
    """Writes `report.html` from the run's files (`config.json`, `history.csv`,
    `example_weights.npz`, each where present) and `issues`; returns its path."""
    page = report.render_report(
        issues,
        title=os.path.basename(os.path.abspath(output_dir)),
        config=read_json(os.path.join(output_dir, CONFIG_FILE)) or {},
        history=read_history(output_dir),
        example_weights=read_example_weights(output_dir),
        images=images,
        review_page=REVIEW_FILE,
    )
    path = os.path.join(output_dir, REPORT_FILE)
    write_text(path, page)
    return path


def write_review(output_dir, issues, images=None, trusted_images=None):
    """Writes `review.html`, the page on which a person reviews the flagged labels; returns its
    path."""
    page = review.render_review(
        issues,
        run_name=os.path.basename(os.path.abspath(output_dir)),
        images=images,
        trusted_images=trusted_images,
    )
    path = os.path.join(output_dir, REVIEW_FILE)
    write_text(path, page)
    return path


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


def export_run(run_dir: str, export_dir: str, overwrite: bool = False) -> str:
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
        serving.export_serving(backbone, staging, normalization["mean"], normalization["std"])
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


def load_run(run_dir: str) -> tuple[keras.Model, dict]:
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
    config = read_json(config_path, required=True)
    normalization = config.get("normalization") if isinstance(config, dict) else None
    if (
        not isinstance(normalization, dict)
        or not {"mean", "std"} <= normalization.keys()
        or "num_classes" not in config
    ):
        raise ValueError(
            f"{config_path} is not a gdw_tf run config: it needs num_classes and "
            '"normalization": {"mean": [...], "std": [...]}.'
        )
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
