"""The run directory of `python -m gdw_tf.train`: its files, the refusal of a finished or
different run, resuming with the same configuration, and the split saved once.

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
                          (`gdw_tf.labels.report`)
    review.html           the flagged examples to review by keyboard; downloads the
                          corrections.csv that --corrections reads (`gdw_tf.labels.review`)
    model.keras           the trained backbone (normalised float images in, logits out)
    results.json          accuracies (fractions in [0, 1]), noise, detection AUROC, timing
                          (None where own data leaves them unknown); with
                          --trusted_data=auto, the chosen meta set (`auto_meta`); with
                          --corrections, the reviews' counts (`corrections`)
    workers/              with --distribute=multi_worker: the other workers' run directories
"""

import dataclasses
import json
import os
import shutil

import keras
import numpy as np

from gdw_tf.data import split as split_lib
from gdw_tf.labels import label_issues
from gdw_tf.labels import report
from gdw_tf.labels import review
from gdw_tf.runs.config import Config

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.npz"
HISTORY_FILE = "history.csv"
TENSORBOARD_DIR = "tensorboard"
BACKUP_DIR = "backup"
EXAMPLE_WEIGHTS_FILE = "example_weights.npz"
LABEL_ISSUES_FILE = label_issues.LABEL_ISSUES_FILE
REPORT_FILE = report.REPORT_FILE
REVIEW_FILE = review.REVIEW_FILE
MODEL_FILE = "model.keras"
RESULTS_FILE = "results.json"
WORKERS_DIR = "workers"
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
        from gdw_tf.export import check_export_dir

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
    for fields in (saved, now):  # On the benchmarks --model=auto is resnet32, the old default.
        if not fields.get("train_data") and fields.get("model") == "auto":
            fields["model"] = "resnet32"
    if saved["outer_lr"] == -1.0:  # Before version 0.2, -1 meant "by the number of classes".
        saved["outer_lr"] = None
    return [
        f"{name}: saved {saved.get(name)!r}, now {value!r}"
        for name, value in now.items()
        if saved.get(name) != value
    ]


def load_or_make_split(config, labels, num_classes, make=None):
    """The run's split: loaded from `split.npz` if present, else drawn and saved atomically.

    `make`, if given, draws the split instead of `split.make_split` (own data, an automatic
    meta set: `gdw_tf.runs.run.split_maker`).

    Raises:
      ValueError: if the meta set cannot be class-balanced (too few examples in a class), or
        a saved split does not fit the dataset.
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
    smallest = int(np.bincount(labels, minlength=num_classes).min())
    if make is None and config.num_meta > num_classes * smallest:
        raise ValueError(
            f"--num_meta={config.num_meta} is too large: the smallest class of {config.dataset} "
            f"has {smallest} training examples, so a class-balanced meta set holds at most "
            f"{num_classes * smallest} ({num_classes} classes x {smallest}). Lower --num_meta"
            + (" or raise --max_train_examples." if config.max_train_examples else ".")
        )
    if make is None:
        split = split_lib.make_split(
            labels,
            num_classes,
            config.num_meta,
            config.noise,
            config.ratio,
            config.imbalance,
            config.seed,
        )
    else:
        split = make()
    temporary = path + ".tmp"
    split.save(temporary)
    os.replace(temporary, path)
    return split


def _first_line(err):
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def read_json(path):
    """The JSON content of `path`, or None if there is no such file."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path} is unreadable ({err}); move it away or pass --overwrite to start the run over."
        ) from None


def write_json(path, content):
    """Writes JSON atomically (a temporary file, then a rename)."""
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(content, file, indent=2)
    os.replace(temporary, path)
