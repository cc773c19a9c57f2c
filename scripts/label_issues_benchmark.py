"""Finding wrong labels: gdw_tf's label issues against cleanlab's, on Fashion-MNIST.

    pip install -r scripts/requirements.txt      # cleanlab (AGPL; this script only), scikit-learn
    nice python scripts/label_issues_benchmark.py --runs_dir=runs/label_issues_benchmark

For each setting (a flag file `flags/fashion_mnist_<setting>.flags`, with `--model=mlp`):

1. gdw_tf: one GDW run, `python -m gdw_tf.train --flagfile=... --model=mlp`, whose
   `label_issues.csv` ranks and flags the training set (`gdw_tf.labels.label_issues`; recomputed
   here from the saved model, so runs from before that file existed count too);
2. cleanlab: the same backbone trained with cross-entropy under the same recipe (flags, SGD,
   cosine schedule, L2) on K-fold splits of the same noisy training set (`split.npz` of the GDW
   run), its out-of-fold probabilities given to `cleanlab.filter.find_label_issues` (flags),
   `cleanlab.rank.get_label_quality_scores` (ranking) and argmax (suggested label).

Reported per setting and method: AUROC of the score for "the label is wrong", precision, recall
and F1 of the flagged set, accuracy of the suggested label on the truly wrong examples, and
wall time (GDW: its one training run, with the label issues; cleanlab: its K trainings, their
predictions and cleanlab). Also, for gdw_tf, the AUROC of each candidate score and the F1 of
candidate flag rules: the measurements behind the choice in `docs/LABEL_ISSUES.md`.

Resumable: a finished GDW run (results.json) and a finished fold (`ce/fold<k>.npz`) are
skipped; an interrupted GDW run resumes. Results go to `<runs_dir>/<setting>/metrics.json` and
are printed as a Markdown table.
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SETTINGS = ("uniform_60", "flip_40", "uniform_40_imbalance_10")
SETTING_NAMES = {
    "uniform_60": "uniform 60%",
    "flip_40": "flip 40%",
    "uniform_40_imbalance_10": "uniform 40% + long tail ρ=10",
}
COMMON_OVERRIDES = ("--model=mlp", "--verbose=2")

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "runs_dir",
    os.path.join(REPO, "runs", "label_issues_benchmark"),
    "Directory of the benchmark's runs.",
)
flags.DEFINE_list("settings", list(SETTINGS), "Settings (flags/fashion_mnist_<setting>.flags).")
flags.DEFINE_integer("folds", 5, "K of cleanlab's K-fold out-of-fold probabilities.", lower_bound=2)
flags.DEFINE_multi_string(
    "train_flag",
    [],
    "Extra flag for every training (GDW and the CE folds), e.g. "
    "--train_flag=--epochs=5 or --train_flag=--max_train_examples=20000.",
)
flags.DEFINE_bool("report_only", False, "Do not train; report what is finished.")


def train_flags(setting, output_dir):
    """The `gdw_tf.train` flags of the setting's GDW run."""
    return [
        f"--flagfile=flags/fashion_mnist_{setting}.flags",
        *COMMON_OVERRIDES,
        *FLAGS.train_flag,
        f"--output_dir={output_dir}",
    ]


def parse_config(setting, output_dir):
    """The `gdw_tf.runs.config.Config` of the GDW run of `setting` (the CE folds use its recipe)."""
    from gdw_tf.runs import config as config_lib

    values = flags.FlagValues()
    config_lib.define_flags(values)
    values(["label_issues_benchmark", *train_flags(setting, output_dir)])
    return config_lib.Config.from_flags(values)


def run_gdw(setting, output_dir):
    """Trains the GDW run of `setting` unless finished; returns False if it failed."""
    if os.path.exists(os.path.join(output_dir, "results.json")):
        print(f"{setting} gdw: done, skipped", flush=True)
        return True
    os.makedirs(output_dir, exist_ok=True)
    command = [sys.executable, "-m", "gdw_tf.train", *train_flags(setting, output_dir)]
    start = time.monotonic()
    with open(os.path.join(output_dir, "train.log"), "a") as log:
        log.write("$ " + " ".join(command[1:]) + "\n")
        log.flush()
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    print(f"{setting} gdw: exit {code} after {time.monotonic() - start:.0f} s", flush=True)
    return code == 0


