"""Finding wrong labels: gdw_tf's label issues against cleanlab's, on Fashion-MNIST.

    pip install -r scripts/requirements.txt      # cleanlab (AGPL; this script only), scikit-learn
    nice python scripts/label_issues_benchmark.py --runs_dir=runs/label_issues_benchmark

For each setting (a flag file `flags/fashion_mnist_<setting>.flags`, with `--model=mlp`) and
each of `--seeds` (the training's `--seed`, and the draw of an instance-dependent setting's
noise):

1. gdw_tf: one GDW run, `python -m gdw_tf.train --flagfile=... --model=mlp`, whose
   `label_issues.csv` ranks and flags the training set (`gdw_tf.labels.label_issues`; recomputed
   here from the saved model, so runs from before that file existed count too);
2. cleanlab: the same backbone trained with cross-entropy under the same recipe (flags, SGD,
   cosine schedule, L2) on K-fold splits of the same noisy training set (`split.npz` of the GDW
   run), its out-of-fold probabilities given to `cleanlab.filter.find_label_issues` (flags),
   `cleanlab.rank.get_label_quality_scores` (ranking) and argmax (suggested label);
3. cleanlab + trusted labels: as 2, with the GDW run's trusted set (its meta set: 1,000 images
   with their clean labels) added to each fold's training set, so that cleanlab has the
   labels GDW has.

Reported per setting and method, as mean ± sample standard deviation over the seeds: AUROC of
the score for "the label is wrong", precision, recall and F1 of the flagged set, accuracy of
the suggested label on the truly wrong examples, and wall time (GDW: its one training run, with
the label issues; cleanlab: its K trainings, their predictions and cleanlab). Also, for gdw_tf,
the AUROC of each candidate score and the F1 of candidate flag rules: the measurements behind
the choice in `docs/LABEL_ISSUES.md`.

Seed 0 chose the constants `gdw_tf.labels.wrong_count.REJECTED_SHARE` and
`gdw_tf.labels.label_issues.TRUSTED_PER_COMPONENT`; the default seeds, 1, 2 and 3, did not.

Resumable: a finished GDW run (results.json) and a finished fold (`ce/fold<k>.npz`,
`ce_trusted/fold<k>.npz`) are skipped; an interrupted GDW run resumes. Each seed's runs and
results go to `<runs_dir>/<setting>/seed<k>/` (`metrics.json`); the tables are printed in
Markdown.
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

SETTINGS = (
    "uniform_60",
    "flip_40",
    "uniform_40_imbalance_10",
    "instance_20",
    "instance_35",
    "projection_20",
    "projection_35",
)
SETTING_NAMES = {
    "uniform_60": "uniform 60%",
    "flip_40": "flip 40%",
    "uniform_40_imbalance_10": "uniform 40% + long tail ρ=10",
    "instance_20": "instance-dependent 20%",
    "instance_35": "instance-dependent 35%",
    "projection_20": "projection-dependent 20%",
    "projection_35": "projection-dependent 35%",
}
# Instance-dependent settings: the expected fraction of wrong labels of each, and the recipe
# (`gdw_tf.data.noise`): "ambiguity", Chen et al. 2021's (the wrong label is the class a clean
# classifier finds likeliest after the true one), or "projection", Xia et al. 2020's (random
# projections of the pixels choose it).
INSTANCE_RATIOS = {
    "instance_20": 0.2,
    "instance_35": 0.35,
    "projection_20": 0.2,
    "projection_35": 0.35,
}
INSTANCE_RECIPES = {setting: setting.split("_")[0] for setting in INSTANCE_RATIOS}
# Their recipe: the flag files' (this one's, less its dataset, noise and meta-set lines), on
# .npz files written here, as a user with their own data would run it.
INSTANCE_RECIPE_FLAGFILE = "flags/fashion_mnist_uniform_60.flags"
INSTANCE_DROPPED_FLAGS = ("--dataset", "--noise", "--ratio", "--imbalance", "--num_meta")
INSTANCE_META_PER_CLASS = 100
COMMON_OVERRIDES = ("--model=mlp", "--verbose=2")

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "runs_dir",
    os.path.join(REPO, "runs", "label_issues_benchmark"),
    "Directory of the benchmark's runs.",
)
flags.DEFINE_list("settings", list(SETTINGS), "Settings (flags/fashion_mnist_<setting>.flags).")
flags.DEFINE_list(
    "seeds",
    ["1", "2", "3"],
    "Seeds: each setting is run once per seed; the tables give mean ± sd over them. Seed 0 "
    "chose REJECTED_SHARE and TRUSTED_PER_COMPONENT: leave it out to report on runs that did "
    "not choose them.",
)
flags.register_validator(
    "seeds",
    lambda seeds: bool(seeds) and all(seed.isdigit() for seed in seeds),
    message="--seeds: give non-negative integers, e.g. --seeds=1,2,3.",
)
flags.DEFINE_integer("folds", 5, "K of cleanlab's K-fold out-of-fold probabilities.", lower_bound=2)
flags.DEFINE_multi_string(
    "train_flag",
    [],
    "Extra flag for every training (GDW and the CE folds), e.g. "
    "--train_flag=--epochs=5 or --train_flag=--max_train_examples=20000.",
)
flags.DEFINE_bool("report_only", False, "Do not train; report what is finished.")
flags.DEFINE_bool("train_only", False, "Train the GDW runs and CE folds; do not evaluate.")
flags.DEFINE_list(
    "trusted_per_class",
    ["10", "30"],
    "Also estimate the number of wrong labels from smaller trusted sets: this many trusted "
    "examples per class, drawn (seeded) from the run's trusted set, 5 draws each.",
)
TRUSTED_DRAWS = 5
# Numbers of principal components of the penultimate features compared as the probes' inputs.
PROBE_COMPONENT_CANDIDATES = (16, 32, 64)


def seed_dir(setting, seed):
    """The directory of one seed's runs of `setting`."""
    return os.path.join(FLAGS.runs_dir, setting, f"seed{seed}")


