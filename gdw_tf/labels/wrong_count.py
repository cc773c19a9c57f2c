"""How many training labels are wrong, estimated with the trusted set (NumPy only).

Two probes read the trained model's view `z` of an example: its (standardised) log-probabilities
and, where the network has a classifier layer to split off, the principal components of that
layer's input, its penultimate features (`label_issues.probe_features`). Both are softmax
regressions fitted to convergence by Newton's method (convex: no seed, no order):

- the *label probe* `p̃(j | z)`, fitted to the given labels of the training set: what the data
  set's labels are where the model believes something;
- the *truth probe* `p(k | z)`, fitted to the right labels of the trusted set: what the truth is
  there (on the trusted examples themselves, its out-of-fold probabilities, 10 folds). To
  score the training examples its L2 is the one of `TRUTH_PROBE_L2` with the best
  out-of-fold fit; its confusions `B` below use the weakest.

A model that learned wrong labels maps an ambiguous image to the label it was taught, but its
features still say much of what the image is; with them the truth probe ranks the wrong labels
better (docs/LABEL_ISSUES.md, "The probes' inputs").

Averaged over the trusted examples of each true class `k` they give two matrices:
`M[k, j]` = mean `p̃(j | z)` (Gold Loss Correction's estimate of the noise, Hendrycks et al.,
NeurIPS 2018, with the label probe in place of GLC's second network) and `B[k, i]` = mean
`p(i | z)`, how well the model's view separates the classes.

Which to use depends on what the model did with the wrong labels, and that is measured:

- **It rejected them** (it prefers another class on about as many training examples as `M`
  counts wrong: `rejected_share` ≥ `REJECTED_SHARE`). Its view of an image is then a view of
  its true class, so `M = B T`: `M` holds the noise `T` blurred by the model's own confusions,
  which would read as noise. They are divided out: `T = B⁻¹ M`. Uniform, flip and long-tail
  noise, and Xia et al.'s projection noise, on the benchmark.
- **It learned many of them** (annotators err on ambiguous images, and such mistakes are
  learnable): on the trusted set it repeats them, so its confusions there *are* the noise, and
  dividing them out would erase it. `T = M`.

Then, with `C` the chosen matrix and `n` the counts of given labels,

    n_true = C⁻ᵀ n        (the classes' true sizes: n_given = Cᵀ n_true)
    wrong with given label j = n_j − n_true,j C[j, j]

and their sum is the estimate. Its uncertainty: the 2.5% and 97.5% quantiles of the estimate
over bootstrap resamples of the trusted set within each class (the probes and the choice
fixed).

What it rests on: the trusted examples must be representative of their classes and their labels
right; an automatic trusted set (`--trusted_data=auto`) is chosen by a model of the noisy labels,
so its examples are the unambiguous ones, which read as less noisy than the data are.
"""

import dataclasses

import numpy as np

METHOD = (
    "Gold Loss Correction's noise estimate (Hendrycks et al. 2018): a softmax regression on "
    "the model's log-probabilities (and penultimate features) fitted to the given labels, "
    "averaged over the trusted examples of each class; where the model rejected the wrong "
    "labels, its own confusions on the trusted set (a second regression, fitted to their right "
    "labels) divided out"
)
# Below this share of GLC's count of wrong labels rejected (the model prefers another class), the
# model is taken to have learned many wrong labels (docs/LABEL_ISSUES.md: 0.80-0.93 where it
# resisted the noise, 0.47-0.52 where it learned it, on the benchmark).
REJECTED_SHARE = 0.7
# Folds of the truth probe's out-of-fold probabilities on the trusted set.
TRUSTED_FOLDS = 10
# The L2 of the truth probe that scores the training examples is the one of these with the best
# out-of-fold fit on the trusted set; its confusions (`B`) use the first, the weakest.
TRUTH_PROBE_L2 = (1e-4, 1e-3, 1e-2, 1e-1)
# The label probe is fitted to at most this many training examples (a seeded sample beyond).
LABEL_PROBE_EXAMPLES = 100_000
# The probes' default L2 and their most Newton steps.
LABEL_PROBE_L2 = 1e-4
NEWTON_STEPS = 30
# Rows per chunk of the probes' Newton steps: the logits, probabilities and the Hessian's outer
# products (rows × inputs² numbers: 4 MB with 43 inputs) are one chunk's at a time.
_FIT_ROWS = 256
# Rows per chunk of the training examples the truth probe reads (their inputs: rows × (C + D)).
_PREDICT_ROWS = 8192
PROBE_INPUTS = {
    False: "the model's log-probabilities",
    True: "the model's log-probabilities and the principal components of its penultimate features",
}
# Below this many trusted examples in a class, `rests_on` says the estimate is noisy (measured
# on the benchmark with 10 per class: −15% to +91%; with 30: −18% to +11%).
FEW_TRUSTED_PER_CLASS = 30


