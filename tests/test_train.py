"""`python -m gdw_tf.train` end to end: outputs, resume, refusals and bad input; run helpers."""

import dataclasses
import itertools
import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import MOCK_EXAMPLES
from conftest import REPO
from conftest import TINY_FASHION_MNIST
from conftest import backbone_weights
from conftest import history_rows
from conftest import read_json
from conftest import train_exit_message
from conftest import train_killed_in_epoch_3
from conftest import train_main
from conftest import train_main_mock

import gdw_tf
from gdw_tf import backend
from gdw_tf.core import model as model_lib
from gdw_tf.core.meta_sampling import MetaAugmentation
from gdw_tf.data import datasets
from gdw_tf.data import input_pipeline
from gdw_tf.data import split as split_lib
from gdw_tf.nets import backbones
from gdw_tf.runs import callbacks
from gdw_tf.runs import config as config_lib
from gdw_tf.runs import results as results_lib
from gdw_tf.runs import run as run_lib
from gdw_tf.runs import run_dir

FLAGS = flags.FLAGS
# Mock CIFAR-10 (tfds.testing.mock_data, 60 train and 60 test images; its smallest class has 3
# training images): 2 meta images per class, 40 training images, 4 steps an epoch.
TINY_CIFAR = [
    "--dataset=cifar10",
    "--num_meta=20",
    "--batch_size=10",
    "--meta_batch_size=10",
    "--model=small_cnn",
    "--verbose=0",
]


def _tensorboard_tags(log_dir):
    """The scalar tags written under each run (`train`, `validation`) of a TensorBoard log."""
    tags = {}
    for run in os.listdir(log_dir):
        tags[run] = set()
        for name in os.listdir(os.path.join(log_dir, run)):
            for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, run, name)):
                tags[run].update(value.tag for value in event.summary.value)
    return tags