def train_flags(setting, output_dir, seed):
    """The `gdw_tf.train` flags of the setting's GDW run with `seed`."""
    if setting in INSTANCE_RATIOS:
        data_dir = os.path.join(os.path.dirname(output_dir), "data")
        with open(os.path.join(REPO, INSTANCE_RECIPE_FLAGFILE)) as file:
            recipe = [
                line.strip()
                for line in file
                if line.strip().startswith("--")
                and line.split("=")[0].strip() not in INSTANCE_DROPPED_FLAGS
            ]
        source = [
            *recipe,
            f"--train_data={data_dir}/train.npz",
            f"--trusted_data={data_dir}/trusted.npz",
            f"--test_data={data_dir}/test.npz",
        ]
    else:
        source = [f"--flagfile=flags/fashion_mnist_{setting}.flags"]
    return [
        *source,
        *COMMON_OVERRIDES,
        *FLAGS.train_flag,
        f"--seed={seed}",
        f"--output_dir={output_dir}",
    ]


def write_instance_noise_data(setting, data_dir, seed=0):
    """Writes the `.npz` files of an instance-dependent setting unless they exist.

    Fashion-MNIST's training set: 100 images per class drawn (seeded) as the clean trusted set,
    the other 59,000 given instance-dependent noisy labels (`gdw_tf.data.noise`; "ambiguity": a
    softmax regression trained on all 60,000 clean labels measures each image's ambiguity and
    the noise is drawn from it; "projection": Xia et al.'s random projections). `truth.npz`
    keeps the true labels and the flip probabilities.
    """
    if os.path.exists(os.path.join(data_dir, "truth.npz")):
        return
    from gdw_tf.data import datasets
    from gdw_tf.data import noise

    dataset = datasets.load_dataset("fashion_mnist")
    rng = np.random.default_rng(seed)
    trusted = np.concatenate(
        [
            rng.choice(np.flatnonzero(dataset.y_train == k), INSTANCE_META_PER_CLASS, False)
            for k in range(dataset.num_classes)
        ]
    )
    train = np.setdiff1d(np.arange(len(dataset.y_train)), trusted)
    if INSTANCE_RECIPES[setting] == "projection":
        noisy, flip_probability = noise.projection_dependent_labels(
            dataset.x_train[train],
            dataset.y_train[train],
            INSTANCE_RATIOS[setting],
            num_classes=dataset.num_classes,
            seed=seed,
        )
    else:
        probabilities = noise.softmax_regression_probabilities(
            dataset.x_train, dataset.y_train, dataset.num_classes, seed=seed
        )
        noisy, flip_probability = noise.instance_dependent_labels(
            dataset.y_train[train],
            probabilities[train],
            INSTANCE_RATIOS[setting],
            seed=seed,
        )
    os.makedirs(data_dir, exist_ok=True)
    np.savez(os.path.join(data_dir, "train.npz"), x=dataset.x_train[train, ..., 0], y=noisy)
    np.savez(
        os.path.join(data_dir, "trusted.npz"),
        x=dataset.x_train[trusted, ..., 0],
        y=dataset.y_train[trusted],
    )
    np.savez(os.path.join(data_dir, "test.npz"), x=dataset.x_test[..., 0], y=dataset.y_test)
    np.savez(
        os.path.join(data_dir, "truth.npz"),
        train_rows=train,
        trusted_rows=trusted,
        true_label=dataset.y_train[train],
        given_label=noisy,
        flip_probability=flip_probability,
    )