def gdw_probabilities(config, dataset, split, gdw_dir):
    """The GDW model's probabilities on the (unaugmented, normalised) training set."""
    import keras

    from gdw_tf.data import input_pipeline
    from gdw_tf.labels import label_issues

    with open(os.path.join(gdw_dir, "config.json")) as file:
        normalization = json.load(file)["normalization"]
    backbone = keras.models.load_model(os.path.join(gdw_dir, "model.keras"))
    images = input_pipeline.eval_dataset(
        dataset.x_train[split.train_indices],
        split.train_noisy_labels,
        config.batch_size,
        normalization["mean"],
        normalization["std"],
    )
    return label_issues.predict_probabilities(backbone, images)


def run_ce_folds(config, dataset, split, ce_dir, folds):
    """Trains the CE folds not yet done; returns (out-of-fold probabilities, seconds) or None."""
    import keras
    from sklearn.model_selection import StratifiedKFold

    from gdw_tf.core.model import GDWModel
    from gdw_tf.data import input_pipeline
    from gdw_tf.labels import label_issues
    from gdw_tf.nets import backbones
    from gdw_tf.runs import callbacks

    os.makedirs(ce_dir, exist_ok=True)
    x = dataset.x_train[split.train_indices]
    y = split.train_noisy_labels
    mean, std = input_pipeline.normalization_stats(config.dataset, dataset.x_train)
    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    probabilities = np.zeros((len(y), dataset.num_classes))
    seconds = 0.0
    for fold, (fit_rows, held_out) in enumerate(kfold.split(x, y)):
        path = os.path.join(ce_dir, f"fold{fold}.npz")
        if not os.path.exists(path):
            start = time.perf_counter()
            keras.utils.set_random_seed(config.seed + fold)
            backbone = backbones.build_model(config.model, x.shape[1:], dataset.num_classes)
            model = GDWModel(
                backbone, dataset.num_classes, method="ce", l2=config.l2, seed=config.seed
            )
            model.compile(keras.optimizers.SGD(config.lr, momentum=config.momentum))
            train = input_pipeline.train_dataset(
                x[fit_rows],
                y[fit_rows],
                config.batch_size,
                seed=config.seed + fold,
                augment=False,
                mean=mean,
                std=std,
            )
            schedule = keras.callbacks.LearningRateScheduler(
                lambda epoch: callbacks.cosine_lr(config.lr, epoch, config.epochs)
            )
            model.fit(train, epochs=config.epochs, callbacks=[schedule], verbose=2)
            held = label_issues.predict_probabilities(
                model, input_pipeline.eval_dataset(x[held_out], y[held_out], 500, mean, std)
            )
            np.savez(
                path, held_out=held_out, probabilities=held, seconds=time.perf_counter() - start
            )
            print(f"  fold {fold}: {time.perf_counter() - start:.0f} s", flush=True)
        with np.load(path) as stored:
            if not np.array_equal(stored["held_out"], held_out):
                raise ValueError(f"{path} holds another fold; delete {ce_dir} to start over.")
            probabilities[held_out] = stored["probabilities"]
            seconds += float(stored["seconds"])
    return probabilities, seconds


def auroc(scores, positive):
    from gdw_tf.runs.results import auroc as auroc_lib

    return auroc_lib(scores, positive)


def detection(flagged, score, suggested, split):
    """Metrics of a flagged set and a score (lower = more suspicious) against the truth."""
    wrong = split.train_corrupted
    true_positives = int((flagged & wrong).sum())
    precision = true_positives / max(int(flagged.sum()), 1)
    recall = true_positives / max(int(wrong.sum()), 1)
    return {
        "auroc": auroc(-score, wrong),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "flagged": int(flagged.sum()),
        "suggested_accuracy_on_wrong": float(
            (suggested[wrong] == split.train_true_labels[wrong]).mean()
        ),
    }


