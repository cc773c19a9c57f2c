"""The Keras callbacks of a training run: the learning-rate schedule, the epoch's test metrics
and wall time, the stop on a non-finite loss, per-epoch backups, and the replay of the data order
on resuming.
"""

import importlib.util
import logging
import math
import os
import time

import keras

from gdw_tf.runs.backup import AtomicBackupAndRestore
from gdw_tf.runs.run_dir import BACKUP_DIR
from gdw_tf.runs.run_dir import HISTORY_FILE
from gdw_tf.runs.run_dir import TENSORBOARD_DIR


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good backup was kept."""


def cosine_lr(lr, epoch, epochs):
    """The reference's per-epoch schedule `lr (1 + cos(π epoch / E)) / 2`."""
    return lr * (1.0 + math.cos(math.pi * epoch / epochs)) / 2.0


def make_callbacks(config, train_data, steps_per_epoch, share=None):
    """Schedule, logs, per-epoch backups and the NaN guard, in the order they must run (`share`:
    this worker's in a cluster, whose workers resume from the same backed-up epoch)."""
    output_dir = config.output_dir
    callbacks = [
        _EpochLogs(),  # First: the loggers below see its entries.
        keras.callbacks.LearningRateScheduler(
            lambda epoch: cosine_lr(config.lr, epoch, config.epochs)
        ),
        _TerminateOnNaN(os.path.join(output_dir, BACKUP_DIR)),
        keras.callbacks.CSVLogger(os.path.join(output_dir, HISTORY_FILE), append=True),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(
            keras.callbacks.TensorBoard(
                os.path.join(output_dir, TENSORBOARD_DIR), write_graph=False
            )
        )
    else:
        logging.warning(
            "The tensorboard package is not installed: no TensorBoard logs "
            "(pip install tensorboard)."
        )
    return callbacks + [
        # Last at epoch end: an epoch is backed up only once it is logged.
        AtomicBackupAndRestore(
            os.path.join(output_dir, BACKUP_DIR), delete_checkpoint=False, share=share
        ),
        _ReplayDataOrder(train_data, steps_per_epoch),  # After the restore.
    ]


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
            kept = (
                f"the state after epoch {self._epoch} is kept in {self.backup_dir}"
                if self._epoch
                else "no epoch had finished"
            )
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
