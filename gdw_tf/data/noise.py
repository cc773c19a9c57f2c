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