def parse_config(setting, output_dir, seed):
    """The `gdw_tf.runs.config.Config` of the GDW run of `setting` with `seed` (the CE folds use
    its recipe)."""
    from gdw_tf.runs import config as config_lib

    values = flags.FlagValues()
    config_lib.define_flags(values)
    values(["label_issues_benchmark", *train_flags(setting, output_dir, seed)])
    return config_lib.Config.from_flags(values)


def run_gdw(setting, output_dir, seed):
    """Trains the GDW run of `setting` with `seed` unless finished; returns False if it failed."""
    if os.path.exists(os.path.join(output_dir, "results.json")):
        print(f"{setting} seed {seed} gdw: done, skipped", flush=True)
        return True
    os.makedirs(output_dir, exist_ok=True)
    command = [sys.executable, "-m", "gdw_tf.train", *train_flags(setting, output_dir, seed)]
    start = time.monotonic()
    with open(os.path.join(output_dir, "train.log"), "a") as log:
        log.write("$ " + " ".join(command[1:]) + "\n")
        log.flush()
        code = subprocess.call(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    print(
        f"{setting} seed {seed} gdw: exit {code} after {time.monotonic() - start:.0f} s", flush=True
    )
    return code == 0


class Problem:
    """A setting's data as the benchmark scores it: the noisy training set (uint8 images and
    given labels, in the order of the GDW run's training split), the truth, the trusted set,
    and how the run's `label_issues.csv` ids map to training rows."""

    def __init__(self, setting, gdw_dir, seed):
        self.config = parse_config(setting, gdw_dir, seed)
        with open(os.path.join(gdw_dir, "config.json")) as file:
            normalization = json.load(file)["normalization"]
        self.mean, self.std = normalization["mean"], normalization["std"]
        if setting in INSTANCE_RATIOS:
            data_dir = os.path.join(os.path.dirname(gdw_dir), "data")
            with np.load(os.path.join(data_dir, "train.npz")) as train:
                self.x = train["x"][..., np.newaxis]
                self.given = train["y"].astype(np.int64)
            with np.load(os.path.join(data_dir, "trusted.npz")) as trusted:
                self.x_trusted = trusted["x"][..., np.newaxis]
                self.y_trusted = trusted["y"].astype(np.int64)
            with np.load(os.path.join(data_dir, "truth.npz")) as truth:
                self.true = truth["true_label"].astype(np.int64)
            self.num_classes = 10
            self.csv_rows = lambda ids: np.array(ids, np.int64)
            # The CE folds normalise as the GDW run did (own data: its training set's stats).
            self.ce_mean, self.ce_std = np.array(self.mean), np.array(self.std)
        else:
            from gdw_tf.data import input_pipeline
            from gdw_tf.data import split as split_lib
            from gdw_tf.runs import run as run_lib

            dataset = run_lib.load_data(self.config)
            split = split_lib.Split.load(os.path.join(gdw_dir, "split.npz"))
            self.x = dataset.x_train[split.train_indices]
            self.given = split.train_noisy_labels
            self.true = split.train_true_labels
            self.x_trusted = dataset.x_train[split.meta_indices]
            self.y_trusted = split.meta_labels
            self.num_classes = dataset.num_classes
            self.csv_rows = lambda ids: np.searchsorted(
                split.train_indices, np.array(ids, np.int64)
            )
            self.ce_mean, self.ce_std = input_pipeline.normalization_stats(
                self.config.dataset, dataset.x_train
            )
        self.wrong = self.given != self.true

    def probabilities(self, model, x, y):
        """`model`'s probabilities on uint8 images `x`, normalised as the GDW run's."""
        from gdw_tf.labels import label_issues

        return label_issues.predict_probabilities(model, self._images(x, y))

    def view(self, model):
        """`label_issues.probe_features` of `model` on the training and trusted images, with
        the largest of `PROBE_COMPONENT_CANDIDATES` components (the first `k` of them are the
        first `k` components)."""
        from gdw_tf.labels import label_issues

        return label_issues.probe_features(
            model,
            self._images(self.x, self.given),
            self._images(self.x_trusted, self.y_trusted),
            components=max(PROBE_COMPONENT_CANDIDATES),
        )

    def _images(self, x, y):
        from gdw_tf.data import input_pipeline

        return input_pipeline.eval_dataset(x, y, self.config.batch_size, self.mean, self.std)


def run_ce_folds(problem, ce_dir, folds, *, with_trusted=False):
    """Trains the CE folds not yet done; returns (out-of-fold probabilities, seconds).

    With `with_trusted`, each fold also trains on the trusted set, with its clean labels (the
    out-of-fold probabilities stay those of the noisy training set).
    """
    import keras
    from sklearn.model_selection import StratifiedKFold

    from gdw_tf.core.model import GDWModel
    from gdw_tf.data import input_pipeline
    from gdw_tf.labels import label_issues
    from gdw_tf.nets import backbones
    from gdw_tf.runs import callbacks

    os.makedirs(ce_dir, exist_ok=True)
    config, x, y = problem.config, problem.x, problem.given
    mean, std = problem.ce_mean, problem.ce_std
    kfold = StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.seed)
    probabilities = np.zeros((len(y), problem.num_classes))
    seconds = 0.0
    for fold, (fit_rows, held_out) in enumerate(kfold.split(x, y)):
        path = os.path.join(ce_dir, f"fold{fold}.npz")
        if not os.path.exists(path):
            start = time.perf_counter()
            keras.utils.set_random_seed(config.seed + fold)
            backbone = backbones.build_model(config.model, x.shape[1:], problem.num_classes)
            model = GDWModel(
                backbone, problem.num_classes, method="ce", l2=config.l2, seed=config.seed
            )
            model.compile(keras.optimizers.SGD(config.lr, momentum=config.momentum))
            fit_x, fit_y = x[fit_rows], y[fit_rows]
            if with_trusted:
                fit_x = np.concatenate([fit_x, problem.x_trusted])
                fit_y = np.concatenate([fit_y, problem.y_trusted])
            train = input_pipeline.train_dataset(
                fit_x,
                fit_y,
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
                path,
                held_out=held_out,
                probabilities=held,
                seconds=time.perf_counter() - start,
                num_fitted=len(fit_y),
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


def detection(flagged, score, suggested, problem):
    """Metrics of a flagged set and a score (lower = more suspicious) against the truth."""
    wrong = problem.wrong
    true_positives = int((flagged & wrong).sum())
    precision = true_positives / max(int(flagged.sum()), 1)
    recall = true_positives / max(int(wrong.sum()), 1)
    return {
        "auroc": auroc(-score, wrong),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "flagged": int(flagged.sum()),
        "suggested_accuracy_on_wrong": float((suggested[wrong] == problem.true[wrong]).mean()),
    }


def _f1(flagged, wrong):
    tp = (flagged & wrong).sum()
    precision, recall = tp / max(flagged.sum(), 1), tp / max(wrong.sum(), 1)
    return float(2 * precision * recall / (precision + recall)) if tp else 0.0


def candidates(probabilities, problem, weights, estimates, truth_probabilities):
    """AUROC of each candidate score and F1 of candidate flag rules, for gdw_tf's choice
    (`truth_probabilities`: {probes' inputs: the model's probabilities turned into the
    truth's with the trusted set})."""
    from gdw_tf.labels import label_issues

    given = problem.given
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
    for inputs, truth in truth_probabilities.items():
        scores[f"margin under the truth probe on {inputs}"] = label_issues.label_margin(
            truth, given
        )
    wrong = problem.wrong
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
        "lowest k by margin, k = true number wrong (oracle)": _lowest(margin, int(wrong.sum())),
    }
    for inputs in truth_probabilities:
        rules[
            f"lowest k by the margin under the truth probe on {inputs}, k = true number wrong "
            "(oracle)"
        ] = _lowest(scores[f"margin under the truth probe on {inputs}"], int(wrong.sum()))
    for name, count in estimates.items():
        rules[f"lowest k by margin, k = {name}"] = _lowest(margin, int(round(count)))
    f1 = {name: _f1(flagged, wrong) for name, flagged in rules.items()}
    return ({name: auroc(-score, wrong) for name, score in scores.items()}, f1)