@dataclasses.dataclass(frozen=True)
class WrongLabelEstimate:
    """The number of wrong given labels, estimated with the trusted set (`estimate_wrong_labels`).

    Attributes:
      count: the estimated number of wrong labels.
      interval: `(low, high)`, the 2.5% and 97.5% bootstrap quantiles of `count`; None without
        resamples.
      rate: `count` over the number of training examples.
      per_given_label: `C` expected wrong counts, one per given label.
      per_given_label_interval: `C` pairs `(low, high)`; None without resamples.
      transition_matrix: `C[true, given]`, the matrix chosen (`T`).
      true_class_sizes: `n_true` with `Cᵀ n_true = n_given`.
      rejected_share: given labels the model disagrees with, over GLC's count of wrong ones.
      model_learned_wrong_labels: `rejected_share < REJECTED_SHARE`.
      count_if: the count if the model `"rejected"` or `"learned"` the wrong labels.
      num_trusted: trusted examples.
      smallest_trusted_class: trusted examples of the class with fewest.
      probe_inputs: what the probes read (`PROBE_INPUTS`).
      truth_probe_l2: the truth probe's L2, chosen by cross-validation on the trusted set.
      method: `METHOD`.
      trusted_source: where the trusted set came from (the run's `Split.meta_source`;
        `"auto"`: chosen by a warm-up model); None where not known.
      flags_cut_at_estimate: whether `rank_label_issues` flagged, within each given label,
        as many of the lowest scores as `per_given_label` says.
    """

    count: float
    interval: tuple[float, float] | None
    rate: float
    per_given_label: tuple[float, ...]
    per_given_label_interval: tuple[tuple[float, float], ...] | None
    transition_matrix: tuple[tuple[float, ...], ...]
    true_class_sizes: tuple[float, ...]
    rejected_share: float
    model_learned_wrong_labels: bool
    count_if: dict[str, float]
    num_trusted: int
    smallest_trusted_class: int
    probe_inputs: str
    truth_probe_l2: float
    method: str = METHOD
    trusted_source: str | None = None
    flags_cut_at_estimate: bool = False

    def to_json(self) -> dict:
        """The `results.json` entry `wrong_labels.estimate`: the fields but `true_class_sizes`,
        sequences as lists, and `rests_on`."""
        out = {
            name: _lists(getattr(self, name))
            for name in (
                "count",
                "interval",
                "rate",
                "per_given_label",
                "per_given_label_interval",
                "transition_matrix",
                "rejected_share",
                "model_learned_wrong_labels",
                "count_if",
                "num_trusted",
                "smallest_trusted_class",
                "probe_inputs",
                "truth_probe_l2",
                "method",
                "trusted_source",
                "flags_cut_at_estimate",
            )
        }
        out["rests_on"] = self.rests_on()
        return out

    def rests_on(self) -> str:
        """One sentence: what the estimate rests on."""
        if self.trusted_source == "auto":
            return (
                f"an automatic trusted set of {self.num_trusted:,} examples chosen from the "
                "noisy data by a warm-up model (--trusted_data=auto): their labels are assumed "
                "right, and they are examples whose labels that model's features back clearly, so "
                "the estimate reads the noise on clear examples and undercounts the wrong labels "
                "(by how much: "
                'docs/LABEL_ISSUES.md, "Automatic trusted set"); the flags are therefore '
                "score < 0"
            )
        trusted = (
            f"a trusted set of {self.num_trusted:,} examples whose labels are right and that "
            "represent their classes"
        )
        smallest = self.smallest_trusted_class
        if smallest < FEW_TRUSTED_PER_CLASS:
            trusted += (
                f" (only {smallest} in its smallest class: with 10 trusted examples per class "
                "the estimate was off by up to +91% on the benchmark, with 30 by up to 18%)"
            )
        share = self.rejected_share
        if not self.model_learned_wrong_labels:
            return (
                f"{trusted}, and on the model having rejected the wrong labels (it prefers "
                f"another class on {share:.0%} as many training examples as the trusted set "
                "reads as wrong), so that its own confusions on the trusted set are not noise "
                "and were divided out"
            )
        return (
            f"{trusted}; the model learned many of the wrong labels (it prefers another class "
            f"on only {share:.0%} as many training examples as the trusted set reads as "
            "wrong), and a model that learned them reads fewer of them on the trusted set than "
            "there are"
        )