# --------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_mock_cifar10_run_leaves_a_complete_record(tmp_path):
    run_dir = str(tmp_path / "run")
    train_main_mock(
        *TINY_CIFAR, "--epochs=2", "--noise=uniform", "--ratio=0.6", f"--output_dir={run_dir}"
    )

    assert sorted(os.listdir(run_dir)) == [
        "config.json",
        "example_weights.npz",
        "history.csv",
        "label_issues.csv",
        "model.keras",
        "report.html",
        "results.json",
        "review.html",
        "run.lock",
        "split.npz",
        "tensorboard",
    ]  # backup/ is removed once the run is finished
    tags = _tensorboard_tags(os.path.join(run_dir, "tensorboard"))
    assert {
        "epoch_loss",
        "epoch_train/loss",
        "epoch_meta/loss",
        "epoch_weights/labelled_mean",
        "epoch_test/accuracy",
        "epoch_test/loss",
    } <= tags["train"]
    assert {"epoch_accuracy", "epoch_loss"} <= tags["validation"]

    # config.json: the flags, and what export needs.
    saved = read_json(os.path.join(run_dir, "config.json"))
    assert saved["config"]["ratio"] == 0.6 and saved["config"]["output_dir"] == run_dir
    assert (saved["dataset"], saved["num_classes"], saved["input_shape"]) == (
        "cifar10",
        10,
        [32, 32, 3],
    )
    np.testing.assert_allclose(saved["normalization"]["mean"], input_pipeline.CIFAR_MEAN)
    np.testing.assert_allclose(saved["normalization"]["std"], input_pipeline.CIFAR_STD)
    assert saved["augment"] is True and saved["outer_lr"] == 100.0
    assert saved["jit_compile"] is False  # auto, and no GPU here

    # The split: a disjoint meta set of 2 per class.
    split = split_lib.Split.load(os.path.join(run_dir, "split.npz"))
    num_train = MOCK_EXAMPLES - 20
    assert len(split.train_indices) == num_train and len(split.meta_indices) == 20
    assert not np.intersect1d(split.train_indices, split.meta_indices).size
    np.testing.assert_array_equal(np.bincount(split.meta_labels, minlength=10), [2] * 10)

    # history.csv: one row per epoch, namespaced metrics, the cosine schedule.
    rows = history_rows(run_dir)
    assert len(rows) == 2
    for column in (
        "loss",
        "train/loss",
        "train/accuracy",
        "meta/loss",
        "weights/instance_mean",
        "weights/labelled_mean",
        "weights/other_mean",
        "test/loss",
        "test/accuracy",
        "val_loss",
        "val_accuracy",
        "learning_rate",
        "time/epoch_seconds",
    ):
        assert column in rows[0]
    np.testing.assert_allclose([float(row["learning_rate"]) for row in rows], [0.1, 0.05])

    # results.json.
    results = read_json(os.path.join(run_dir, "results.json"))
    assert set(results) == {
        "test_accuracy",
        "metrics",
        "noise",
        "detection_auroc",
        "example_weights",
        "config",
        "timing",
        "wrong_labels",
    }
    accuracy = results["test_accuracy"]
    assert len(accuracy["per_epoch"]) == 2
    assert all(0.0 <= a <= 1.0 for a in accuracy["per_epoch"])  # fractions, not percent
    assert accuracy["last"] == accuracy["per_epoch"][-1]
    assert accuracy["best"] == max(accuracy["per_epoch"])
    assert accuracy["mean_last5"] == pytest.approx(np.mean(accuracy["per_epoch"]))
    assert results["metrics"]["test/accuracy"] == accuracy["last"]
    assert {"test/loss", "train/loss", "meta/loss"} <= set(results["metrics"])
    noise = results["noise"]
    assert noise["realised_rate"] == pytest.approx(split.train_corrupted.mean())
    np.testing.assert_allclose(noise["transition_matrix"], split.empirical_transition_matrix)
    np.testing.assert_allclose(
        noise["model_transition_matrix"], 0.06 * np.ones((10, 10)) + 0.4 * np.eye(10)
    )
    assert set(results["detection_auroc"]) == {"instance_weight", "labelled_class_weight"}
    assert all(0.0 <= v <= 1.0 for v in results["detection_auroc"].values())
    assert results["config"]["num_classes"] == 10 and results["config"]["method"] == "gdw"
    timing = results["timing"]
    assert len(timing["seconds_per_epoch"]) == 2 and timing["total_seconds"] > 0
    assert timing["steps_per_epoch"] == math.ceil(num_train / 10)
    # Each stage's seconds and memory, in the order the run went through them.
    stages = timing["stages"]
    assert [stage["stage"] for stage in stages] == [
        "start",
        "data",
        "split",
        "pipelines_and_model",
        "training",
        "example_weights",
        "label_issues",
        "label_issues_csv",
        "report",
        "review",
        "model_and_results",
    ]
    peaks = [stage["peak_rss_mb"] for stage in stages]
    assert peaks == sorted(peaks) and peaks[0] > 0  # a peak so far never falls
    assert all(0 < stage["rss_mb"] <= stage["peak_rss_mb"] + 1 for stage in stages)
    assert sum(stage["seconds"] for stage in stages) <= timing["total_seconds"] + 0.01  # rounded

    # example_weights.npz: one row per training example.
    with np.load(os.path.join(run_dir, "example_weights.npz")) as weights:
        assert set(weights.files) == {
            "index",
            "true_label",
            "given_label",
            "corrupted",
            "instance_weight",
            "labelled_class_weight",
        }
        assert all(len(weights[name]) == num_train for name in weights.files)
        np.testing.assert_array_equal(weights["index"], split.train_indices)
        np.testing.assert_array_equal(
            weights["corrupted"], weights["true_label"] != weights["given_label"]
        )
        assert (weights["instance_weight"] > 0).all()  # every example was seen
        assert (weights["labelled_class_weight"] > 0).all()

    # model.keras: the backbone, reloaded, predicts.
    backbone = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    logits = backbone.predict(np.zeros((3, 32, 32, 3), "float32"), verbose=0)
    assert logits.shape == (3, 10) and np.isfinite(logits).all()