def estimate_candidates(probabilities, given, trusted_probabilities, trusted_labels, estimate):
    """Candidate estimates of the number of wrong labels (the measurements behind the choice;
    `estimate`: gdw_tf's, whose probes read the features too)."""
    from gdw_tf.labels import label_issues
    from gdw_tf.labels import wrong_count

    rows = np.arange(len(given))
    num_classes = probabilities.shape[1]
    counts = np.bincount(given, minlength=num_classes).astype(np.float64)
    own = np.stack([trusted_probabilities[trusted_labels == k].mean(0) for k in range(num_classes)])
    without_features = wrong_count.estimate_wrong_labels(
        probabilities, given, trusted_probabilities, trusted_labels, bootstrap=0
    )
    count_if = estimate.count_if
    return {
        "#(margin < 0)": float((label_issues.label_margin(probabilities, given) < 0).sum()),
        "sum of 1 − p(given)": float((1 - probabilities[rows, given]).sum()),
        "GLC, the model's own probabilities on the trusted set": float(
            wrong_count.wrong_per_given_label(own, counts).sum()
        ),
        "GLC, probe of the given labels (used where the model learned wrong labels)": count_if[
            "learned"
        ],
        "GLC with the model's confusions divided out (used where it rejected them)": count_if[
            "rejected"
        ],
        "chosen by the share rejected": estimate.count,
        "chosen by the share rejected, probes on log-probabilities only": without_features.count,
    }


