"""A complete, resumable training run: data protocol → GDWModel → fit → results on disk.

`run(config)` does what `python -m gdw_tf.train` does, from a plain `gdw_tf.config.Config`:

1. refuses an output directory holding a finished run (unless `overwrite`) or an unfinished
   run with another configuration — before any data is loaded;
2. loads the dataset, draws the split (`gdw_tf.data.make_split`: disjoint clean meta set, label
   noise, long tail) and saves it with the configuration — or, resuming, loads them;
3. trains `GDWModel` with SGD, the reference's per-epoch cosine schedule, validation on the test
   set each epoch, and Keras callbacks for the progress bar, `history.csv`, TensorBoard logs,
   per-epoch backups (`BackupAndRestore`) and a stop on a non-finite loss;
4. writes `example_weights.npz`, `model.keras` (the backbone), optionally a serving export,
   and last `results.json`, whose presence marks the run finished.

Run directory:

    config.json           the config, and what export needs: dataset, num_classes,
                          input_shape, normalization {mean, std} (per channel, of images
                          scaled to [0, 1])
    split.npz             `gdw_tf.data.Split`: meta/train indices, true and given labels
    history.csv           one row per epoch: train/…, meta/…, weights/…, test/loss and
                          test/accuracy (also as Keras' val_loss, val_accuracy),
                          learning_rate, time/epoch_seconds
    tensorboard/          the same scalars for TensorBoard (Keras prefixes `epoch_`)
    backup/               BackupAndRestore's latest epoch (removed once the run is finished)
    example_weights.npz   per training example: index, labels, corrupted flag, weights
    model.keras           the trained backbone (normalised float images in, logits out)
    results.json          accuracies (fractions in [0, 1]), noise, detection AUROC, timing
    workers/              with --distribute=multi_worker: the other workers' run directories

Devices (`config.distribute`): `none` trains on one device; `mirrored` and `multi_worker` build
the model under a `tf.distribute` strategy, each replica taking its share of every (global)
training and meta batch; `num_replicas` is recorded with the settings. On Keras' JAX backend
`mirrored` is Keras' `DataParallel` over JAX's devices, and `multi_worker` is refused. With
`multi_worker` every worker runs the same command, trains the same weights and writes a complete
run directory of its own: the chief (task type `chief`, or `worker` 0 when the cluster has no
chief) writes `output_dir`, every other worker `output_dir/workers/<task type><index>` (e.g.
`workers/worker1`), which the chief leaves alone. Each worker thus resumes from its own backup
(the workers' backups are interchangeable).

Resuming: a run started again with the same configuration continues from the last finished
epoch and ends with the weights an uninterrupted run ends with. `BackupAndRestore` restores
every variable of the model (backbone, both optimizers, meta-batch position, example weights,
meta augmentation's counter); `_ReplayDataOrder` restores the training data's shuffle and
augmentation order, which `tf.data` keeps outside the model. (Both rely on TensorFlow's
deterministic ops for bit-equal results: `tf.config.experimental.enable_op_determinism()`.)
"""

import csv
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
import time

import keras
from keras import ops
import numpy as np
import tensorflow as tf

from gdw_tf import data
from gdw_tf import models
from gdw_tf import backend
from gdw_tf.config import DISTRIBUTE
from gdw_tf.config import Config
from gdw_tf.config import OUTER_LR_BY_CLASSES
from gdw_tf.model import GDWModel
from gdw_tf.model import hash_uint32

