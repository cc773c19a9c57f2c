"""Representative examples: the training examples a review shows first.

A reviewed training example joins the trusted set (`gdw_tf.data.corrections`), and the trusted
set steers every weight of the next run. What makes a trusted set good is that it represents
the data, each region of each class, the ambiguous ones included; a random sample of a few
hundred does so only on average (it may take three examples of one region and none of the
next). So the review starts with the examples that stand for regions of their class:

- within each suggested class, the examples are clustered by k-means on the penultimate
  features the trusted set's probes read (`label_issues.probe_features`), and the example
  nearest each cluster's centre is chosen (a typical example of its region, where a random
  member of a cluster may be an outlier);
- coarse to fine: the clusters are made at `LEVELS` resolutions, `k = K/2, K` for `K`
  representatives per class (the trusted set's size per class: a review of them all replaces an
  automatic trusted set whole), and each level adds the examples of the clusters that hold no
  earlier choice (nor an example reviewed before, `known`); within a level, larger clusters
  first. A review of half the trusted set covers the clustering into `K/2` regions exactly.

Measured on Fashion-MNIST flip 40% (docs/LABEL_ISSUES.md, "Representatives first"): with 500
reviews (50 per class, K = 100), the first runs favoured the centres of 50 clusters per class
(0.8711 / 0.8709 on seeds 0 and 1) over four levels (K/8 .. K: 0.8686 / 0.8693), over the 50
largest of 100 clusters (0.8678 / 0.8673) and over a random sample (0.8655 / 0.8671), hence the
two levels. More draws did not tell representatives and random samples apart beyond the spread
between draws (seed 0: 0.8681 against 0.8663 on average; seed 1, three draws each: 0.8693
against 0.8667): they are not worse, cost little, and do not show a region already covered by
a reviewed example again.
"""

import numpy as np

# Resolutions of the coarse-to-fine clusterings (K/2, K).
LEVELS = 2
# At most this many examples of a class are clustered (a seeded sample of a larger class):
# the cost of a clustering does not grow with the data beyond it.
CLUSTERED = 20_000
ITERATIONS = 20  # of Lloyd's algorithm, at most (it stops when no centre moves)
# Seedings of k-means; the clustering with the least squared distance is kept (one seeding
# may put two centres in one region and none in the next).
SEEDINGS = 2


def representatives(features, classes, per_class, *, known=None, known_classes=None, seed=0):
    """The representatives of each class in review order.

    Args:
      features: `[N, D]` features of the examples.
      classes: `[N]` their classes in `[0, C)` (the suggested ones: what a review will likely
        confirm), or −1 for an example that is not a candidate.
      per_class: `K`, representatives of each class (fewer where a class has fewer examples).
      known, known_classes: optional `[R, D]` features and `[R]` classes of examples reviewed
        before: a cluster that holds one of them (nearest its centre among the class's) is
        covered already and gets no representative.
      seed: of the k-means seeding and of the sample of a large class.

    Returns:
      `[R]` int64 positions into `features`: in rounds over the classes (the first
      representative of each class in class order, then the second, ...), each class's own in
      its coarse-to-fine order.
    """
    features = np.asarray(features)
    classes = np.asarray(classes, np.int64)
    if known is None:
        known, known_classes = features[:0], classes[:0]
    known = np.asarray(known, np.float32).reshape(-1, features.shape[1])
    known_classes = np.asarray(known_classes, np.int64)
    rng = np.random.default_rng(seed)
    chosen = []
    for k in np.unique(classes[classes >= 0]):
        members = np.flatnonzero(classes == k)
        if len(members) > CLUSTERED:
            members = np.sort(rng.choice(members, CLUSTERED, replace=False))
        ordered = _coarse_to_fine(
            np.asarray(features[members], np.float32),
            per_class,
            known[known_classes == k],
            rng,
        )
        chosen.append(members[ordered])
    if not chosen:
        return np.zeros(0, np.int64)
    positions = np.concatenate(chosen)
    rounds = np.concatenate([np.arange(len(c)) for c in chosen])
    class_of = np.concatenate([np.full(len(c), i) for i, c in enumerate(chosen)])
    return positions[np.lexsort((class_of, rounds))].astype(np.int64)


