"""Faults: a training run killed (SIGKILL) at any point, a damaged backup, a full disk.

Every fault ends either in a run that resumes to the weights, history and accuracies of an
uninterrupted run, or in one line naming the problem, with the previous backup kept.
"""

import errno
import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import REPO
from conftest import TINY_FASHION_MNIST
from conftest import backbone_weights
from conftest import read_json
from conftest import train_main

import gdw_tf
from gdw_tf.nets import backbones
from gdw_tf.runs import backup
from gdw_tf.runs import run_dir as run_dir_lib

# Fashion-MNIST, 250 training examples in batches of 50: 5 steps an epoch, 3 epochs.
ARGS = [*TINY_FASHION_MNIST, "--model=mlp", "--epochs=3", "--noise=uniform", "--ratio=0.6"]
STEPS_PER_EPOCH = 5

# Runs `python -m gdw_tf.train` with one fault: argv[1] is `none` or `<kind>:<n>`.
_FAULTY_TRAIN = """
import errno, os, signal, sys
import tensorflow as tf
from absl import app
from gdw_tf.runs import backup
from gdw_tf.runs import callbacks
from gdw_tf import train

tf.config.experimental.enable_op_determinism()
kind, _, n = sys.argv[1].partition(":")
n = int(n or 0)
steps_per_epoch = int(sys.argv[2])

def kill():
    os.kill(os.getpid(), signal.SIGKILL)

if kind == "step":  # between two training steps: after optimizer step n
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == n:
            kill()
    callbacks._ReplayDataOrder.on_train_batch_end = on_train_batch_end
elif kind == "eval":  # in epoch n's evaluation on the test set
    def on_test_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == n * steps_per_epoch:
            kill()
    callbacks._ReplayDataOrder.on_test_batch_end = on_test_batch_end
elif kind in ("weights", "disk_full"):  # half-way through writing epoch n's weights
    write = backup.AtomicBackupAndRestore._write_weights
    def _write_weights(self, path):
        write(self, path)
        if self._current_epoch == n:
            os.truncate(path, os.path.getsize(path) // 2)
            if kind == "weights":
                kill()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    backup.AtomicBackupAndRestore._write_weights = _write_weights
elif kind == "record":  # half-way through writing epoch n's record, after its weights
    def _write_metadata(self, path, metadata):
        with open(path, "w") as file:
            file.write('{"epoch": ')
            file.flush()
            if self._current_epoch == n:
                kill()
    backup.AtomicBackupAndRestore._write_metadata = _write_metadata
sys.argv = ["train"] + sys.argv[3:]
app.run(train.main)
"""


