"""`python -m gdw_tf.train --distribute=...`: mirrored and two-worker runs train as one device,
worker directories, and the refusals (no TF_CONFIG, a meta batch that does not split across the
replicas, JAX)."""

import csv
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO
from conftest import TINY_FASHION_MNIST
from conftest import backbone_weights
from conftest import history_rows
from conftest import load_script
from conftest import prepare_tfds_images
from conftest import random_sized_images
from conftest import read_json
from conftest import train_exit_message
from conftest import train_main

from gdw_tf.data import datasets
from gdw_tf.runs import config as config_lib
from gdw_tf.runs import distribute
from gdw_tf.runs import run as run_lib

tensorflow_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute needs the TensorFlow backend"
)

RUN_FILES = [
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
]
# Fashion-MNIST, 250 training examples in 5 global batches of 50 (25 per replica with two),
# 2 epochs, crops and meta augmentation on: the data order, the crops and the meta batches must
# all line up across the replicas. An MLP has no BatchNorm, whose per-replica batch statistics
# would differ from one device's.
RUN_ARGS = [
    *TINY_FASHION_MNIST,
    "--model=mlp",
    "--epochs=2",
    "--augment=true",
    "--noise=uniform",
    "--ratio=0.6",
]
TIMEOUT_S = 300

# `python -m gdw_tf.train` on two logical CPUs, as tests/conftest.py sets up. In a process of its
# own: TensorFlow keeps collective ops' state per process, and a second MirroredStrategy that
# trains a model of other shapes over the same devices fails ("Shape mismatch in the collective
# instance"; plain Keras models too), which would break tests/test_distribute.py.
_TRAIN_ON_TWO_CPUS = """
import sys
import tensorflow as tf
from absl import app
from gdw_tf import train

tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)
sys.argv = ["train"] + sys.argv[1:]
app.run(train.main)
"""