@pytest.mark.slow
def test_fashion_mnist_subset_run_refuses_a_second_run_unless_overwrite(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    args = (*TINY_FASHION_MNIST, "--noise=uniform", "--ratio=0.6", f"--output_dir={run_dir}")
    train_main(*args)
    results = read_json(os.path.join(run_dir, "results.json"))
    assert results["config"]["input_shape"] == [28, 28, 1]
    assert results["config"]["augment"] is False
    assert results["config"]["num_train"] == 250
    assert len(history_rows(run_dir)) == 1
    with np.load(os.path.join(run_dir, "example_weights.npz")) as weights:
        assert len(weights["index"]) == 250
    backbone = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    assert backbone.predict(np.zeros((2, 28, 28, 1), "float32"), verbose=0).shape == (2, 10)

    status, message = train_exit_message(capsys, *args)
    assert status == 2
    assert "holds a finished run" in message and "--overwrite" in message

    train_main(*args, "--overwrite")
    assert len(history_rows(run_dir)) == 1  # started over, not appended
    assert read_json(os.path.join(run_dir, "results.json"))["timing"] != results["timing"]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["mwnet", "l2rw", "ce"])
def test_baseline_methods_run_and_report_their_weights(tmp_path, method):
    run_dir = str(tmp_path / "run")
    train_main(
        *TINY_FASHION_MNIST,
        f"--method={method}",
        "--noise=pair",
        "--ratio=0.4",
        f"--output_dir={run_dir}",
    )
    results = read_json(os.path.join(run_dir, "results.json"))
    assert results["config"]["method"] == method
    aurocs = results["detection_auroc"]
    if method == "ce":
        assert aurocs is None
        assert "meta/loss" not in results["metrics"]
    else:
        assert 0.0 <= aurocs["instance_weight"] <= 1.0
        assert aurocs["labelled_class_weight"] is None
        assert "meta/loss" in results["metrics"]
    with np.load(os.path.join(run_dir, "example_weights.npz")) as weights:
        assert len(weights["instance_weight"]) == 250


@pytest.mark.slow
def test_export_dir_exports_a_serving_model(tmp_path):
    export_dir, run_path = tmp_path / "serving", tmp_path / "run"
    train_main(*TINY_FASHION_MNIST, f"--export_dir={export_dir}", f"--output_dir={run_path}")
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    backbone = keras.saving.load_model(str(run_path / "model.keras"))
    normalization = read_json(str(run_path / "config.json"))["normalization"]
    logits = backbone.predict(
        input_pipeline.normalize(images, normalization["mean"], normalization["std"]), verbose=0
    )
    # The export at the end of the run, and one from the run directory afterwards.
    run_dir.export_run(str(run_path), str(tmp_path / "from_run_path"))
    for directory in (export_dir, tmp_path / "from_run_path"):
        outputs = tf.saved_model.load(str(directory)).signatures["serve"](tf.constant(images))
        np.testing.assert_allclose(
            outputs["probabilities"], tf.nn.softmax(logits), rtol=1e-5, atol=1e-6
        )


def test_a_non_empty_export_dir_is_refused_before_any_data_is_loaded(
    tmp_path, capsys, no_data_loading
):
    (tmp_path / "serving").mkdir()
    (tmp_path / "serving" / "saved_model.pb").write_text("")
    status, message = train_exit_message(
        capsys, f"--export_dir={tmp_path / 'serving'}", f"--output_dir={tmp_path / 'run'}"
    )
    assert status == 2 and "is not empty" in message


