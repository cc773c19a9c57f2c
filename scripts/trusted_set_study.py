"""What else the next run could take from the first: trusted sets and prunings, measured.

    nice python scripts/trusted_set_study.py --runs_dir=runs/review_loop --seeds=0,1

Reads what `scripts/review_loop_benchmark.py` left in `--runs_dir` (run it first, with the same
`--runs_dir`, settings and seeds): round 1 (`auto`: `--trusted_data=auto`), its
`label_issues.csv`, and the oracle's review of 500 (`oracle_500/corrections.csv`). Each variant
is a `corrections.csv` written from them and fed to a run like round 2 (`--trusted_data=auto
--corrections=...`, the same flags and seed); the reviewed examples replace automatic ones of
their class, so a file of N per class "keep" rows makes the trusted set those rows:

- `prune`: the review, and every flagged training row that it did not review removed
  (`decision=remove`);
- `sample_<n>`: no review; `<n>` per class of round 1's unflagged training rows, a seeded random
  sample, kept with their given labels (a trusted set drawn at random from what round 1 found
  right, not from what a warm-up found easy);
- `review_sample_<n>`: the review, and `<n>` per class of that sample;
- `true_<n>`: `<n>` per class of that sample with their true labels (what a perfect review of the
  sample would give: the best a trusted set drawn from it can do);
- `representatives_<draw>` and `random_<draw>`: what the review of 500 would be with another draw
  of its training examples, each reviewed as the oracle does (true label): the trusted examples
  the oracle's review held, then 50 per suggested class of round 1's training rows, in rounds:
  the representatives (`gdw_tf.labels.representatives`, as the review page orders them, with
  seed `<draw>`: the page's own order is seed 0) or a random sample (seed `<draw>`). The
  spread over draws is the spread of equally chosen reviews.

Printed as Markdown with the clean run and round 2 of the review loop beside them; each run is
`<runs_dir>/<setting>_seed<seed>/study/<variant>` (a finished run is skipped).
"""

import csv
import json
import os

import numpy as np
import review_loop_benchmark as loop  # scripts/, beside this one
from absl import app
from absl import flags

from gdw_tf.labels import label_issues
from gdw_tf.labels import representatives

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "variants",
    ["prune", "sample_100", "sample_200", "review_sample_50", "true_100", "true_200"],
    "The variants to run (module docstring).",
)

SAMPLE_SEED = 12345


def training_rows(base):
    """Round 1's training rows of label_issues.csv, as dicts."""
    with open(os.path.join(base, "auto", "label_issues.csv"), newline="") as file:
        return [row for row in csv.DictReader(file) if row["set"] == "training"]


def review_rows(base):
    """The oracle's review of 500 as (id, reviewed_label, decision) rows."""
    with open(os.path.join(base, "oracle_500", "corrections.csv"), newline="") as file:
        return [
            {"id": r["id"], "reviewed_label": r["reviewed_label"], "decision": r["decision"]}
            for r in csv.DictReader(file)
        ]


def unflagged_sample(rows, per_class, skip):
    """`per_class` random unflagged rows of each given label (ids in `skip` left out)."""
    rng = np.random.default_rng(SAMPLE_SEED)
    chosen = []
    for k in range(10):
        pool = [
            r
            for r in rows
            if r["flagged"] == "0" and r["given_label"] == str(k) and r["id"] not in skip
        ]
        chosen += [pool[i] for i in rng.choice(len(pool), per_class, replace=False)]
    return chosen


