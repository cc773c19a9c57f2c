"""What a finished run reports: the per-epoch history, each training example's weights, the
ranked label issues and the HTML report, and `results.json` (accuracies, noise, the detection
AUROC of the weights, timing)."""

import csv
import os

import numpy as np

from gdw_tf.core import methods
from gdw_tf.data import input_pipeline
from gdw_tf.labels import label_issues
from gdw_tf.labels import report
from gdw_tf.labels import review


def read_history(path):
    """Rows of `history.csv` as dicts of floats, one per epoch (a rerun epoch's last row)."""
    by_epoch = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            by_epoch[int(row["epoch"])] = {
                key: float(value) for key, value in row.items() if value not in ("", "NA")
            }
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def save_example_weights(model, split, path, ids=None):
    """Writes each training example's weights of the last epoch with its labels; returns them.

    `true_label` and `corrupted` only where the truth is known (the benchmarks); `id` (file
    path, `<csv>:<line>` or `.npz` row) where `ids` names the rows `split` indexes (own data).
    """
    arrays = {
        "index": split.train_indices,
        "true_label": split.train_true_labels,
        "given_label": split.train_noisy_labels,
        "corrupted": split.train_corrupted,
        "instance_weight": np.asarray(model.example_weights),
        "labelled_class_weight": np.asarray(model.example_label_weights),
    }
    if not split.truth_known:
        del arrays["true_label"], arrays["corrupted"]
    if ids is not None:
        arrays["id"] = np.array([ids[i] for i in split.train_indices], dtype=str)
    np.savez(path, **arrays)
    return arrays


def write_label_issues_and_report(output_dir, model, dataset, split, mean, std, batch_size):
    """Writes `label_issues.csv` (the model on the unaugmented training set, with its recorded
    weights), `report.html` and `review.html`. Ids: the dataset's `train_ids` if it has them,
    else the index in the training split."""
    train_ids = getattr(dataset, "train_ids", None)
    ids = split.train_indices if train_ids is None else np.asarray(train_ids)[split.train_indices]
    images = dataset.x_train[split.train_indices]
    issues = label_issues.find_label_issues(
        model,
        input_pipeline.eval_dataset(images, split.train_noisy_labels, batch_size, mean, std),
        split.train_noisy_labels,
        ids=ids,
        class_names=getattr(dataset, "class_names", None),
    )
    label_issues.write_label_issues_csv(
        os.path.join(output_dir, label_issues.LABEL_ISSUES_FILE), issues
    )
    report.write_report(output_dir, issues, images=images)
    review.write_review(output_dir, issues, images=images)


def make_results(config, settings, split, history, example_weights, seconds):
    """The `results.json` dict.

    Accuracies are fractions in [0, 1]; `metrics` are the last epoch's logged values;
    `timing.total_seconds` is the wall time of the invocation that finished the run (since it
    resumed, for a resumed run), `seconds_per_epoch` covers training and evaluation.
    Where the truth is unknown (own data), `noise`'s entries, `detection_auroc` and the weight
    means of clean and corrupted examples are None; without a test set, `test_accuracy` is.
    """
    accuracy = [row["test/accuracy"] for row in history if "test/accuracy" in row]
    final = {
        key: value
        for key, value in history[-1].items()
        if "/" in key and key != "time/epoch_seconds"
    }
    known = split.truth_known
    corrupted = example_weights["corrupted"] if known else None
    return {
        "test_accuracy": {
            "last": accuracy[-1],
            "best": max(accuracy),
            "mean_last5": float(np.mean(accuracy[-5:])),
            "per_epoch": accuracy,
        }
        if accuracy
        else None,
        "metrics": final,
        "noise": {
            "realised_rate": float(split.realised_noise_rate) if known else None,
            "transition_matrix": split.empirical_transition_matrix.tolist() if known else None,
            "model_transition_matrix": split.transition_matrix.tolist() if known else None,
        },
        "detection_auroc": detection_aurocs(config.method, example_weights) if known else None,
        "example_weights": {
            f"{kind}_mean_{group}": (
                mean_or_none(example_weights[f"{kind}_weight"][mask]) if known else None
            )
            for kind in ("instance", "labelled_class")
            for group, mask in (
                ("clean", None if corrupted is None else ~corrupted),
                ("corrupted", corrupted),
            )
        },
        "config": {**config.to_dict(), **settings.to_dict()},
        "timing": {
            "total_seconds": seconds,
            "seconds_per_epoch": [row["time/epoch_seconds"] for row in history],
            "steps_per_epoch": settings.steps_per_epoch,
        },
    }


def detection_aurocs(method, example_weights):
    """AUROCs of "low weight ⇒ corrupted label"; None for CE or without both kinds of labels."""
    corrupted = example_weights["corrupted"]
    method = methods.get(method)
    if not method.meta_step or corrupted.all() or not corrupted.any():
        return None
    aurocs = {"instance_weight": auroc(-example_weights["instance_weight"], corrupted)}
    aurocs["labelled_class_weight"] = (
        auroc(-example_weights["labelled_class_weight"], corrupted) if method.class_level else None
    )
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


def mean_or_none(values):
    return float(np.mean(values)) if len(values) else None
