"""Label issues: every training example ranked by how likely its given label is wrong.

The score of an example is the margin of its given label under the trained model,

    score = p(given label) − max over the other classes of p(class),

in [−1, 1]; lower is more suspicious. The suggested label is the model's most probable class,
and an example is flagged when its score is negative, i.e. exactly when the suggested label
differs from the given one. The number flagged is thus the model's own estimate of how many
labels are wrong, not a fixed top-k. With GDW the model's probabilities come from a network
that learned (through the weights) to ignore the labels it disbelieves, so it does not
reproduce them; `docs/LABEL_ISSUES.md` has the measurements that chose this score and rule
over the instance weight, GDW's labelled-class weight ω¹, the probability of the given label
and combinations of them.

With a trusted set (examples whose labels are right: a GDW run's meta set), the number of wrong
labels is estimated too (`gdw_tf.labels.wrong_count`, per given label, with a bootstrap
interval, from the model's probabilities and its penultimate features: `probe_features`), and
it tells whether the model rejected the wrong labels or learned many of them.
Where it learned them (annotators err on ambiguous examples, and such mistakes are learnable),
it prefers the given label on many wrong ones, so "score < 0" misses them: within each given
label the lowest scores are flagged instead, as many as estimated. Where it rejected them,
"score < 0" stays the rule: it needs no count, and a cut at the estimate did no better on
the benchmark (docs/LABEL_ISSUES.md). `LabelIssues.estimate` holds the estimate.

The recorded weights (`GDWModel(track_examples=N)`) are reported beside the score: the last
epoch's instance weight and the weight on the given label (GDW: ω¹).

    issues = gdw_tf.find_label_issues(model, x_train, y_train)   # x_train as fit saw it
    issues.flagged.sum(), issues.id[:10]                          # ranked, most suspicious first
    gdw_tf.labels.label_issues.write_label_issues_csv("label_issues.csv", issues)
"""

import csv
import dataclasses
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from numpy.typing import ArrayLike

from gdw_tf import backend
from gdw_tf.core import backbone_split
from gdw_tf.data import csv_cells
from gdw_tf.data.ids import Ids
from gdw_tf.data.worker_share import WorkerShare
from gdw_tf.labels import neighbours
from gdw_tf.labels import representatives as representatives_lib
from gdw_tf.labels import wrong_count

# Columns of `label_issues.csv`, in order; the two class-name columns only with class names.
CSV_COLUMNS = (
    "rank",
    "id",
    "set",
    "given_label",
    "suggested_label",
    "score",
    "flagged",
    "given_probability",
    "suggested_probability",
    "instance_weight",
    "labelled_class_weight",
    "review_rank",
    "reviewed",
)
# `label_issues.csv`'s `set`: which set a row's example is in.
TRAINING, TRUSTED = "training", "trusted"
CSV_NAME_COLUMNS = ("given_class", "suggested_class")
TOP_K = 5  # the model's most probable classes kept per example (for review.html)
_CHUNK_ROWS = 8192  # rows per chunk where a pass over N rows copies them
# Principal components of the penultimate features the trusted set's probes read (measured on
# the benchmark: 16 to 64 rank alike; docs/LABEL_ISSUES.md, "The probes' inputs"), and at least
# this many trusted examples per component (with 10 per class, 32 components made the count
# noisier than none, 10 did not).
PROBE_COMPONENTS = 32
TRUSTED_PER_COMPONENT = 10


@dataclasses.dataclass(eq=False)
class TrustedChecks:
    """The trusted examples, each label checked against the data around it; most contradicted
    first (`check_trusted`).

    Attributes:
      rank: 1, 2, ... within the trusted set (1 = most contradicted).
      id: the example's id, of the same form as the training examples'.
      position: its position in the trusted arrays the check was computed from.
      label: its trusted label.
      suggested_label: the class the evidence puts first; for a flagged example, the first
        class other than its label.
      score: the evidence's share for its label − the largest share of another class, in
        [−1, 1]; lower is more suspicious.
      flagged: score < 0: the evidence puts another class first.
      label_share, suggested_share: the evidence's shares of those classes.
      top_classes, top_shares: `[M, min(TOP_K, C)]` the classes the evidence puts first, and
        their shares.
      evidence: `"neighbours"`: the shares are the given labels of the example's
        `neighbours.NEIGHBOURS` nearest training examples (the model's penultimate features);
        `"model"`: the model's probabilities (where it has no features to compare).
      reviewed: `[M]` bool, True where an earlier review gave the label (`--corrections`).
    """

    rank: np.ndarray
    id: np.ndarray
    position: np.ndarray
    label: np.ndarray
    suggested_label: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    label_share: np.ndarray
    suggested_share: np.ndarray
    top_classes: np.ndarray
    top_shares: np.ndarray
    evidence: str
    reviewed: np.ndarray

    def __len__(self):
        return len(self.rank)

    @property
    def num_flagged(self):
        """How many trusted examples the evidence contradicts."""
        return int(self.flagged.sum())


