"""What GDW's weights do under instance-dependent noise, epoch by epoch (measurements for
`docs/LABEL_ISSUES.md`, "What the weights say").

    nice python scripts/weights_under_instance_noise.py --setting=instance_35 \
        --runs_dir=runs/label_issues_benchmark --seeds=0

Reruns the benchmark's GDW run of `--setting` with the first of `--seeds` (same flags, data of
`<runs_dir>/<setting>/seed<k>/data`, or of the injected settings' protocol) into
`<runs_dir>/<setting>/seed<k>/weights_by_epoch/`, and after
every epoch records, for the training set: the instance weight and GDW's weight ω¹ on the given
label as last recorded (each example's most recent step), the loss −log p(given) of the model in
inference mode, and the weight net's curve v(ℓ). Prints per epoch the AUROC of each for "the
label is wrong" (low weight / high loss = wrong), the spread of the instance weights (1st to
99th percentile), and the mean ω¹ − v on right and on wrong labels (what stage 2 did to the given
label's weight). Writes `weights_by_epoch.json`.

Also, per epoch, what the meta gradient asks of each loss: for a fixed sample of training
examples, the alignment `a_i = ∇ℓ_i · ∇L_meta` of each example's gradient with the gradient of
the mean loss on the whole trusted set, at the epoch's weights (inference mode; a central
difference of `ℓ_i(θ ± h ∇L_meta)`). An instance weight's meta gradient is `−η a_i` (to first
order, MW-Net's and GDW's stage 1), so the weight net, a function of the loss, is pushed up
where the mean alignment at that loss is positive. Printed: the mean alignment (scaled by the
largest absolute mean of the epoch) of right and of wrong labels in each loss quintile, and
the rank correlation of alignment and loss.

And what stage 2 does to the given label's weight (`stage2_on_given_label`, from the same
logit changes `J·∇L_meta`): its mean on right and on wrong labels (scaled by its mean absolute
value), on wrong labels split into the part that comes from the true class's term and the rest,
and its rank correlation with the recorded ω¹ − v (the check that the first-order picture
matches what training did).
"""

import json
import os

import label_issues_benchmark as benchmark  # beside this script, whose folder Python searches
import numpy as np
from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string("setting", "instance_35", "A setting of scripts/label_issues_benchmark.py.")
flags.DEFINE_integer("alignment_sample", 5000, "Training examples whose alignment is measured.")


def meta_logit_change(backbone, x, x_meta, y_meta, step=1e-3):
    """`J·∇L_meta`: how each logit of `x` moves along the gradient of `L_meta`, the mean
    cross-entropy on `(x_meta, y_meta)` (inputs as the backbone takes them, inference mode), by
    a central difference along `∇L_meta` scaled to a relative step `step`. `[N, C]`."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        logits = backbone(x_meta, training=False)
        meta_loss = tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(y_meta, tf.cast(logits, tf.float32))
        )
    gradient = [g.numpy() for g in tape.gradient(meta_loss, backbone.trainable_variables)]
    weights = [v.numpy() for v in backbone.trainable_variables]
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in gradient))
    h = step * np.sqrt(sum((w.astype(np.float64) ** 2).sum() for w in weights)) / norm

    def logits_at(sign):
        for variable, w, g in zip(backbone.trainable_variables, weights, gradient):
            variable.assign(w + sign * h * g)
        return np.asarray(backbone.predict(x, batch_size=1000, verbose=0), np.float64)

    try:
        return (logits_at(+1) - logits_at(-1)) / (2 * h)
    finally:
        for variable, w in zip(backbone.trainable_variables, weights):
            variable.assign(w)


def meta_alignment(backbone, x, y, x_meta, y_meta, step=1e-3):
    """`∇ℓ_i · ∇L_meta` for each example of `(x, y)` (`alignment`, with the backbone's own
    probabilities)."""
    logits = np.asarray(backbone.predict(x, batch_size=1000, verbose=0), np.float64)
    return alignment(_softmax(logits), y, meta_logit_change(backbone, x, x_meta, y_meta, step))


def alignment(probabilities, y, logit_change):
    """`∇ℓ_i · ∇L_meta = Σ_j e_ij (J·∇L_meta)_ij`, `e = p − onehot(y)` (the chain rule through
    the logits), from the logits' change along `∇L_meta` (`meta_logit_change`)."""
    e = probabilities - np.eye(probabilities.shape[1])[y]
    return (e * logit_change).sum(axis=1)


