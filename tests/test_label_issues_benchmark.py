"""scripts/label_issues_benchmark.py, tiny: each seed's runs, the tables' mean ± sd over the
seeds, cleanlab with and without the trusted labels GDW gets, and resuming."""

import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from conftest import read_json

from gdw_tf.data import split as split_lib
from gdw_tf.labels import label_issues

SEEDS = (1, 2)
NUM_TRUSTED = 200


def _row(stdout, method):
    """The main table's row of flip 40% and `method` (its label's start)."""
    return next(
        line for line in stdout.splitlines() if line.startswith("| flip 40% (") and method in line
    )


@pytest.mark.slow
def test_benchmark_reports_seeds_as_mean_and_sd_and_cleanlab_with_the_trusted_labels(tmp_path):
    pytest.importorskip("cleanlab")
    pytest.importorskip("sklearn")
    args = [
        sys.executable,
        os.path.join(REPO, "scripts", "label_issues_benchmark.py"),
        f"--runs_dir={tmp_path}",
        "--settings=flip_40",
        f"--seeds={','.join(map(str, SEEDS))}",
        "--folds=2",
        "--train_flag=--epochs=1",
        "--train_flag=--max_train_examples=1200",
        "--train_flag=--max_test_examples=200",
        f"--train_flag=--num_meta={NUM_TRUSTED}",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    first = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:]

    runs, corrupted = [], []
    for seed in SEEDS:
        seed_dir = tmp_path / "flip_40" / f"seed{seed}"
        metrics = read_json(seed_dir / "metrics.json")
        runs.append(metrics)
        assert metrics["seed"] == seed and f"--seed={seed}" in metrics["train_flags"]
        split = split_lib.Split.load(str(seed_dir / "gdw" / "split.npz"))
        assert metrics["num_train"] == len(split.train_indices) == 1000
        assert metrics["num_trusted"] == len(split.meta_indices) == NUM_TRUSTED
        corrupted.append(split.train_corrupted)
        # gdw_tf's figures are those of the run's own label_issues.csv against the true labels.
        table = label_issues.read_label_issues_csv(str(seed_dir / "gdw" / "label_issues.csv"))
        training = np.array(table["set"]) == "training"  # then the trusted rows
        table = {name: np.array(values)[training] for name, values in table.items()}
        position = np.searchsorted(split.train_indices, np.array(table["id"], np.int64))
        flagged = np.array(table["flagged"]) == "1"
        wrong = split.train_corrupted[position]
        hits = int((flagged & wrong).sum())
        assert metrics["gdw_tf"]["flagged"] == int(flagged.sum())
        assert metrics["gdw_tf"]["precision"] == pytest.approx(hits / flagged.sum())
        assert metrics["gdw_tf"]["recall"] == pytest.approx(hits / wrong.sum())
        # cleanlab + trusted labels: each fold fits its share of the noisy training set, as
        # plain cleanlab's does, and the whole trusted set.
        for fold in range(2):
            with (
                np.load(seed_dir / "ce" / f"fold{fold}.npz") as plain,
                np.load(seed_dir / "ce_trusted" / f"fold{fold}.npz") as trusted,
            ):
                np.testing.assert_array_equal(plain["held_out"], trusted["held_out"])
                assert plain["num_fitted"] == 1000 - len(plain["held_out"])
                assert trusted["num_fitted"] == plain["num_fitted"] + NUM_TRUSTED
        for method in ("gdw_tf", "cleanlab", "cleanlab_trusted"):
            assert 0.0 <= metrics[method]["f1"] <= 1.0 and metrics[method]["seconds"] > 0
    assert not np.array_equal(*corrupted)  # each seed draws its own noise

    # Each cell: the seeds' mean ± sample standard deviation.
    assert "Seeds 1, 2; each cell the mean ± sample standard deviation over them." in first.stdout
    for method, label in (
        ("gdw_tf", "gdw_tf (GDW, 1 run, 200 trusted labels)"),
        ("cleanlab", "cleanlab (2-fold CE)"),
        ("cleanlab_trusted", "cleanlab + trusted labels (2-fold CE, the 200 trusted labels"),
    ):
        f1 = [m[method]["f1"] for m in runs]
        auroc = [m[method]["auroc"] for m in runs]
        cells = _row(first.stdout, f"| {label}").split(" | ")
        assert cells[2] == f"{np.mean(auroc):.3f} ± {np.std(auroc, ddof=1):.3f}"
        assert cells[5] == f"**{np.mean(f1):.3f} ± {np.std(f1, ddof=1):.3f}**"
    errors = [m["gdw_tf"]["estimated_wrong"] / m["true_wrong"] - 1 for m in runs]
    assert f"{np.mean(errors):+.1%} ± {np.std(errors, ddof=1):.1%}" in first.stdout

    # Run again: the GDW runs and every fold are found and not trained again.
    again = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(f"flip_40 seed {seed} gdw: done, skipped" in again.stdout for seed in SEEDS)
    assert "fold 0:" not in again.stdout