def _train_mirrored_on_two_cpus(*args):
    """`python -m gdw_tf.train args --distribute=mirrored` on two logical CPUs, in a process of
    its own; the completed process."""
    return subprocess.run(
        [sys.executable, "-c", _TRAIN_ON_TWO_CPUS, *args, "--distribute=mirrored"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=_subprocess_env(),
        timeout=TIMEOUT_S,
    )


def _mirrored_and_one_device_runs(tmp_path, args):
    """Trains `args` on one device and mirrored on two CPUs, checks that the mirrored run ends
    as the one-device run (cross-replica sums round differently, and the meta step amplifies
    it: the example weights, ~0.7, moved by up to 5e-5; another seed moves them by more than
    1e-2); returns the two run directories `(mirrored, one_device)`."""
    one_device = str(tmp_path / "one")
    train_main(*args, f"--output_dir={one_device}")
    mirrored = str(tmp_path / "mirrored")
    result = _train_mirrored_on_two_cpus(*args, f"--output_dir={mirrored}")
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_run(mirrored, one_device, exact=False, tolerance=2e-4)
    return mirrored, one_device


def _two_replica_strategy(name):
    """`distribute.make_strategy` with two replicas, whatever `name`."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # tests/conftest.py's CPUs


def _subprocess_env(**variables):
    """The environment of a training process: TensorFlow, quiet, this checkout's gdw_tf."""
    return {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
        **variables,
    }


def _jax_two_devices_env():
    """The environment of a training process on Keras' JAX backend with two host CPU devices."""
    env = _subprocess_env(
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    env.pop("JAX_ENABLE_X64", None)
    return env


# `python -m gdw_tf.train` noting the files it reads, per pass, and what it noted.
_worker_passes = load_script("worker_passes")
_reads = _worker_passes.reads


def _start_workers(args, log_dir, *, note_reads=False, workers=2, env=None):
    """Starts `python -m gdw_tf.train args` as the `workers` workers of a localhost cluster
    (one process without a cluster if `workers` is 1); with `note_reads`, worker i notes the
    files it reads, per pass, in `log_dir/reads<i>.txt` (`scripts/worker_passes.py`)."""
    cluster = {"worker": [f"localhost:{port}" for port in _worker_passes.free_ports(workers)]}
    program = ["-c", _worker_passes.NOTING_READS] if note_reads else ["-m", "gdw_tf.train"]
    started = []
    for index in range(workers):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        # Logs to files: a full pipe would block a worker, and with it the other.
        log = open(log_dir / f"worker{index}.log", "a")
        variables = {"READS_LOG": str(log_dir / f"reads{index}.txt"), **(env or {})}
        if workers > 1:
            variables["TF_CONFIG"] = json.dumps(tf_config)
        started.append(
            (
                subprocess.Popen(
                    [sys.executable, *program, *args],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=REPO,
                    env=_subprocess_env(**variables),
                ),
                log,
            )
        )
    return started


def _wait(workers, log_dir, timeout):
    """Waits for both workers; kills both if one fails or time runs out (the other would wait
    for it forever)."""
    deadline = time.monotonic() + timeout
    try:
        while any(process.poll() is None for process, _ in workers):
            failed = [process for process, _ in workers if process.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        for process, log in workers:
            if process.poll() is None:
                process.kill()
            process.wait()
            log.close()
    codes = [process.returncode for process, _ in workers]
    if any(codes):
        logs = "\n".join(
            f"--- worker{i} (exit {code}):\n" + (log_dir / f"worker{i}.log").read_text()[-3000:]
            for i, code in enumerate(codes)
        )
        pytest.fail(
            f"the workers did not all succeed within {timeout} s (one still "
            f"running then, or after the other failed, is killed):\n{logs}"
        )


def _assert_same_run(actual_dir, expected_dir, exact, tolerance=1e-5):
    """The two runs' backbones, example weights and per-epoch metrics agree (bit for bit if
    `exact`, else up to float rounding: `rtol=tolerance`, `atol=tolerance / 10`)."""
    check = (
        np.testing.assert_array_equal
        if exact
        else lambda a, e: np.testing.assert_allclose(a, e, rtol=tolerance, atol=tolerance / 10)
    )
    for expected, actual in zip(backbone_weights(expected_dir), backbone_weights(actual_dir)):
        check(actual, expected)
    with (
        np.load(os.path.join(expected_dir, "example_weights.npz")) as expected,
        np.load(os.path.join(actual_dir, "example_weights.npz")) as actual,
    ):
        for name in expected.files:
            if expected[name].dtype.kind in "US":  # Own data's ids.
                np.testing.assert_array_equal(actual[name], expected[name])
            else:
                check(actual[name], expected[name])
    expected_rows, actual_rows = history_rows(expected_dir), history_rows(actual_dir)
    assert len(actual_rows) == len(expected_rows) > 0
    for expected, actual in zip(expected_rows, actual_rows):
        for name in (
            "train/loss",
            "meta/loss",
            "weights/labelled_mean",
            "test/loss",
            "test/accuracy",
        ):
            check(float(actual[name]), float(expected[name]))


def _assert_same_outputs(actual_dir, expected_dir):
    """The two runs' normalisation (exactly: pixel counts add up exactly), `label_issues.csv`
    and `results.json`'s wrong-label count agree. The weights differ by float rounding
    (`_assert_same_run`'s 2e-4), and so do the probabilities: the scores and probabilities of
    each example agree to 1e-3, its suggestion and flag exactly."""
    configs = [read_json(os.path.join(d, "config.json")) for d in (actual_dir, expected_dir)]
    assert configs[0]["normalization"] == configs[1]["normalization"]
    tables = []
    for directory in (actual_dir, expected_dir):
        with open(os.path.join(directory, "label_issues.csv"), newline="") as file:
            tables.append({row["id"]: row for row in csv.DictReader(file)})
    assert tables[0].keys() == tables[1].keys()
    for name, expected in tables[1].items():
        actual = tables[0][name]
        assert (actual["suggested_label"], actual["flagged"]) == (
            expected["suggested_label"],
            expected["flagged"],
        )
        for column in ("score", "given_probability", "suggested_probability", "instance_weight"):
            if expected[column] == "":  # a trusted row has no instance weight
                assert actual[column] == "", (name, column)
                continue
            assert abs(float(actual[column]) - float(expected[column])) <= 1e-3, (name, column)
    results = [read_json(os.path.join(d, "results.json")) for d in (actual_dir, expected_dir)]
    assert results[0]["wrong_labels"]["flagged"] == results[1]["wrong_labels"]["flagged"]


def _write_png_folders(root, trusted=2, test=2):
    """Folders of small PNG files in four classes: `train` (10 a class), `trusted` and `test`;
    the flags of a two-epoch run on them."""
    rng = np.random.default_rng(0)
    for part, count in (("train", 10), ("trusted", trusted), ("test", test)):
        for k in range(4):
            for i in range(count):
                image = np.clip(rng.normal(50 + 50 * k, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
                path = root / part / f"c{k}" / f"{i}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                tf.io.write_file(str(path), tf.io.encode_png(image))
    return [
        f"--train_data={root / 'train'}",
        f"--trusted_data={root / 'trusted'}",
        f"--test_data={root / 'test'}",
        "--model=mlp",
        "--epochs=2",
        "--batch_size=10",
        "--meta_batch_size=8",
        "--augment=true",
        "--verbose=0",
    ]


# --------------------------------------------------------------------------------------------
# Runs


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
    """A `--distribute=none` run of `RUN_ARGS`: what the distributed runs must reproduce."""
    run_dir = str(tmp_path_factory.mktemp("one_device") / "run")
    train_main(*RUN_ARGS, f"--output_dir={run_dir}")
    return run_dir


@pytest.mark.slow
@tensorflow_only
def test_mirrored_run_trains_as_one_device_and_records_its_replicas(tmp_path, one_device_run):
    run_dir = str(tmp_path / "run")
    result = _train_mirrored_on_two_cpus(*RUN_ARGS, f"--output_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(os.listdir(run_dir)) == RUN_FILES
    results = read_json(os.path.join(run_dir, "results.json"))
    # MirroredStrategy's default devices: all GPUs, else the CPUs (two logical ones here).
    replicas = len(tf.config.list_logical_devices("GPU")) or 2
    assert results["config"]["distribute"] == "mirrored"
    assert results["config"]["num_replicas"] == replicas
    assert read_json(os.path.join(run_dir, "config.json"))["num_replicas"] == replicas
    _assert_same_run(run_dir, one_device_run, exact=False)


@pytest.mark.slow
@tensorflow_only
def test_two_workers_train_as_one_device_and_only_the_chief_writes_the_run_dir(
    tmp_path, one_device_run
):
    run_dir = tmp_path / "run"
    workers = _start_workers(
        [*RUN_ARGS, "--distribute=multi_worker", f"--output_dir={run_dir}"], tmp_path
    )
    _wait(workers, tmp_path, TIMEOUT_S)

    # Worker 0 (the chief) wrote the run directory; worker 1 only its own under workers/.
    worker_dir = run_dir / "workers" / "worker1"
    assert sorted(os.listdir(run_dir)) == sorted(RUN_FILES + ["workers"])
    assert os.listdir(run_dir / "workers") == ["worker1"]
    assert sorted(os.listdir(worker_dir)) == RUN_FILES
    for directory in (run_dir, worker_dir):
        results = read_json(str(directory / "results.json"))
        assert results["config"]["output_dir"] == str(directory)
        assert results["config"]["distribute"] == "multi_worker"
        assert results["config"]["num_replicas"] == 2  # one CPU replica per worker

    # Both workers hold the same model, and it is the one-device model: the global batches
    # (split between the workers), crops, meta batches and sums line up; only the order of
    # the cross-worker sums can change the float rounding.
    _assert_same_run(str(worker_dir), str(run_dir), exact=True)
    _assert_same_run(str(run_dir), one_device_run, exact=False)


@pytest.mark.slow
@tensorflow_only
def test_streamed_image_files_train_as_one_device_mirrored_and_on_two_workers(tmp_path):
    # Own PNG files streamed from disk (decoded in the input pipeline): a mirrored run and a
    # two-worker run end as the one-device run does.
    root = tmp_path / "data"
    args = _write_png_folders(root)
    _, one_device = _mirrored_and_one_device_runs(tmp_path, args)
    workers_dir = tmp_path / "workers_run"
    workers = _start_workers(
        [*args, "--distribute=multi_worker", f"--output_dir={workers_dir}"],
        tmp_path,
        note_reads=True,
    )
    _wait(workers, tmp_path, TIMEOUT_S)
    _assert_same_run(str(workers_dir), one_device, exact=False, tolerance=2e-4)
    # Each worker decoded about its half of each epoch's 40 training images (and perhaps some
    # of a third epoch read ahead), not every image of every epoch (2 x 40); together, all.
    decoded = [
        list(_reads(str(tmp_path / f"reads{i}.txt"))["training"].elements()) for i in range(2)
    ]
    training_files = {str(p) for p in (root / "train").rglob("*.png")}
    assert len(training_files) == 40
    for paths in decoded:
        assert set(paths) <= training_files and 2 * 20 <= len(paths) < 2 * 40
    assert set(decoded[0]) | set(decoded[1]) == training_files
    other_seed = str(tmp_path / "other_seed")
    train_main(*args, "--seed=1", f"--output_dir={other_seed}")
    with (
        np.load(os.path.join(one_device, "example_weights.npz")) as a,
        np.load(os.path.join(other_seed, "example_weights.npz")) as b,
    ):
        assert np.abs(a["instance_weight"] - b["instance_weight"]).max() > 1e-2


@pytest.mark.slow
@tensorflow_only
def test_a_streamed_tfds_dataset_trains_mirrored_as_on_one_device(tmp_path):
    # TFDS records of varying image size, read from their files (a NumPy function in the
    # pipeline): shared out between two replicas before decoding, as image files are. 52
    # records: 5 held out, 6 meta, 41 trained in batches of 10: the last batch's one row goes
    # to the first replica, the second gets an empty batch.
    prepare_tfds_images(
        tmp_path / "tfds",
        "varsize_mirrored",
        {"train": random_sized_images(np.random.default_rng(11), 52)},
        num_classes=3,
    )
    args = [
        "--dataset=varsize_mirrored",
        f"--data_dir={tmp_path / 'tfds'}",
        "--image_size=10",
        "--model=mlp",
        "--num_meta=6",
        "--meta_batch_size=6",
        "--batch_size=10",
        "--epochs=2",
        "--augment=true",
        "--verbose=0",
    ]
    mirrored, _ = _mirrored_and_one_device_runs(tmp_path, args)
    assert read_json(os.path.join(mirrored, "results.json"))["config"]["num_replicas"] == 2


@pytest.mark.slow
@tensorflow_only
def test_two_workers_share_every_pass_and_write_what_one_process_writes(tmp_path):
    # 40 training, 12 trusted and 12 test PNG files. One process, then two workers, each
    # noting the files it reads in each pass.
    args = _write_png_folders(tmp_path / "data", trusted=3, test=3)
    one, two = tmp_path / "one", tmp_path / "two"
    for log_dir, workers, flags in ((one, 1, []), (two, 2, ["--distribute=multi_worker"])):
        log_dir.mkdir()
        command = [*args, *flags, f"--output_dir={log_dir / 'run'}"]
        _wait(
            _start_workers(command, log_dir, note_reads=True, workers=workers), log_dir, TIMEOUT_S
        )

    # Each worker read its own files in each pass, and together the files the one process read,
    # each as often: the scan (64 files once), the normalisation sample (the 52 training and
    # trusted images once), validation (12 test images, each epoch) and the label-issue pass
    # (52 images once).
    expected = _reads(str(one / "reads0.txt"))
    workers = [_reads(str(two / f"reads{i}.txt")) for i in range(2)]
    sizes = {"scan": 64, "normalization": 52, "validation": 24, "label_issues": 52}
    for name, size in sizes.items():
        assert sum(expected[name].values()) == size, name
        assert workers[0][name] + workers[1][name] == expected[name], name
        assert not set(workers[0][name]) & set(workers[1][name]), name
        assert 0.3 * size <= sum(workers[0][name].values()) <= 0.7 * size, name

    # What they wrote: the one process's numbers (float rounding aside, as
    # `_assert_same_outputs` says); worker 1 wrote what the chief wrote.
    chief, single = str(two / "run"), str(one / "run")
    worker1 = os.path.join(chief, "workers", "worker1")
    _assert_same_run(chief, single, exact=False, tolerance=2e-4)
    _assert_same_outputs(chief, single)
    for name in ("label_issues.csv", "config.json"):
        with (
            open(os.path.join(chief, name), "rb") as a,
            open(os.path.join(worker1, name), "rb") as b,
        ):
            assert a.read().replace(b"/workers/worker1", b"") == b.read().replace(
                b"/workers/worker1", b""
            )


@pytest.mark.slow
@tensorflow_only
def test_a_two_worker_run_killed_mid_epoch_resumes_with_the_same_command(tmp_path):
    # Streamed PNG files, 4 epochs; each worker's training reads slowed (50 ms a file) so that
    # the kill lands inside an epoch: SIGKILL to both workers once each has read 50 training
    # images (its 20 of an epoch, two and a half times).
    args = [*_write_png_folders(tmp_path / "data"), "--epochs=4"]
    single = str(tmp_path / "one")
    train_main(*args, f"--output_dir={single}")
    run_dir = tmp_path / "run"
    command = [*args, "--distribute=multi_worker", f"--output_dir={run_dir}"]
    workers = _start_workers(
        command, tmp_path, note_reads=True, env={"TRAINING_READ_PAUSE": "0.05"}
    )
    deadline = time.monotonic() + TIMEOUT_S
    read = [0, 0]
    while min(read) < 50:
        assert all(process.poll() is None for process, _ in workers), "a worker ended early"
        assert time.monotonic() < deadline, f"the workers read {read} training images"
        time.sleep(0.1)
        read = [
            sum(_reads(str(tmp_path / f"reads{i}.txt")).get("training", {}).values())
            for i in range(2)
        ]
    for process, log in workers:
        process.kill()  # SIGKILL
        process.wait()
        log.close()
    finished = len(history_rows(str(run_dir)))
    assert 1 <= finished < 4 and not (run_dir / "results.json").exists()

    _wait(_start_workers(command, tmp_path), tmp_path, TIMEOUT_S)
    rows = history_rows(str(run_dir))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2, 3]
    _assert_same_run(str(run_dir), single, exact=False, tolerance=2e-4)
    _assert_same_outputs(str(run_dir), single)


@pytest.mark.slow
@tensorflow_only
def test_a_tfds_split_in_three_files_trains_on_two_workers_as_on_one_device(tmp_path):
    # 52 TFDS records of varying size in three files, streamed (5 held out, 6 meta, 41 trained
    # in batches of 10): shared out between the workers before decoding.
    builder = prepare_tfds_images(
        tmp_path / "tfds",
        "sharded_workers",
        {"train": random_sized_images(np.random.default_rng(12), 52)},
        num_classes=3,
        num_shards=3,
    )
    assert len(builder.info.splits["train"].file_instructions) == 3
    args = [
        "--dataset=sharded_workers",
        f"--data_dir={tmp_path / 'tfds'}",
        "--image_size=10",
        "--model=mlp",
        "--num_meta=6",
        "--meta_batch_size=6",
        "--batch_size=10",
        "--epochs=2",
        "--augment=true",
        "--verbose=0",
    ]
    single = str(tmp_path / "one")
    train_main(*args, f"--output_dir={single}")
    run_dir = tmp_path / "run"
    workers = _start_workers(
        [*args, "--distribute=multi_worker", f"--output_dir={run_dir}"], tmp_path
    )
    _wait(workers, tmp_path, TIMEOUT_S)
    assert read_json(str(run_dir / "results.json"))["config"]["num_replicas"] == 2
    _assert_same_run(str(run_dir), single, exact=False, tolerance=2e-4)
    _assert_same_outputs(str(run_dir), single)


# --------------------------------------------------------------------------------------------
# Worker directories


class _Strategy:
    """What `worker_config` reads of a strategy: its cluster resolver."""

    def __init__(self, cluster, task_type, task_id):
        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id
        )


@pytest.mark.parametrize(
    "cluster, task_type, task_id, subdir",
    [
        ({"worker": ["a:1", "b:1"]}, "worker", 0, None),  # no chief: worker 0 is the chief
        ({"worker": ["a:1", "b:1"]}, "worker", 1, "workers/worker1"),
        ({"chief": ["c:1"], "worker": ["a:1"]}, "chief", 0, None),
        ({"chief": ["c:1"], "worker": ["a:1"]}, "worker", 0, "workers/worker0"),
    ],
)
def test_only_the_chief_writes_the_output_dir(tmp_path, cluster, task_type, task_id, subdir):
    config = config_lib.Config(
        output_dir=str(tmp_path), export_dir=str(tmp_path / "serving"), distribute="multi_worker"
    )
    worker = distribute.worker_config(config, _Strategy(cluster, task_type, task_id))
    if subdir is None:
        assert worker == config
    else:
        assert worker == config_lib.Config(
            output_dir=str(tmp_path / subdir), export_dir=None, distribute="multi_worker"
        )
    assert distribute.worker_config(config, tf.distribute.get_strategy()) == config


# --------------------------------------------------------------------------------------------
# Refusals


@tensorflow_only
def test_multi_worker_without_tf_config_is_refused_before_any_data_is_loaded(
    tmp_path,
    capsys,
    monkeypatch,
    no_data_loading,  # noqa: F811
):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    status, message = train_exit_message(
        capsys, "--distribute=multi_worker", f"--output_dir={tmp_path / 'run'}"
    )
    assert status == 2
    assert message.startswith(
        "error: --distribute=multi_worker reads the cluster from the TF_CONFIG environment variable"
    )
    assert message.count("\n") == 1
    assert not (tmp_path / "run").exists()


@tensorflow_only
def test_a_tf_config_that_is_not_json_is_refused(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", "{cluster: ")
    with pytest.raises(ValueError, match="TF_CONFIG environment variable is not JSON"):
        distribute.make_strategy("multi_worker")


@tensorflow_only
@pytest.mark.parametrize(
    "flags, message",
    [
        (
            {"meta_batch_size": 5},
            r"--meta_batch_size=5 must be a multiple of the number of "
            r"replicas \(2, --distribute=mirrored\)",
        ),
        ({"meta_grad": "nested"}, "--meta_grad=nested runs on one replica only"),
        ({"meta_interval": 2}, "--meta_interval=2 runs on one replica only on TensorFlow"),
    ],
)
def test_what_two_replicas_cannot_run_is_refused_before_any_data_is_loaded(
    tmp_path,
    monkeypatch,
    no_data_loading,  # noqa: F811
    flags,
    message,
):
    monkeypatch.setattr(distribute, "make_strategy", _two_replica_strategy)
    config = config_lib.Config(
        output_dir=str(tmp_path / "run"),
        num_meta=20,
        distribute="mirrored",
        **{"meta_batch_size": 10, **flags},
    )
    with pytest.raises(ValueError, match=message):
        run_lib.run(config)
    assert not (tmp_path / "run").exists()
    distribute.check_replicas(config, num_replicas=1)  # one replica runs either
    distribute.check_replicas(dataclasses.replace(config, method="ce"), num_replicas=2)  # no meta


def test_multi_worker_is_refused_on_jax(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(
        ValueError,
        match="--distribute=multi_worker uses tf.distribute, which needs KERAS_BACKEND=tensorflow",
    ):
        distribute.make_strategy("multi_worker")
    assert distribute.make_strategy("none") is tf.distribute.get_strategy()


def test_a_batch_size_the_jax_devices_do_not_divide_is_refused(monkeypatch):
    config = config_lib.Config(batch_size=64, meta_batch_size=30, distribute="mirrored")
    distribute.check_replicas(config, num_replicas=3)  # TensorFlow shares the batch unevenly.
    monkeypatch.setattr(distribute.backend, "batch_devices", lambda: 3)  # DataParallel on JAX
    with pytest.raises(
        ValueError,
        match=r"--batch_size=64 does not split over the 3 devices of --distribute=mirrored on "
        r"JAX; use a multiple of 3\.",
    ):
        distribute.check_replicas(config, num_replicas=3)
    distribute.check_replicas(dataclasses.replace(config, batch_size=63), num_replicas=3)


@pytest.mark.slow
@tensorflow_only
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_mirrored_on_jax_is_data_parallel_and_trains_as_one_device(tmp_path):
    # Two JAX processes on two host CPU devices: --distribute=mirrored (DataParallel) and none.
    env = _jax_two_devices_env()
    run_dirs = {}
    for devices in ("none", "mirrored"):
        run_dirs[devices] = str(tmp_path / devices)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "gdw_tf.train",
                *RUN_ARGS,
                f"--distribute={devices}",
                f"--output_dir={run_dirs[devices]}",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=TIMEOUT_S,
        )
        assert result.returncode == 0, result.stderr[-3000:]
    results = read_json(os.path.join(run_dirs["mirrored"], "results.json"))
    assert results["config"]["num_replicas"] == 2
    _assert_same_run(run_dirs["mirrored"], run_dirs["none"], exact=False)


@pytest.mark.slow
@tensorflow_only
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_mirrored_on_jax_trains_and_predicts_batches_the_devices_do_not_divide(tmp_path):
    # 253 training rows in batches of 50: the last batch's 3 rows are cut to 2 (one row left out
    # of the epoch, 6 steps); the 101 test rows and the label-issue pass are padded, the padding
    # weighted 0 and its outputs dropped (gdw_tf.data.device_batches).
    run_dir = str(tmp_path / "run")
    env = _jax_two_devices_env()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gdw_tf.train",
            *TINY_FASHION_MNIST,
            "--max_train_examples=303",
            "--max_test_examples=101",
            "--model=mlp",
            "--distribute=mirrored",
            f"--output_dir={run_dir}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    settings = read_json(os.path.join(run_dir, "config.json"))
    assert (settings["num_replicas"], settings["num_train"]) == (2, 253)
    assert settings["steps_per_epoch"] == 6
    weights = np.load(os.path.join(run_dir, "example_weights.npz"))["instance_weight"]
    assert np.count_nonzero(weights == 0) == 1  # The one row the epoch left out.

    # The saved backbone, evaluated here on one device, gives the run's numbers.
    backbone = keras.saving.load_model(os.path.join(run_dir, "model.keras"))
    mean, std = (np.float32(settings["normalization"][k]) for k in ("mean", "std"))
    data = datasets.load_dataset("fashion_mnist")

    def logits(images):
        return backbone.predict((images.astype(np.float32) / 255 - mean) / std, verbose=0)

    correct = logits(data.x_test[:101]).argmax(-1) == data.y_test[:101]
    accuracy = read_json(os.path.join(run_dir, "results.json"))["test_accuracy"]["last"]
    assert accuracy == pytest.approx(correct.mean(), rel=1e-6)
    with open(os.path.join(run_dir, "label_issues.csv"), newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["set"] == "training"]
    ids = np.array([int(row["id"]) for row in rows])
    assert len(rows) == 253 and len(set(ids)) == 253
    given = np.array([int(row["given_label"]) for row in rows])
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits(data.x_train[ids])))
    np.testing.assert_allclose(
        [float(row["given_probability"]) for row in rows],
        probabilities[np.arange(len(ids)), given],
        atol=2e-6,
    )


# `python -m gdw_tf.train`, killed (exit 3, no cleanup) after the third batch of epoch `argv[1]`
# (counted from 0; 0: not killed).
_TRAIN_KILLED_IN_EPOCH = """
import os, sys
from absl import app
from gdw_tf.runs import callbacks
from gdw_tf import train

kill_in_epoch = int(sys.argv[1])
if kill_in_epoch:
    def begin(self, epoch, logs=None):
        self.epoch = epoch
    def kill(self, batch, logs=None):
        if self.epoch == kill_in_epoch and batch == 2:
            os._exit(3)
    callbacks._ReplayDataOrder.on_epoch_begin = begin
    callbacks._ReplayDataOrder.on_train_batch_end = kill
sys.argv = ["train"] + sys.argv[2:]
app.run(train.main)
"""


@pytest.mark.slow
@tensorflow_only
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="JAX is not installed")
def test_a_killed_jax_mirrored_run_with_a_dropped_last_batch_resumes_as_uninterrupted(tmp_path):
    # 251 training rows in batches of 50: the last row alone is dropped, 5 steps an epoch; the
    # resumed run replays the data order by them (callbacks._ReplayDataOrder).
    env = _jax_two_devices_env()
    args = [
        *TINY_FASHION_MNIST,
        "--max_train_examples=301",
        "--model=mlp",
        "--epochs=3",
        "--distribute=mirrored",
    ]
    uninterrupted, resumed = str(tmp_path / "uninterrupted"), str(tmp_path / "resumed")

    def train(kill_in_epoch, run_dir):
        return subprocess.run(
            [
                sys.executable,
                "-c",
                _TRAIN_KILLED_IN_EPOCH,
                str(kill_in_epoch),
                *args,
                f"--output_dir={run_dir}",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            env=env,
            timeout=TIMEOUT_S,
        )

    for kill_in_epoch, run_dir, code in ((0, uninterrupted, 0), (2, resumed, 3), (0, resumed, 0)):
        result = train(kill_in_epoch, run_dir)
        assert result.returncode == code, result.stderr[-3000:]
    for expected, actual in zip(backbone_weights(uninterrupted), backbone_weights(resumed)):
        np.testing.assert_allclose(actual, expected)
    assert [row["test/accuracy"] for row in history_rows(resumed)] == [
        row["test/accuracy"] for row in history_rows(uninterrupted)
    ]
    assert read_json(os.path.join(resumed, "config.json"))["steps_per_epoch"] == 5