def candidates(probabilities, split, weights):
    """AUROC of each candidate score and F1 of candidate flag rules, for gdw_tf's choice."""
    from gdw_tf.labels import label_issues

    given = split.train_noisy_labels
    rows = np.arange(len(given))
    margin = label_issues.label_margin(probabilities, given)
    instance, labelled = weights["instance_weight"], weights["labelled_class_weight"]
    scores = {
        "instance weight": instance,
        "labelled-class weight ω¹": labelled,
        "p(given label)": probabilities[rows, given],
        "margin p(given) − max other p": margin,
        "instance weight × p(given)": instance * probabilities[rows, given],
    }
    wrong = split.train_corrupted
    rules = {
        "margin < 0 (suggested ≠ given)": margin < 0,
        "instance weight < max/2": instance < instance.max() / 2,
        "ω¹ < max/2": labelled < labelled.max() / 2,
        "lowest k by instance weight, k = #(margin < 0)": _lowest(
            instance, int((margin < 0).sum())
        ),
        "lowest k by instance weight, k = true number wrong (oracle)": _lowest(
            instance, int(wrong.sum())
        ),
    }
    f1 = {}
    for name, flagged in rules.items():
        tp = (flagged & wrong).sum()
        precision, recall = tp / max(flagged.sum(), 1), tp / max(wrong.sum(), 1)
        f1[name] = float(2 * precision * recall / (precision + recall)) if tp else 0.0
    return ({name: auroc(-score, wrong) for name, score in scores.items()}, f1)


def _lowest(score, k):
    flagged = np.zeros(len(score), bool)
    flagged[np.argsort(score, kind="stable")[:k]] = True
    return flagged


def evaluate(setting):
    """Runs what is missing for `setting` and returns its metrics dict (None if unfinished)."""
    from gdw_tf.data import split as split_lib
    from gdw_tf.labels import label_issues
    from gdw_tf.runs import run as run_lib
    from gdw_tf.runs import run_dir as run_dir_lib

    setting_dir = os.path.join(FLAGS.runs_dir, setting)
    gdw_dir = os.path.join(setting_dir, "gdw")
    if not FLAGS.report_only and not run_gdw(setting, gdw_dir):
        return None
    if not os.path.exists(os.path.join(gdw_dir, "results.json")):
        return None
    config = parse_config(setting, gdw_dir)
    dataset = run_lib.load_data(config)
    split = split_lib.Split.load(os.path.join(gdw_dir, "split.npz"))
    with open(os.path.join(gdw_dir, "results.json")) as file:
        results = json.load(file)

    # gdw_tf: the run's own label_issues.csv (recomputed from model.keras and
    # example_weights.npz for a run from before that file existed).
    weights = dict(np.load(os.path.join(gdw_dir, "example_weights.npz")))
    probabilities = gdw_probabilities(config, dataset, split, gdw_dir)
    issues = label_issues.rank_label_issues(
        probabilities,
        split.train_noisy_labels,
        instance_weights=weights["instance_weight"],
        label_weights=weights["labelled_class_weight"],
    )
    flagged, score, suggested = (
        issues.in_input_order(name) for name in ("flagged", "score", "suggested_label")
    )
    csv_path = os.path.join(gdw_dir, run_dir_lib.LABEL_ISSUES_FILE)
    if os.path.exists(csv_path):
        table = label_issues.read_label_issues_csv(csv_path)
        position = np.searchsorted(split.train_indices, np.array(table["id"], np.int64))
        recomputed = score[position]
        flagged, score, suggested = (np.empty_like(a) for a in (flagged, score, suggested))
        flagged[position] = np.array(table["flagged"]) == "1"
        score[position] = np.array(table["score"], np.float64)
        suggested[position] = np.array(table["suggested_label"], np.int64)
        print(
            f"{setting}: {csv_path}, largest difference from the recomputed score "
            f"{np.abs(recomputed - score[position]).max():.1e}",
            flush=True,
        )
    gdw = detection(flagged, score, suggested, split)
    gdw["seconds"] = results["timing"]["total_seconds"]
    gdw["test_accuracy"] = results["test_accuracy"]["last"]
    candidate_aurocs, candidate_f1 = candidates(probabilities, split, weights)

    # cleanlab on K-fold out-of-fold probabilities of the same backbone trained with CE.
    if FLAGS.report_only and not all(
        os.path.exists(os.path.join(setting_dir, "ce", f"fold{k}.npz")) for k in range(FLAGS.folds)
    ):
        return None
    import cleanlab.filter
    import cleanlab.rank

    out_of_fold, seconds = run_ce_folds(
        config, dataset, split, os.path.join(setting_dir, "ce"), FLAGS.folds
    )
    start = time.perf_counter()
    given = split.train_noisy_labels
    flagged = cleanlab.filter.find_label_issues(given, out_of_fold)
    quality = cleanlab.rank.get_label_quality_scores(given, out_of_fold)
    cleanlab_metrics = detection(flagged, quality, out_of_fold.argmax(axis=1), split)
    cleanlab_metrics["seconds"] = seconds + time.perf_counter() - start
    metrics = {
        "setting": setting,
        "train_flags": train_flags(setting, gdw_dir)[:-1],
        "num_train": int(len(given)),
        "realised_noise_rate": float(split.realised_noise_rate),
        "gdw_tf": gdw,
        "cleanlab": cleanlab_metrics,
        "folds": FLAGS.folds,
        "candidate_score_auroc": candidate_aurocs,
        "candidate_rule_f1": candidate_f1,
    }
    with open(os.path.join(setting_dir, "metrics.json"), "w") as file:
        json.dump(metrics, file, indent=2)
    return metrics