def _coarse_to_fine(points, per_class, known, rng):
    """Positions into `points` of one class's representatives (the module docstring)."""
    per_class = min(per_class, len(points))
    chosen = []
    resolutions = sorted({-(-per_class // 2**level) for level in range(LEVELS)})  # ceil(K/2^l)
    for k in resolutions:
        centres, assignment, distances = kmeans(points, k, rng)
        covered = np.zeros(k, bool)
        covered[assignment[chosen]] = True
        if len(known):
            covered[np.argmin(squared_distances(known, centres), axis=1)] = True
        sizes = np.bincount(assignment, minlength=k)
        nearest = nearest_members(assignment, distances)
        for cluster in np.argsort(-sizes, kind="stable"):
            if not covered[cluster] and sizes[cluster]:
                chosen.append(int(nearest[cluster]))
    return np.array(chosen[:per_class], np.int64)


def nearest_members(assignment, distances):
    """`[k]` each cluster's member nearest its centre (the first such point where several
    are), −1 for an empty cluster; `assignment` `[N]` and `distances` `[N, k]` as `kmeans`
    returns them."""
    own = distances[np.arange(len(assignment)), assignment]
    order = np.lexsort((own, assignment))  # By cluster, the nearest (then the first) first.
    clusters = assignment[order]
    first = np.ones(len(order), bool)
    first[1:] = clusters[1:] != clusters[:-1]
    nearest = np.full(distances.shape[1], -1, np.int64)
    nearest[clusters[first]] = order[first]
    return nearest


def kmeans(points, k, rng, seedings=SEEDINGS, iterations=ITERATIONS):
    """Lloyd's k-means from `seedings` k-means++ seedings; the result with the least sum of
    squared distances.

    Args:
      points: `[N, D]` float32 (or float64: the centres and distances take their dtype), N ≥ k ≥ 1.
      k: the number of clusters.
      rng: a NumPy `Generator` (the seedings' draws).
      seedings: how many seedings.
      iterations: at most this many updates of the centres per seeding.

    Returns:
      `(centres, assignment, distances)`: `[k, D]` centres, `[N]` each point's nearest centre,
      `[N, k]` squared distances to the centres.
    """
    best, best_sum = None, np.inf
    for _ in range(seedings):
        centres, assignment, distances = _lloyd(points, k, rng, iterations)
        total = distances[np.arange(len(points)), assignment].sum()
        if total < best_sum:
            best, best_sum = (centres, assignment, distances), total
    return best


def _lloyd(points, k, rng, iterations):
    """One k-means++ seeding and Lloyd's updates from it (`kmeans`)."""
    n = len(points)
    norms = (points**2).sum(axis=1)
    centres = np.empty((k, points.shape[1]), points.dtype)
    centres[0] = points[rng.integers(n)]
    nearest = squared_distances(points, centres[:1], norms)[:, 0]
    for i in range(1, k):
        total = nearest.sum(dtype=np.float64)
        pick = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centres[i] = points[pick]
        np.minimum(nearest, squared_distances(points, centres[i : i + 1], norms)[:, 0], out=nearest)
    assignment = None
    for update in range(iterations + 1):  # The last pass only assigns.
        distances = squared_distances(points, centres, norms)
        moved = np.argmin(distances, axis=1)
        if update == iterations or (assignment is not None and np.array_equal(moved, assignment)):
            return centres, moved, distances  # (Unchanged: the centres would not move.)
        assignment = moved
        counts = np.bincount(assignment, minlength=k)
        sums = np.stack(
            [np.bincount(assignment, weights=column, minlength=k) for column in points.T], axis=1
        )
        means = (sums / np.maximum(counts, 1)[:, None]).astype(points.dtype)
        centres = np.where(counts[:, None] > 0, means, centres)


def squared_distances(points, centres, norms=None):
    """`[N, k]` squared Euclidean distances (never below 0); `norms`: the points' squared
    norms, if known."""
    norms = (points**2).sum(axis=1) if norms is None else norms
    distances = points @ centres.T
    distances *= -2
    distances += norms[:, None]
    distances += (centres**2).sum(axis=1)
    return np.maximum(distances, 0, out=distances)
