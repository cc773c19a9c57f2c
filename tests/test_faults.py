"""Faults: a training run killed (SIGKILL) at any point, a damaged backup, a full disk.

Every fault ends either in a run that resumes to the weights, history and accuracies of an
uninterrupted run, or in one line naming the problem, with the previous backup kept.
"""

import csv
import errno
import json
import logging
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from conftest import TINY_FASHION_MNIST
from conftest import backbone_weights
from conftest import prepare_tfds_images
from conftest import random_sized_images
from conftest import read_json
from conftest import train_main
from conftest import write_png

import gdw_tf
from gdw_tf.data import image_files
from gdw_tf.data import input_pipeline
from gdw_tf.data import own_data
from gdw_tf.data import tfds_records
from gdw_tf.nets import backbones
from gdw_tf.runs import backup
from gdw_tf.runs import callbacks
from gdw_tf.runs import lock
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
from gdw_tf.runs import lock
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


# --------------------------------------------------------------------------------------------
# Image files that go bad during a run


def _damage(paths):
    """Deletes `paths[0]`, truncates `paths[1]` to half and empties `paths[2]`."""
    os.remove(paths[0])
    os.truncate(paths[1], os.path.getsize(paths[1]) // 2)
    os.truncate(paths[2], 0)


def _png_files(root, count, rng, size=6):
    """`count` RGB PNGs of `size` squares under `root`; their paths."""
    paths = [os.path.join(root, f"{i:03d}.png") for i in range(count)]
    for path in paths:
        write_png(path, rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return paths


@pytest.mark.parametrize("shares", [None, 2])
def test_images_unreadable_mid_run_are_left_out_of_their_batches_and_listed(
    tmp_path, caplog, shares
):
    rng = np.random.default_rng(0)
    paths = _png_files(str(tmp_path / "images"), 23, rng)
    listed = str(tmp_path / "skipped_files.txt")
    files = image_files.ImageFiles(paths, height=6, width=6, channels=3, skipped_list=listed)
    array = np.asarray(files)  # Decoded now, while every file reads.
    labels = rng.integers(0, 3, 23)
    args = dict(batch_size=5, seed=3, augment=True, mean=[0.5] * 3, std=[0.25] * 3)
    args["with_index"] = True
    in_memory = input_pipeline.train_dataset(array, labels, **args)
    contexts = [None] if shares is None else [tf.distribute.InputContext(2, i, 2) for i in (0, 1)]
    streamed = [
        input_pipeline.train_dataset(files, labels, **args, input_context=context)
        for context in contexts
    ]
    iterators = [iter(dataset) for dataset in streamed]  # Epoch 1: every file read.
    epoch_1 = [list(iterator) for iterator in iterators]
    bad = [3, 11, 17]
    _damage([paths[i] for i in bad])

    for epoch in (epoch_1, None):  # Epoch 2 reads the damaged files.
        if epoch is None:
            epoch = [list(dataset.as_numpy_iterator()) for dataset in streamed]
        expected = list(in_memory.as_numpy_iterator())
        # As many batches (each pipeline yields its replica's share of each, in turn)...
        assert all(len(batches) == len(expected) for batches in epoch)
        for step, (images, _, index) in enumerate(expected):
            got = [batches[step] for batches in epoch]
            got = [np.concatenate(columns) for columns in zip(*got, strict=True)]
            # ...each without the rows of the files that could not be read.
            keep = ~np.isin(index, bad) if epoch is not epoch_1 else np.ones(len(index), bool)
            np.testing.assert_array_equal(got[2], index[keep])
            np.testing.assert_allclose(got[0], images[keep], rtol=1e-6)
    with open(listed) as file:
        lines = file.read().splitlines()
    lines.sort()  # In the order they were met.
    assert [line.split(": ")[0] for line in lines] == [paths[i] for i in bad]
    assert lines[0].endswith("no such image file.")
    assert all("not a readable image" in line for line in lines[1:])
    warnings = [r.getMessage() for r in caplog.records if "became unreadable" in r.getMessage()]
    assert len(warnings) == 3  # Once per file, though met again in each pass.
    assert list(np.flatnonzero(~files.readable())) == bad

    # Evaluation leaves them out, or keeps their rows (zero images) aligned with the labels.
    evaluated = list(input_pipeline.eval_dataset(files, labels, 10, [0.0] * 3, [1.0] * 3))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in evaluated]), np.delete(labels, bad))
    aligned = input_pipeline.eval_dataset(files, labels, 10, [0.0] * 3, [1.0] * 3, aligned=True)
    images = np.concatenate([b[0] for b in aligned.as_numpy_iterator()])
    np.testing.assert_allclose(images[bad], 0.0)
    np.testing.assert_allclose(np.delete(images, bad, 0), np.delete(array, bad, 0) / 255.0)