@pytest.mark.slow
def test_a_killed_run_resumes_and_ends_as_an_uninterrupted_run(tmp_path, monkeypatch):
    # 3 epochs, augmentation on (32x32 RGB): the data order, the crops and the meta
    # augmentation must all continue where they stopped.
    args = (*TINY_CIFAR, "--epochs=3", "--noise=flip", "--ratio=0.4")
    uninterrupted = str(tmp_path / "uninterrupted")
    train_main_mock(*args, f"--output_dir={uninterrupted}")

    resumed = str(tmp_path / "resumed")
    train_killed_in_epoch_3(monkeypatch, train_main_mock, *args, f"--output_dir={resumed}")
    assert len(history_rows(resumed)) == 2
    assert os.path.exists(os.path.join(resumed, "backup"))
    assert not os.path.exists(os.path.join(resumed, "results.json"))

    train_main_mock(*args, f"--output_dir={resumed}")
    for expected, actual in zip(backbone_weights(uninterrupted), backbone_weights(resumed)):
        np.testing.assert_allclose(actual, expected)
    with (
        np.load(os.path.join(uninterrupted, "example_weights.npz")) as expected,
        np.load(os.path.join(resumed, "example_weights.npz")) as actual,
    ):
        for name in expected.files:
            np.testing.assert_allclose(actual[name], expected[name])
    expected_rows, actual_rows = history_rows(uninterrupted), history_rows(resumed)
    assert len(actual_rows) == 3
    for expected, actual in zip(expected_rows, actual_rows):
        assert actual["val_accuracy"] == expected["val_accuracy"]
        assert actual["train/loss"] == expected["train/loss"]


_TRAIN_IN_SUBPROCESS = """
import os, sys
import tensorflow as tf
from absl import app
from gdw_tf.runs import callbacks
from gdw_tf import train

tf.config.experimental.enable_op_determinism()
kill_at_step = int(sys.argv[1])
if kill_at_step:
    def kill(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == kill_at_step:
            os._exit(3)  # No cleanup, as when the process is killed.
    callbacks._ReplayDataOrder.on_train_batch_end = kill
sys.argv = ["train"] + sys.argv[2:]
app.run(train.main)
"""


@pytest.mark.slow
def test_a_killed_process_resumes_in_a_new_one_as_if_never_killed(tmp_path):
    # Fashion-MNIST with augmentation forced on: crops of 28x28 images and meta batches.
    args = [
        *TINY_FASHION_MNIST,
        "--epochs=3",
        "--augment=true",
        "--noise=uniform",
        "--ratio=0.6",
    ]  # --epochs=3 overrides the earlier --epochs=1
    uninterrupted, resumed = str(tmp_path / "uninterrupted"), str(tmp_path / "resumed")
    train_main(*args, f"--output_dir={uninterrupted}")

    def train(kill_at_step):
        return subprocess.run(
            [
                sys.executable,
                "-c",
                _TRAIN_IN_SUBPROCESS,
                str(kill_at_step),
                *args,
                f"--output_dir={resumed}",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            timeout=300,
        )

    killed = train(kill_at_step=2 * 5 + 3)  # 5 steps an epoch: in the third epoch
    assert killed.returncode == 3, killed.stderr
    assert len(history_rows(resumed)) == 2
    finished = train(kill_at_step=0)
    assert finished.returncode == 0, finished.stderr
    for expected, actual in zip(backbone_weights(uninterrupted), backbone_weights(resumed)):
        np.testing.assert_allclose(actual, expected)
    assert [row["test/accuracy"] for row in history_rows(resumed)] == [
        row["test/accuracy"] for row in history_rows(uninterrupted)
    ]


def test_backup_restores_both_optimizers_and_the_model_state(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6, 6, 3)).astype("float32")
    y = rng.integers(0, 3, 40)
    meta = (rng.normal(size=(12, 6, 6, 3)).astype("float32"), np.arange(12) % 3)

    def model():
        keras.utils.set_random_seed(1)
        gdw = gdw_tf.GDWModel(
            backbones.small_cnn((6, 6, 3), 3),
            3,
            meta_data=meta,
            meta_batch_size=4,
            meta_augmentation=MetaAugmentation(),
            track_examples=40,
        )
        gdw.compile(keras.optimizers.SGD(0.1, momentum=0.9))
        return gdw

    trained = model()
    trained.fit(tf.data.Dataset.from_tensor_slices((x, y, np.arange(40))).batch(10), verbose=0)
    path = str(tmp_path / "latest.weights.h5")
    trained.save_weights(path)  # what BackupAndRestore does
    restored = model()
    restored.load_weights(path)
    for optimizer in ("optimizer", "weight_net_optimizer"):
        expected = getattr(trained, optimizer).variables
        actual = getattr(restored, optimizer).variables
        assert len(actual) == len(expected) > 1
        for e, a in zip(expected, actual):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(e))
    assert int(restored.weight_net_optimizer.iterations.numpy()) == 4
    for name in ("meta_epoch", "meta_cursor", "example_weights", "example_label_weights"):
        np.testing.assert_array_equal(
            np.asarray(getattr(restored, name)), np.asarray(getattr(trained, name))
        )
    assert int(restored.meta_augmentation.calls.numpy()) == 4