@dataclasses.dataclass(eq=False)
class LabelIssues:
    """Examples ranked by score, most suspicious (lowest score) first; arrays of one length.

    Attributes:
      rank: 1, 2, ... (1 = most suspicious).
      id: the example's id (its index, file path, row, ...).
      position: its position in the arrays the ranking was computed from.
      given_label, suggested_label: int labels; the suggestion is the most probable class,
        and for a flagged example the most probable class other than its given label.
      score: p(given) − max_{k ≠ given} p(k), lower = more suspicious; `p` the model's
        probabilities, or where the flags are cut at the trusted set's estimate, those
        probabilities turned into probabilities of the truth on the trusted set.
      flagged: score < 0 (the suggested label differs from the given one); where a trusted
        set found that the model learned many wrong labels, the lowest scores of each given
        label, as many as `estimate` says (`estimate.flags_cut_at_estimate`).
      given_probability, suggested_probability: the probabilities `p` (as for `score`) of
        those labels.
      instance_weight, labelled_class_weight: the recorded weights (NaN where none).
      num_classes: `C`.
      class_names: names of the classes, or None.
      estimate: with a trusted set, a `gdw_tf.labels.wrong_count.WrongLabelEstimate`
        (the estimated number of wrong labels, its interval, per given label); else None.
      top_classes, top_probabilities: `[N, min(TOP_K, C)]` the model's most probable classes
        of each example, most probable first, and their probabilities.
      reviewed: `[N]` bool, True where an earlier review gave the label (`--corrections`), or
        None.
      trusted: with a trusted set, its labels checked (`TrustedChecks`), or None.
      representatives: with a trusted set and features, the training examples not reviewed
        yet that stand for regions of their suggested class (`gdw_tf.labels.representatives`),
        as positions in this ranked order, in review order; else None.
    """

    rank: np.ndarray
    id: np.ndarray
    position: np.ndarray
    given_label: np.ndarray
    suggested_label: np.ndarray
    score: np.ndarray
    flagged: np.ndarray
    given_probability: np.ndarray
    suggested_probability: np.ndarray
    instance_weight: np.ndarray
    labelled_class_weight: np.ndarray
    num_classes: int
    class_names: tuple | None = None
    estimate: wrong_count.WrongLabelEstimate | None = None
    top_classes: np.ndarray | None = None
    top_probabilities: np.ndarray | None = None
    reviewed: np.ndarray | None = None
    trusted: TrustedChecks | None = None
    representatives: np.ndarray | None = None

    def __len__(self):
        return len(self.rank)

    @property
    def num_flagged(self):
        """How many examples are flagged."""
        return int(self.flagged.sum())

    def in_input_order(self, name):
        """The field `name` ordered as the input arrays were (by `position`)."""
        values = np.asarray(getattr(self, name))
        out = np.empty_like(values)
        out[self.position] = values
        return out


def label_margin(probabilities, given_labels):
    """`p(given) − max_{k ≠ given} p(k)` for each row of `probabilities` `[N, C]`."""
    probabilities, given_labels = np.asarray(probabilities), np.asarray(given_labels)
    margin = np.empty(len(given_labels), np.float64)
    for start in range(0, len(margin), _CHUNK_ROWS):  # a copy of a chunk, not of all N rows
        rows = slice(start, start + _CHUNK_ROWS)
        labels = given_labels[rows]
        others = np.array(probabilities[rows], dtype=np.float64, copy=True)
        given = others[np.arange(len(labels)), labels]
        others[np.arange(len(labels)), labels] = -np.inf
        margin[rows] = given - others.max(axis=1)
    return margin


