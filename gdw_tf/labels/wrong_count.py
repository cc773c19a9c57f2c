"""How many training labels are wrong, estimated with the trusted set (NumPy only).

Two probes read the trained model's (standardised) log-probabilities `z`, both softmax
regressions fitted to convergence by Newton's method (convex: no seed, no order):

- the *label probe* `p̃(j | z)`, fitted to the given labels of the training set: what the data
  set's labels are where the model believes something;
- the *truth probe* `p(k | z)`, fitted to the right labels of the trusted set: what the truth is
  there (on the trusted examples themselves, its out-of-fold probabilities, 10 folds).

Averaged over the trusted examples of each true class `k` they give two matrices:
`M[k, j]` = mean `p̃(j | z)` (Gold Loss Correction's estimate of the noise, Hendrycks et al.,
NeurIPS 2018, with the label probe in place of GLC's second network) and `B[k, i]` = mean
`p(i | z)`, how well the model's view separates the classes. If the noise is
*class-conditional* (the given label depends on the image only through its true class:
uniform, flip and long-tail noise), `M = B T`: `M` holds the noise `T` blurred by the model's own
confusions, and `T = B⁻¹ M`. If the noise depends on the image (annotators err on ambiguous
examples), that blur *is* the noise, and `M` is the estimate.

Which holds is measured, not assumed: class-conditional noise predicts the given labels as
`p̃(j | z) = Σᵢ p(i | z) T[i, j]`; its mean log-likelihood on the training set is compared with
the label probe's own. Where it explains them to within `CLASS_CONDITIONAL_GAP` nats per example
the noise model is "class-conditional" and `T = B⁻¹ M` is used, otherwise "instance-dependent"
and `M` (the gap measured on the benchmark, docs/LABEL_ISSUES.md: 0.002–0.023 under injected
noise, 0.13–0.25 under instance-dependent noise).

Then, with `C` the chosen matrix and `n` the counts of given labels,

    n_true = C⁻ᵀ n        (the classes' true sizes: n_given = Cᵀ n_true)
    wrong with given label j = n_j − n_true,j C[j, j]

and their sum is the estimate. Its uncertainty: the 2.5% and 97.5% quantiles of the estimate
over bootstrap resamples of the trusted set within each class (the probes and the noise model
fixed).

What it rests on: the trusted examples must be representative of their classes and their labels
right; an automatic trusted set (`--trusted_data=auto`) is chosen by a model of the noisy labels,
so its examples are the unambiguous ones, which read as less noisy than the data are.
"""

import numpy as np

METHOD = (
    "Gold Loss Correction's noise estimate (Hendrycks et al. 2018): a softmax regression on "
    "the model's log-probabilities fitted to the given labels, averaged over the trusted "
    "examples of each class; where the noise is class-conditional, the model's own confusions "
    "on the trusted set (a second regression, fitted to their right labels) divided out"
)
# The largest shortfall (nats per training example) in the likelihood of the given labels under
# class-conditional noise, against the label probe's, with which the noise is taken to be
# class-conditional.
CLASS_CONDITIONAL_GAP = 0.05
# Folds of the truth probe's out-of-fold probabilities on the trusted set.
TRUSTED_FOLDS = 10