# --------------------------------------------------------------------------------------------
# Refusals and bad input: one line on stderr, a non-zero exit, nothing lost


def test_an_unfinished_run_with_another_config_is_refused(tmp_path, capsys, no_data_loading):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    saved = config_lib.Config(output_dir=str(run_dir), ratio=0.2).to_dict()
    (run_dir / "config.json").write_text(json.dumps({"config": saved}))
    status, message = train_exit_message(capsys, f"--output_dir={run_dir}", "--ratio=0.6")
    assert status == 2
    assert message.startswith("error: ") and message.count("\n") == 1
    assert "another configuration (ratio: saved 0.2, now 0.6)" in message


def test_a_saved_config_without_a_newer_flag_ran_with_its_default():
    config = config_lib.Config(output_dir="run")
    saved = config.to_dict()
    del saved["meta_interval"]  # written before --meta_interval existed
    assert run_dir.config_differences(saved, config) == []
    assert run_dir.config_differences(saved, dataclasses.replace(config, meta_interval=2)) == [
        "meta_interval: saved 1, now 2"
    ]


def test_a_finished_run_is_refused_before_any_data_is_loaded(tmp_path, capsys, no_data_loading):
    (tmp_path / "results.json").write_text("{}")
    status, message = train_exit_message(capsys, f"--output_dir={tmp_path}")
    assert status == 2 and "holds a finished run" in message
    assert (tmp_path / "results.json").read_text() == "{}"


def test_a_meta_set_larger_than_the_smallest_class_allows_is_refused(tmp_path, capsys):
    status, message = train_exit_message(
        capsys, *TINY_CIFAR, "--num_meta=40", "--epochs=1", f"--output_dir={tmp_path}", mock=True
    )
    assert status == 2
    assert "--num_meta=40 is too large" in message and "Lower --num_meta" in message


def test_a_meta_set_that_cannot_be_balanced_is_refused(tmp_path, capsys):
    status, message = train_exit_message(
        capsys, *TINY_CIFAR, "--num_meta=15", "--epochs=1", f"--output_dir={tmp_path}", mock=True
    )
    assert status == 2 and "multiple of the number of classes" in message


def test_corrupt_data_files_are_refused(tmp_path, capsys):
    data_dir = tmp_path / "fashion-mnist"
    data_dir.mkdir()
    for name in datasets.FASHION_MNIST_FILES.values():
        (data_dir / name).write_bytes(b"not a gzip file")
    status, message = train_exit_message(
        capsys, *TINY_FASHION_MNIST, f"--data_dir={data_dir}", f"--output_dir={tmp_path / 'run'}"
    )
    assert status == 2
    assert message.startswith("error: ") and "corrupt" in message
    assert str(data_dir) in message