def rank_label_issues(
    probabilities: ArrayLike,
    given_labels: ArrayLike,
    *,
    instance_weights: ArrayLike | None = None,
    label_weights: ArrayLike | None = None,
    ids: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    trusted_probabilities: ArrayLike | None = None,
    trusted_labels: ArrayLike | None = None,
    trusted_for_flags: bool = True,
    features: ArrayLike | None = None,
    trusted_features: ArrayLike | None = None,
    trusted_ids: ArrayLike | None = None,
    reviewed: ArrayLike | None = None,
    trusted_reviewed: ArrayLike | None = None,
) -> LabelIssues:
    """Ranks examples by the margin of their given label and flags the suspicious ones.

    Those with a negative margin are flagged. With a trusted set (`trusted_probabilities` and
    `trusted_labels`: the model on examples whose labels are right), the number of wrong
    labels of each given label is estimated (`wrong_count.estimate_wrong_labels`); where the
    model learned many of them, its probabilities are those of the labels it learned, so they
    are first turned into probabilities of the truth with the trusted set
    (`wrong_count.truth_probabilities`), and each given label's lowest margins under them are
    flagged, as many as estimated there.

    Args:
      probabilities: `[N, C]` class probabilities of the trained model (rows sum to 1);
        float32 ones are kept float32 (the probes and the margins read them in float64, in
        chunks of rows), any other dtype is read as float64.
      given_labels: `[N]` int labels in `[0, C)`, the (possibly wrong) labels.
      instance_weights, label_weights: optional `[N]` recorded weights (reported, not scored).
      ids: optional `[N]` ids of the examples (default: `0..N-1`).
      class_names: optional `C` names of the classes.
      trusted_probabilities: optional `[M, C]` probabilities of trusted examples.
      trusted_labels: their `[M]` right labels; every class must appear.
      trusted_for_flags: False for a trusted set that does not represent the data (e.g. an
        automatic one, of clear examples): the estimate is reported, but the
        probabilities and flags stay the model's own (score < 0).
      features, trusted_features: optional `[N, D]` and `[M, D]` features of the training
        and trusted examples that the trusted set's probes read beside the probabilities
        (`probe_features`); both or neither, and only with a trusted set.
      trusted_ids: optional `[M]` ids of the trusted examples (default: `0..M-1`).
      reviewed, trusted_reviewed: optional `[N]` and `[M]` bools, True for the examples whose
        label an earlier review gave (kept in `LabelIssues.reviewed` and `TrustedChecks`).

    Returns:
      A `LabelIssues`, most suspicious first (ties keep the input order); with a trusted set,
      its `trusted` holds the trusted labels checked (`check_trusted`), and with features, its
      `representatives` the examples a review should see first (`review_order`).

    Raises:
      ValueError: on mismatched lengths, labels outside `[0, C)`, probabilities that are
        not finite, not in `[0, 1]` or not `[N, C]`, or a trusted set that is half given, of
        another shape or missing a class.
    """
    probabilities = np.asarray(probabilities)
    if probabilities.dtype != np.float32:  # float32 stays: N rows, half the memory.
        probabilities = probabilities.astype(np.float64, copy=False)
    if probabilities.ndim != 2 or probabilities.shape[1] < 2:
        raise ValueError(
            f"probabilities must be [N, C] with C >= 2; got shape {probabilities.shape}."
        )
    n, num_classes = probabilities.shape
    if (
        not np.all(np.isfinite(probabilities))
        or probabilities.min(initial=0) < 0
        or (probabilities.max(initial=0) > 1 + 1e-6)
    ):
        raise ValueError(
            "probabilities must be finite and in [0, 1] (softmax outputs, not logits)."
        )
    given = np.asarray(given_labels)
    if given.ndim == 2 and given.shape[-1] == 1:
        given = given[:, 0]
    if given.shape != (n,) or not np.issubdtype(given.dtype, np.integer):
        raise ValueError(
            f"given_labels must be {n} integers (one per row of probabilities); "
            f"got {given.dtype} {given.shape}."
        )
    if n and (given.min() < 0 or given.max() >= num_classes):
        raise ValueError(
            f"given_labels must lie in [0, {num_classes}); got values in "
            f"[{given.min()}, {given.max()}]."
        )
    given = given.astype(np.int64)
    weights = []
    for name, values in (("instance_weights", instance_weights), ("label_weights", label_weights)):
        if values is None:
            values = np.full(n, np.nan)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        if values.shape != (n,):
            raise ValueError(f"{name} must have {n} entries, one per example; got {len(values)}.")
        weights.append(values)
    ids = _ids(ids, n, "ids")
    if class_names is not None:
        class_names = tuple(str(name) for name in class_names)
        if len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes.")

    if (trusted_probabilities is None) != (trusted_labels is None):
        raise ValueError("Give both trusted_probabilities and trusted_labels, or neither.")
    if features is not None and trusted_probabilities is None:
        raise ValueError("features are read with a trusted set: give trusted_probabilities too.")
    estimate = None
    if trusted_probabilities is not None:
        trusted_probabilities, trusted_labels = _check_trusted(
            trusted_probabilities, trusted_labels, num_classes
        )
        features, trusted_features = _check_features(
            features, trusted_features, n, len(trusted_labels)
        )
        view = {"features": features, "trusted_features": trusted_features}
        estimate = wrong_count.estimate_wrong_labels(
            probabilities, given, trusted_probabilities, trusted_labels, **view
        )
        estimate = dataclasses.replace(
            estimate,
            flags_cut_at_estimate=trusted_for_flags and estimate.model_learned_wrong_labels,
        )
        if estimate.flags_cut_at_estimate:
            # The model's probabilities are those of the labels it learned; the trusted set
            # turns them into probabilities of the truth.
            probabilities = wrong_count.truth_probabilities(
                probabilities,
                trusted_probabilities,
                trusted_labels,
                l2=estimate.truth_probe_l2,
                **view,
            )
    score = label_margin(probabilities, given)
    flagged = score < 0
    if estimate is not None and estimate.flags_cut_at_estimate:
        flagged = wrong_count.cut_at_estimate(score, given, estimate.per_given_label)
    suggested = _suggestions(probabilities, given, flagged)
    reviewed = _bools(reviewed, n, "reviewed")
    checks = representatives = None
    if features is not None:
        representatives = _representatives(
            features,
            suggested,
            reviewed,
            trusted_features=trusted_features,
            trusted_labels=trusted_labels,
            trusted_reviewed=_bools(trusted_reviewed, len(trusted_labels), "trusted_reviewed"),
            num_classes=num_classes,
        )
    if trusted_probabilities is not None:
        voters, nearest = neighbours.voter_sample(n)
        voter_labels = given
        if features is not None and len(voters) < n:
            # Only a sample of the training rows votes: its rows, copied, are all the vote
            # reads; the features of every row (N × D) go now (`view` held them too).
            view = None
            features, voter_labels = features[voters], given[voters]
        checks = check_trusted(
            trusted_labels,
            num_classes=num_classes,
            features=features,
            labels=voter_labels,
            nearest=nearest,
            trusted_features=trusted_features,
            trusted_probabilities=trusted_probabilities,
            ids=trusted_ids,
            reviewed=trusted_reviewed,
        )
    # The features are read: let them go (N × D) before the ranked arrays are made.
    features = trusted_features = view = None
    order = np.argsort(score, kind="stable")
    if representatives is not None:  # As positions in the ranked order.
        rank_of = np.empty(n, np.int64)
        rank_of[order] = np.arange(n)
        representatives = rank_of[representatives]
    top = _top_classes(probabilities, min(TOP_K, num_classes))
    rows = np.arange(n)
    given_probability = probabilities[rows, given]
    suggested_probability = probabilities[rows, suggested]
    top_probabilities = np.take_along_axis(probabilities, top, axis=1)
    # The probabilities are read too (N × C); then each column is ranked, and its unranked
    # self let go, one at a time.
    probabilities = rows = None
    given_probability = _ranked(given_probability, order)
    suggested_probability = _ranked(suggested_probability, order)
    top_probabilities = _ranked(top_probabilities, order)
    top = _ranked(top, order)
    given = _ranked(given, order)
    suggested = _ranked(suggested, order)
    score = _ranked(score, order)
    flagged = _ranked(flagged, order)
    reviewed = _ranked(reviewed, order)
    weights = [_ranked(w, order) for w in weights]
    return LabelIssues(
        rank=np.arange(1, n + 1),
        id=_ranked(ids, order),
        position=order,
        given_label=given,
        suggested_label=suggested,
        score=score,
        flagged=flagged,
        given_probability=given_probability,
        suggested_probability=suggested_probability,
        instance_weight=weights[0],
        labelled_class_weight=weights[1],
        num_classes=num_classes,
        class_names=class_names,
        estimate=estimate,
        top_classes=top,
        top_probabilities=top_probabilities,
        reviewed=reviewed,
        trusted=checks,
        representatives=representatives,
    )