CONFIG_FILE = "config.json"
SPLIT_FILE = "split.npz"
HISTORY_FILE = "history.csv"
TENSORBOARD_DIR = "tensorboard"
BACKUP_DIR = "backup"
EXAMPLE_WEIGHTS_FILE = "example_weights.npz"
MODEL_FILE = "model.keras"
RESULTS_FILE = "results.json"
WORKERS_DIR = "workers"
_RUN_FILES = (CONFIG_FILE, SPLIT_FILE, HISTORY_FILE, TENSORBOARD_DIR, BACKUP_DIR,
              EXAMPLE_WEIGHTS_FILE, MODEL_FILE, RESULTS_FILE)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good backup was kept."""


def run(config):
    """Trains as `config` says, writes the run directory, and returns the results dict.

    With `config.distribute="multi_worker"`, every worker calls this with the same config; a
    worker other than the chief writes `output_dir/workers/<task type><index>` instead of
    `output_dir` (see the module docstring) and returns its own, identical, results.

    Raises:
      ValueError: on bad input (a finished run or another config in `output_dir`, an unknown
        or corrupt dataset, a meta set larger than the smallest class allows, a meta batch that
        does not split across the replicas, ...), before any training.
      NonFiniteLossError: if the loss became non-finite (the last good epoch stays in backup/).
    """
    start = time.perf_counter()
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs any op.
    strategy = make_strategy(config.distribute)
    config = worker_config(config, strategy)
    replicas = num_replicas(strategy)
    check_replicas(config, replicas)
    prepare_output_dir(config)
    # Python, NumPy and TensorFlow seeds: the initial weights, and with the dataset's own seeds
    # (which TensorFlow combines with its global seed) the data order.
    keras.utils.set_random_seed(config.seed)

    # Data: the dataset, then the split (drawn once, then reloaded).
    dataset = load_data(config)
    split = load_or_make_split(config, dataset.y_train, dataset.num_classes)
    settings = run_settings(config, dataset, split, replicas)
    _write_json(os.path.join(config.output_dir, CONFIG_FILE),
                {"config": config.to_dict(), **settings})

    # Pipelines: the noisy training set with example indices, the clean meta set as arrays.
    mean, std = settings["normalization"]["mean"], settings["normalization"]["std"]
    train_data = data.train_dataset(
        dataset.x_train[split.train_indices], split.train_noisy_labels, config.batch_size,
        config.seed, settings["augment"], mean, std, with_index=True)
    test_data = data.eval_dataset(dataset.x_test, dataset.y_test, config.batch_size, mean, std)
    meta_data = None
    if config.method != "ce":
        meta_data = (data.normalize(dataset.x_train[split.meta_indices], mean, std).numpy(),
                     split.meta_labels)

    # Model and training: one pass of the (reshuffling) training set per epoch.
    with strategy.scope():
        model = build_gdw_model(config, settings, meta_data)
    model.fit(train_data.repeat(), steps_per_epoch=settings["steps_per_epoch"], shuffle=False,
              validation_data=test_data, epochs=config.epochs,
              callbacks=make_callbacks(config, train_data, settings["steps_per_epoch"]),
              verbose=config.verbose)

    # Outputs; results.json last, as the mark of a finished run.
    output_dir = config.output_dir
    history = read_history(os.path.join(output_dir, HISTORY_FILE))
    example_weights = save_example_weights(model, split,
                                           os.path.join(output_dir, EXAMPLE_WEIGHTS_FILE))
    model.backbone.save(os.path.join(output_dir, MODEL_FILE))
    if config.export_dir:
        from gdw_tf.export import export_serving

        export_serving(model.backbone, config.export_dir, mean, std)
    results = make_results(config, settings, split, history, example_weights,
                           time.perf_counter() - start)
    _write_json(os.path.join(output_dir, RESULTS_FILE), results)
    shutil.rmtree(os.path.join(output_dir, BACKUP_DIR), ignore_errors=True)
    return results


def load_data(config):
    """The dataset, cut to `max_train_examples` / `max_test_examples` if they are set."""
    dataset = data.load_dataset(config.dataset, config.data_dir)
    train, test = config.max_train_examples or None, config.max_test_examples or None
    return dataset._replace(x_train=dataset.x_train[:train], y_train=dataset.y_train[:train],
                            x_test=dataset.x_test[:test], y_test=dataset.y_test[:test])


def make_strategy(name):
    """The `tf.distribute` strategy of `--distribute=name` (`gdw_tf.config.DISTRIBUTE`).

    `none` is TensorFlow's default strategy (one device); `mirrored` a `MirroredStrategy` over
    TensorFlow's default devices (all GPUs, else the CPU); `multi_worker` a
    `MultiWorkerMirroredStrategy` of the cluster in `TF_CONFIG`, which must be created before
    TensorFlow runs any op. On Keras' JAX backend `mirrored` sets Keras' `DataParallel`
    distribution over JAX's devices instead, and the default strategy is returned.

    Raises:
      ValueError: if `name` is unknown, is `multi_worker` on another backend than TensorFlow,
        or is `multi_worker` without a JSON `TF_CONFIG`.
    """
    if name == "none":
        return tf.distribute.get_strategy()
    if keras.backend.backend() == "jax" and name == "mirrored":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        return tf.distribute.get_strategy()
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"--distribute={name} uses tf.distribute, which needs KERAS_BACKEND=tensorflow "
            f"(now {keras.backend.backend()}); --distribute=mirrored trains on this machine's "
            "devices on JAX too.")
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        example = ('{"cluster": {"worker": ["host0:port", "host1:port"]}, '
                   '"task": {"type": "worker", "index": 0}}')
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "--distribute=multi_worker reads the cluster from the TF_CONFIG environment "
                f"variable, which is not set; set it on every worker (e.g. '{example}'), or use "
                "--distribute=mirrored on one machine.")
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as err:
            raise ValueError(f"the TF_CONFIG environment variable is not JSON ({err}); set it "
                             f"as '{example}' with this worker's index.") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown --distribute={name!r}; expected one of {', '.join(DISTRIBUTE)}.")


def num_replicas(strategy):
    """How many replicas share each batch: the strategy's, or the devices of Keras' JAX
    distribution."""
    distribution = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if distribution is not None:
        return int(np.prod(distribution.device_mesh.shape))
    return strategy.num_replicas_in_sync


def worker_config(config, strategy):
    """`config` as this worker runs it: unchanged on the chief (and without a cluster);
    elsewhere writing to `output_dir/workers/<task type><index>`, exporting nothing."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return config
    task_type, index = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if task_type == "chief" or (task_type == "worker" and index == 0 and not has_chief):
        return config
    return dataclasses.replace(
        config, output_dir=os.path.join(config.output_dir, WORKERS_DIR, f"{task_type}{index}"),
        export_dir=None)


