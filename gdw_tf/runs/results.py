"""What a finished run reports: each training example's weights, the ranked label issues, and
`results.json` (accuracies, noise, the detection AUROC of the weights, timing). The files are
written by `gdw_tf.runs.run_dir`."""

import dataclasses

import numpy as np

from gdw_tf.core import methods
from gdw_tf.data import ids as ids_lib
from gdw_tf.data import image_files
from gdw_tf.data import input_pipeline
from gdw_tf.labels import label_issues


def example_weights(model, split, ids=None):
    """Each training example's weights of the last epoch with its labels (`example_weights.npz`).

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
    if ids is not None:  # A `str` array, filled without a list of every name first.
        width = max((len(ids[i]) for i in split.train_indices), default=1)
        names = (ids[i] for i in split.train_indices)
        arrays["id"] = np.fromiter(names, f"<U{width}", count=len(split.train_indices))
    return arrays


def training_label_issues(model, dataset, split, x_train, *, mean, std, batch_size, share=None):
    """The training labels ranked by the trained model on the unaugmented training set
    `x_train`, with its recorded weights. Ids: the dataset's `train_ids` if it has them, else the
    index in the training split. With a meta set, the number of wrong labels is estimated with it
    (and the flags cut at it where the model learned many wrong labels:
    `label_issues.rank_label_issues`). Streamed images found unreadable during the run are left
    out (they are listed in `skipped_files.txt`), and the pass made again without any found
    unreadable in it; `position` still indexes `x_train`. `share`: a worker of a cluster, which
    predicts only its rows (`label_issues.find_label_issues`); every worker gets the same."""
    ids, meta_ids = split.train_indices, split.meta_indices
    if dataset.train_ids is not None:  # The dataset's names (a view where rows are consecutive).
        train_ids = dataset.train_ids
        if not isinstance(train_ids, ids_lib.Ids):
            train_ids = ids_lib.Ids(ids_lib.encode(train_ids))
        ids, meta_ids = train_ids[split.train_indices], train_ids[split.meta_indices]
    reviewed = np.isin(split.train_indices, split.reviewed_indices)
    meta_reviewed = np.isin(split.meta_indices, split.reviewed_indices)
    x_meta = dataset.x_train[split.meta_indices]
    while True:
        kept = _readable(x_train, share), _readable(x_meta, share)
        train = _rows(kept[0], x_train, split.train_noisy_labels, ids, reviewed)
        meta = _rows(kept[1], x_meta, split.meta_labels, meta_ids, meta_reviewed)

        def own_rows(x, y):  # This worker's rows, as an input pipeline.
            rows = slice(None) if share is None else share.rows(len(y))
            return input_pipeline.eval_dataset(
                x[rows], y[rows], batch_size, mean, std, aligned=True
            )

        issues = label_issues.find_label_issues(
            model,
            own_rows(train[0], train[1]),
            train[1],
            index=None if kept[0].all() else np.flatnonzero(kept[0]),
            ids=train[2],
            class_names=dataset.class_names,
            trusted=(own_rows(meta[0], meta[1]), meta[1]) if len(meta[1]) else None,
            # An automatic trusted set holds clear examples: its estimate undercounts
            # (docs/LABEL_ISSUES.md, "Automatic trusted set"), so the flags stay score < 0.
            trusted_for_flags=split.meta_source != "auto",
            trusted_ids=meta[2],
            reviewed=train[3],
            trusted_reviewed=meta[3],
            share=share,
        )
        if all(np.array_equal(_readable(x, share), k) for x, k in zip((x_train, x_meta), kept)):
            break
    if not kept[0].all():  # Positions in `x_train`, as the report's images take them.
        issues = dataclasses.replace(issues, position=np.flatnonzero(kept[0])[issues.position])
    if issues.trusted is not None and not kept[1].all():  # Positions in `x_meta`.
        checks = issues.trusted
        checks = dataclasses.replace(checks, position=np.flatnonzero(kept[1])[checks.position])
        issues = dataclasses.replace(issues, trusted=checks)
    if issues.estimate is None:
        return issues
    return dataclasses.replace(
        issues, estimate=dataclasses.replace(issues.estimate, trusted_source=split.meta_source)
    )


def _readable(x, share):
    """bool `[N]`: the rows of `x` that no worker found unreadable (`image_files.readable`)."""
    readable = image_files.readable(x)
    if share is None or not image_files.is_streamed(x):
        return readable
    return share.sum((~readable).astype(np.int64)) == 0


def _rows(kept, *columns):
    """The `kept` rows of each column (the columns themselves if all are kept)."""
    return tuple(column if kept.all() else column[kept] for column in columns)


def wrong_labels_summary(issues, split):
    """The `results.json` entry `wrong_labels`: the estimated number of wrong labels (None
    without a trusted set), how many are flagged, and, where the noise was injected, the truth."""
    estimate = issues.estimate
    summary = {"flagged": issues.num_flagged, "estimate": None, "true": None}
    if split.truth_known:
        summary["true"] = int(split.train_corrupted.sum())
    if estimate is not None:
        summary["estimate"] = estimate.to_json()
    return summary


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