def truth_probe_ceiling(probabilities, features, true_labels):
    """The truth probe's probabilities where it is fitted not to the trusted set but to the
    true labels of a seeded half of the training set, each half scored by the probe fitted to
    the other: how well a probe of this model's view could rank the wrong labels with 30 times
    the trusted labels (an oracle: a run has no such labels)."""
    from gdw_tf.labels import wrong_count

    half = np.random.default_rng(0).random(len(true_labels)) < 0.5
    out = np.empty_like(probabilities)
    for scored in (half, ~half):
        fitted = ~scored
        out[scored] = wrong_count.truth_probabilities(
            probabilities[scored],
            probabilities[fitted],
            true_labels[fitted],
            features=features[scored],
            trusted_features=features[fitted],
            l2=wrong_count.TRUTH_PROBE_L2[0],
        )
    return out


def smaller_trusted_sets(
    probabilities, given, trusted_probabilities, trusted_labels, wrong, features, trusted_features
):
    """The estimate's relative error with `--trusted_per_class` examples per class of the
    trusted set (`TRUSTED_DRAWS` seeded draws each; sizes the trusted set does not exceed are
    left out): `{per_class: [error, ...]}`. The probes read the drawn examples' principal
    components (`label_issues.probe_component_count` of them), computed within
    `trusted_features`, the first components of the whole trusted set's penultimate features
    (a run computes them from the features themselves: close, not the same)."""
    from gdw_tf.labels import label_issues
    from gdw_tf.labels import wrong_count

    errors = {}
    smallest = np.bincount(trusted_labels).min()
    for per_class in (int(k) for k in FLAGS.trusted_per_class if int(k) < smallest):
        errors[per_class] = []
        for draw in range(TRUSTED_DRAWS):
            rng = np.random.default_rng(draw)
            rows = np.concatenate(
                [
                    rng.choice(np.flatnonzero(trusted_labels == k), per_class, replace=False)
                    for k in np.unique(trusted_labels)
                ]
            )
            drawn = trusted_features[rows]
            mean, axes = label_issues.principal_axes(drawn)
            estimate = wrong_count.estimate_wrong_labels(
                probabilities,
                given,
                trusted_probabilities[rows],
                trusted_labels[rows],
                features=(features - mean) @ axes.T,
                trusted_features=(drawn - mean) @ axes.T,
                bootstrap=0,
            )
            errors[per_class].append(estimate.count / wrong.sum() - 1)
    return errors