def check_replicas(config, num_replicas):
    """Refuses a configuration that cannot train on `num_replicas` replicas.

    Raises:
      ValueError: if the meta batch does not split evenly across the replicas, or the nested
        meta-gradient or (on TensorFlow) a meta interval above 1, both one replica only, is
        asked for with more than one.
    """
    if config.method == "ce" or num_replicas == 1:
        return
    if config.meta_batch_size % num_replicas:
        raise ValueError(
            f"--meta_batch_size={config.meta_batch_size} must be a multiple of the number of "
            f"replicas ({num_replicas}, --distribute={config.distribute}): each replica takes an "
            "equal share of the meta batch.")
    if config.meta_grad == "nested":
        raise ValueError(
            f"--meta_grad=nested runs on one replica only (here {num_replicas}, "
            f"--distribute={config.distribute}); use --meta_grad=jvp.")
    if config.meta_interval > 1 and keras.backend.backend() == "tensorflow":
        raise ValueError(
            f"--meta_interval={config.meta_interval} runs on one replica only on TensorFlow (here "
            f"{num_replicas}, --distribute={config.distribute}); use --meta_interval=1, or "
            "KERAS_BACKEND=jax.")


def run_settings(config, dataset, split, num_replicas):
    """What the run derives from config and data: shapes, normalisation, resolved `auto`s, and
    the number of replicas it trains on."""
    mean, std = data.normalization_stats(config.dataset, dataset.x_train)
    input_shape = [int(d) for d in dataset.x_train.shape[1:]]
    return {
        "dataset": config.dataset,
        "num_classes": int(dataset.num_classes),
        "input_shape": input_shape,
        "normalization": {"mean": [float(m) for m in mean], "std": [float(s) for s in std]},
        "augment": resolve_augment(config.augment, input_shape),
        "outer_lr": resolve_outer_lr(config.outer_lr, dataset.num_classes),
        "jit_compile": backend.resolve_jit_compile(config.jit_compile),
        "num_train": int(len(split.train_indices)),
        "num_meta": int(len(split.meta_indices)),
        "steps_per_epoch": math.ceil(len(split.train_indices) / config.batch_size),
        "num_replicas": int(num_replicas),
    }