def _train(run_dir, fault="none"):
    return subprocess.run(
        [
            sys.executable,
            "-c",
            _FAULTY_TRAIN,
            fault,
            str(STEPS_PER_EPOCH),
            *ARGS,
            f"--output_dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )


def _committed(run_dir):
    return sorted(backup.AtomicBackupAndRestore(os.path.join(run_dir, "backup")).committed_epochs())


@pytest.mark.slow
def test_a_run_killed_anywhere_resumes_to_the_uninterrupted_result(tmp_path):
    uninterrupted, faulty = str(tmp_path / "uninterrupted"), str(tmp_path / "faulty")
    train_main(*ARGS, f"--output_dir={uninterrupted}")

    # Each fault hits epoch 2; each rerun resumes after epoch 1.
    for fault in ("step:7", "eval:2", "weights:2", "record:2"):
        killed = _train(faulty, fault)
        assert killed.returncode == -9, (fault, killed.stderr[-2000:])
        assert _committed(faulty) == [1], fault
        assert not os.path.exists(os.path.join(faulty, "results.json"))
    full = _train(faulty, "disk_full:2")
    assert full.returncode == 1, full.stderr[-2000:]
    assert full.stderr.splitlines()[-1] == (
        f"error: could not write the backup of epoch 2 to {faulty}/backup (no space left on "
        "device); the state after epoch 1 is kept there: make room and rerun the same command "
        "to resume."
    )
    assert sorted(os.listdir(os.path.join(faulty, "backup"))) == [
        "epoch-00001.json",
        "epoch-00001.weights.h5",
    ]  # the partial write is gone

    # Killed in epoch 3 with epochs 1 and 2 backed up; then epoch 2's weights are damaged.
    killed = _train(faulty, f"step:{2 * STEPS_PER_EPOCH + 3}")
    assert killed.returncode == -9 and _committed(faulty) == [1, 2]
    newest = os.path.join(faulty, "backup", "epoch-00002.weights.h5")
    os.truncate(newest, os.path.getsize(newest) // 2)
    finished = _train(faulty)
    assert finished.returncode == 0, finished.stderr[-3000:]
    reports = [line for line in finished.stderr.splitlines() if "backup in" in line]
    assert len(reports) == 1 and reports[0].endswith(
        "epoch 2 has damaged weights (checksum mismatch: a truncated or changed file); "
        "resuming after epoch 1, the newest good one."
    )

    for expected, actual in zip(
        backbone_weights(uninterrupted), backbone_weights(faulty), strict=True
    ):
        np.testing.assert_allclose(actual, expected)
    expected, actual = (run_dir_lib.read_history(d) for d in (uninterrupted, faulty))
    assert len(actual) == 3
    for expected_row, actual_row in zip(expected, actual):
        for name in (
            "loss",
            "train/loss",
            "meta/loss",
            "weights/labelled_mean",
            "test/accuracy",
            "test/loss",
            "learning_rate",
        ):
            assert actual_row[name] == expected_row[name], name
    assert (
        read_json(os.path.join(faulty, "results.json"))["test_accuracy"]
        == read_json(os.path.join(uninterrupted, "results.json"))["test_accuracy"]
    )
    assert not os.path.exists(os.path.join(faulty, "backup"))


# --------------------------------------------------------------------------------------------
# The backup callback on its own (in this process)


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(0)
    meta = (rng.normal(size=(12, 4)).astype("float32"), np.arange(12) % 3)
    model = gdw_tf.GDWModel(
        backbones.mlp((4,), 3, hidden=(8,)), 3, meta_data=meta, meta_batch_size=6
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    return model


def _fit(model, epochs, callback, initial_epoch=0):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 4)).astype("float32"), rng.integers(0, 3, 20)
    model.fit(
        x,
        y,
        batch_size=10,
        epochs=epochs,
        verbose=0,
        callbacks=[callback],
        initial_epoch=initial_epoch,
    )


def _variables(model):
    return [np.array(v.numpy()) for v in model.variables + model.optimizer.variables]


def test_backups_keep_the_latest_two_epochs_and_restore_the_newest(tmp_path):
    model = _model()
    _fit(model, 3, backup.AtomicBackupAndRestore(str(tmp_path), delete_checkpoint=False))
    assert sorted(os.listdir(tmp_path)) == [
        "epoch-00002.json",
        "epoch-00002.weights.h5",
        "epoch-00003.json",
        "epoch-00003.weights.h5",
    ]
    record = json.loads((tmp_path / "epoch-00003.json").read_text())
    assert record["epoch"] == 3
    assert record["sha256"] == backup._sha256(str(tmp_path / "epoch-00003.weights.h5"))
    restored = _model(seed=1)
    callback = backup.AtomicBackupAndRestore(str(tmp_path))
    callback.set_model(restored)
    callback.on_train_begin()
    assert restored._initial_epoch == 3
    for expected, actual in zip(_variables(model), _variables(restored), strict=True):
        np.testing.assert_array_equal(actual, expected)


@pytest.mark.parametrize(
    "damage, problem",
    [
        ("truncate", "epoch 2 has damaged weights (checksum mismatch"),
        ("delete_weights", "epoch 2 has no readable weights"),
        ("garble_record", "epoch 2 has an unreadable record"),
    ],
)
def test_a_damaged_backup_is_reported_in_one_line_and_the_previous_one_used(
    tmp_path, caplog, damage, problem
):
    model = _model()
    _fit(model, 1, backup.AtomicBackupAndRestore(str(tmp_path), delete_checkpoint=False))
    after_epoch_1 = _variables(model)
    _fit(
        model,
        2,
        backup.AtomicBackupAndRestore(str(tmp_path), delete_checkpoint=False),
        initial_epoch=1,
    )
    weights = tmp_path / "epoch-00002.weights.h5"
    if damage == "truncate":
        os.truncate(weights, weights.stat().st_size // 2)
    elif damage == "delete_weights":
        weights.unlink()
    else:
        (tmp_path / "epoch-00002.json").write_text('{"epoch": 2, "sha')
    restored = _model(seed=1)
    callback = backup.AtomicBackupAndRestore(str(tmp_path))
    callback.set_model(restored)
    with caplog.at_level(logging.WARNING):
        callback.on_train_begin()
    (message,) = [r.getMessage() for r in caplog.records if "backup in" in r.getMessage()]
    assert problem in message and message.endswith("resuming after epoch 1, the newest good one.")
    assert "\n" not in message
    assert restored._initial_epoch == 1
    for expected, actual in zip(after_epoch_1, _variables(restored), strict=True):
        np.testing.assert_array_equal(actual, expected)


def test_a_full_disk_keeps_the_previous_backup_usable(tmp_path, monkeypatch):
    model = _model()
    _fit(model, 1, backup.AtomicBackupAndRestore(str(tmp_path), delete_checkpoint=False))
    after_epoch_1 = _variables(model)

    def full_disk(self, path):
        with open(path, "wb") as file:
            file.write(b"\x89HDF\r\n")  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(backup.AtomicBackupAndRestore, "_write_weights", full_disk)
    with pytest.raises(backup.BackupError) as error:
        _fit(
            model,
            2,
            backup.AtomicBackupAndRestore(str(tmp_path), delete_checkpoint=False),
            initial_epoch=1,
        )
    assert str(error.value) == (
        f"could not write the backup of epoch 2 to {tmp_path} (no space left on device); the "
        "state after epoch 1 is kept there: make room and rerun the same command to resume."
    )
    assert sorted(os.listdir(tmp_path)) == ["epoch-00001.json", "epoch-00001.weights.h5"]
    monkeypatch.undo()
    restored = _model(seed=1)
    callback = backup.AtomicBackupAndRestore(str(tmp_path))
    callback.set_model(restored)
    callback.on_train_begin()
    assert restored._initial_epoch == 1
    for expected, actual in zip(after_epoch_1, _variables(restored), strict=True):
        np.testing.assert_array_equal(actual, expected)


def test_a_backup_of_another_model_is_refused_in_one_line(tmp_path):
    _fit(_model(), 1, backup.AtomicBackupAndRestore(str(tmp_path), delete_checkpoint=False))
    keras.utils.set_random_seed(0)
    other = gdw_tf.GDWModel(backbones.mlp((4,), 3, hidden=(16,)), 3, method="ce")
    other.compile(keras.optimizers.SGD(0.1))
    callback = backup.AtomicBackupAndRestore(str(tmp_path))
    callback.set_model(other)
    with pytest.raises(ValueError, match="does not fit this model") as error:
        callback.on_train_begin()
    assert "\n" not in str(error.value) and "move it away" in str(error.value)
