"""Per-epoch backups that survive a kill at any instant, and a restore that skips damaged ones.

`AtomicBackupAndRestore` is Keras' `BackupAndRestore` (same constructor, same restore of every
variable and of the epoch to resume at) with another way of writing and choosing backups:

- Each epoch `k` is written as `epoch-0000k.weights.h5` and `epoch-0000k.json` (the epoch and the
  weights file's SHA-256). Both are written under temporary names and renamed into place; the
  JSON file, renamed last, commits the epoch. A kill at any instant leaves every committed epoch
  whole: at worst an uncommitted temporary file, which is ignored and later removed.
- The last `keep` committed epochs are kept (default 2: the latest and the previous good one).
- On restore the newest committed epoch whose weights match their checksum and load is used; a
  damaged one (truncated, changed, missing) is reported in one warning line and the previous one
  used.
- A failed write (a full disk) removes its temporary files, keeps the earlier backups, and raises
  `BackupError` with one line saying which epoch is kept.
- The workers of a cluster (`share`) each keep their own backups; they resume from the newest
  epoch that every one of them committed (a kill between two workers' backups of an epoch
  leaves one an epoch ahead, and it then resumes from its previous one).

Only `save_freq="epoch"` is supported.
"""

import errno
import hashlib
import json
import logging
import os
import re

import keras
import numpy as np

_EPOCH_FILE = re.compile(r"epoch-(\d+)\.json$")
_INCOMING = ".incoming"


class BackupError(RuntimeError):
    """A backup could not be written; the earlier backups are kept."""


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose backups survive a kill at any instant.

    Args:
      backup_dir: the directory of the backups.
      keep: how many committed epochs to keep (at least 2: the latest and the previous good one).
      delete_checkpoint: delete `backup_dir` when training ends, as Keras' callback.
      share: this worker's `gdw_tf.data.worker_share.WorkerShare` in a cluster, or None.
    """

    def __init__(self, backup_dir, keep=2, delete_checkpoint=True, share=None):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=delete_checkpoint)
        if keep < 2:
            raise ValueError(f"keep must be at least 2 (the latest and the previous); got {keep}.")
        self.keep = int(keep)
        self.share = share

    # ----------------------------------------------------------------------------------------
    # Restore

    def on_train_begin(self, logs=None):
        if not self.model.built:
            raise ValueError("To use a backup callback the model must be built before fit().")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        damaged, unfit = [], []
        epochs = self.committed_epochs()
        if self.share is not None:
            epochs = committed_by_all(epochs, self.params["epochs"], self.share)
        for epoch in sorted(epochs, reverse=True):
            problem = self._damage(epoch)
            if problem is None:
                try:
                    self.model.load_weights(self._weights_file(epoch))
                except (OSError, ValueError, KeyError) as err:
                    problem = f"does not fit this model ({_first_line(err)})"
                    unfit.append(epoch)
            if problem is None:
                self.model._initial_epoch = epoch
                self._report(damaged, f"resuming after epoch {epoch}, the newest good one")
                return
            damaged.append(f"epoch {epoch} {problem}")
        if unfit:
            raise ValueError(
                f"the backup in {self.backup_dir} does not fit this model ({'; '.join(damaged)}); "
                "it is from another model or version: move it away, or start over."
            )
        self._report(damaged, "no good backup is left: training starts from epoch 1")

    def committed_epochs(self):
        """The epochs whose backup was committed (their JSON file exists)."""
        if not os.path.isdir(self.backup_dir):
            return []
        return [
            int(match.group(1))
            for match in map(_EPOCH_FILE.match, os.listdir(self.backup_dir))
            if match
        ]

    def _damage(self, epoch):
        """Why epoch `epoch`'s backup cannot be used, or None if its files are whole."""
        try:
            with open(self._metadata_file(epoch)) as file:
                metadata = json.load(file)
            expected = metadata["sha256"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            return f"has an unreadable record ({_first_line(err)})"
        try:
            actual = _sha256(self._weights_file(epoch))
        except OSError as err:
            return f"has no readable weights ({err.strerror or err})"
        if actual != expected:
            return "has damaged weights (checksum mismatch: a truncated or changed file)"
        return None

    def _report(self, damaged, outcome):
        if damaged:
            logging.warning("backup in %s: %s; %s.", self.backup_dir, "; ".join(damaged), outcome)

    # ----------------------------------------------------------------------------------------
    # Backup

    def _save_model(self):
        epoch = self._current_epoch
        weights, metadata = self._weights_file(epoch), self._metadata_file(epoch)
        incoming_weights = os.path.join(self.backup_dir, f"{_INCOMING}.weights.h5")
        incoming_metadata = os.path.join(self.backup_dir, f"{_INCOMING}.json")
        try:
            os.makedirs(self.backup_dir, exist_ok=True)
            self._write_weights(incoming_weights)
            _fsync(incoming_weights)
            os.replace(incoming_weights, weights)
            self._write_metadata(
                incoming_metadata, {"epoch": epoch, "batch": 0, "sha256": _sha256(weights)}
            )
            _fsync(incoming_metadata)
            os.replace(incoming_metadata, metadata)  # Commits the epoch.
            _fsync(self.backup_dir)
        except OSError as err:
            for path in (incoming_weights, incoming_metadata, weights):
                if os.path.exists(path) and not os.path.exists(metadata):
                    os.remove(path)
            kept = sorted(self.committed_epochs())
            kept = f"the state after epoch {kept[-1]} is kept there" if kept else "none is kept"
            reason = (
                "no space left on device"
                if err.errno == errno.ENOSPC
                else (err.strerror or str(err))
            )
            raise BackupError(
                f"could not write the backup of epoch {epoch} to {self.backup_dir} ({reason}); "
                f"{kept}: make room and rerun the same command to resume."
            ) from err
        self._prune()

    def _write_weights(self, path):
        """Writes the model's weights (and optimizers') to `path` (a test may make it fail)."""
        self.model.save_weights(path, overwrite=True)

    def _write_metadata(self, path, metadata):
        with open(path, "w") as file:
            json.dump(metadata, file)

    def _prune(self):
        """Removes all but the newest `keep` committed epochs, and leftover temporary files."""
        keep = set(sorted(self.committed_epochs())[-self.keep :])
        for name in os.listdir(self.backup_dir):
            match = re.match(r"epoch-(\d+)\.(json|weights\.h5)$", name)
            if (match and int(match.group(1)) not in keep) or name.startswith(_INCOMING):
                os.remove(os.path.join(self.backup_dir, name))

    def _weights_file(self, epoch):
        return os.path.join(self.backup_dir, f"epoch-{epoch:05d}.weights.h5")

    def _metadata_file(self, epoch):
        return os.path.join(self.backup_dir, f"epoch-{epoch:05d}.json")


def committed_by_all(epochs, num_epochs, share):
    """The epochs of `epochs` (this worker's committed backups, the epochs done: 1 to
    `num_epochs`) that every worker of `share` committed too."""
    epochs = [epoch for epoch in epochs if 0 <= epoch <= num_epochs]
    committed = np.zeros(num_epochs + 1, np.int64)
    committed[epochs] = 1
    everywhere = share.sum(committed) == share.count
    return [epoch for epoch in epochs if everywhere[epoch]]


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path):
    """Flushes a file (or a directory's entries) to the disk, where the system allows."""
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _first_line(err):
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