def stage2_on_given_label(probabilities, y, logit_change):
    """What GDW's stage 2 does to the given label's weight, up to a positive factor, and the
    part of it that comes from class `j` (`[N, C]`, zero at the given label).

    Stage 2 moves `ω_ij` by `−β g_ij / S` with `g_ij = −(α/B) e_ij (J·u)_ij`; for `j ≠ y`,
    `e_ij = p_ij`, so `ω_ij` rises by a positive factor times `p_ij (J·u)_ij` (clip and clamp
    aside). The zero-mean constraint then sets the given label's weight to
    `Σ_{j≠y} ω_ij p_ij / (1 − p_iy)`, which moves by `Σ_{j≠y} p_ij² (J·u)_ij / (1 − p_iy)`."""
    rows = np.arange(len(y))
    p = np.clip(probabilities, None, 0.999)
    parts = p**2 * logit_change / (1.0 - p[rows, y])[:, None]
    parts[rows, y] = 0.0
    return parts.sum(axis=1), parts


def _softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def main(argv):
    del argv
    import keras

    from gdw_tf.runs import callbacks as callbacks_lib
    from gdw_tf.runs import config as config_lib
    from gdw_tf.runs import results
    from gdw_tf.runs import run as run_lib

    os.chdir(REPO)
    seed = int(FLAGS.seeds[0])
    setting_dir = benchmark.seed_dir(FLAGS.setting, seed)
    problem = benchmark.Problem(FLAGS.setting, os.path.join(setting_dir, "gdw"), seed)
    output_dir = os.path.join(setting_dir, "weights_by_epoch")
    values = flags.FlagValues()
    config_lib.define_flags(values)
    values(["weights", *benchmark.train_flags(FLAGS.setting, output_dir, seed)])
    config = config_lib.Config.from_flags(values)
    from gdw_tf.data import input_pipeline

    grid = np.linspace(0.0, 6.0, 25)
    wrong = problem.wrong
    records = []
    sample = np.sort(
        np.random.default_rng(0).choice(len(wrong), FLAGS.alignment_sample, replace=False)
    )
    x_sample = input_pipeline.normalize(problem.x[sample], problem.mean, problem.std)
    x_meta = input_pipeline.normalize(problem.x_trusted, problem.mean, problem.std)

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            instance = np.asarray(self.model.example_weights, np.float64)
            labelled = np.asarray(self.model.example_label_weights, np.float64)
            probabilities = problem.probabilities(self.model.backbone, problem.x, problem.given)
            loss = -np.log(np.clip(probabilities[np.arange(len(wrong)), problem.given], 1e-12, 1))
            curve = np.asarray(self.model.weight_net(grid[:, None].astype("float32")))[:, 0]
            row = {
                "epoch": epoch + 1,
                "auroc_instance_weight": results.auroc(-instance, wrong),
                "auroc_labelled_class_weight": results.auroc(-labelled, wrong),
                "auroc_loss": results.auroc(loss, wrong),
                "instance_weight_p1_p99": np.percentile(instance, [1, 99]).tolist(),
                "mean_loss_right_wrong": [float(loss[~wrong].mean()), float(loss[wrong].mean())],
                "stage2_change_right_wrong": [
                    float((labelled - instance)[~wrong].mean()),
                    float((labelled - instance)[wrong].mean()),
                ],
                "weight_net_curve": dict(zip(grid.round(2).tolist(), curve.tolist())),
                "train_accuracy_given": float((probabilities.argmax(1) == problem.given).mean()),
            }
            logit_change = meta_logit_change(
                self.model.backbone, x_sample, x_meta, problem.y_trusted
            )
            sample_probabilities = probabilities[sample]
            given_sample = problem.given[sample]
            sample_alignment = alignment(sample_probabilities, given_sample, logit_change)
            stage2, parts = stage2_on_given_label(sample_probabilities, given_sample, logit_change)
            true_sample = problem.true[sample]
            from_true = parts[np.arange(len(sample)), true_sample]
            sample_loss, sample_wrong = loss[sample], wrong[sample]
            edges = np.quantile(sample_loss, [0.2, 0.4, 0.6, 0.8])
            quintile = np.searchsorted(edges, sample_loss)
            scale = np.abs([sample_alignment[quintile == q].mean() for q in range(5)]).max()
            by_quintile = {
                name: [
                    float(sample_alignment[(quintile == q) & rows].mean() / scale)
                    if ((quintile == q) & rows).any()
                    else None
                    for q in range(5)
                ]
                for name, rows in (
                    ("all", np.ones_like(sample_wrong)),
                    ("right", ~sample_wrong),
                    ("wrong", sample_wrong),
                )
            }
            ranks = [np.argsort(np.argsort(v)) for v in (sample_alignment, sample_loss)]
            row["alignment_by_loss_quintile"] = by_quintile
            row["alignment_loss_rank_correlation"] = float(np.corrcoef(*ranks)[0, 1])
            recorded = (labelled - instance)[sample]
            stage2_scale = np.abs(stage2).mean()
            row["stage2_given_right_wrong"] = [
                float(stage2[~sample_wrong].mean() / stage2_scale),
                float(stage2[sample_wrong].mean() / stage2_scale),
            ]
            row["stage2_wrong_from_true_class_and_others"] = [
                float(from_true[sample_wrong].mean() / stage2_scale),
                float((stage2 - from_true)[sample_wrong].mean() / stage2_scale),
            ]
            row["stage2_rank_correlation_with_recorded"] = float(
                np.corrcoef(np.argsort(np.argsort(stage2)), np.argsort(np.argsort(recorded)))[0, 1]
            )
            row["wrong_share_by_loss_quintile"] = [
                float(sample_wrong[quintile == q].mean()) for q in range(5)
            ]
            records.append(row)
            print(
                f"epoch {row['epoch']:2d}: AUROC instance {row['auroc_instance_weight']:.3f} "
                f"ω¹ {row['auroc_labelled_class_weight']:.3f} loss {row['auroc_loss']:.3f}; "
                f"instance weight p1–p99 {row['instance_weight_p1_p99'][0]:.3f}–"
                f"{row['instance_weight_p1_p99'][1]:.3f}; loss right/wrong "
                f"{row['mean_loss_right_wrong'][0]:.2f}/{row['mean_loss_right_wrong'][1]:.2f}; "
                f"ω¹ − v right/wrong {row['stage2_change_right_wrong'][0]:+.3f}/"
                f"{row['stage2_change_right_wrong'][1]:+.3f}; v(0)={curve[0]:.3f} "
                f"v(1)={curve[4]:.3f} v(3)={curve[12]:.3f} v(6)={curve[-1]:.3f}",
                flush=True,
            )

            def cells(values):
                return " ".join("  —  " if v is None else f"{v:+.2f}" for v in values)

            print(
                f"          alignment by loss quintile (low → high): all "
                f"{cells(by_quintile['all'])}"
                f"; right {cells(by_quintile['right'])}; wrong {cells(by_quintile['wrong'])}; "
                f"rank correlation with the loss {row['alignment_loss_rank_correlation']:+.3f}",
                flush=True,
            )
            right, wrong_mean = row["stage2_given_right_wrong"]
            true_part, other_part = row["stage2_wrong_from_true_class_and_others"]
            print(
                f"          stage 2 on the given label (mean |.| = 1): right {right:+.2f}, wrong "
                f"{wrong_mean:+.2f} (true class {true_part:+.2f}, others {other_part:+.2f}); "
                "rank correlation with the recorded ω¹ − v "
                f"{row['stage2_rank_correlation_with_recorded']:+.3f}",
                flush=True,
            )

    make_callbacks = callbacks_lib.make_callbacks
    callbacks_lib.make_callbacks = lambda *a, **k: [*make_callbacks(*a, **k), Record()]
    run_lib.run(config)
    with open(os.path.join(output_dir, "weights_by_epoch.json"), "w") as file:
        json.dump(records, file, indent=2)


if __name__ == "__main__":
    app.run(main)