def test_a_non_finite_loss_stops_with_a_message_and_keeps_the_last_good_epoch(
    tmp_path, capsys, monkeypatch
):
    schedule = callbacks.cosine_lr
    monkeypatch.setattr(
        callbacks,
        "cosine_lr",
        lambda lr, epoch, epochs: 1e30 if epoch == 1 else schedule(lr, epoch, epochs),
    )
    run_dir = tmp_path / "run"
    status, message = train_exit_message(
        capsys, *TINY_CIFAR, "--epochs=2", f"--output_dir={run_dir}", mock=True
    )
    assert status == 1
    assert "became NaN or infinite in epoch 2" in message and "Lower --lr" in message
    assert f"the state after epoch 1 is kept in {run_dir / 'backup'}" in message
    assert (run_dir / "backup" / "epoch-00001.weights.h5").exists()
    assert json.loads((run_dir / "backup" / "epoch-00001.json").read_text())["epoch"] == 1
    assert not (run_dir / "results.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, first_line",
    [
        (["--ratio=1.5"], "FATAL Flags parsing error: flag --ratio=1.5: --ratio must lie in"),
        (["--method=gdw2"], "FATAL Flags parsing error: flag --method=gdw2: value should be"),
        (["--batch_size=0"], "FATAL Flags parsing error: flag --batch_size=0: --batch_size"),
        ([], "error: "),  # the output directory holds a finished run
    ],
)
def test_the_cli_reports_bad_input_without_a_traceback(tmp_path, args, first_line):
    (tmp_path / "results.json").write_text("{}")
    result = subprocess.run(
        [sys.executable, "-m", "gdw_tf.train", f"--output_dir={tmp_path}", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert first_line in result.stderr
    assert len([line for line in result.stderr.splitlines() if first_line in line]) == 1


# --------------------------------------------------------------------------------------------
# Helpers


def _brute_force_auroc(scores, positive):
    pairs = list(itertools.product(scores[positive], scores[~positive]))
    return sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_is_the_probability_that_a_positive_outscores_a_negative(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 60))
    scores = rng.integers(0, 6, n).astype(float)  # many ties
    positive = rng.random(n) < 0.3
    positive[:2] = [True, False]
    assert results_lib.auroc(scores, positive) == pytest.approx(
        _brute_force_auroc(scores, positive)
    )


def test_auroc_edge_cases():
    assert results_lib.auroc([0.1, 0.2], [False, False]) is None
    assert results_lib.auroc([0.1, 0.2], [True, True]) is None
    assert results_lib.auroc([0.1, 0.9], [False, True]) == 1.0
    assert results_lib.auroc([0.5, 0.5], [False, True]) == 0.5


def test_detection_auroc_flags_low_weights_as_corrupted():
    corrupted = np.array([True, True, False, False, False])
    weights = {
        "corrupted": corrupted,
        "instance_weight": np.array([0.1, 0.2, 0.9, 0.8, 0.15]),
        "labelled_class_weight": np.array([0.1, 0.2, 0.9, 0.8, 0.7]),
    }
    aurocs = results_lib.detection_aurocs("gdw", weights)
    assert aurocs == {"instance_weight": pytest.approx(5 / 6), "labelled_class_weight": 1.0}
    assert results_lib.detection_aurocs("mwnet", weights)["labelled_class_weight"] is None
    assert results_lib.detection_aurocs("ce", weights) is None
    assert results_lib.detection_aurocs("gdw", {**weights, "corrupted": ~corrupted & False}) is None


def test_cosine_schedule_and_resolved_defaults():
    assert callbacks.cosine_lr(0.1, 0, 80) == 0.1
    assert callbacks.cosine_lr(0.1, 40, 80) == pytest.approx(0.05)
    assert model_lib.resolve_outer_lr(None, 10) == 100.0
    assert model_lib.resolve_outer_lr(None, 100) == 1000.0
    assert model_lib.resolve_outer_lr(30.0, 100) == 30.0
    assert run_lib.resolve_augment("auto", (32, 32, 3)) is True
    assert run_lib.resolve_augment("auto", (28, 28, 1)) is False
    assert run_lib.resolve_augment("true", (28, 28, 1)) is True
    assert backend.resolve_jit_compile("auto") == bool(tf.config.list_physical_devices("GPU"))


def test_meta_augmentation_is_a_reflect_padded_crop_maybe_flipped():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(6, 8, 8, 3)).astype("float32")
    layer = MetaAugmentation(seed=7)
    augmented = np.asarray(layer(images, training=True))
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)], mode="reflect")
    for image, out in zip(padded, augmented):
        candidates = [image[r : r + 8, c : c + 8] for r in range(9) for c in range(9)]
        candidates += [crop[:, ::-1] for crop in candidates]
        assert any(np.array_equal(out, crop) for crop in candidates)
    assert not np.array_equal(augmented, images)
    assert not np.array_equal(np.asarray(layer(images, training=True)), augmented)  # a new draw
    np.testing.assert_array_equal(np.asarray(layer(images, training=False)), images)
    assert int(layer.calls.numpy()) == 2