def build_gdw_model(config, settings, meta_data):
    """The compiled `GDWModel` of the run, tracking every training example's weights."""
    backbone = models.build_model(config.model, settings["input_shape"],
                                  settings["num_classes"])
    model = GDWModel(
        backbone,
        settings["num_classes"],
        method=config.method,
        meta_data=meta_data,
        meta_batch_size=config.meta_batch_size,
        outer_lr=settings["outer_lr"],
        clip=config.clip,
        l2=config.l2,
        meta_grad=config.meta_grad,
        meta_interval=config.meta_interval,
        meta_scope=config.meta_scope,
        meta_augmentation=MetaAugmentation(seed=config.seed) if settings["augment"] else None,
        seed=config.seed,
        track_examples=settings["num_train"],
    )
    # L2 is in the step (PyTorch-style, GDWModel(l2=...)), not in the optimizer.
    model.compile(keras.optimizers.SGD(config.lr, momentum=config.momentum),
                  jit_compile=settings["jit_compile"])
    return model


def make_callbacks(config, train_data, steps_per_epoch):
    """Schedule, logs, per-epoch backups and the NaN guard, in the order they must run."""
    output_dir = config.output_dir
    callbacks = [
        _EpochLogs(),  # First: the loggers below see its entries.
        keras.callbacks.LearningRateScheduler(
            lambda epoch: cosine_lr(config.lr, epoch, config.epochs)),
        _TerminateOnNaN(os.path.join(output_dir, BACKUP_DIR)),
        keras.callbacks.CSVLogger(os.path.join(output_dir, HISTORY_FILE), append=True),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(keras.callbacks.TensorBoard(os.path.join(output_dir, TENSORBOARD_DIR),
                                                     write_graph=False))
    else:
        logging.warning("The tensorboard package is not installed: no TensorBoard logs "
                        "(pip install tensorboard).")
    return callbacks + [
        # Last at epoch end: an epoch is backed up only once it is logged.
        keras.callbacks.BackupAndRestore(os.path.join(output_dir, BACKUP_DIR),
                                         delete_checkpoint=False),
        _ReplayDataOrder(train_data, steps_per_epoch),  # After the restore.
    ]


# --------------------------------------------------------------------------------------------
# The run directory


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
        for name in _RUN_FILES:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    elif os.path.exists(os.path.join(output_dir, RESULTS_FILE)):
        raise ValueError(
            f"{output_dir} holds a finished run (results.json); choose another --output_dir "
            "or pass --overwrite to replace it.")
    else:
        saved = _read_json(os.path.join(output_dir, CONFIG_FILE))
        if saved is not None:
            differences = config_differences(saved.get("config", {}), config)
            if differences:
                raise ValueError(
                    f"{output_dir} holds an unfinished run with another configuration "
                    f"({'; '.join(differences)}); rerun with the same flags to resume it, "
                    "choose another --output_dir, or pass --overwrite to start over.")
    if config.export_dir:
        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"--export_dir writes a TensorFlow SavedModel, which needs KERAS_BACKEND=tensorflow "
                f"(now {keras.backend.backend()}); drop --export_dir and export the run afterwards "
                "with python -m gdw_tf.export.")
        from gdw_tf.export import check_export_dir

        check_export_dir(config.export_dir, config.overwrite)
    os.makedirs(output_dir, exist_ok=True)


def config_differences(saved, config):
    """The run-defining fields in which a saved config dict differs from `config`, as text. A
    field the saved config lacks (a run from before the flag existed) ran with its default."""
    defaults = dataclasses.asdict(Config(output_dir=config.output_dir))
    saved = {**defaults, **saved}
    return [f"{name}: saved {saved.get(name)!r}, now {value!r}"
            for name, value in config.run_defining().items() if saved.get(name) != value]


def load_or_make_split(config, labels, num_classes):
    """The run's split: loaded from `split.npz` if present, else drawn and saved atomically.

    Raises:
      ValueError: if the meta set cannot be class-balanced (too few examples in a class), or
        a saved split does not fit the dataset.
    """
    path = os.path.join(config.output_dir, SPLIT_FILE)
    if os.path.exists(path):
        split = data.Split.load(path)
        indices = np.concatenate([split.meta_indices, split.train_indices])
        if (indices.max(initial=-1) >= len(labels)
                or not np.array_equal(labels[split.train_indices], split.train_true_labels)):
            raise ValueError(f"{path} does not match the dataset's labels; the data changed "
                             "since the run started. Use another --output_dir or --overwrite.")
        return split
    smallest = int(np.bincount(labels, minlength=num_classes).min())
    if config.num_meta > num_classes * smallest:
        raise ValueError(
            f"--num_meta={config.num_meta} is too large: the smallest class of {config.dataset} "
            f"has {smallest} training examples, so a class-balanced meta set holds at most "
            f"{num_classes * smallest} ({num_classes} classes x {smallest}). Lower --num_meta.")
    split = data.make_split(labels, num_classes, config.num_meta, config.noise, config.ratio,
                            config.imbalance, config.seed)
    temporary = path + ".tmp"
    split.save(temporary)
    os.replace(temporary, path)
    return split