def _class_folders(root, rng, per_class, size=6):
    """Folders `c0`, `c1`, `c2` of `per_class` PNGs whose brightness follows the class; the
    paths in reading order."""
    paths = []
    for k in range(3):
        for i in range(per_class):
            paths.append(os.path.join(root, f"c{k}", f"{i:03d}.png"))
            image = rng.normal(40 + 80 * k, 20, (size, size, 3)).clip(0, 255).astype(np.uint8)
            write_png(paths[-1], image)
    return paths


@pytest.mark.slow
def test_a_run_whose_files_go_bad_after_epoch_1_goes_on_without_them(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    train = _class_folders(str(tmp_path / "train"), rng, 20)
    trusted = _class_folders(str(tmp_path / "trusted"), rng, 4)
    bad = [train[2], train[25], train[49], trusted[5]]
    original = callbacks._EpochLogs.on_epoch_end

    def on_epoch_end(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            _damage(bad[:3])
            os.remove(bad[3])

    monkeypatch.setattr(callbacks._EpochLogs, "on_epoch_end", on_epoch_end)
    run_dir = str(tmp_path / "run")
    train_main(
        f"--train_data={tmp_path}/train",
        f"--trusted_data={tmp_path}/trusted",
        "--model=mlp",
        "--epochs=3",
        "--batch_size=10",
        "--verbose=0",
        f"--output_dir={run_dir}",
    )
    assert len(run_dir_lib.read_history(run_dir)) == 3
    assert os.path.exists(os.path.join(run_dir, "results.json"))  # The run ended.
    with open(os.path.join(run_dir, "skipped_files.txt")) as file:
        listed = sorted(line.split(": ")[0] for line in file.read().splitlines())
    assert listed == sorted(bad)
    # The label-issue pass ranks every other training image, and those only.
    with open(os.path.join(run_dir, "label_issues.csv"), newline="") as file:
        ranked = [row["id"] for row in csv.DictReader(file) if row["set"] == "training"]
    assert sorted(ranked) == sorted(set(train) - set(bad))
    assert read_json(os.path.join(run_dir, "results.json"))["wrong_labels"]["estimate"] is not None


# --------------------------------------------------------------------------------------------
# One process per run directory


def test_a_second_holder_of_a_run_directory_is_refused_until_the_first_lets_go(tmp_path):
    run_dir = str(tmp_path / "run")
    with lock.hold(run_dir):
        with pytest.raises(ValueError) as error, lock.hold(run_dir):
            pass
        message = str(error.value)
        assert message.startswith(
            f"--output_dir={run_dir} is in use by process {os.getpid()} on "
            f"{socket.gethostname()}, started 20"
        )
        assert "\n" not in message and "rerun this command to resume" in message
    with lock.hold(run_dir):  # Let go when the block ended, though an error left it.
        pass


_PAUSED_TRAIN = """
import sys
from absl import app
from gdw_tf import train
from gdw_tf.runs import callbacks

step = int(sys.argv[1])  # Pauses after optimizer step `step`.

def on_train_batch_end(self, batch, logs=None):
    if int(self.model.optimizer.iterations.numpy()) == step:
        print("paused", flush=True)
        sys.stdin.readline()  # Until killed.
callbacks._ReplayDataOrder.on_train_batch_end = on_train_batch_end
sys.argv = ["train"] + sys.argv[2:]
app.run(train.main)
"""


@pytest.mark.slow
def test_a_run_directory_in_use_is_refused_and_resumed_after_a_kill_9(tmp_path):
    run_dir = str(tmp_path / "run")
    command = [*ARGS, f"--output_dir={run_dir}"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    # A run paused in epoch 2 (epoch 1 backed up), then a second one on its directory.
    first = subprocess.Popen(
        [sys.executable, "-c", _PAUSED_TRAIN, str(STEPS_PER_EPOCH + 2), *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        assert first.stdout.readline() == "paused\n"
        second = subprocess.run(
            [sys.executable, "-m", "gdw_tf.train", *command],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=300,
        )
        assert second.returncode == 2
        assert second.stderr.splitlines()[-1].startswith(
            f"error: --output_dir={run_dir} is in use by process {first.pid} on "
            f"{socket.gethostname()}, started "
        )
        assert run_dir_lib.read_history(run_dir) and len(run_dir_lib.read_history(run_dir)) == 1
    finally:
        first.kill()  # SIGKILL
        first.wait()
    assert first.returncode == -9
    resumed = subprocess.run(
        [sys.executable, "-m", "gdw_tf.train", *command],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [int(row["epoch"]) for row in run_dir_lib.read_history(run_dir)] == [0, 1, 2]
    with open(os.path.join(run_dir, "history.csv")) as file:
        assert len(file.read().splitlines()) == 4  # A header and epochs 1-3, each once.


# --------------------------------------------------------------------------------------------
# Image files in formats that are not read


def test_image_files_in_formats_that_are_not_read_are_counted_and_named(tmp_path, caplog):
    rng = np.random.default_rng(2)
    root = tmp_path / "tiff"
    for k in range(2):
        os.makedirs(root / f"c{k}")
        for i in range(3):
            (root / f"c{k}" / f"{i}.tif").write_bytes(b"II*\x00" + bytes(64))
    with pytest.raises(ValueError) as error:
        own_data.read_folder(str(root))
    assert str(error.value) == (
        f"{root}/c0: empty class folder (no .bmp/.gif/.jpeg/.jpg/.png images; found 3 .tif "
        f"files ({root}/c0/0.tif), a format that is not read: convert to PNG or JPEG)."
    )
    # Beside images that are read, they are left out with one warning line naming them.
    for k in range(2):
        _png_files(str(root / f"c{k}"), 2, rng)
    (root / "c1" / "photo.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")
    source = own_data.read_folder(str(root))
    assert len(source.files) == 4 and all(path.endswith(".png") for path in source.files)
    (warning,) = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert warning == (
        "Left out image files in a format that is not read: 1 .heic file "
        f"({root}/c1/photo.HEIC), 6 .tif files ({root}/c0/0.tif)."
    )
    # A list that names one: the scan's reason says what it is.
    with pytest.raises(ValueError, match=r"0\.tif: a \.tif image, a format that is not read"):
        image_files.read_image(str(root / "c0" / "0.tif"))


def test_tfds_records_cut_off_mid_run_are_left_out_and_named(tmp_path, caplog):
    builder = prepare_tfds_images(
        tmp_path / "tfds",
        "cut_records",
        {"train": random_sized_images(np.random.default_rng(4), 12)},
        num_classes=3,
    )
    records, labels = tfds_records.split_records(builder, "train", image_size=8)
    array = np.asarray(records)  # Decoded now, while the file is whole.
    args = dict(batch_size=5, seed=1, augment=False, mean=[0.5] * 3, std=[0.25] * 3)
    streamed = input_pipeline.train_dataset(records, labels, **args, with_index=True)
    (file,) = records.files
    os.truncate(file, int(records.keys[-3, 1]))  # The last three records are cut off.
    batches = list(streamed.as_numpy_iterator())
    assert len(batches) == 3  # As many as the 12 records make.
    index = np.concatenate([batch[2] for batch in batches])
    assert sorted(index) == list(range(9))
    images = np.concatenate([batch[0] for batch in batches])
    np.testing.assert_allclose(images, (array[index] / 255.0 - 0.5) / 0.25, atol=1e-5)
    named = [r.getMessage() for r in caplog.records if "became unreadable" in r.getMessage()]
    assert len(named) == 3  # Once each.
    for i in (9, 10, 11):
        assert any(f"{file}, record at byte {records.keys[i, 1]}: unreadable (" in m for m in named)
    assert list(np.flatnonzero(~records.readable())) == [9, 10, 11]