def fit_label_probe(
    inputs: np.ndarray,
    given_labels: np.ndarray,
    *,
    num_classes: int | None = None,
    l2: float = LABEL_PROBE_L2,
    iterations: int = NEWTON_STEPS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A softmax regression from standardised inputs (log-probabilities, features) to labels.

    Fitted by damped Newton steps on the mean cross-entropy plus `l2/2 ||W||²` (a convex
    problem: the result does not depend on a seed or an order).

    `num_classes` defaults to the inputs' width (log-probabilities of `C` classes).

    Returns:
      `(weights, mean, std)`: weights `[D + 1, C]` (last row: bias) and the standardisation.
    """
    x = np.asarray(inputs, np.float64)
    design = np.empty((len(x), x.shape[1] + 1))
    design[:, :-1] = x
    mean, std = _standardise(design[:, :-1])
    design[:, -1] = 1.0
    weights = _fit_design(
        design, given_labels, num_classes=num_classes or x.shape[1], l2=l2, iterations=iterations
    )
    return weights, mean, std


def _fit_design(features, given_labels, *, num_classes, l2, iterations):
    """`fit_label_probe`'s weights `[D + 1, C]` on its standardised design matrix `features`
    `[n, D + 1]` (last column: ones; an array or `_DesignRows`). Each step reads the rows in
    chunks of `_FIT_ROWS`."""
    labels = np.asarray(given_labels, np.int64)
    d, n = features.shape[1], len(features)
    weights = np.zeros((d, num_classes))
    chunks = [slice(start, start + _FIT_ROWS) for start in range(0, n, _FIT_ROWS)]
    identity = np.eye(num_classes)

    def loss(w):
        total = 0.0
        for rows in chunks:
            logits = features[rows] @ w
            logits -= logits.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(logits).sum(axis=1))
            # The given label's logit (a one-hot product's row sum, exactly).
            total += np.sum(log_norm - logits[np.arange(len(logits)), labels[rows]])
        return float(total / n + l2 / 2 * (w * w).sum())

    current = loss(weights)
    for _ in range(iterations):
        # Gradient and Hessian of the mean cross-entropy, summed over chunks of rows; the
        # Hessian is sum_i (diag p_i - p_i p_i') ⊗ x_i x_i' / n.
        gradient = np.zeros((d, num_classes))
        hessian = np.zeros((d * d, num_classes * num_classes))
        for rows in chunks:
            x_rows = features[rows]
            p = _softmax(x_rows @ weights)
            s = p[:, :, None] * (identity - p[:, None, :])
            outer_x = (x_rows[:, :, None] * x_rows[:, None, :]).reshape(len(x_rows), d * d)
            hessian += outer_x.T @ s.reshape(len(x_rows), -1)
            p[np.arange(len(p)), labels[rows]] -= 1.0  # p − one-hot(labels)
            gradient += x_rows.T @ p
        gradient = gradient / n + l2 * weights
        hessian = (hessian / n).reshape(d, d, num_classes, num_classes)
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
    return weights


def estimate_wrong_labels(
    probabilities: np.ndarray,
    given_labels: np.ndarray,
    trusted_probabilities: np.ndarray,
    trusted_labels: np.ndarray,
    *,
    features: np.ndarray | None = None,
    trusted_features: np.ndarray | None = None,
    bootstrap: int = 200,
    seed: int = 0,
) -> WrongLabelEstimate:
    """The number of wrong given labels, per given label and in all, with a 95% interval.

    Args:
      probabilities: `[N, C]` the trained model's probabilities on the training examples.
      given_labels: `[N]` their given (possibly wrong) labels.
      trusted_probabilities: `[M, C]` its probabilities on the trusted examples.
      trusted_labels: `[M]` their (right) labels; every class must appear.
      features, trusted_features: optional `[N, D]`, `[M, D]` more of the model's view for the
        probes, beside the log-probabilities (`label_issues.probe_features`: its penultimate
        layer's principal components); both or neither.
      bootstrap: number of resamples of the trusted set for the interval (0: none).
      seed: seed of the resamples (and of the label probe's sample of a training set of more
        than `LABEL_PROBE_EXAMPLES`).

    Returns:
      A `WrongLabelEstimate` (`trusted_source` None, `flags_cut_at_estimate` False).

    Raises:
      ValueError: when a class has no trusted example.
    """
    if (features is None) != (trusted_features is None):
        raise ValueError("Give both features and trusted_features, or neither.")
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
    z_trusted = _probe_inputs(trusted_probabilities, trusted_features)
    fitted = np.arange(len(given))
    if len(given) > LABEL_PROBE_EXAMPLES:  # a seeded sample: plenty for its few hundred weights
        fitted = np.random.default_rng(seed).choice(len(given), LABEL_PROBE_EXAMPLES, False)
    label_probe = _fit_label_probe_of_rows(probabilities, features, given, fitted, num_classes)
    given_on_trusted = _predict(label_probe, z_trusted)
    out_of_fold = _truth_probe_out_of_fold(z_trusted, trusted_labels, num_classes)
    # The model's confusions come from the least regularised probe: a more regularised one is
    # less sure, and its confusions read as the model's (docs/LABEL_ISSUES.md).
    truth_on_trusted = out_of_fold[TRUTH_PROBE_L2[0]]
    counts = np.bincount(given, minlength=num_classes).astype(np.float64)

    rows = [np.flatnonzero(trusted_labels == k) for k in range(num_classes)]
    glc = _class_means(given_on_trusted, rows)
    deblurred = _deblurred(glc, _class_means(truth_on_trusted, rows))
    count_if = {
        "rejected": float(wrong_per_given_label(deblurred, counts).sum()),
        "learned": float(wrong_per_given_label(glc, counts).sum()),
    }
    # Did the model reject the wrong labels? Then it disagrees with about as many given labels
    # as GLC counts wrong (a little more or less: its own mistakes, GLC's blur).
    rejected_share = float(np.sum(probabilities.argmax(axis=1) != given)) / max(
        count_if["learned"], 1.0
    )
    learned = rejected_share < REJECTED_SHARE

    def matrix_of(rows):
        glc = _class_means(given_on_trusted, rows)
        return glc if learned else _deblurred(glc, _class_means(truth_on_trusted, rows))

    matrix = glc if learned else deblurred
    wrong = wrong_per_given_label(matrix, counts)
    interval = per_given_label_interval = None
    if bootstrap:
        rng = np.random.default_rng(seed)
        draws = np.stack(
            [
                wrong_per_given_label(
                    matrix_of([rng.choice(r, len(r), replace=True) for r in rows]), counts
                )
                for _ in range(bootstrap)
            ]
        )
        interval = tuple(np.quantile(draws.sum(axis=1), [0.025, 0.975]).tolist())
        per_given_label_interval = tuple(
            map(tuple, np.quantile(draws, [0.025, 0.975], axis=0).T.tolist())
        )
    return WrongLabelEstimate(
        count=float(wrong.sum()),
        interval=interval,
        rate=float(wrong.sum() / max(len(given), 1)),
        per_given_label=tuple(wrong.tolist()),
        per_given_label_interval=per_given_label_interval,
        transition_matrix=tuple(map(tuple, matrix.tolist())),
        true_class_sizes=tuple(_true_sizes(matrix, counts).tolist()),
        rejected_share=rejected_share,
        model_learned_wrong_labels=learned,
        count_if=count_if,
        num_trusted=int(len(trusted_labels)),
        smallest_trusted_class=int(per_class.min()),
        probe_inputs=PROBE_INPUTS[features is not None],
        truth_probe_l2=_best_l2(out_of_fold, trusted_labels),
    )


def truth_probabilities(
    probabilities: np.ndarray,
    trusted_probabilities: np.ndarray,
    trusted_labels: np.ndarray,
    *,
    features: np.ndarray | None = None,
    trusted_features: np.ndarray | None = None,
    l2: float | None = None,
) -> np.ndarray:
    """`[N, C]` P(true class | the model's view): the truth probe, a softmax regression fitted
    to the trusted examples' right labels on the model's log-probabilities (and `features`, as
    `estimate_wrong_labels`), applied to the training examples. Where the model learned wrong
    labels, its own probabilities say what an image is *labelled*; these say what it *is* (as
    far as the model's view tells). `l2`: the probe's L2 (`estimate.truth_probe_l2`);
    chosen by cross-validation on the trusted set if None."""
    trusted_labels = np.asarray(trusted_labels, np.int64)
    num_classes = probabilities.shape[1]
    z_trusted = _probe_inputs(trusted_probabilities, trusted_features)
    if l2 is None:
        l2 = _best_l2(
            _truth_probe_out_of_fold(z_trusted, trusted_labels, num_classes), trusted_labels
        )
    probe = fit_label_probe(z_trusted, trusted_labels, num_classes=num_classes, l2=l2)
    # In chunks of rows: the probe's inputs of all N rows would be N x (C + D + 1) float64.
    features = None if features is None else np.asarray(features)
    out = np.empty(probabilities.shape, np.float64)
    for start in range(0, len(out), _PREDICT_ROWS):
        rows = slice(start, start + _PREDICT_ROWS)
        view = None if features is None else features[rows]
        out[rows] = _predict(probe, _probe_inputs(probabilities[rows], view))
    return out


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


def _predict(probe, features):
    weights, mean, std = probe
    return _softmax(_design(features, mean, std) @ weights)


def _truth_probe_out_of_fold(inputs, labels, num_classes):
    """`{l2: the truth probe's out-of-fold probabilities on the trusted examples}` for each L2
    of `TRUTH_PROBE_L2`."""
    return {
        l2: _out_of_fold(inputs, labels, TRUSTED_FOLDS, num_classes, l2) for l2 in TRUTH_PROBE_L2
    }


def _best_l2(out_of_fold, labels):
    """The L2 of the truth probe that scores the training examples: the one whose out-of-fold
    probabilities (`_truth_probe_out_of_fold`) have the lowest cross-entropy on the trusted
    `labels`. A thousand trusted examples fit a probe of 40-odd inputs loosely: how loosely is
    measured, not assumed."""
    rows = np.arange(len(labels))
    losses = {
        l2: -np.mean(np.log(np.clip(out[rows, labels], 1e-12, None)))
        for l2, out in out_of_fold.items()
    }
    return min(losses, key=losses.get)


def _out_of_fold(inputs, labels, folds, num_classes, l2):
    """Each example's probabilities from a probe fitted to the others' labels (`folds` folds,
    stratified by label; fewer where a class has fewer examples). With one example per class
    there are no others: the probe's own (in-sample) probabilities."""

    def fit(rows):
        return fit_label_probe(inputs[rows], labels[rows], num_classes=num_classes, l2=l2)

    if np.bincount(labels).max() < 2:
        return _predict(fit(slice(None)), inputs)
    fold = np.empty(len(labels), np.int64)
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        fold[rows] = np.arange(len(rows)) % folds
    out = np.empty((len(labels), num_classes))
    for f in np.unique(fold):
        held = fold == f
        out[held] = _predict(fit(~held), inputs[held])
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


def wrong_per_given_label(matrix, counts):
    """The number of wrong labels among the examples given each label (step 4 of the estimate).

    Args:
      matrix: `[C, C]` transition matrix, row `k` the distribution of the labels given to
        examples of true class `k`.
      counts: `[C]` number of training examples given each label.

    Returns:
      `[C]`: `n_given,j − n_true,j · matrix[j, j]`, clipped to `[0, n_given,j]`, where `n_true`
      solves `matrixᵀ n_true = n_given` (the given counts where that has no valid solution).
    """
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


def _fit_label_probe_of_rows(probabilities, features, given_labels, rows, num_classes):
    """`fit_label_probe(_probe_inputs(probabilities[rows], features[rows]), given_labels[rows])`,
    with the design matrix made chunk by chunk where the fit reads it (`_DesignRows`), not held:
    the same fit, its sums in another order (the last bits differ)."""
    design = _DesignRows(probabilities, features, rows)
    weights = _fit_design(
        design,
        np.asarray(given_labels)[rows],
        num_classes=num_classes,
        l2=LABEL_PROBE_L2,
        iterations=NEWTON_STEPS,
    )
    return weights, design.mean, design.std


class _DesignRows:
    """The label probe's design matrix `[(inputs - mean) / std, 1]` over the rows `rows` of
    `probabilities` and `features` (`_probe_inputs`), as `_fit_design` reads it: `len`, `shape`
    and slices of rows, each made when read. The matrix of `LABEL_PROBE_EXAMPLES` rows would be
    34 MB of float64 at once. `mean` and `std` are the inputs' (std + 1e-8, as
    `_standardise`'s), summed over chunks of rows."""

    def __init__(self, probabilities, features, rows):
        self._probabilities, self._features, self._rows = probabilities, features, rows
        width = probabilities.shape[1] + (0 if features is None else np.shape(features)[1])
        self.shape = (len(rows), width + 1)
        count = max(len(rows), 1)
        total = np.zeros(width)
        for start in range(0, len(rows), _PREDICT_ROWS):
            total += self._inputs(slice(start, start + _PREDICT_ROWS)).sum(axis=0)
        self.mean = total / count
        squares = np.zeros(width)
        for start in range(0, len(rows), _PREDICT_ROWS):
            centred = self._inputs(slice(start, start + _PREDICT_ROWS))
            centred -= self.mean
            squares += np.einsum("ij,ij->j", centred, centred)
        self.std = np.sqrt(squares / count) + 1e-8

    def __len__(self):
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        return _design(self._inputs(rows), self.mean, self.std)

    def _inputs(self, rows: slice) -> np.ndarray:
        chunk = self._rows[rows]
        features = None if self._features is None else np.asarray(self._features[chunk])
        return _probe_inputs(self._probabilities[chunk], features)


def _standardise(inputs):
    """Standardises the columns of `inputs` in place; returns their `(mean, std + 1e-8)`. The
    std is summed from the centred values in place (`np.std` would hold a copy of them: 34 MB
    for the label probe's 100,000 rows, beside its design matrix)."""
    mean = inputs.mean(axis=0)
    inputs -= mean
    std = np.sqrt(np.einsum("ij,ij->j", inputs, inputs) / max(len(inputs), 1)) + 1e-8
    inputs /= std
    return mean, std


def _design(x, mean, std):
    """`[(x - mean) / std, 1]`, written into one array (no temporary of x's size)."""
    design = np.empty((len(x), x.shape[1] + 1))
    np.subtract(x, mean, out=design[:, :-1])
    design[:, :-1] /= std
    design[:, -1] = 1.0
    return design


def _probe_inputs(probabilities, features):
    """What the probes read: the model's log-probabilities, and its `features` if given."""
    z = np.log(np.clip(np.asarray(probabilities, np.float64), 1e-12, None))
    if features is None:
        return z
    return np.concatenate([z, np.asarray(features, np.float64).reshape(len(z), -1)], axis=1)


def _softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def _lists(value):
    """`value` with its tuples, nested ones too, as lists (as JSON reads them back)."""
    if isinstance(value, tuple):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {key: _lists(v) for key, v in value.items()}
    return value