def read_history(path):
    """Rows of `history.csv` as dicts of floats, one per epoch (a rerun epoch's last row)."""
    by_epoch = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            by_epoch[int(row["epoch"])] = {key: float(value) for key, value in row.items()
                                           if value not in ("", "NA")}
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def save_example_weights(model, split, path):
    """Writes each training example's weights of the last epoch with its labels; returns them."""
    arrays = {
        "index": split.train_indices,
        "true_label": split.train_true_labels,
        "given_label": split.train_noisy_labels,
        "corrupted": split.train_corrupted,
        "instance_weight": np.asarray(model.example_weights),
        "labelled_class_weight": np.asarray(model.example_label_weights),
    }
    np.savez(path, **arrays)
    return arrays


def make_results(config, settings, split, history, example_weights, seconds):
    """The `results.json` dict.

    Accuracies are fractions in [0, 1]; `metrics` are the last epoch's logged values;
    `timing.total_seconds` is the wall time of the invocation that finished the run (since it
    resumed, for a resumed run), `seconds_per_epoch` covers training and evaluation.
    """
    accuracy = [row["test/accuracy"] for row in history]
    final = {key: value for key, value in history[-1].items()
             if "/" in key and key != "time/epoch_seconds"}
    corrupted = example_weights["corrupted"]
    return {
        "test_accuracy": {
            "last": accuracy[-1],
            "best": max(accuracy),
            "mean_last5": float(np.mean(accuracy[-5:])),
            "per_epoch": accuracy,
        },
        "metrics": final,
        "noise": {
            "realised_rate": float(split.realised_noise_rate),
            "transition_matrix": split.empirical_transition_matrix.tolist(),
            "model_transition_matrix": split.transition_matrix.tolist(),
        },
        "detection_auroc": detection_aurocs(config.method, example_weights),
        "example_weights": {
            f"{kind}_mean_{group}": _mean_or_none(example_weights[f"{kind}_weight"][mask])
            for kind in ("instance", "labelled_class")
            for group, mask in (("clean", ~corrupted), ("corrupted", corrupted))
        },
        "config": {**config.to_dict(), **settings},
        "timing": {
            "total_seconds": seconds,
            "seconds_per_epoch": [row["time/epoch_seconds"] for row in history],
            "steps_per_epoch": settings["steps_per_epoch"],
        },
    }


def detection_aurocs(method, example_weights):
    """AUROCs of "low weight ⇒ corrupted label"; None for CE or without both kinds of labels."""
    corrupted = example_weights["corrupted"]
    if method == "ce" or corrupted.all() or not corrupted.any():
        return None
    aurocs = {"instance_weight": auroc(-example_weights["instance_weight"], corrupted)}
    aurocs["labelled_class_weight"] = (
        auroc(-example_weights["labelled_class_weight"], corrupted) if method == "gdw" else None)
    return aurocs


def auroc(scores, positive):
    """Area under the ROC curve of `scores` for the `positive` examples (Mann–Whitney U).

    Ties count one half. Returns None without a positive or a negative example.
    """
    scores = np.asarray(scores, np.float64)
    positive = np.asarray(positive, bool)
    num_pos, num_neg = int(positive.sum()), int((~positive).sum())
    if not num_pos or not num_neg:
        return None
    order = np.argsort(scores, kind="stable")
    sorted_scores = scores[order]
    # Average 1-based ranks over runs of tied scores.
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    ends = np.r_[starts[1:], len(scores)]
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    u = ranks[positive].sum() - num_pos * (num_pos + 1) / 2.0
    return float(u / (num_pos * num_neg))


def cosine_lr(lr, epoch, epochs):
    """The reference's per-epoch schedule `lr (1 + cos(π epoch / E)) / 2`."""
    return lr * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


def resolve_augment(augment, input_shape):
    """`auto` is on for 32x32 RGB images (CIFAR), as the reference augments CIFAR."""
    if augment == "auto":
        return tuple(input_shape) == (32, 32, 3)
    return augment == "true"