def fit_label_probe(
    log_probabilities: np.ndarray,
    given_labels: np.ndarray,
    *,
    l2: float = 1e-4,
    iterations: int = 30,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A softmax regression from standardised log-probabilities to the given labels.

    Fitted by damped Newton steps on the mean cross-entropy plus `l2/2 ||W||²` (a convex
    problem: the result does not depend on a seed or an order).

    Returns:
      `(weights, mean, std)`: weights `[D + 1, C]` (last row: bias) and the standardisation.
    """
    x = np.asarray(log_probabilities, np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-8
    features = _design(x, mean, std)
    num_classes = x.shape[1]
    one_hot = np.eye(num_classes)[given_labels]
    d, n = features.shape[1], len(features)
    weights = np.zeros((d, num_classes))

    def loss(w):
        logits = features @ w
        logits -= logits.max(axis=1, keepdims=True)
        log_norm = np.log(np.exp(logits).sum(axis=1))
        return float(np.mean(log_norm - (logits * one_hot).sum(axis=1)) + l2 / 2 * (w * w).sum())

    current = loss(weights)
    for _ in range(iterations):
        p = _softmax(features @ weights)
        gradient = features.T @ (p - one_hot) / n + l2 * weights
        # Hessian of the mean cross-entropy: sum_i (diag p_i - p_i p_i') ⊗ x_i x_i' / n.
        outer_x = (features[:, :, None] * features[:, None, :]).reshape(n, d * d)
        s = (p[:, :, None] * (np.eye(num_classes) - p[:, None, :])).reshape(n, -1)
        hessian = (outer_x.T @ s / n).reshape(d, d, num_classes, num_classes)
        hessian = hessian.transpose(0, 2, 1, 3).reshape(d * num_classes, d * num_classes)
        hessian += l2 * np.eye(d * num_classes)
        step = np.linalg.solve(hessian, gradient.reshape(-1)).reshape(d, num_classes)
        size = 1.0
        while size > 1e-4:
            candidate = weights - size * step
            value = loss(candidate)
            if value <= current:
                break
            size /= 2
        else:
            break
        converged = current - value < 1e-10
        weights, current = candidate, value
        if converged:
            break
    return weights, mean, std


def estimate_wrong_labels(
    probabilities: np.ndarray,
    given_labels: np.ndarray,
    trusted_probabilities: np.ndarray,
    trusted_labels: np.ndarray,
    *,
    bootstrap: int = 200,
    seed: int = 0,
) -> dict:
    """The number of wrong given labels, per given label and in all, with a 95% interval.

    Args:
      probabilities: `[N, C]` the trained model's probabilities on the training examples.
      given_labels: `[N]` their given (possibly wrong) labels.
      trusted_probabilities: `[M, C]` its probabilities on the trusted examples.
      trusted_labels: `[M]` their (right) labels; every class must appear.
      bootstrap: number of resamples of the trusted set for the interval (0: none).
      seed: seed of the resamples.

    Returns:
      A dict: `count` (float), `interval` ([low, high], the 2.5% and 97.5% bootstrap
      quantiles; None without resamples), `rate` (count / N), `per_given_label` (`C` expected
      wrong counts), `per_given_label_interval`, `transition_matrix` (`C[true, given]`),
      `true_class_sizes`, `noise_model` ("class-conditional" or "instance-dependent"),
      `likelihood_gap` (nats per example, the test between them), `count_by_noise_model`
      (the count under either), `num_trusted`, `method`.

    Raises:
      ValueError: when a class has no trusted example.
    """
    given = np.asarray(given_labels, np.int64)
    trusted_labels = np.asarray(trusted_labels, np.int64)
    num_classes = probabilities.shape[1]
    per_class = np.bincount(trusted_labels, minlength=num_classes)
    if per_class.min() == 0:
        missing = np.flatnonzero(per_class == 0).tolist()
        raise ValueError(
            f"The trusted set has no example of class(es) {missing}; the number of wrong labels "
            "is estimated per class: give trusted examples of every class."
        )
    z, z_trusted = _log(probabilities), _log(trusted_probabilities)
    label_probe = fit_label_probe(z, given)
    given_on_trusted = _predict(label_probe, z_trusted)
    truth_on_trusted = _out_of_fold(z_trusted, trusted_labels, TRUSTED_FOLDS)
    counts = np.bincount(given, minlength=num_classes).astype(np.float64)

    # The test: how much worse class-conditional noise explains the given labels.
    rows = [np.flatnonzero(trusted_labels == k) for k in range(num_classes)]
    glc = _class_means(given_on_trusted, rows)
    confusion = _class_means(truth_on_trusted, rows)
    implied = _predict(fit_label_probe(z_trusted, trusted_labels), z) @ _deblurred(glc, confusion)
    positions = np.arange(len(given))
    gap = float(
        np.mean(_log(_predict(label_probe, z)[positions, given]))
        - np.mean(_log(implied[positions, given]))
    )
    class_conditional = gap <= CLASS_CONDITIONAL_GAP

    def matrix_of(rows):
        glc = _class_means(given_on_trusted, rows)
        return _deblurred(glc, _class_means(truth_on_trusted, rows)) if class_conditional else glc

    matrix = matrix_of(rows)
    wrong = _wrong_per_given_label(matrix, counts)
    by_noise_model = {
        "class-conditional": _wrong_per_given_label(_deblurred(glc, confusion), counts).sum(),
        "instance-dependent": _wrong_per_given_label(glc, counts).sum(),
    }
    result = {
        "count": float(wrong.sum()),
        "interval": None,
        "rate": float(wrong.sum() / max(len(given), 1)),
        "per_given_label": wrong.tolist(),
        "per_given_label_interval": None,
        "transition_matrix": matrix.tolist(),
        "true_class_sizes": _true_sizes(matrix, counts).tolist(),
        "noise_model": "class-conditional" if class_conditional else "instance-dependent",
        "likelihood_gap": gap,
        "count_by_noise_model": {name: float(n) for name, n in by_noise_model.items()},
        "num_trusted": int(len(trusted_labels)),
        "method": METHOD,
    }
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = np.stack(
            [
                _wrong_per_given_label(
                    matrix_of([rng.choice(r, len(r), replace=True) for r in rows]), counts
                )
                for _ in range(bootstrap)
            ]
        )
        result["interval"] = np.quantile(draws.sum(axis=1), [0.025, 0.975]).tolist()
        result["per_given_label_interval"] = np.quantile(draws, [0.025, 0.975], axis=0).T.tolist()
    return result


def cut_at_estimate(score: np.ndarray, given_labels: np.ndarray, per_given_label) -> np.ndarray:
    """Flags, within each given label `j`, the `round(per_given_label[j])` lowest scores."""
    score = np.asarray(score, np.float64)
    given = np.asarray(given_labels, np.int64)
    flagged = np.zeros(len(score), bool)
    for label, count in enumerate(per_given_label):
        rows = np.flatnonzero(given == label)
        k = int(min(max(round(count), 0), len(rows)))
        flagged[rows[np.argsort(score[rows], kind="stable")[:k]]] = True
    return flagged


def rests_on(estimate: dict) -> str:
    """One sentence: what the estimate of the number of wrong labels rests on."""
    if estimate.get("trusted_source") == "auto":
        return (
            f"an automatic trusted set of {estimate['num_trusted']} examples chosen from the "
            "noisy data by a warm-up model (--trusted_data=auto): their labels are assumed "
            "right, and they are the examples that model found easiest, so the estimate "
            "reads the noise on the clearest examples and undercounts the wrong labels (85 for "
            "20,619 on the instance-dependent 35% benchmark); the flags are therefore score < 0"
        )
    trusted = (
        f"a trusted set of {estimate['num_trusted']} examples whose labels are right and that "
        "represent their classes"
    )
    gap = estimate.get("likelihood_gap")
    if gap is None:
        return trusted
    if estimate["noise_model"] == "class-conditional":
        return (
            f"{trusted}, and on noise that depends on the image only through its true class "
            f"(measured: that explains the given labels to within {gap:.3f} nats per example "
            "of the model's own fit), so the model's confusions on the trusted set were divided "
            "out of the noise"
        )
    return (
        f"{trusted}; the noise depends on the image (class-conditional noise explains the "
        f"given labels {gap:.3f} nats per example worse than the model does), and a model that "
        "learned some of the wrong labels reads fewer of them on the trusted set than there are"
    )


def _predict(probe, features):
    weights, mean, std = probe
    return _softmax(_design(features, mean, std) @ weights)


def _out_of_fold(features, labels, folds):
    """Each example's probabilities from a probe fitted to the others' labels (`folds` folds,
    stratified by label; fewer where a class has fewer examples)."""
    fold = np.empty(len(labels), np.int64)
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        fold[rows] = np.arange(len(rows)) % folds
    out = np.empty((len(labels), features.shape[1]))
    for f in np.unique(fold):
        held = fold == f
        out[held] = _predict(fit_label_probe(features[~held], labels[~held]), features[held])
    return out


def _class_means(probabilities, rows):
    return np.stack([probabilities[r].mean(axis=0) for r in rows])


def _deblurred(glc, confusion):
    """`T` with `glc = confusion T`, rows clipped at 0 and renormalised; `glc` where singular."""
    try:
        matrix = np.linalg.solve(confusion, glc)
    except np.linalg.LinAlgError:
        return glc
    matrix = np.clip(matrix, 0.0, None)
    sums = matrix.sum(axis=1, keepdims=True)
    return np.where(sums > 0, matrix / np.where(sums > 0, sums, 1.0), glc)


def _wrong_per_given_label(matrix, counts):
    true_sizes = _true_sizes(matrix, counts)
    return np.clip(counts - true_sizes * np.diag(matrix), 0.0, counts)


def _true_sizes(matrix, counts):
    """`n_true` with `Cᵀ n_true = n_given`; the given counts where that has no valid solution."""
    try:
        sizes = np.linalg.solve(matrix.T, counts)
    except np.linalg.LinAlgError:
        return counts
    if not np.all(np.isfinite(sizes)) or sizes.min() < 0:
        return counts
    return sizes


def _design(x, mean, std):
    return np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1)


def _log(probabilities):
    return np.log(np.clip(np.asarray(probabilities, np.float64), 1e-12, None))


def _softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)
