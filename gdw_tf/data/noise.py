"""Label noise and long tails: the noise models' transition matrices, drawing noisy labels,
and the per-class sizes of a long-tailed training set. NumPy only.

Noise models (`noise_transition_matrix`), `r` the ratio and `C` the number of classes:

- `none`: labels stay as they are (the ratio is ignored).
- `uniform`: `T = r/C 11' + (1 - r) I`; a label is replaced with probability `r` by a class
  drawn from all `C`, so it may stay correct: the expected fraction of wrong labels is
  `r (C - 1) / C`. This is Meta-Weight-Net's and the reference's definition, kept so that
  numbers compare with the paper's.
- `symmetric`: with probability `r` the label is replaced by one of the *other* classes, so
  the expected fraction of wrong labels is `r`.
- `flip`: class `k` moves with probability `r` to one other class drawn once per run;
  targets are drawn independently per class, so two classes may share one.
- `pair`: class `k` moves with probability `r` to class `(k + 1) mod C`.

Instance-dependent noise (`instance_dependent_labels`): the noise above ignores the example;
real annotators err on the ambiguous ones. Following Chen et al. (AAAI 2021, "Beyond
Class-Conditional Assumption: A Primary Attempt to Combat Instance-Dependent Label Noise"),
a classifier trained on the clean labels measures each example's ambiguity as the largest
probability it gives a wrong class, averaged over its training epochs, and the wrong label is
that class. Chen et al. flip the fraction `r` of examples with the highest ambiguity; here the
flips are drawn (seeded), each example with probability proportional to its ambiguity, capped
at 1, scaled per class so that each class's expected fraction is `r` (as the class-level rate
of Xia et al. 2020's part-dependent noise; a global top `r` left 75% of Fashion-MNIST's shirts
and 66% of its pullovers wrong at r = 0.35, i.e. mostly wrong labels in a class): within a
class the ambiguous examples are flipped most, an unambiguous one rarely.
`softmax_regression_probabilities` is the classifier (NumPy).

The field's usual instance-dependent benchmark (`projection_dependent_labels`) is Xia et al.'s
(NeurIPS 2020, "Part-dependent Label Noise: Towards Instance-dependent Label Noise"; the
"IDN" of many later papers): each example's flip rate is drawn from a normal distribution
around `r` (standard deviation 0.1, truncated to [0, 1]) and its wrong label from a softmax of
a random projection of its pixels, one projection per true class. The noise depends on the
image, but not on what makes it ambiguous: the harder case for a detector is the first one.
"""

import numpy as np

NOISE_MODELS = ("none", "uniform", "symmetric", "flip", "pair")


# --------------------------------------------------------------------------------------------
# Noise models


def noise_transition_matrix(noise, ratio, num_classes, rng):
    """The `C x C` matrix `T[true, noisy]` of a noise model.

    Args:
        noise: one of `NOISE_MODELS`.
        ratio: the noise ratio `r` in [0, 1].
        num_classes: `C`, at least 2.
        rng: a `np.random.Generator`; only `flip` draws from it (its targets).

    Returns:
        A float64 row-stochastic matrix.

    Raises:
        ValueError: for an unknown noise model, a ratio outside [0, 1] or fewer than 2 classes.
    """
    if noise not in NOISE_MODELS:
        raise ValueError(f"Unknown noise model {noise!r}; expected one of {NOISE_MODELS}.")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"The noise ratio must lie in [0, 1]; got {ratio}.")
    if num_classes < 2:
        raise ValueError(f"Need at least 2 classes; got {num_classes}.")
    classes = np.arange(num_classes)
    identity = np.eye(num_classes)
    if noise == "none":
        return identity
    if noise == "uniform":
        return ratio / num_classes * np.ones((num_classes, num_classes)) + (1 - ratio) * identity
    if noise == "symmetric":
        off_diagonal = ratio / (num_classes - 1) * (np.ones((num_classes, num_classes)) - identity)
        return (1 - ratio) * identity + off_diagonal
    if noise == "flip":
        targets = (classes + rng.integers(1, num_classes, size=num_classes)) % num_classes
    else:  # pair
        targets = (classes + 1) % num_classes
    matrix = (1 - ratio) * identity
    matrix[classes, targets] += ratio
    return matrix