def review_draw(base, rows, method, draw):
    """The training rows of a review of 500 drawn by `method` (module docstring), in rounds."""
    review = review_rows(base)
    trusted = [r for r in review if r["id"] not in {row["id"] for row in rows}]
    count = 500 - len(trusted)
    if method == "representatives":  # As the page draws them: on the training set's order.
        features, train_indices = round1_features(base)
        row_of = {r["id"]: r for r in rows}
        rows = [row_of[str(int(i))] for i in train_indices]
        suggested = np.array([int(r["suggested_label"]) for r in rows])
        chosen = representatives.representatives(features, suggested, 100, seed=draw)[:count]
    else:
        suggested = np.array([int(r["suggested_label"]) for r in rows])
        rng = np.random.default_rng(draw)
        per_class = [
            rng.permutation(np.flatnonzero(suggested == k))[: count // 10 + (k < count % 10)]
            for k in range(10)
        ]
        chosen = np.concatenate(per_class)
        rounds = np.concatenate([np.arange(len(c)) for c in per_class])
        chosen = chosen[np.lexsort((suggested[chosen], rounds))]
    return trusted, [rows[i] for i in chosen]


def round1_features(base):
    """`(features, train_indices)`: the features the review's representatives are drawn on
    (`label_issues.probe_features` of round 1's model) of round 1's training set, in its order;
    cached in `study/features.npz`."""
    cache = os.path.join(base, "study", "features.npz")
    if not os.path.exists(cache):
        import keras

        from gdw_tf.data import datasets
        from gdw_tf.data import input_pipeline
        from gdw_tf.data import split as split_lib

        x = datasets.load_dataset("fashion_mnist").x_train
        mean, std = input_pipeline.normalization_stats("fashion_mnist", x)
        split = split_lib.Split.load(os.path.join(base, "auto", "split.npz"))
        model = keras.saving.load_model(os.path.join(base, "auto", "model.keras"))

        def inputs(indices):
            return input_pipeline.normalize(x[indices], mean, std).numpy()

        view = label_issues.probe_features(
            model, inputs(split.train_indices), inputs(split.meta_indices), dtype=np.float32
        )
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        np.savez(cache, features=view[2], train_indices=split.train_indices)
    stored = np.load(cache)
    return stored["features"], stored["train_indices"]


def variant_rows(variant, base, true_labels):
    """The corrections rows of one variant."""
    rows = training_rows(base)
    name, _, count = variant.rpartition("_")
    if name in ("representatives", "random"):
        trusted, chosen = review_draw(base, rows, name, int(count))
        return trusted + [
            {"id": r["id"], "reviewed_label": int(true_labels[int(r["id"])]), "decision": "keep"}
            for r in chosen
        ]
    if variant == "prune":
        review = review_rows(base)
        seen = {r["id"] for r in review}
        removed = [r for r in rows if r["flagged"] == "1" and r["id"] not in seen]
        return review + [
            {"id": r["id"], "reviewed_label": "", "decision": "remove"} for r in removed
        ]
    review = review_rows(base) if name == "review_sample" else []
    sample = unflagged_sample(rows, int(count), {r["id"] for r in review})
    if name == "true":
        labels = [int(true_labels[int(r["id"])]) for r in sample]
    elif name in ("sample", "review_sample"):
        labels = [int(r["given_label"]) for r in sample]
    else:
        raise ValueError(f"unknown variant {variant!r}")
    return review + [
        {"id": r["id"], "reviewed_label": label, "decision": "keep"}
        for r, label in zip(sample, labels)
    ]


def main(argv):
    del argv
    from gdw_tf.data import datasets

    true_labels = datasets.load_dataset("fashion_mnist").y_train
    print(
        "| setting | seed | clean | round 1 (auto) | round 2 (auto + 500) | "
        + " | ".join(FLAGS.variants)
        + " |"
    )
    print("| --- " * (5 + len(FLAGS.variants)) + "|")
    for setting in FLAGS.settings:
        for seed in (int(s) for s in FLAGS.seeds):
            base = os.path.join(FLAGS.runs_dir, f"{setting}_seed{seed}")
            with open(os.path.join(base, "metrics.json")) as file:
                stored = json.load(file)
            cells = [
                stored["clean"]["test_accuracy"],
                stored["auto"]["test_accuracy"],
                stored["oracle"]["test_accuracy"],
            ]
            for variant in FLAGS.variants:
                out = os.path.join(base, "study", variant)
                os.makedirs(out, exist_ok=True)
                path = os.path.join(out, "corrections.csv")
                if not os.path.exists(path):
                    rows = variant_rows(variant, base, true_labels)
                    with open(path, "w", newline="") as file:
                        writer = csv.DictWriter(file, ["id", "reviewed_label", "decision"])
                        writer.writeheader()
                        writer.writerows(rows)
                result = loop.train(
                    os.path.join(out, "run"), setting, seed, loop.AUTO + (f"--corrections={path}",)
                )
                cells.append(result["test_accuracy"]["last"])
            print(f"| {setting} | {seed} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    app.run(main)
