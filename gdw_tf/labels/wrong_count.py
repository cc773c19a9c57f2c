"""How many training labels are wrong, estimated with the trusted set (NumPy only).

The method is Gold Loss Correction's estimate of the noise (Hendrycks et al., "Using Trusted
Data to Train Deep Networks on Labels Corrupted by Severe Noise", NeurIPS 2018): a classifier
of the *given* labels, applied to the trusted examples (whose labels are right), estimates

    C[k, j] = P(given label j | true class k) ≈ mean over trusted examples of class k of p̃(j | x).

GLC trains a second network on the noisy labels for p̃. Here p̃ is a softmax regression on the
trained model's log-probabilities, fitted (to convergence, by Newton's method) to the given
labels of the training set: it maps the model's beliefs to the labels the data set gives, so it
learns how often and where a model that resisted the noise still meets a wrong label (uniform
noise: its "shirt" means "labelled shirt 46% of the time") and where it learned it
(instance-dependent noise). Then, with `n` the counts of given labels,

    n_true = C⁻ᵀ n        (the classes' true sizes: n_given = Cᵀ n_true)
    wrong with given label j = n_j − n_true,j C[j, j]

and their sum is the estimate. Its uncertainty: the 2.5% and 97.5% quantiles of the estimate
over bootstrap resamples of the trusted set within each class (the probe fixed).

What it rests on: the trusted examples must be representative of their classes and their labels
right; an automatic trusted set (`--trusted_data=auto`) is chosen by a model of the noisy labels,
so its examples are the unambiguous ones, which C reads as less noisy than the data are.
"""

import numpy as np

METHOD = (
    "Gold Loss Correction's noise estimate (Hendrycks et al. 2018): a softmax regression on "
    "the model's log-probabilities fitted to the given labels, averaged over the trusted "
    "examples of each class"
)


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
      `true_class_sizes`, `num_trusted`, `method`.

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
    weights, mean, std = fit_label_probe(_log(probabilities), given)
    trusted_given = _softmax(_design(_log(trusted_probabilities), mean, std) @ weights)
    counts = np.bincount(given, minlength=num_classes).astype(np.float64)

    def per_label(rows):
        matrix = np.stack([trusted_given[r].mean(axis=0) for r in rows])
        return _wrong_per_given_label(matrix, counts), matrix

    rows = [np.flatnonzero(trusted_labels == k) for k in range(num_classes)]
    wrong, matrix = per_label(rows)
    result = {
        "count": float(wrong.sum()),
        "interval": None,
        "rate": float(wrong.sum() / max(len(given), 1)),
        "per_given_label": wrong.tolist(),
        "per_given_label_interval": None,
        "transition_matrix": matrix.tolist(),
        "true_class_sizes": _true_sizes(matrix, counts).tolist(),
        "num_trusted": int(len(trusted_labels)),
        "method": METHOD,
    }
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = np.stack(
            [
                per_label([rng.choice(r, len(r), replace=True) for r in rows])[0]
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
    return (
        f"a trusted set of {estimate['num_trusted']} examples whose labels are right and that "
        "represent their classes"
    )


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