def markdown(all_metrics):
    """The results and the candidates as Markdown tables."""
    lines = [
        "| setting (realised noise) | method | AUROC | precision | recall | F1 | flagged "
        "| suggested label right on wrong | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in all_metrics:
        for method, name in (
            ("gdw_tf", "gdw_tf (GDW, 1 run)"),
            ("cleanlab", f"cleanlab ({m['folds']}-fold CE)"),
        ):
            r = m[method]
            lines.append(
                f"| {SETTING_NAMES.get(m['setting'], m['setting'])} "
                f"({m['realised_noise_rate']:.1%}) | {name} | {r['auroc']:.3f} | "
                f"{r['precision']:.3f} | {r['recall']:.3f} | **{r['f1']:.3f}** | "
                f"{r['flagged']:,} | {r['suggested_accuracy_on_wrong']:.3f} | "
                f"{r['seconds'] / 60:.1f} min |"
            )
    lines += [
        "",
        "| candidate score: AUROC | "
        + " | ".join(SETTING_NAMES.get(m["setting"], m["setting"]) for m in all_metrics)
        + " |",
        "| --- |" + " --- |" * len(all_metrics),
    ]
    for name in all_metrics[0]["candidate_score_auroc"]:
        lines.append(
            f"| {name} | "
            + " | ".join(f"{m['candidate_score_auroc'][name]:.4f}" for m in all_metrics)
            + " |"
        )
    lines += [
        "",
        "| candidate flag rule: F1 | "
        + " | ".join(SETTING_NAMES.get(m["setting"], m["setting"]) for m in all_metrics)
        + " |",
        "| --- |" + " --- |" * len(all_metrics),
    ]
    for name in all_metrics[0]["candidate_rule_f1"]:
        lines.append(
            f"| {name} | "
            + " | ".join(f"{m['candidate_rule_f1'][name]:.4f}" for m in all_metrics)
            + " |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    os.chdir(REPO)
    finished = []
    for setting in FLAGS.settings:
        metrics = evaluate(setting)
        if metrics is None:
            print(f"{setting}: not finished", flush=True)
        else:
            finished.append(metrics)
    if finished:
        print(markdown(finished))


if __name__ == "__main__":
    app.run(main)