def _lowest(score, k):
    flagged = np.zeros(len(score), bool)
    flagged[np.argsort(score, kind="stable")[:k]] = True
    return flagged


# The cleanlab rows: metrics key, fold directory, whether the folds train on the trusted set too.
CLEANLAB_VARIANTS = (("cleanlab", "ce", False), ("cleanlab_trusted", "ce_trusted", True))


def evaluate(setting, seed):
    """Runs what is missing for `setting` with `seed` and returns its metrics dict (None if
    unfinished)."""
    import keras

    from gdw_tf.labels import label_issues
    from gdw_tf.labels import wrong_count

    setting_dir = seed_dir(setting, seed)
    gdw_dir = os.path.join(setting_dir, "gdw")
    if setting in INSTANCE_RATIOS and not FLAGS.report_only:
        write_instance_noise_data(setting, os.path.join(setting_dir, "data"), seed=seed)
    if not FLAGS.report_only and not run_gdw(setting, gdw_dir, seed):
        return None
    if not os.path.exists(os.path.join(gdw_dir, "results.json")):
        return None
    problem = Problem(setting, gdw_dir, seed)
    if FLAGS.train_only:
        for _, directory, with_trusted in CLEANLAB_VARIANTS:
            run_ce_folds(
                problem,
                os.path.join(setting_dir, directory),
                FLAGS.folds,
                with_trusted=with_trusted,
            )
        return None
    with open(os.path.join(gdw_dir, "results.json")) as file:
        results = json.load(file)

    # gdw_tf: label issues recomputed from model.keras, example_weights.npz and the trusted
    # set with this code (so runs of older code count too; the training step is the same).
    weights = dict(np.load(os.path.join(gdw_dir, "example_weights.npz")))
    backbone = keras.models.load_model(os.path.join(gdw_dir, "model.keras"))
    probabilities, trusted_probabilities, all_features, all_trusted_features = problem.view(
        backbone
    )
    components = label_issues.PROBE_COMPONENTS
    view = {
        "features": all_features[:, :components],
        "trusted_features": all_trusted_features[:, :components],
    }
    issues = label_issues.rank_label_issues(
        probabilities,
        problem.given,
        instance_weights=weights["instance_weight"],
        label_weights=weights["labelled_class_weight"],
        trusted_probabilities=trusted_probabilities,
        trusted_labels=problem.y_trusted,
        **view,
    )
    flagged, score, suggested = (
        issues.in_input_order(name) for name in ("flagged", "score", "suggested_label")
    )
    gdw = detection(flagged, score, suggested, problem)
    gdw["seconds"] = results["timing"]["total_seconds"]
    gdw["test_accuracy"] = results["test_accuracy"]["last"]
    estimate = issues.estimate
    gdw["estimated_wrong"] = estimate.count
    gdw["estimated_wrong_interval"] = estimate.interval
    gdw["model_learned_wrong_labels"] = estimate.model_learned_wrong_labels
    gdw["rejected_share"] = estimate.rejected_share
    gdw["truth_probe_l2"] = estimate.truth_probe_l2
    candidate_estimates = estimate_candidates(
        probabilities, problem.given, trusted_probabilities, problem.y_trusted, estimate
    )
    truth = {
        "log-probabilities": wrong_count.truth_probabilities(
            probabilities, trusted_probabilities, problem.y_trusted
        )
    }
    for k in PROBE_COMPONENT_CANDIDATES:
        truth[f"log-probabilities and {k} components"] = wrong_count.truth_probabilities(
            probabilities,
            trusted_probabilities,
            problem.y_trusted,
            features=all_features[:, :k],
            trusted_features=all_trusted_features[:, :k],
        )
    truth[
        f"log-probabilities and {components} components, fitted to true labels of half the "
        "training set (oracle)"
    ] = truth_probe_ceiling(probabilities, view["features"], problem.true)
    candidate_aurocs, candidate_f1 = candidates(
        probabilities, problem, weights, candidate_estimates, truth
    )

    # cleanlab on K-fold out-of-fold probabilities of the same backbone trained with CE, on the
    # noisy training set alone and with the trusted set added to each fold.
    if FLAGS.report_only and not all(
        os.path.exists(os.path.join(setting_dir, directory, f"fold{k}.npz"))
        for _, directory, _ in CLEANLAB_VARIANTS
        for k in range(FLAGS.folds)
    ):
        return None
    import cleanlab.filter
    import cleanlab.rank

    given = problem.given
    cleanlab_metrics = {}
    for key, directory, with_trusted in CLEANLAB_VARIANTS:
        out_of_fold, seconds = run_ce_folds(
            problem, os.path.join(setting_dir, directory), FLAGS.folds, with_trusted=with_trusted
        )
        start = time.perf_counter()
        flagged = cleanlab.filter.find_label_issues(given, out_of_fold)
        quality = cleanlab.rank.get_label_quality_scores(given, out_of_fold)
        cleanlab_metrics[key] = detection(flagged, quality, out_of_fold.argmax(axis=1), problem)
        cleanlab_metrics[key]["seconds"] = seconds + time.perf_counter() - start
    metrics = {
        "setting": setting,
        "seed": seed,
        "train_flags": train_flags(setting, gdw_dir, seed)[:-1],
        "num_train": int(len(given)),
        "realised_noise_rate": float(problem.wrong.mean()),
        "true_wrong": int(problem.wrong.sum()),
        "gdw_tf": gdw,
        **cleanlab_metrics,
        "num_trusted": int(len(problem.y_trusted)),
        "folds": FLAGS.folds,
        "candidate_estimates": candidate_estimates,
        "candidate_score_auroc": candidate_aurocs,
        "candidate_rule_f1": candidate_f1,
        "smaller_trusted_sets": smaller_trusted_sets(
            probabilities,
            problem.given,
            trusted_probabilities,
            problem.y_trusted,
            problem.wrong,
            all_features,
            all_trusted_features,
        ),
    }
    with open(os.path.join(setting_dir, "metrics.json"), "w") as file:
        json.dump(metrics, file, indent=2)
    return metrics


