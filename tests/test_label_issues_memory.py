"""What the label-issue pass lets go before its peak (issue 29): its input pipelines once the
model has predicted, the penultimate features once the probes and the trusted set's check have
read them. The ranking is the same."""

import weakref

import keras
import numpy as np
import tensorflow as tf

from gdw_tf.labels import label_issues


def test_the_label_issue_pass_drops_its_input_pipelines_before_ranking(monkeypatch):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    x = np.random.default_rng(1).normal(size=(12, 3)).astype(np.float32)
    y = np.arange(12) % 2
    pipelines, alive = [], []

    def pipeline(rows):  # Passed straight in: the caller keeps no reference.
        dataset = tf.data.Dataset.from_tensor_slices(x[:rows]).batch(5)
        pipelines.append(weakref.ref(dataset))
        return dataset

    rank = label_issues.rank_label_issues

    def ranking(*args, **kwargs):
        alive.extend(ref() is not None for ref in pipelines)
        return rank(*args, **kwargs)

    monkeypatch.setattr(label_issues, "rank_label_issues", ranking)
    issues = label_issues.find_label_issues(model, pipeline(12), y, trusted=(pipeline(4), y[:4]))
    assert alive == [False, False] and len(issues) == 12
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(model(x)))
    np.testing.assert_allclose(
        issues.given_probability, probabilities[issues.position, y[issues.position]], rtol=1e-6
    )


def test_the_ranking_lets_the_features_go_before_it_builds_the_ranked_arrays(monkeypatch):
    model, x, y = _model_with_features_and_data(seed=2)
    features, alive = [], []
    probe = label_issues.probe_features
    top_classes = label_issues._top_classes

    def probed(*args, **kwargs):
        view = probe(*args, **kwargs)
        features.extend(weakref.ref(array) for array in view[2:])
        return view

    def ranked(*args, **kwargs):  # Called last, for the ranked arrays' top classes.
        alive.append([ref() is not None for ref in features])
        return top_classes(*args, **kwargs)

    monkeypatch.setattr(label_issues, "probe_features", probed)
    monkeypatch.setattr(label_issues, "_top_classes", ranked)
    issues = label_issues.find_label_issues(
        model, x, y, trusted=(x[:20], y[:20]), trusted_for_flags=False
    )
    assert len(features) == 2 and alive[-1] == [False, False]
    assert issues.trusted.evidence == "neighbours"  # The features were read.
    logits = keras.ops.convert_to_numpy(model(x))
    expected = label_issues.label_margin(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), y)
    np.testing.assert_allclose(np.sort(issues.score), np.sort(expected), atol=1e-6)


def test_the_ranking_lets_the_probabilities_go_before_it_ranks_the_columns(monkeypatch):
    model, x, y = _model_with_features_and_data(seed=3)
    probabilities, alive = [], []
    probe = label_issues.probe_features
    ranked = label_issues._ranked

    def probed(*args, **kwargs):
        view = probe(*args, **kwargs)
        probabilities.append(weakref.ref(view[0]))
        return view

    def ranking(*args):
        alive.append(probabilities[0]() is not None)
        return ranked(*args)

    monkeypatch.setattr(label_issues, "probe_features", probed)
    monkeypatch.setattr(label_issues, "_ranked", ranking)
    issues = label_issues.find_label_issues(
        model, x, y, trusted=(x[:20], y[:20]), trusted_for_flags=False
    )
    assert alive and not any(alive)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(model(x)))
    assert issues.given_probability.dtype == np.float32
    np.testing.assert_allclose(
        issues.given_probability, expected[issues.position, y[issues.position]], rtol=1e-6
    )
    np.testing.assert_array_equal(
        issues.top_classes, np.argsort(-expected, axis=1, kind="stable")[issues.position]
    )


def test_where_a_sample_of_the_rows_votes_the_features_of_every_row_go_first(monkeypatch):
    # With more training rows than `VOTERS`, the trusted set's check reads only the sampled
    # voters' features: the ranking copies those and lets the features of every row go before
    # the vote. The checks are those of the vote over every row's features.
    from gdw_tf.labels import neighbours

    monkeypatch.setattr(neighbours, "VOTERS", 30)
    rng = np.random.default_rng(4)
    n, m, c = 90, 12, 3
    labels = np.arange(n) % c
    features = (rng.normal(size=(n, 5)) + labels[:, None]).astype(np.float32)
    trusted_labels = np.arange(m) % c
    trusted_features = rng.normal(size=(m, 5)) + trusted_labels[:, None]
    probabilities = np.full((n, c), 0.1, np.float32)
    probabilities[np.arange(n), labels] = 0.8
    trusted_probabilities = np.full((m, c), 0.1)
    trusted_probabilities[np.arange(m), trusted_labels] = 0.8
    expected = label_issues.check_trusted(
        trusted_labels,
        num_classes=c,
        features=features,
        labels=labels,
        trusted_features=trusted_features,
    )
    alive = []
    votes = neighbours.neighbour_votes

    def voting(*args, **kwargs):
        alive.append(rows() is not None)
        return votes(*args, **kwargs)

    monkeypatch.setattr(neighbours, "neighbour_votes", voting)
    handed = {"features": features}
    rows = weakref.ref(features)
    del features
    issues = label_issues.rank_label_issues(
        probabilities,
        labels,
        trusted_probabilities=trusted_probabilities,
        trusted_labels=trusted_labels,
        features=handed.pop("features"),
        trusted_features=trusted_features,
    )
    assert alive == [False]
    for name in ("position", "suggested_label", "score", "label_share", "top_classes"):
        np.testing.assert_array_equal(getattr(issues.trusted, name), getattr(expected, name))


def _model_with_features_and_data(seed):
    """A functional model with a hidden layer (the probes' features) and 40 rows for it."""
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    x = np.random.default_rng(seed).normal(size=(40, 3)).astype(np.float32)
    return model, x, np.arange(40) % 2