def _representatives(
    features,
    suggested,
    reviewed,
    *,
    trusted_features,
    trusted_labels,
    trusted_reviewed,
    num_classes,
):
    """The representatives of the training examples not reviewed yet, as input positions
    (`representatives.representatives`): as many per class as the trusted set has on average,
    so that a review of them all replaces an automatic trusted set whole. The examples reviewed
    before, trusted or not, cover their clusters already."""
    known = np.concatenate([trusted_features[trusted_reviewed], features[reviewed]])
    known_classes = np.concatenate([trusted_labels[trusted_reviewed], suggested[reviewed]])
    return representatives_lib.representatives(
        features,
        np.where(reviewed, -1, suggested),
        max(len(trusted_labels) // num_classes, 1),
        known=known,
        known_classes=known_classes,
    )


def check_trusted(
    trusted_labels: ArrayLike,
    *,
    num_classes: int,
    features: ArrayLike | None = None,
    labels: ArrayLike | None = None,
    trusted_features: ArrayLike | None = None,
    trusted_probabilities: ArrayLike | None = None,
    ids: ArrayLike | None = None,
    reviewed: ArrayLike | None = None,
    nearest: int | None = None,
) -> TrustedChecks:
    """Checks each trusted label against the given labels of the training examples around it.

    The trusted set steers every weight the run learns, so its wrong labels are the first to
    review. The model cannot tell them well: it was steered by them. The training data can:
    most of its labels are right even where many are wrong, so a trusted label that most of the
    example's nearest training examples (cosine similarity of `features`) do not carry is
    suspect (`neighbours.neighbour_votes`; docs/LABEL_ISSUES.md, "Reviewing the trusted set",
    has the measurements). Without features (a model without a layer graph), the model's
    probabilities are the evidence instead.

    Args:
      trusted_labels: `[M]` the trusted labels in `[0, C)`.
      num_classes: `C`.
      features, labels: `[N, D]` features of the training examples and their `[N]` given
        labels: the voters.
      trusted_features: `[M, D]` the trusted examples' features.
      trusted_probabilities: `[M, C]` the model's probabilities of the trusted examples (the
        evidence where `features` is None).
      ids: optional `[M]` ids (default `0..M-1`).
      reviewed: optional `[M]` bools, True where an earlier review gave the label.
      nearest: how many of the nearest voters vote (`neighbour_votes`' `neighbours`).

    Returns:
      The `TrustedChecks`, most contradicted first (ties keep the input order).
    """
    trusted_labels = np.asarray(trusted_labels, np.int64).reshape(-1)
    m = len(trusted_labels)
    if features is not None:
        evidence = "neighbours"
        shares = neighbours.neighbour_votes(
            features, labels, trusted_features, num_classes, neighbours=nearest
        )
    elif trusted_probabilities is not None:
        evidence = "model"
        shares = np.asarray(trusted_probabilities, np.float64)
    else:
        raise ValueError("check_trusted needs features and labels, or trusted_probabilities.")
    score = label_margin(shares, trusted_labels)
    flagged = score < 0
    suggested = _suggestions(shares, trusted_labels, flagged)
    ids = _ids(ids, m, "trusted ids")
    order = np.argsort(score, kind="stable")
    top = _top_classes(shares, min(TOP_K, num_classes))
    rows = np.arange(m)
    return TrustedChecks(
        rank=np.arange(1, m + 1),
        id=ids[order],
        position=order,
        label=trusted_labels[order],
        suggested_label=suggested[order],
        score=score[order],
        flagged=flagged[order],
        label_share=shares[rows, trusted_labels][order],
        suggested_share=shares[rows, suggested][order],
        top_classes=top[order],
        top_shares=np.take_along_axis(shares, top, axis=1)[order],
        evidence=evidence,
        reviewed=_bools(reviewed, m, "trusted_reviewed")[order],
    )


def _ranked(column, order):
    """`column`'s rows in the order `order` (a copy)."""
    return column[order]


def _suggestions(probabilities, given, flagged):
    """The most probable class of each row; for a flagged row, the most probable other than its
    given label (the argmax where the margin is negative)."""
    suggested = probabilities.argmax(axis=1)
    rows = np.flatnonzero(flagged)
    others = probabilities[rows]
    others[np.arange(len(rows)), given[rows]] = -1.0
    suggested[rows] = others.argmax(axis=1)
    return suggested


def _ids(ids, n, name):
    """`ids` as an array (`0..n-1` if None), or as they are if `gdw_tf.data.ids.Ids` (not one
    `str` object per row)."""
    ids = np.arange(n) if ids is None else ids if isinstance(ids, Ids) else np.asarray(ids)
    if len(ids) != n:
        raise ValueError(f"{name} must have {n} entries, one per example; got {len(ids)}.")
    return ids


def _bools(values, n, name):
    """`values` as `[n]` bool (all False if None)."""
    if values is None:
        return np.zeros(n, bool)
    values = np.asarray(values, bool).reshape(-1)
    if values.shape != (n,):
        raise ValueError(f"{name} must have {n} entries, one per example; got {len(values)}.")
    return values


def _top_classes(probabilities, k, chunk=8192):
    """`[N, k]` int32 the `k` most probable classes of each row, most probable first (ties: the
    lower class first), sorted in chunks of rows (one `[N, C]` sort would be N·C int64s)."""
    top = np.empty((len(probabilities), k), np.int32)
    for start in range(0, len(probabilities), chunk):
        rows = probabilities[start : start + chunk]
        top[start : start + chunk] = np.argsort(-rows, axis=1, kind="stable")[:, :k]
    return top


def _check_trusted(probabilities, labels, num_classes):
    probabilities = np.asarray(probabilities, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if probabilities.ndim != 2 or probabilities.shape != (len(labels), num_classes):
        raise ValueError(
            f"trusted_probabilities must be [M, {num_classes}] with M = {len(labels)} trusted "
            f"labels; got shape {probabilities.shape}."
        )
    if not np.issubdtype(labels.dtype, np.integer) or (
        len(labels) and (labels.min() < 0 or labels.max() >= num_classes)
    ):
        raise ValueError(f"trusted_labels must be integers in [0, {num_classes}).")
    if not np.all(np.isfinite(probabilities)) or probabilities.min(initial=0) < 0:
        raise ValueError("trusted_probabilities must be finite and in [0, 1] (not logits).")
    return probabilities, labels.astype(np.int64)


def _check_features(features, trusted_features, n, m):
    if (features is None) != (trusted_features is None):
        raise ValueError("Give both features and trusted_features, or neither.")
    if features is None:
        return None, None
    # float32 features stay float32: the probes read them in float64, in chunks of rows.
    features = np.asarray(features)
    if features.dtype != np.float32:
        features = features.astype(np.float64)
    trusted_features = np.asarray(trusted_features, np.float64)
    if (
        features.ndim != 2
        or trusted_features.ndim != 2
        or features.shape[0] != n
        or trusted_features.shape[0] != m
        or features.shape[1] != trusted_features.shape[1]
    ):
        raise ValueError(
            f"features must be [{n}, D] and trusted_features [{m}, D] (one row per example, "
            f"the same D); got shapes {features.shape} and {trusted_features.shape}."
        )
    if not (np.all(np.isfinite(features)) and np.all(np.isfinite(trusted_features))):
        raise ValueError("features and trusted_features must be finite.")
    return features, trusted_features


def review_order(issues: LabelIssues) -> tuple[np.ndarray, np.ndarray]:
    """The examples of both sets in the order of review.

    1. Second looks: flagged examples whose label an earlier review gave (a reviewed label
       that the next run contradicts is shown again, never trusted silently); trusted ones
       first, each set in its ranked order.
    2. The trusted examples the evidence contradicts (`check_trusted`), most contradicted
       first: the trusted set steers every weight of the run.
    3. The training examples not reviewed yet, spread over the classes in rounds (one example
       of each suggested class per round): first the representatives
       (`gdw_tf.labels.representatives`: the examples nearest the centres of clusters of their
       class, coarse to fine), then the rest, drawn at random (a fixed seed) within each class.
       A reviewed training example joins the trusted set (`gdw_tf.data.corrections`), and what
       the trusted set needs is to represent the data, each class alike: on the benchmark, 500
       reviews of the flagged examples in score-order rounds gave the next run 0.842 to 0.858,
       of a random sample or of representatives 0.861 to 0.871 (the two kinds not told apart
       by the draws measured; docs/LABEL_ISSUES.md, "The review loop"). A review of them also
       finds wrong labels in about the proportion of the noise, and corrects them.

    The review page (`gdw_tf.pages.review`) and `label_issues.csv`'s `review_rank` follow it.

    Returns:
      `(trusted, positions)`: `[R]` bools, True for an example of the trusted set, and its
      position in `issues.trusted` (ranked order) if so, else in `issues` (ranked order).
    """
    none = np.zeros(0, np.int64)
    reviewed = issues.reviewed if issues.reviewed is not None else np.zeros(len(issues), bool)
    second_training = np.flatnonzero(issues.flagged & reviewed)
    checks = issues.trusted
    second_trusted = first_trusted = none
    if checks is not None:
        second_trusted = np.flatnonzero(checks.flagged & checks.reviewed)
        first_trusted = np.flatnonzero(checks.flagged & ~checks.reviewed)
    first = issues.representatives if issues.representatives is not None else none
    rest = np.flatnonzero(~reviewed)
    rest = rest[~np.isin(rest, first)]
    draw = np.random.default_rng(0).permutation(len(rest))
    rest = rest[draw]
    suggested = issues.suggested_label[rest]
    round_of = np.zeros(len(rest), np.int64)
    for k in np.unique(suggested):
        members = suggested == k
        round_of[members] = np.arange(int(members.sum()))
    rest = rest[np.lexsort((suggested, round_of))]
    parts = (second_trusted, second_training, first_trusted, first, rest)
    trusted = np.concatenate([np.full(len(p), t, bool) for p, t in zip(parts, (1, 0, 1, 0, 0))])
    return trusted, np.concatenate(parts).astype(np.int64)


def write_label_issues_csv(
    path: str, issues: LabelIssues, *, class_names: Sequence[str] | None = None
) -> None:
    """Writes `issues` to `path` as CSV: the training examples, most suspicious first, then the
    trusted examples (`issues.trusted`), most contradicted first.

    Columns: `CSV_COLUMNS`, then `given_class`, `suggested_class` if class names are known
    (`class_names`, else `issues.class_names`). `set` is `training` or `trusted`; `rank` is the
    rank within the row's set; a trusted row's `given_label` is its trusted label and its
    `score`, probabilities and suggestion are the evidence's (`TrustedChecks`). `flagged` is 1
    or 0; a missing weight is empty. `review_rank` is an example's place in the review page's
    order (`review_order`: second looks, the contradicted trusted examples, then a sample of
    the training set spread over the classes), empty for the examples not to review: a
    reviewer working down the file by `review_rank` and one on the page see the same examples
    in the same order. `reviewed` is 1 where an earlier review gave the
    label.
    No cell is a live formula in a spreadsheet: an id or class name that starts with `=`, `+`,
    `-`, `@`, a tab or a CR is written with a leading `'` (`gdw_tf.data.csv_cells.escape_cell`;
    numbers are left as they are); `read_label_issues_csv` removes it.
    """
    names = class_names if class_names is not None else issues.class_names
    checks = issues.trusted
    review_rank = np.zeros(len(issues), np.int64)
    trusted_review_rank = np.zeros(len(checks) if checks is not None else 0, np.int64)
    in_trusted, positions = review_order(issues)
    ranks = np.arange(1, len(positions) + 1)
    review_rank[positions[~in_trusted]] = ranks[~in_trusted]
    trusted_review_rank[positions[in_trusted]] = ranks[in_trusted]
    reviewed = issues.reviewed if issues.reviewed is not None else np.zeros(len(issues), bool)
    columns = CSV_COLUMNS + (CSV_NAME_COLUMNS if names is not None else ())
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for i in range(len(issues)):
            row = [
                int(issues.rank[i]),
                _plain(issues.id[i]),
                TRAINING,
                int(issues.given_label[i]),
                int(issues.suggested_label[i]),
                f"{issues.score[i]:.6f}",
                int(issues.flagged[i]),
                f"{issues.given_probability[i]:.6f}",
                f"{issues.suggested_probability[i]:.6f}",
                _number(issues.instance_weight[i]),
                _number(issues.labelled_class_weight[i]),
                int(review_rank[i]) if review_rank[i] else "",
                int(reviewed[i]),
            ]
            if names is not None:
                row += [names[issues.given_label[i]], names[issues.suggested_label[i]]]
            writer.writerow([csv_cells.escape_cell(cell) for cell in row])
        for i in range(len(checks) if checks is not None else 0):
            row = [
                int(checks.rank[i]),
                _plain(checks.id[i]),
                TRUSTED,
                int(checks.label[i]),
                int(checks.suggested_label[i]),
                f"{checks.score[i]:.6f}",
                int(checks.flagged[i]),
                f"{checks.label_share[i]:.6f}",
                f"{checks.suggested_share[i]:.6f}",
                "",
                "",
                int(trusted_review_rank[i]) if trusted_review_rank[i] else "",
                int(checks.reviewed[i]),
            ]
            if names is not None:
                row += [names[checks.label[i]], names[checks.suggested_label[i]]]
            writer.writerow([csv_cells.escape_cell(cell) for cell in row])


def read_label_issues_csv(path: str) -> dict[str, list[str]]:
    """Reads a `label_issues.csv` into a dict of column name → list of strings.

    The file may be as a spreadsheet saved it (`gdw_tf.data.csv_cells.read_table`: BOM, `;` or
    tab, CRLF; `'`-escaped cells are read back as they were before escaping).

    Raises:
      ValueError: (one line) for a file without an `id` column or a row with missing cells.
    """
    columns, rows = csv_cells.read_table(path, ("id",))
    return {name: [row[name] for _, row in rows] for name in columns}


def predict_probabilities(
    model: keras.Model,
    x: Any,
    batch_size: int = 256,
    *,
    rows: int | None = None,
    share: WorkerShare | None = None,
    dtype: type = np.float64,
) -> np.ndarray:
    """Softmax of `model`'s logits on `x` (arrays, or a `tf.data.Dataset` of batches of `x` or
    `(x, y)`), as a NumPy array `[N, C]` of `dtype` (computed in float64 either way). `rows`:
    N, if `x` is a dataset and N is known (the logits are then kept once, not twice, on one
    replica). `share`: a worker of a cluster, `x` its rows (`share.rows(N)`); every worker gets
    the `N` rows (`_predict`)."""
    return _softmax(_predict(model, x, batch_size, rows, share), dtype, in_place=True)


def probe_features(
    model: keras.Model,
    x: Any,
    x_trusted: Any,
    batch_size: int = 256,
    components: int = PROBE_COMPONENTS,
    *,
    rows: int | None = None,
    share: WorkerShare | None = None,
    dtype: type = np.float64,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The model's probabilities and penultimate features on `x` and on trusted `x_trusted`.

    The features are the input of the network's classifier layer (its last layer with
    weights: `backbone_split.split_top(backbone, 1)`), centred and projected on their first
    `components` principal components over the trusted examples: a few dozen inputs
    that a thousand trusted labels can fit a probe to. A model that learned wrong labels
    still tells in these features much of what an ambiguous image is (docs/LABEL_ISSUES.md,
    "The probes' inputs").

    Args:
      model: a `GDWModel` or a functional Keras model whose output is the logits.
      x, x_trusted: inputs as for `predict_probabilities`.
      batch_size: prediction batch size for array inputs.
      components: how many principal components, at most one per `TRUSTED_PER_COMPONENT`
        trusted examples (`probe_component_count`).
      rows: the number of examples of `x`, as for `predict_probabilities`.
      share: a worker of a cluster, `x` and `x_trusted` its rows, as for
        `predict_probabilities`.
      dtype: of the probabilities of `x`, as for `predict_probabilities`.

    Returns:
      `(probabilities, trusted_probabilities, features, trusted_features)`: `[N, C]`,
      `[M, C]`, `[N, K]`, `[M, K]`, float64 but for `probabilities` (`dtype`) and `features`
      (float32, as the network computes them; the probes read them in float64, in chunks of
      rows); None where the network has no layer graph to split (a subclassed model), or its
      classifier reads the inputs themselves.

    Raises:
      ValueError: with fewer than `TRUSTED_PER_COMPONENT` trusted examples.
    """
    backbone = getattr(model, "backbone", model)
    try:
        split = backbone_split.split_top(backbone, 1)
    except ValueError:
        return None
    if split is None:
        return None
    both = split.features_and_logits
    flat = both.outputs[0]
    if len(flat.shape) != 2:
        flat = keras.layers.Flatten(name="probe_flatten")(flat)
    trusted_features, trusted_logits = _predict(
        keras.Model(both.inputs, [flat, both.outputs[1]]), x_trusted, batch_size, share=share
    )
    trusted_features = np.asarray(trusted_features, np.float64)
    mean, axes = principal_axes(trusted_features, components)
    projection = keras.layers.Dense(
        len(axes), dtype="float32", trainable=False, name="probe_projection"
    )
    projected = keras.Model(both.inputs, [projection(flat), both.outputs[1]])
    projection.set_weights([axes.T, -mean @ axes.T])
    features, logits = _predict(projected, x, batch_size, rows, share)
    return (
        _softmax(logits, dtype, in_place=True),
        _softmax(trusted_logits),
        features,
        (trusted_features - mean) @ axes.T,
    )


def principal_axes(
    trusted_features: np.ndarray, components: int = PROBE_COMPONENTS
) -> tuple[np.ndarray, np.ndarray]:
    """`(mean, axes)`: the mean `[D]` of the trusted examples' `[M, D]` features and their
    first `probe_component_count(M, components)` principal axes `[K, D]`; the probes read
    `(features - mean) @ axes.T`.

    Raises:
      ValueError: with fewer than `TRUSTED_PER_COMPONENT` trusted examples.
    """
    count = probe_component_count(len(trusted_features), components)
    if count == 0:
        raise ValueError(
            f"probe_features needs at least {TRUSTED_PER_COMPONENT} trusted examples (one per "
            f"component); got {len(trusted_features)}."
        )
    mean = trusted_features.mean(axis=0)
    _, _, axes = np.linalg.svd(trusted_features - mean, full_matrices=False)
    return mean, axes[:count]


def probe_component_count(num_trusted: int, components: int = PROBE_COMPONENTS) -> int:
    """How many principal components the probes read with `num_trusted` trusted examples:
    `components`, but at most one per `TRUSTED_PER_COMPONENT` of them."""
    return max(min(components, num_trusted // TRUSTED_PER_COMPONENT), 0)


def _predict(model, x, batch_size, rows=None, share=None):
    """`model.predict` of `x` as NumPy arrays (a list for several outputs), in the model's
    dtype (float32: N rows of features in float64 would be twice the memory).

    With `rows`, the number of examples of a dataset `x`, and one replica, the outputs are
    written batch by batch into arrays of `rows` rows (`model.predict` holds them twice: its
    list of batches and their concatenation); fewer rows come back if `x` has fewer.

    With `share` (a worker of a cluster), `x` is this worker's rows: the model is called on
    them here, in this process alone (Keras' `predict` would run collective ops, which need
    as many batches on every worker), and the workers' outputs are joined in worker order.
    """
    if share is not None:
        return _predict_share(model, x, batch_size, share)
    if backend.batch_devices() > 1:  # Keras on JAX, batches split over several devices.
        import tensorflow as tf  # Here only: without that, Keras on JAX runs without TensorFlow.

        from gdw_tf.data import device_batches

        if not _is_dataset(x):
            x = tf.data.Dataset.from_tensor_slices(x).batch(batch_size)
        return device_batches.predict(model, x, backend.batch_devices())
    strategy = getattr(model, "distribute_strategy", None)
    if rows is None or not _is_dataset(x) or getattr(strategy, "num_replicas_in_sync", 1) > 1:
        out = model.predict(x, batch_size=None if _is_dataset(x) else batch_size, verbose=0)
        if isinstance(out, (list, tuple)):
            return [np.asarray(value) for value in out]
        return np.asarray(out)
    arrays, start = None, 0
    for batch in x.as_numpy_iterator():
        values = model.predict_on_batch(batch[0] if isinstance(batch, tuple) else batch)
        values = list(values) if isinstance(values, (list, tuple)) else [values]
        if arrays is None:
            arrays = [np.empty((rows, *v.shape[1:]), v.dtype) for v in values]
        if start + len(values[0]) > rows:
            raise ValueError(f"x has more than {rows} examples but y has {rows} labels.")
        for array, value in zip(arrays, values):
            array[start : start + len(value)] = value
        start += len(values[0])
    if arrays is None:
        raise ValueError("x has no examples.")
    arrays = [array[:start] for array in arrays]
    return arrays if len(arrays) > 1 else arrays[0]


def _predict_share(model, x, batch_size, share):
    """`_predict` of this worker's rows `x`, then every worker's rows (`share.concatenate`)."""
    if _is_dataset(x):
        spec = x.element_spec[0] if isinstance(x.element_spec, tuple) else x.element_spec
        empty = np.zeros((0, *spec.shape[1:]), spec.dtype.as_numpy_dtype)
        batches = (
            batch[0] if isinstance(batch, tuple) else batch for batch in x.as_numpy_iterator()
        )
    else:
        empty = x[:0]
        batches = (x[start : start + batch_size] for start in range(0, len(x), batch_size))
    strategy = getattr(model, "distribute_strategy", None)
    one_replica = getattr(strategy, "num_replicas_in_sync", 1) == 1

    def predict(batch):
        # A model of one replica (the probes' models, built outside the strategy) predicts in
        # this process; one built under the cluster's strategy is called as it is.
        values = model.predict_on_batch(batch) if one_replica else model(batch, training=False)
        values = values if isinstance(values, (list, tuple)) else [values]
        return [keras.ops.convert_to_numpy(value) for value in values]

    parts = [predict(batch) for batch in batches]
    if not parts:  # No rows here: the outputs' shapes still, for the other workers' rows.
        parts.append(predict(empty))
    joined = [share.concatenate(np.concatenate(column)) for column in zip(*parts)]
    return joined if len(joined) > 1 else joined[0]


def _softmax(logits, dtype=np.float64, in_place=False):
    """Softmax of `logits` `[N, C]`, computed in float64 in chunks of rows and stored as `dtype`
    (float32: N rows in float64 are not held at once); `in_place`: into `logits` themselves
    where they are an array of `dtype` (the probabilities then take no memory of their own)."""
    if (
        in_place
        and isinstance(logits, np.ndarray)
        and logits.dtype == dtype
        and logits.flags.writeable
    ):
        probabilities = logits
    else:
        probabilities = np.empty(np.shape(logits), dtype)
    for start in range(0, len(probabilities), _CHUNK_ROWS):
        chunk = np.array(logits[start : start + _CHUNK_ROWS], np.float64)
        chunk -= chunk.max(axis=1, keepdims=True)
        np.exp(chunk, out=chunk)
        chunk /= chunk.sum(axis=1, keepdims=True)
        probabilities[start : start + _CHUNK_ROWS] = chunk
    return probabilities


def find_label_issues(
    model: keras.Model,
    x: Any,
    y: ArrayLike,
    *,
    index: ArrayLike | None = None,
    ids: ArrayLike | None = None,
    class_names: Sequence[str] | None = None,
    batch_size: int = 256,
    trusted: tuple | None = None,
    trusted_for_flags: bool = True,
    trusted_ids: ArrayLike | None = None,
    reviewed: ArrayLike | None = None,
    trusted_reviewed: ArrayLike | None = None,
    share: WorkerShare | None = None,
) -> LabelIssues:
    """The ranked label issues of `(x, y)` under a trained `GDWModel` (or any logits model).

    Args:
      model: a trained `GDWModel` (or a Keras model whose outputs are logits).
      x: the inputs as the model takes them (e.g. normalised images): an array, or a
        `tf.data.Dataset` of batches of `x` or `(x, y)`, in the order of `y`.
      y: `[N]` given (possibly noisy) int labels.
      index: optional `[N]` positions of these examples in the training set the model tracked
        (`GDWModel(track_examples=...)`); their recorded weights are reported. Left out, the
        recorded weights are reported when `N` equals `track_examples` (x is taken to be that
        training set in index order), and none otherwise.
      ids: optional `[N]` ids for the table (default: `index`, else `0..N-1`).
      class_names: optional names of the classes.
      batch_size: prediction batch size for array inputs.
      trusted: optional `(x_trusted, y_trusted)`, examples whose labels are right (e.g. the
        meta set), `x_trusted` as the model takes it (array or dataset as `x`): the number of
        wrong labels is then estimated with them, and where the model learned many, the flags
        cut at it (`rank_label_issues`).
      trusted_for_flags: as `rank_label_issues` (False for an automatic trusted set).
      trusted_ids, reviewed, trusted_reviewed: as `rank_label_issues`.
      share: a worker of a cluster (`gdw_tf.data.worker_share`): `x` and `x_trusted` are
        then only this worker's rows of them (`share.rows`), which it alone predicts; every
        worker gets the whole ranking.

    Returns:
      A `LabelIssues` (see `rank_label_issues`).

    Raises:
      ValueError: as `rank_label_issues`, or for an `index` outside the tracked examples.
    """
    y = np.asarray(y).reshape(-1)
    instance_weights = label_weights = None
    tracked = getattr(model, "track_examples", None)
    if index is None and tracked is not None and tracked == len(y):
        index = np.arange(len(y))
    if index is not None:
        index = np.asarray(index, np.int64).reshape(-1)
        if tracked is None:
            raise ValueError(
                "index= selects recorded weights, but the model records none; "
                "build the GDWModel with track_examples=N, or leave index out."
            )
        if len(index) and (index.min() < 0 or index.max() >= tracked):
            raise ValueError(
                f"index must lie in [0, {tracked}) (track_examples); got values in "
                f"[{index.min()}, {index.max()}]."
            )
        instance_weights = keras.ops.convert_to_numpy(model.example_weights)[index]
        label_weights = keras.ops.convert_to_numpy(model.example_label_weights)[index]
        if ids is None:
            ids = index
    trusted_probabilities = trusted_labels = view = None
    handed = {"features": None, "trusted_features": None}
    if trusted is not None:
        if len(trusted) != 2:
            raise ValueError("trusted must be a pair (x_trusted, y_trusted).")
        trusted_labels = np.asarray(trusted[1]).reshape(-1)
        if probe_component_count(len(trusted_labels)):
            view = probe_features(
                model, x, trusted[0], batch_size, rows=len(y), share=share, dtype=np.float32
            )
    if view is not None:
        probabilities, trusted_probabilities = view[:2]
        handed.update(features=view[2], trusted_features=view[3])
    else:
        probabilities = predict_probabilities(
            model, x, batch_size, rows=len(y), share=share, dtype=np.float32
        )
        if trusted is not None:
            trusted_probabilities = predict_probabilities(
                model, trusted[0], batch_size, share=share
            )
    # The inputs are not read again: their pipelines (a table of every example's key) go now,
    # and their freed pages are handed back, before the ranking's probe fits set the run's peak
    # memory. The probabilities are float32 (the probes and the margins read them in float64,
    # in chunks of rows).
    x = trusted = view = None
    backend.return_freed_memory()
    if len(probabilities) != len(y):
        raise ValueError(f"x has {len(probabilities)} examples but y has {len(y)} labels.")
    handed["probabilities"], probabilities = probabilities, None
    return rank_label_issues(
        # Handed over (popped): the ranking alone holds them, and lets them go once read.
        handed.pop("probabilities"),
        y,
        instance_weights=instance_weights,
        label_weights=label_weights,
        ids=ids,
        class_names=class_names,
        trusted_probabilities=trusted_probabilities,
        trusted_labels=trusted_labels,
        trusted_for_flags=trusted_for_flags,
        features=handed.pop("features"),
        trusted_features=handed.pop("trusted_features"),
        trusted_ids=trusted_ids,
        reviewed=reviewed,
        trusted_reviewed=trusted_reviewed,
    )


def _is_dataset(x):
    return hasattr(x, "as_numpy_iterator")


def _plain(value):
    """A CSV cell for an id (NumPy scalars as plain numbers or text)."""
    return value.item() if hasattr(value, "item") else value


def _number(value):
    return "" if np.isnan(value) else f"{value:.6f}"
