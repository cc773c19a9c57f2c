"""The labels of an example's nearest neighbours: what the data around it says its label is.

Two parts of a run read it: the automatic trusted set is chosen among the examples whose neighbours
back their given label most (`gdw_tf.runs.auto_meta`), and the end of a run checks each trusted
label against the given labels of the training examples nearest to it
(`gdw_tf.labels.label_issues.check_trusted`). Most training labels are right even where
many are wrong, and a network's features put an example near others of its true class, so a
label that its neighbours outvote is suspect, however confident a model is about it.
"""

import numpy as np

# The neighbours that vote (chosen on Fashion-MNIST flip 40%, seed 0, for the automatic trusted
# set; docs/LABEL_ISSUES.md reports other seeds and settings).
NEIGHBOURS = 200
# At most this many examples vote (a seeded sample of larger sets), so that a vote costs at most
# queries × VOTERS similarities, and the voters' features are held once.
VOTERS = 100_000
# Similarities computed at once (queries × voters), to bound the memory of the vote: 12 bytes
# each (a float32 similarity and the int64 order of the nearest), 12 MB at once. Fewer at once
# read the voters' features once per few queries: the votes of 4,000 queries among 58,000
# voters took 10.8 s at 3 MB (2^18), 5.3 s at 12 MB, 3.8 s at 48 MB (2^22; a scratch timing).
# Each query's vote is its own row's: the chunks change no vote.
_SIMILARITIES_AT_ONCE = 1 << 20


def neighbour_votes(features, labels, queries, num_classes, neighbours=None):
    """Each query's share of its nearest voters that carry each label.

    Args:
        features: `[N, ...]` features of the voters (cosine similarity of the flattened rows).
        labels: `[N]` their labels in `[0, C)`.
        queries: `[R, ...]` features of the examples whose neighbours vote (a query that is
            itself a voter is among its own neighbours: its label is part of what the data
            says).
        num_classes: `C`.
        neighbours: how many nearest voters vote (default `NEIGHBOURS`). With more than
            `VOTERS` voters, the nearest among a seeded sample of `VOTERS` of them vote, as
            many in proportion (at least `neighbours / 10`).

    Returns:
        `[R, C]` float64 shares, each row summing to 1.
    """
    labels = np.asarray(labels, np.int64)
    voters, neighbours = voter_sample(len(labels), neighbours)
    features = np.asarray(features)
    if len(voters) < len(labels):  # A sample: its rows are a copy, scaled in place.
        voter_unit = unit_rows(features[voters].reshape(len(voters), -1), in_place=True).T
    else:
        voter_unit = unit_rows(features.reshape(len(voters), -1)).T
    voter_labels = labels[voters]
    queries = np.asarray(queries).reshape(len(queries), -1)
    votes = np.zeros((len(queries), num_classes))
    step = max(1, _SIMILARITIES_AT_ONCE // max(len(voters), 1))
    for start in range(0, len(queries), step):
        distance = unit_rows(queries[start : start + step]) @ voter_unit
        np.negative(distance, out=distance)  # In place: the nearest first.
        nearest = voter_labels[np.argpartition(distance, neighbours - 1, axis=1)[:, :neighbours]]
        del distance  # Before the next chunk's.
        counts = np.apply_along_axis(np.bincount, 1, nearest, minlength=num_classes)
        votes[start : start + step] = counts / neighbours
    return votes


def voter_sample(n, neighbours=None):
    """`(rows, neighbours)`: the positions of the voters among `n` examples (all, or a seeded
    sample of `VOTERS`) and how many of the nearest vote (`neighbour_votes`); the votes of
    those rows' features with `neighbours` are the votes of all `n`."""
    neighbours = NEIGHBOURS if neighbours is None else neighbours
    voters = np.arange(n)
    if n > VOTERS:
        voters = np.sort(np.random.default_rng(0).choice(n, VOTERS, replace=False))
        neighbours = max(neighbours * VOTERS // n, neighbours // 10)
    return voters, min(neighbours, len(voters))


def unit_rows(rows, in_place=False):
    """float32 rows scaled to unit length (a zero row stays zero); `in_place`: float32 `rows`
    themselves, scaled."""
    rows = np.asarray(rows, np.float32)
    norms = np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), np.finfo(np.float32).tiny)
    if in_place:
        rows /= norms
        return rows
    return rows / norms