def resolve_outer_lr(outer_lr, num_classes):
    """GDW's β: the given value, or the reference's 100 (≤ 10 classes) / 1000 (more)."""
    if outer_lr == OUTER_LR_BY_CLASSES:
        return 100.0 if num_classes <= 10 else 1000.0
    return float(outer_lr)


def _mean_or_none(values):
    return float(np.mean(values)) if len(values) else None


def _read_json(path):
    """The JSON content of `path`, or None if there is no such file."""
    if not os.path.exists(path):
        return None
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is unreadable ({err}); move it away or pass --overwrite to "
                         "start the run over.") from None


def _write_json(path, content):
    """Writes JSON atomically (a temporary file, then a rename)."""
    temporary = path + ".tmp"
    with open(temporary, "w") as file:
        json.dump(content, file, indent=2)
    os.replace(temporary, path)


# --------------------------------------------------------------------------------------------
# Keras pieces


@keras.saving.register_keras_serializable(package="gdw_tf")
class MetaAugmentation(keras.layers.Layer):
    """Reflect-pad 4, random crop, horizontal flip of a batch of normalised meta images.

    The training images' augmentation (`gdw_tf.data.random_crop_and_flip`), applied after
    normalisation: reflect padding copies pixels, so it commutes with per-channel
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
        self.calls = self.add_weight(shape=(), dtype="int32", initializer="zeros",
                                     trainable=False, name="calls",
                                     aggregation="only_first_replica")

    def call(self, images, training=False):
        if not training:
            return images
        p = self.padding
        batch = ops.shape(images)[0]
        height, width, channels = images.shape[1], images.shape[2], images.shape[3]
        padded = ops.pad(images, [[0, 0], [p, p], [p, p], [0, 0]], mode="reflect")
        key = hash_uint32(ops.bitwise_xor(hash_uint32(ops.cast(self.seed, "uint32")),
                                          ops.cast(self.calls, "uint32")))
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


class _EpochLogs(keras.callbacks.Callback):
    """Adds `test/loss`, `test/accuracy` (Keras' `val_…`, on the test set) and the epoch's wall
    time (training and evaluation), `time/epoch_seconds`, to the epoch's logs."""

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        for name in ("loss", "accuracy"):
            if f"val_{name}" in logs:
                logs[f"test/{name}"] = logs[f"val_{name}"]
        logs["time/epoch_seconds"] = time.perf_counter() - self._start


class _TerminateOnNaN(keras.callbacks.TerminateOnNaN):
    """`TerminateOnNaN` on GDWModel's `train/loss`, stopping at once with a clear error.

    It raises instead of stopping gracefully, so that the epoch's end never backs up non-finite
    weights: the last good epoch stays in `backup/`.
    """

    def __init__(self, backup_dir):
        super().__init__(raise_error=True)
        self.backup_dir = backup_dir

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_batch_end(self, batch, logs=None):
        try:
            super().on_batch_end(batch, {"loss": (logs or {}).get("train/loss")})
        except RuntimeError as err:
            kept = (f"the state after epoch {self._epoch} is kept in {self.backup_dir}"
                    if self._epoch else "no epoch had finished")
            raise NonFiniteLossError(
                f"the training loss became NaN or infinite in epoch {self._epoch + 1}, batch "
                f"{batch + 1}; training stopped and {kept}. Lower --lr (or --outer_lr) and "
                "start a new run (another --output_dir, or --overwrite)."
            ) from err


class _ReplayDataOrder(keras.callbacks.Callback):
    """Puts a resumed run's training data where an uninterrupted run has it.

    `fit` reads `dataset.repeat()`, one pass per epoch, and each pass (each iterator made from
    `dataset`) draws a new shuffle and new crops. After `BackupAndRestore` has restored the
    state at the end of epoch `k` (`k` = optimizer steps / steps per epoch), making `k`
    iterators uses up the draws of the passes already trained. Must follow `BackupAndRestore`
    in the callback list.
    """

    def __init__(self, dataset, steps_per_epoch):
        super().__init__()
        self.dataset = dataset
        self.steps_per_epoch = steps_per_epoch

    def on_train_begin(self, logs=None):
        completed = int(self.model.optimizer.iterations.numpy()) // self.steps_per_epoch
        for _ in range(completed):
            iter(self.dataset)