# The detection metrics of a method and their formats in the table.
METRIC_FORMATS = (
    ("auroc", ".3f"),
    ("precision", ".3f"),
    ("recall", ".3f"),
    ("f1", ".3f"),
    ("flagged", ",.0f"),
    ("suggested_accuracy_on_wrong", ".3f"),
)


def mean_sd(values, spec):
    """`values`' mean ± sample standard deviation, each formatted by `spec` (the mean alone for
    one value)."""
    values = np.asarray(values, np.float64)
    if len(values) == 1:
        return format(values[0], spec)
    return f"{values.mean():{spec}} ± {values.std(ddof=1):{spec.lstrip('+')}}"


def markdown(all_runs):
    """The results and the candidates as Markdown tables: `all_runs` holds, per setting, the
    metrics of each seed; a cell is their mean ± sd."""
    seeds = ", ".join(str(m["seed"]) for m in all_runs[0])
    lines = [
        f"Seeds {seeds}; each cell the mean ± sample standard deviation over them.",
        "",
        "| setting (realised noise) | method | AUROC | precision | recall | F1 | flagged "
        "| suggested label right on wrong | wall time |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for runs in all_runs:
        first = runs[0]
        name = SETTING_NAMES.get(first["setting"], first["setting"])
        noise = mean_sd([m["realised_noise_rate"] for m in runs], ".1%")
        for method, label in (
            ("gdw_tf", f"gdw_tf (GDW, 1 run, {first['num_trusted']:,} trusted labels)"),
            ("cleanlab", f"cleanlab ({first['folds']}-fold CE)"),
            (
                "cleanlab_trusted",
                f"cleanlab + trusted labels ({first['folds']}-fold CE, the "
                f"{first['num_trusted']:,} trusted labels in each fold)",
            ),
        ):
            cell = {
                key: mean_sd([m[method][key] for m in runs], spec) for key, spec in METRIC_FORMATS
            }
            minutes = mean_sd([m[method]["seconds"] / 60 for m in runs], ".1f")
            lines.append(
                f"| {name} ({noise}) | {label} | {cell['auroc']} | {cell['precision']} | "
                f"{cell['recall']} | **{cell['f1']}** | {cell['flagged']} | "
                f"{cell['suggested_accuracy_on_wrong']} | {minutes} min |"
            )
    lines += [
        "",
        "| setting | truly wrong | estimated | error | 95% interval holds the truth | the model "
        "rejected or learned the wrong labels (share rejected) | test accuracy (GDW) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for runs in all_runs:
        gdw = [m["gdw_tf"] for m in runs]
        truth = [m["true_wrong"] for m in runs]
        covered = sum(
            low <= m["true_wrong"] <= high
            for m in runs
            for low, high in [m["gdw_tf"]["estimated_wrong_interval"]]
        )
        learned = sum(r["model_learned_wrong_labels"] for r in gdw)
        lines.append(
            f"| {SETTING_NAMES.get(runs[0]['setting'], runs[0]['setting'])} | "
            f"{mean_sd(truth, ',.0f')} | {mean_sd([r['estimated_wrong'] for r in gdw], ',.0f')} | "
            f"{mean_sd([r['estimated_wrong'] / t - 1 for r, t in zip(gdw, truth)], '+.1%')} | "
            f"{covered}/{len(runs)} | rejected {len(runs) - learned}, learned {learned} "
            f"({mean_sd([r['rejected_share'] for r in gdw], '.2f')}) | "
            f"{mean_sd([r['test_accuracy'] for r in gdw], '.4f')} |"
        )
    lines += _by_setting(
        "candidate estimate of the number wrong: error",
        all_runs,
        {
            name: lambda runs, name=name: mean_sd(
                [m["candidate_estimates"][name] / m["true_wrong"] - 1 for m in runs], "+.1%"
            )
            for name in all_runs[0][0]["candidate_estimates"]
        },
    )
    sizes = set.intersection(*(set(m["smaller_trusted_sets"]) for r in all_runs for m in r))
    lines += _by_setting(
        f"estimate's error with fewer trusted examples per class ({TRUSTED_DRAWS} draws per "
        "seed: mean, range)",
        all_runs,
        {
            f"{per_class} per class": lambda runs, per_class=per_class: _mean_and_range(
                [e for m in runs for e in m["smaller_trusted_sets"][per_class]]
            )
            for per_class in sorted(sizes)
        },
    )
    for key, title in (
        ("candidate_score_auroc", "candidate score: AUROC"),
        ("candidate_rule_f1", "candidate flag rule: F1"),
    ):
        lines += _by_setting(
            title,
            all_runs,
            {
                name: lambda runs, key=key, name=name: mean_sd([m[key][name] for m in runs], ".4f")
                for name in all_runs[0][0][key]
            },
        )
    return "\n".join(lines)


def _mean_and_range(errors):
    return f"{np.mean(errors):+.1%} ({min(errors):+.1%} to {max(errors):+.1%})"


def _by_setting(title, all_runs, rows):
    """A Markdown table (preceded by a blank line) with a column per setting: a row per entry
    of `rows`, its name and its cells (`rows[name](runs)` for each setting's runs)."""
    lines = [
        "",
        f"| {title} | "
        + " | ".join(SETTING_NAMES.get(r[0]["setting"], r[0]["setting"]) for r in all_runs)
        + " |",
        "| --- |" + " --- |" * len(all_runs),
    ]
    for name, cell in rows.items():
        lines.append(f"| {name} | " + " | ".join(cell(runs) for runs in all_runs) + " |")
    return lines


def main(argv):
    del argv
    os.chdir(REPO)
    finished = []
    for setting in FLAGS.settings:
        runs = [evaluate(setting, int(seed)) for seed in FLAGS.seeds]
        if any(metrics is None for metrics in runs):
            print(f"{setting}: not finished", flush=True)
        else:
            finished.append(runs)
    if finished:
        print(markdown(finished))


if __name__ == "__main__":
    app.run(main)
