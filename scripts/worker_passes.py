"""The files each worker of a `multi_worker` run reads in each pass, against one process
(issue 29), and the stages' times; printed and saved as JSON, for docs/DEVICES.md.

Random PNG images (28x28 RGB, four classes, a class-dependent mean) are written as folders:
`train` (`--train_per_class` a class), `trusted` (50 a class) and `test` (50 a class). One
epoch of the MLP (`--lr=0.01`; GDW, the trusted folder as meta set) runs first as one process,
then as the two workers of a cluster on localhost ports. Each process is `NOTING_READS`:
training as `python -m gdw_tf.train`, noting every file it reads (`tf.io.read_file`) with the
pass that read it. The stages' times are `results.json`'s `timing.stages` of each process.

    nice python scripts/worker_passes.py --work_dir=/tmp/worker_passes --out=worker_passes.json

`PYTHONPATH` chooses the gdw_tf that runs (e.g. an older checkout, to compare).
"""

import argparse
import collections
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

# `python -m gdw_tf.train` that notes each file it reads (`tf.io.read_file`), one line each in
# the file $READS_LOG: the pass that read it, then its path. A read made in a `tf.data` map is
# noted with the pass that built the map: the scan ("scan"), the normalisation sample
# ("normalization"), the training pipeline ("training"), the validation data ("validation"), the
# label-issue pass ("label_issues"); "other" for the rest (the trusted set decoded into memory,
# the report's images). With $TRAINING_READ_PAUSE, each training read waits that many seconds.
NOTING_READS = """
import os
import sys
import time
import tensorflow as tf
from absl import app
from gdw_tf import train
from gdw_tf.data import image_files
from gdw_tf.data import input_pipeline

PASS = ["other"]
read_file = tf.io.read_file
PAUSE = float(os.environ.get("TRAINING_READ_PAUSE", 0))

def noting_read_file(path, name=None):
    label = PASS[0]
    def note(value):
        with open(os.environ["READS_LOG"], "a") as log:
            log.write(label + " " + value.numpy().decode() + "\\n")
        if label == "training":
            time.sleep(PAUSE)
        return value
    noted = tf.py_function(note, [path], tf.string)
    noted.set_shape([])
    return read_file(noted, name=name)

def in_pass(function, label):
    def noting(*args, **kwargs):
        PASS[0] = label(kwargs) if callable(label) else label
        try:
            return function(*args, **kwargs)
        finally:
            PASS[0] = "other"
    return noting

tf.io.read_file = noting_read_file
image_files.scan = in_pass(image_files.scan, "scan")
input_pipeline.normalization_stats = in_pass(input_pipeline.normalization_stats, "normalization")
input_pipeline.train_dataset = in_pass(input_pipeline.train_dataset, "training")
input_pipeline.eval_dataset = in_pass(
    input_pipeline.eval_dataset,
    lambda kwargs: "label_issues" if kwargs.get("aligned") else "validation",
)
sys.argv = ["train"] + sys.argv[1:]
app.run(train.main)
"""
PASSES = ("scan", "normalization", "training", "validation", "label_issues", "other")


def reads(log):
    """What a process of `NOTING_READS` read: `{pass: Counter of paths}` ({} before any)."""
    found = {}
    if os.path.exists(log):
        with open(log, encoding="utf-8") as file:
            for line in file.read().splitlines():
                name, path = line.split(" ", 1)
                found.setdefault(name, collections.Counter())[path] += 1
    return found


def free_ports(count):
    """`count` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("localhost", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start(args, log_dir, *, workers, env=None):
    """Starts `NOTING_READS args` as the `workers` workers of a localhost cluster (one process
    without a cluster if `workers` is 1), worker i logging to `log_dir/worker<i>.log` and noting
    its reads in `log_dir/reads<i>.txt`; the `(process, log file)` pairs."""
    cluster = {"worker": [f"localhost:{port}" for port in free_ports(workers)]}
    started = []
    for index in range(workers):
        variables = {
            "KERAS_BACKEND": "tensorflow",
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "READS_LOG": os.path.join(log_dir, f"reads{index}.txt"),
            **(env or {}),
        }
        if workers > 1:
            task = {"type": "worker", "index": index}
            variables["TF_CONFIG"] = json.dumps({"cluster": cluster, "task": task})
        # Logs to files: a full pipe would block a worker, and with it the other.
        log = open(os.path.join(log_dir, f"worker{index}.log"), "a")
        process = subprocess.Popen(
            [sys.executable, "-c", NOTING_READS, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **variables},
        )
        started.append((process, log))
    return started


def write_folders(root, train_per_class, rng):
    """Random 28x28 RGB PNGs in `root/{train,trusted,test}/c<k>/`, four classes; once."""
    import tensorflow as tf

    if os.path.exists(os.path.join(root, "done")):
        return
    for part, count in (("train", train_per_class), ("trusted", 50), ("test", 50)):
        for k in range(4):
            os.makedirs(os.path.join(root, part, f"c{k}"), exist_ok=True)
            for i in range(count):
                image = np.clip(rng.normal(50 + 50 * k, 40, (28, 28, 3)), 0, 255).astype(np.uint8)
                tf.io.write_file(
                    os.path.join(root, part, f"c{k}", f"{i}.png"), tf.io.encode_png(image)
                )
    open(os.path.join(root, "done"), "w").close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--train_per_class", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    data = os.path.join(args.work_dir, "data")
    write_folders(data, args.train_per_class, np.random.default_rng(0))
    flags = [
        f"--train_data={data}/train",
        f"--trusted_data={data}/trusted",
        f"--test_data={data}/test",
        "--model=mlp",
        "--lr=0.01",
        "--epochs=1",
        "--batch_size=100",
        "--meta_batch_size=100",
        "--verbose=0",
    ]
    figures = {}
    for name, workers in (("one_process", 1), ("two_workers", 2)):
        log_dir = os.path.join(args.work_dir, name)
        os.makedirs(log_dir, exist_ok=False)
        extra = ["--distribute=multi_worker"] if workers > 1 else []
        began = time.perf_counter()
        processes = start([*flags, *extra, f"--output_dir={log_dir}/run"], log_dir, workers=workers)
        codes = [process.wait(timeout=args.timeout) for process, _ in processes]
        for _, log in processes:
            log.close()
        if any(codes):
            sys.exit(f"{name}: exit codes {codes}; see {log_dir}/worker*.log")
        run_dirs = [f"{log_dir}/run"] + [
            f"{log_dir}/run/workers/worker{i}" for i in range(1, workers)
        ]
        figures[name] = {
            "wall_seconds": time.perf_counter() - began,
            "workers": [
                {
                    "files_read": {
                        pass_name: sum(counts.values())
                        for pass_name, counts in reads(f"{log_dir}/reads{i}.txt").items()
                    },
                    "stages": json.load(open(os.path.join(run_dirs[i], "results.json")))["timing"][
                        "stages"
                    ],
                }
                for i in range(workers)
            ],
        }
    print(
        f"{'pass':14}"
        + "".join(f"{column:>14}" for column in ("one process", "worker 0", "worker 1"))
    )
    rows = [figures["one_process"]["workers"][0]] + figures["two_workers"]["workers"]
    for pass_name in PASSES:
        print(
            f"{pass_name:14}"
            + "".join(f"{row['files_read'].get(pass_name, 0):>14}" for row in rows)
        )
    with open(args.out, "w") as file:
        json.dump(figures, file, indent=1)


if __name__ == "__main__":
    main()