def corrupt_labels(labels, noise, ratio, num_classes, seed):
    """Draws each label's noisy value from its row of the noise model's transition matrix.

    Args:
        labels: integer array of true labels in [0, num_classes).
        noise: one of `NOISE_MODELS`.
        ratio: the noise ratio in [0, 1].
        num_classes: number of classes.
        seed: an int or a `np.random.Generator` (then it is advanced).

    Returns:
        `(noisy_labels, transition_matrix)`: int64 labels shaped like `labels`, and the matrix.
    """
    rng = np.random.default_rng(seed)
    labels = check_labels(labels, num_classes)
    matrix = noise_transition_matrix(noise, ratio, num_classes, rng)
    cumulative = np.cumsum(matrix, axis=1)
    cumulative[:, -1] = 1.0  # Rounding must not leave a gap below 1.
    uniforms = rng.random(labels.shape)
    noisy = np.empty_like(labels)
    for k in range(num_classes):
        in_class = labels == k
        noisy[in_class] = np.searchsorted(cumulative[k], uniforms[in_class], side="right")
    return noisy, matrix


def empirical_transition_matrix(true_labels, noisy_labels, num_classes):
    """Row-normalised counts of (true, noisy) label pairs; rows of absent classes are zero."""
    pairs = np.asarray(true_labels) * num_classes + np.asarray(noisy_labels)
    counts = np.bincount(pairs.ravel(), minlength=num_classes**2).reshape(num_classes, -1)
    totals = counts.sum(axis=1, keepdims=True)
    return counts / np.maximum(totals, 1)


def realised_noise_rate(true_labels, noisy_labels):
    """Fraction of labels whose noisy value differs from the true one."""
    return float(np.mean(np.asarray(true_labels) != np.asarray(noisy_labels)))


# --------------------------------------------------------------------------------------------
# Instance-dependent noise


def softmax_regression_probabilities(
    x: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    seed: int,
    epochs: int = 5,
    lr: float = 0.5,
    batch_size: int = 256,
) -> np.ndarray:
    """Probabilities of a softmax regression trained on `(x, labels)`, averaged over epochs.

    Multinomial logistic regression on the standardised, flattened `x`, trained by minibatch
    SGD (seeded order, zero initialisation); after each epoch the probabilities of every example
    are computed, and their mean over the epochs is returned (Chen et al. 2021 average over
    epochs too). NumPy only.

    Returns:
      float64 `[N, num_classes]`, rows summing to 1.
    """
    labels = check_labels(labels, num_classes)
    features = np.asarray(x, np.float64).reshape(len(labels), -1)
    features = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-8)
    features = np.concatenate([features, np.ones((len(labels), 1))], axis=1)
    weights = np.zeros((features.shape[1], num_classes))
    one_hot = np.eye(num_classes)[labels]
    rng = np.random.default_rng(seed)
    average = np.zeros((len(labels), num_classes))
    for _ in range(epochs):
        order = rng.permutation(len(labels))
        for start in range(0, len(labels), batch_size):
            rows = order[start : start + batch_size]
            probabilities = _softmax(features[rows] @ weights)
            weights -= lr * features[rows].T @ (probabilities - one_hot[rows]) / len(rows)
        average += _softmax(features @ weights)
    return average / epochs


