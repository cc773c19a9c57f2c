"""The representatives a review shows first: k-means, coarse to fine, in rounds over classes."""

import numpy as np

from gdw_tf.labels import label_issues
from gdw_tf.labels import representatives


def _blobs(rng, centres, per_blob, spread=0.05):
    """Points around each centre; returns (points, blob of each point)."""
    centres = np.asarray(centres, np.float64)
    blob = np.repeat(np.arange(len(centres)), per_blob)
    return centres[blob] + spread * rng.standard_normal((len(blob), centres.shape[1])), blob


def test_kmeans_finds_separated_clusters_and_their_means():
    rng = np.random.default_rng(0)
    centres = [[0, 0], [5, 0], [0, 5], [5, 5]]
    points, blob = _blobs(rng, centres, 50)
    found, assignment, distances = representatives.kmeans(points, 4, np.random.default_rng(1))
    # One cluster per blob: the assignment is the blob, renamed.
    pairs = set(zip(blob.tolist(), assignment.tolist()))
    assert len(pairs) == 4 and len({b for b, _ in pairs}) == 4
    for b, cluster in pairs:
        np.testing.assert_allclose(found[cluster], points[blob == b].mean(axis=0), atol=1e-12)
    np.testing.assert_allclose(distances, ((points[:, None] - found[None]) ** 2).sum(-1), atol=1e-9)


def test_nearest_members_match_a_loop_over_the_clusters():
    rng = np.random.default_rng(4)
    distances = rng.integers(0, 5, size=(200, 6)).astype(np.float32)  # many ties
    assignment = rng.integers(0, 5, 200)  # cluster 5 is empty
    expected = [
        members[np.argmin(distances[members, cluster])] if len(members) else -1
        for cluster in range(6)
        for members in [np.flatnonzero(assignment == cluster)]
    ]
    np.testing.assert_array_equal(representatives.nearest_members(assignment, distances), expected)


def test_one_representative_per_region_each_nearest_its_centre():
    rng = np.random.default_rng(2)
    # Four regions of unequal sizes: a random sample of 4 holds all four in 1 draw of 16.
    points, blob = _blobs(rng, [[0, 0], [6, 0], [0, 6], [6, 6]], 1)
    sizes = [100, 60, 40, 30]
    points = np.concatenate([_blobs(rng, [c], n, spread=0.3)[0] for c, n in zip(points, sizes)])
    blob = np.repeat(np.arange(4), sizes)
    chosen = representatives.representatives(points, np.zeros(len(points), int), 4)
    assert sorted(blob[chosen].tolist()) == [0, 1, 2, 3]
    # The last comes from the finest clustering (a cluster per region): the member nearest
    # the mean of its region.
    members = np.flatnonzero(blob == blob[chosen[-1]])
    mean = points[members].mean(axis=0)
    assert chosen[-1] == members[np.argmin(((points[members] - mean) ** 2).sum(axis=1))]


def test_rounds_over_classes_known_regions_skipped_and_non_candidates_left_out():
    rng = np.random.default_rng(3)
    a, a_blob = _blobs(rng, [[0, 0], [8, 0], [0, 8]], 30, spread=0.3)
    b, b_blob = _blobs(rng, [[20, 20], [28, 20], [20, 28]], 30, spread=0.3)
    points = np.concatenate([a, b])
    classes = np.repeat([0, 1], len(a))
    classes[5] = -1  # not a candidate (reviewed already)
    chosen = representatives.representatives(points, classes, 3)
    assert classes[chosen].tolist() == [0, 1, 0, 1, 0, 1]
    assert 5 not in chosen
    blob = np.concatenate([a_blob, b_blob + 3])
    assert sorted(blob[chosen].tolist()) == [0, 1, 2, 3, 4, 5]
    # A region of class 0 that a reviewed example covers gets no representative of its own.
    known = a[a_blob == 1][:1]
    chosen = representatives.representatives(
        points, classes, 3, known=known, known_classes=np.array([0])
    )
    assert sorted(blob[chosen[classes[chosen] == 0]].tolist()) == [0, 2]
    # A known example of the other class covers nothing here.
    chosen = representatives.representatives(
        points, classes, 3, known=known, known_classes=np.array([1])
    )
    assert sorted(blob[chosen[classes[chosen] == 0]].tolist()) == [0, 1, 2]


def test_a_large_class_is_clustered_from_a_sample(monkeypatch):
    rng = np.random.default_rng(4)
    points, blob = _blobs(rng, [[0, 0], [9, 0]], 300, spread=0.3)
    monkeypatch.setattr(representatives, "CLUSTERED", 100)
    chosen = representatives.representatives(points, np.zeros(len(points), int), 2)
    assert sorted(blob[chosen].tolist()) == [0, 1]
    assert representatives.representatives(points[:0], np.zeros(0, int), 2).size == 0


def test_the_review_shows_the_representatives_after_the_trusted_checks():
    rng = np.random.default_rng(5)
    # Three classes, each two regions of the feature space; 10 trusted examples per class.
    n, m = 600, 30
    centres = rng.standard_normal((6, 8)) * 5
    region = rng.integers(0, 6, n)
    features = centres[region] + rng.standard_normal((n, 8))
    given = region // 2
    probabilities = np.full((n, 3), 0.05)
    probabilities[np.arange(n), given] = 0.9
    trusted_region = np.repeat(np.arange(6), 5)
    trusted_features = centres[trusted_region] + rng.standard_normal((m, 8))
    reviewed = np.zeros(n, bool)
    reviewed[:50] = True
    issues = label_issues.rank_label_issues(
        probabilities,
        given,
        trusted_probabilities=np.eye(3)[trusted_region // 2] * 0.8 + 0.2 / 3,
        trusted_labels=trusted_region // 2,
        features=features,
        trusted_features=trusted_features,
        reviewed=reviewed,
    )
    # As many per class as the trusted set has (10), none of them reviewed before, and the
    # same as the module computes on the candidates in input order.
    expected = representatives.representatives(
        features,
        np.where(reviewed, -1, given),
        10,
        known=features[reviewed],
        known_classes=given[reviewed],
    )
    np.testing.assert_array_equal(issues.position[issues.representatives], expected)
    # The 50 reviewed examples cover most of the 3 × 10 clusters already.
    count = len(issues.representatives)
    assert 0 < count < 30
    in_trusted, positions = label_issues.review_order(issues)
    first = np.flatnonzero(~in_trusted)[0]
    np.testing.assert_array_equal(positions[first : first + count], issues.representatives)
    # Then every other example not reviewed, once.
    rest = positions[first + count :]
    assert len(set(rest.tolist())) == len(rest)
    assert set(rest.tolist()) | set(issues.representatives.tolist()) == set(
        np.flatnonzero(~issues.reviewed).tolist()
    )
    # Without features (nothing to cluster), the sample is random as before.
    plain = label_issues.rank_label_issues(probabilities, given)
    assert plain.representatives is None