@pytest.mark.parametrize("output_dir", ["/proc/no_such_process/run", "/proc/version/run"])
def test_an_output_dir_that_cannot_be_created_is_one_line(output_dir, capsys, no_data_loading):
    status, message = train_exit_message(capsys, f"--output_dir={output_dir}")
    assert status == 2
    assert message.startswith(f"error: --output_dir={output_dir} cannot be created")
    assert message.count("\n") == 1


@pytest.mark.slow
def test_mixed_precision_trains_in_bfloat16_and_leaves_the_global_policy_alone(tmp_path):
    run_dir = tmp_path / "run"
    train_main(
        *TINY_FASHION_MNIST,
        "--model=mlp",
        "--mixed_precision",
        f"--output_dir={run_dir}",
        f"--export_dir={tmp_path / 'serving'}",
    )
    assert keras.mixed_precision.global_policy().name == "float32"
    results = read_json(str(run_dir / "results.json"))
    assert results["config"]["mixed_precision"] is True
    assert 0.0 < results["test_accuracy"]["last"] <= 1.0
    backbone = keras.saving.load_model(str(run_dir / "model.keras"))
    assert backbone.layers[-1].dtype_policy.name == "mixed_bfloat16"
    images = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    outputs = tf.saved_model.load(str(tmp_path / "serving")).signatures["serve"](
        tf.constant(images)
    )
    assert outputs["probabilities"].dtype == tf.float32
    np.testing.assert_allclose(np.sum(outputs["probabilities"], axis=-1), 1.0, rtol=1e-5)


def test_an_export_dir_that_cannot_be_created_is_refused_before_any_data_is_loaded(
    tmp_path, capsys, no_data_loading
):
    status, message = train_exit_message(
        capsys, "--export_dir=/proc/no_such_process/export", f"--output_dir={tmp_path / 'run'}"
    )
    assert status == 2 and message.count("\n") == 1
    assert message.startswith("error: --export_dir=/proc/no_such_process/export cannot be created")


def test_an_imbalance_that_empties_a_class_is_refused_before_training(tmp_path, capsys):
    status, message = train_exit_message(
        capsys, *TINY_FASHION_MNIST, "--imbalance=1e9", f"--output_dir={tmp_path / 'run'}"
    )
    assert status == 2 and message.count("\n") == 1
    assert "leaves the last class without training examples" in message
    assert not (tmp_path / "run" / "history.csv").exists()


def test_an_unreadable_split_from_another_version_is_one_line(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "split.npz").write_text("not a split")
    status, message = train_exit_message(capsys, *TINY_FASHION_MNIST, f"--output_dir={run_dir}")
    assert status == 2 and message.count("\n") == 1
    assert message.startswith(f"error: {run_dir / 'split.npz'} is unreadable (")
    assert "--overwrite" in message
    assert (run_dir / "split.npz").read_text() == "not a split"  # left as it was