def instance_dependent_labels(
    labels: np.ndarray,
    probabilities: np.ndarray,
    ratio: float,
    *,
    seed: int | np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Instance-dependent noisy labels: ambiguous examples flipped to their most likely wrong class.

    Each example's ambiguity `a` is the largest probability `probabilities` gives a class other
    than its label; it is flipped to that class with probability `min(1, c_k a)`, `c_k` chosen
    (by bisection) so that the expected fraction of flipped examples of its true class `k` is
    `ratio`: every class loses about `ratio` of its labels, its most ambiguous examples first.

    Args:
      labels: `[N]` true int labels in `[0, C)`.
      probabilities: `[N, C]` a classifier's probabilities (e.g.
        `softmax_regression_probabilities` on the clean labels).
      ratio: expected fraction of wrong labels, in `[0, 1)`; must be reachable: below the
        fraction of examples with a positive ambiguity.
      seed: an int or a `np.random.Generator`.

    Returns:
      `(noisy_labels, flip_probability)`: int64 `[N]`, and each example's probability of
      having been flipped.
    """
    probabilities = np.asarray(probabilities, np.float64)
    if probabilities.ndim != 2 or len(probabilities) != len(labels):
        raise ValueError(
            f"probabilities must be [N, C] with N = {len(labels)} labels; "
            f"got shape {probabilities.shape}."
        )
    labels = check_labels(labels, probabilities.shape[1])
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"The noise ratio must lie in [0, 1); got {ratio}.")
    rows = np.arange(len(labels))
    others = probabilities.copy()
    others[rows, labels] = -np.inf
    target = others.argmax(axis=1)
    ambiguity = np.clip(others[rows, target], 0.0, None)
    reachable = min(np.mean(ambiguity[labels == k] > 0) for k in np.unique(labels))
    if ratio >= reachable:
        raise ValueError(
            f"In some class only {reachable:.1%} of the examples have any ambiguity; a noise "
            f"ratio of {ratio} cannot be reached there. Lower the ratio."
        )
    flip_probability = np.zeros(len(labels))
    for k in np.unique(labels):
        in_class = labels == k
        flip_probability[in_class] = _scaled_to_mean(ambiguity[in_class], ratio)
    flipped = np.random.default_rng(seed).random(len(labels)) < flip_probability
    return np.where(flipped, target, labels), flip_probability


def projection_dependent_labels(
    images: np.ndarray,
    labels: np.ndarray,
    ratio: float,
    *,
    num_classes: int,
    seed: int,
    spread: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Xia et al. (2020)'s instance-dependent noisy labels, from random projections of pixels.

    Example `n` of true class `y` gets a flip rate `q_n` ~ N(ratio, spread²) truncated to
    [0, 1] and the label distribution `(1 - q_n)` on `y` plus `q_n softmax(x_n W_y)` over the
    other classes, `x_n` its pixels scaled to [0, 1] and flattened and `W_y` a `[D, C]`
    standard normal projection drawn per class; the noisy label is drawn from it.

    Args:
      images: `[N, ...]` uint8 images (or floats in [0, 1]).
      labels: `[N]` true int labels in `[0, num_classes)`.
      ratio: the mean flip rate, in `[0, 1)`.
      num_classes: `C`.
      seed: seeds the flip rates, the projections and the draws.

    Returns:
      `(noisy_labels, flip_probability)`: int64 `[N]` and each example's `q_n`.
    """
    labels = check_labels(labels, num_classes)
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"The noise ratio must lie in [0, 1); got {ratio}.")
    x = np.asarray(images).reshape(len(labels), -1).astype(np.float64)
    if np.issubdtype(np.asarray(images).dtype, np.integer):
        x /= 255.0
    rng = np.random.default_rng(seed)
    # Truncated normal by rejection: redraw what falls outside [0, 1].
    flip_rate = rng.normal(ratio, spread, len(labels))
    while (outside := (flip_rate < 0) | (flip_rate > 1)).any():
        flip_rate[outside] = rng.normal(ratio, spread, outside.sum())
    projections = rng.standard_normal((num_classes, x.shape[1], num_classes))
    logits = np.empty((len(labels), num_classes))
    for k in range(num_classes):
        logits[labels == k] = x[labels == k] @ projections[k]
    rows = np.arange(len(labels))
    logits[rows, labels] = -np.inf
    distribution = flip_rate[:, None] * _softmax(logits)
    distribution[rows, labels] = 1.0 - flip_rate
    draws = rng.random(len(labels))[:, None] > np.cumsum(distribution, axis=1)
    noisy = np.minimum(draws.sum(axis=1), num_classes - 1)
    return noisy.astype(np.int64), flip_rate


def _scaled_to_mean(values, mean):
    """`min(1, c values)` with `c` found by bisection so that its mean is `mean`."""
    low, high = 0.0, 1.0
    while np.minimum(1.0, high * values).mean() < mean:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2
        if np.minimum(1.0, middle * values).mean() < mean:
            low = middle
        else:
            high = middle
    return np.minimum(1.0, high * values)


def _softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Long tail


def long_tail_counts(n_max, imbalance, num_classes):
    """Per-class sizes of a long tail: class `k` keeps `int(n_max * imbalance**(-k/(C-1)))`.

    Args:
        n_max: size of the largest (first) class.
        imbalance: `rho = n_max / n_min`, at least 1 (1 keeps every class at `n_max`).
        num_classes: `C`, at least 2.

    Returns:
        An int64 array of `C` sizes.
    """
    if imbalance < 1:
        raise ValueError(f"The imbalance factor n_max/n_min must be >= 1; got {imbalance}.")
    if num_classes < 2:
        raise ValueError(f"Need at least 2 classes; got {num_classes}.")
    exponents = -np.arange(num_classes) / (num_classes - 1)
    counts = np.array([int(n_max * imbalance**e) for e in exponents], dtype=np.int64)
    if not np.isfinite(imbalance) or counts[-1] < 1:
        raise ValueError(
            f"The imbalance factor {imbalance} leaves the last class without training examples "
            f"(the largest class keeps {n_max}); use a smaller --imbalance (below {n_max})."
        )
    return counts


def check_labels(labels, num_classes):
    """Returns `labels` as int64 after checking they are integers in [0, num_classes)."""
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"Labels must be integers; got dtype {labels.dtype}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Labels must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}]."
        )
    return labels.astype(np.int64)
