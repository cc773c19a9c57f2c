"""Label issues (`gdw_tf.labels.label_issues`) and the run report (`gdw_tf.pages.report`)."""

import csv
import html.parser
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import TINY_FASHION_MNIST
from conftest import load_script
from conftest import train_main

import gdw_tf
from gdw_tf.core.model import GDWModel
from gdw_tf.data import datasets
from gdw_tf.data import input_pipeline
from gdw_tf.data import split as split_lib
from gdw_tf.labels import label_issues
from gdw_tf.labels import neighbours
from gdw_tf.labels import wrong_count
from gdw_tf.nets import backbones
from gdw_tf.pages import report
from gdw_tf.runs import run_dir as run_dir_lib


def _probabilities(rng, n, c):
    return rng.dirichlet(np.full(c, 0.5), size=n)


def _margins_by_loops(probabilities, given):
    """p(given) − the largest other probability, one example at a time."""
    margins = []
    for row, label in zip(probabilities, given):
        others = [p for k, p in enumerate(row) if k != label]
        margins.append(row[label] - max(others))
    return np.array(margins)


# --------------------------------------------------------------------------------------------
# Ranking and flags


def test_ranking_flags_and_fields_match_an_independent_computation():
    rng = np.random.default_rng(0)
    n, c = 200, 5
    probabilities = _probabilities(rng, n, c)
    given = rng.integers(0, c, n)
    instance, labelled = rng.random(n), rng.random(n)
    ids = np.array([f"img_{i:03d}.png" for i in range(n)])

    issues = label_issues.rank_label_issues(
        probabilities,
        given,
        instance_weights=instance,
        label_weights=labelled,
        ids=ids,
        class_names=list("abcde"),
    )

    margins = _margins_by_loops(probabilities, given)
    order = sorted(range(n), key=lambda i: (margins[i], i))
    np.testing.assert_array_equal(issues.position, order)
    np.testing.assert_array_equal(issues.rank, np.arange(1, n + 1))
    np.testing.assert_array_equal(issues.id, ids[order])
    np.testing.assert_allclose(issues.score, margins[order], rtol=0, atol=1e-12)
    assert np.all(np.diff(issues.score) >= 0)
    # Flagged exactly where the model's most probable class is not the given label.
    argmax = np.array([int(np.argmax(row)) for row in probabilities])
    np.testing.assert_array_equal(issues.flagged, (argmax != given)[order])
    assert issues.num_flagged == int((argmax != given).sum()) > 0
    np.testing.assert_array_equal(issues.suggested_label, argmax[order])
    np.testing.assert_array_equal(issues.given_label, given[order])
    np.testing.assert_allclose(issues.given_probability, probabilities[order, given[order]])
    np.testing.assert_allclose(issues.suggested_probability, probabilities.max(axis=1)[order])
    np.testing.assert_allclose(issues.instance_weight, instance[order])
    np.testing.assert_allclose(issues.labelled_class_weight, labelled[order])
    np.testing.assert_allclose(issues.in_input_order("score"), margins, atol=1e-12)
    assert issues.class_names == tuple("abcde") and issues.num_classes == c


@pytest.mark.parametrize("chunk_rows", [7, 8192])
def test_margins_computed_in_chunks_and_top_classes_equal_row_by_row(monkeypatch, chunk_rows):
    # The margin is computed over chunks of rows (a copy of a chunk, not of all N rows):
    # chunks of 7 of 200 rows give what one chunk gives, and what rows give one at a time;
    # so do the ranked top classes and their probabilities.
    monkeypatch.setattr(label_issues, "_CHUNK_ROWS", chunk_rows)
    rng = np.random.default_rng(3)
    n, c = 200, 7
    probabilities = _probabilities(rng, n, c)
    probabilities[:20] = np.round(probabilities[:20], 1)  # ties between classes
    given = rng.integers(0, c, n)

    issues = label_issues.rank_label_issues(probabilities, given)

    margins = _margins_by_loops(probabilities, given)
    np.testing.assert_array_equal(label_issues.label_margin(probabilities, given), margins)
    np.testing.assert_array_equal(issues.score, margins[issues.position])
    k = min(label_issues.TOP_K, c)
    top = np.array([sorted(range(c), key=lambda j: (-row[j], j))[:k] for row in probabilities])
    np.testing.assert_array_equal(issues.top_classes, top[issues.position])
    np.testing.assert_array_equal(
        issues.top_probabilities, np.take_along_axis(probabilities, top, 1)[issues.position]
    )
    # The softmax too: each row as one computed alone in float64, then stored as float32.
    logits = rng.normal(size=(n, c)).astype(np.float32) * 5
    by_rows = [
        np.exp(row - row.max()) / np.exp(row - row.max()).sum() for row in logits.astype(float)
    ]
    np.testing.assert_array_equal(label_issues._softmax(logits), by_rows)
    np.testing.assert_array_equal(label_issues._softmax(logits, np.float32), np.float32(by_rows))


def test_ties_keep_the_input_order_and_no_weights_are_nan():
    probabilities = np.array([[0.5, 0.5], [0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    issues = label_issues.rank_label_issues(probabilities, np.array([0, 0, 0, 1]))
    # Scores 0, 0.8, 0, 0.6: the two ties (0) keep their input order; a tie is not flagged.
    np.testing.assert_array_equal(issues.position, [0, 2, 3, 1])
    np.testing.assert_array_equal(issues.id, [0, 2, 3, 1])
    assert not issues.flagged.any()
    assert np.isnan(issues.instance_weight).all()


@pytest.mark.parametrize(
    "probabilities, given, message",
    [
        (np.array([[2.0, -1.0], [0.3, 0.7]]), [0, 1], "softmax outputs, not logits"),
        (np.array([[0.5, 0.5], [0.3, 0.7]]), [0, 2], r"must lie in \[0, 2\)"),
        (np.array([[0.5, 0.5], [0.3, 0.7]]), [0], "must be 2 integers"),
        (np.array([0.5, 0.5]), [0], r"must be \[N, C\]"),
    ],
)
def test_bad_input_is_refused_in_one_line(probabilities, given, message):
    with pytest.raises(ValueError, match=message):
        label_issues.rank_label_issues(probabilities, np.array(given))


@pytest.mark.parametrize(
    "features, trusted_features, message",
    [
        (np.zeros((4, 3)), None, "both features and trusted_features"),
        (np.zeros((4, 3)), np.zeros((6, 2)), r"features must be \[4, D\] and trusted_features "),
        (np.zeros((5, 3)), np.zeros((6, 3)), r"got shapes \(5, 3\) and \(6, 3\)"),
        (np.full((4, 3), np.nan), np.zeros((6, 3)), "must be finite"),
    ],
)
def test_bad_features_are_refused_in_one_line(features, trusted_features, message):
    rng = np.random.default_rng(5)
    with pytest.raises(ValueError, match=message):
        label_issues.rank_label_issues(
            _probabilities(rng, 4, 3),
            np.array([0, 1, 2, 0]),
            trusted_probabilities=_probabilities(rng, 6, 3),
            trusted_labels=np.array([0, 1, 2, 0, 1, 2]),
            features=features,
            trusted_features=trusted_features,
        )
    with pytest.raises(ValueError, match="with a trusted set"):
        label_issues.rank_label_issues(
            _probabilities(rng, 4, 3), np.array([0, 1, 2, 0]), features=np.zeros((4, 3))
        )


def test_csv_columns_order_and_values(tmp_path):
    rng = np.random.default_rng(1)
    probabilities = _probabilities(rng, 30, 3)
    given = rng.integers(0, 3, 30)
    issues = label_issues.rank_label_issues(
        probabilities, given, instance_weights=rng.random(30), ids=np.arange(100, 130)
    )
    plain, named = tmp_path / "plain.csv", tmp_path / "named.csv"
    label_issues.write_label_issues_csv(plain, issues)
    label_issues.write_label_issues_csv(named, issues, class_names=["cat", "dog", "fox"])

    with open(plain, newline="") as file:
        rows = list(csv.reader(file))
    assert (
        tuple(rows[0])
        == label_issues.CSV_COLUMNS
        == (
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
    )
    assert len(rows) == 31  # no trusted set: training rows only
    for i, row in enumerate(rows[1:]):
        assert int(row[0]) == i + 1
        assert int(row[1]) == issues.id[i]
        assert row[2] == "training"
        assert (int(row[3]), int(row[4])) == (issues.given_label[i], issues.suggested_label[i])
        assert float(row[5]) == pytest.approx(issues.score[i], abs=1e-6)
        assert row[6] == ("1" if issues.score[i] < 0 else "0")
        assert float(row[9]) == pytest.approx(issues.instance_weight[i], abs=1e-6)
        assert row[10] == ""  # no labelled-class weight given
        assert row[11] != ""  # nothing reviewed yet: every example is in the review
        assert row[12] == "0"  # nothing was reviewed before
    scores = [float(row[5]) for row in rows[1:]]
    assert scores == sorted(scores)

    table = label_issues.read_label_issues_csv(named)
    assert list(table) == list(label_issues.CSV_COLUMNS) + ["given_class", "suggested_class"]
    names = np.array(["cat", "dog", "fox"])
    assert table["given_class"] == list(names[issues.given_label])
    assert table["suggested_class"] == list(names[issues.suggested_label])


# --------------------------------------------------------------------------------------------
# find_label_issues on a trained GDWModel


def test_find_label_issues_uses_the_model_and_its_recorded_weights():
    rng = np.random.default_rng(2)
    n, c = 64, 3
    x = rng.normal(size=(n, 6)).astype("float32")
    y = rng.integers(0, c, n)
    meta = (rng.normal(size=(30, 6)).astype("float32"), np.arange(30) % c)
    model = GDWModel(
        backbones.mlp((6,), c, hidden=(8,)),
        c,
        method="gdw",
        meta_data=meta,
        meta_batch_size=10,
        track_examples=n,
    )
    model.compile(keras.optimizers.SGD(0.1))
    train = tf.data.Dataset.from_tensor_slices((x, y, np.arange(n))).batch(16)
    model.fit(train, epochs=1, verbose=0)

    issues = gdw_tf.find_label_issues(model, x, y)

    logits = keras.ops.convert_to_numpy(model.backbone(x)).astype(np.float64)
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    margins = _margins_by_loops(expected, y)
    np.testing.assert_allclose(issues.in_input_order("score"), margins, atol=1e-5)
    np.testing.assert_array_equal(issues.in_input_order("suggested_label"), expected.argmax(axis=1))
    recorded = keras.ops.convert_to_numpy(model.example_weights)
    assert np.ptp(recorded) > 0  # the weights were recorded, and differ
    np.testing.assert_allclose(issues.in_input_order("instance_weight"), recorded, rtol=1e-6)
    np.testing.assert_allclose(
        issues.in_input_order("labelled_class_weight"),
        keras.ops.convert_to_numpy(model.example_label_weights),
        rtol=1e-6,
    )

    # A subset with its training-set positions: those examples' weights, ids = positions.
    index = np.array([5, 17, 40])
    subset = gdw_tf.find_label_issues(model, x[index], y[index], index=index)
    np.testing.assert_array_equal(np.sort(subset.id), index)
    np.testing.assert_allclose(subset.in_input_order("instance_weight"), recorded[index], rtol=1e-6)
    np.testing.assert_allclose(subset.in_input_order("score"), margins[index], atol=1e-5)
    with pytest.raises(ValueError, match=r"index must lie in \[0, 64\)"):
        gdw_tf.find_label_issues(model, x[:2], y[:2], index=[0, 64])


def test_a_dataset_of_known_length_is_predicted_into_arrays_as_model_predict_gives():
    rng = np.random.default_rng(4)
    n, c = 70, 3
    x = rng.normal(size=(n, 6)).astype("float32")
    y = rng.integers(0, c, n)
    x_trusted = rng.normal(size=(60, 6)).astype("float32")
    y_trusted = np.arange(60) % c
    model = backbones.mlp((6,), c, hidden=(8,))
    batches = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)  # a last batch of 6

    # Batch by batch into arrays of n rows (rows=n) against Keras' predict on the arrays.
    streamed = label_issues.probe_features(model, batches, x_trusted, components=4, rows=n)
    whole = label_issues.probe_features(model, x, x_trusted, components=4)
    assert streamed[2].dtype == np.float32 and streamed[2].shape == (n, 4)
    for got, expected in zip(streamed, whole):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        label_issues.predict_probabilities(model, batches, rows=n),
        label_issues.predict_probabilities(model, x),
    )
    issues = gdw_tf.find_label_issues(model, batches, y, trusted=(x_trusted, y_trusted))
    expected = gdw_tf.find_label_issues(model, x, y, trusted=(x_trusted, y_trusted))
    np.testing.assert_array_equal(issues.position, expected.position)
    np.testing.assert_array_equal(issues.score, expected.score)
    assert issues.estimate.count == expected.estimate.count
    with pytest.raises(ValueError, match="x has more than 69 examples but y has 69 labels"):
        gdw_tf.find_label_issues(model, batches, y[:-1])


def test_probe_features_are_the_classifiers_input_on_the_trusted_principal_components():
    rng = np.random.default_rng(3)
    backbone = backbones.small_cnn((8, 8, 1), 3)  # the classifier reads a flattened 2x2x64
    x = rng.normal(size=(40, 8, 8, 1)).astype("float32")
    x_trusted = rng.normal(size=(60, 8, 8, 1)).astype("float32")  # room for 6 components

    probabilities, trusted_probabilities, features, trusted_features = label_issues.probe_features(
        backbone, x, x_trusted, components=5
    )

    inner = keras.Model(backbone.inputs, backbone.get_layer("logits").input)
    raw, raw_trusted = (np.asarray(inner.predict(v, verbose=0), np.float64) for v in (x, x_trusted))
    mean = raw_trusted.mean(axis=0)
    _, _, axes = np.linalg.svd(raw_trusted - mean)
    for got, raw_features in ((features, raw), (trusted_features, raw_trusted)):
        expected = (raw_features - mean) @ axes[:5].T
        signs = np.sign((got * expected).sum(axis=0))  # a component's sign is arbitrary
        np.testing.assert_allclose(got, expected * signs, atol=1e-3)
    np.testing.assert_allclose(
        probabilities, label_issues.predict_probabilities(backbone, x), atol=1e-6
    )
    np.testing.assert_allclose(
        trusted_probabilities, label_issues.predict_probabilities(backbone, x_trusted), atol=1e-6
    )
    # At most one component per TRUSTED_PER_COMPONENT (10) trusted examples.
    assert label_issues.probe_features(backbone, x, x_trusted[:35])[2].shape == (40, 3)
    assert label_issues.probe_component_count(1000) == label_issues.PROBE_COMPONENTS == 32
    assert label_issues.probe_component_count(9) == 0
    with pytest.raises(ValueError, match="at least 10 trusted examples"):
        label_issues.probe_features(backbone, x, x_trusted[:9])
    # find_label_issues then probes the probabilities alone.
    few = gdw_tf.find_label_issues(
        backbone, x, rng.integers(0, 3, 40), trusted=(x_trusted[:9], np.arange(9) % 3)
    )
    assert few.estimate.probe_inputs == wrong_count.PROBE_INPUTS[False]


class Subclassed(keras.Model):
    """A model with no layer graph: no classifier layer to read features from."""

    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def test_a_model_without_a_layer_graph_is_probed_on_its_probabilities():
    rng = np.random.default_rng(4)
    model = Subclassed()
    x, x_trusted = rng.normal(size=(60, 5)), rng.normal(size=(30, 5))
    assert label_issues.probe_features(model, x, x_trusted) is None

    issues = gdw_tf.find_label_issues(
        model, x, rng.integers(0, 3, 60), trusted=(x_trusted, np.arange(30) % 3)
    )
    assert issues.estimate.probe_inputs == wrong_count.PROBE_INPUTS[False]


def test_on_real_digits_most_changed_labels_are_flagged_and_few_others():
    """scikit-learn's 1,797 real 8x8 digits, 30% of the training labels changed at random."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32")
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    meta_positions, meta_labels = split_lib.balanced_meta_subset(
        np.arange(len(y)), y, 10, per_class=10, seed=0
    )
    rest = np.setdiff1d(np.arange(len(y)), meta_positions)
    x_train, y_train = x[rest], y[rest].copy()
    changed = rng.random(len(y_train)) < 0.3
    y_train[changed] = (y_train[changed] + rng.integers(1, 10, changed.sum())) % 10
    model = GDWModel(
        backbones.mlp((64,), 10, hidden=(64,)),
        10,
        method="gdw",
        meta_data=(x[meta_positions], meta_labels),
        meta_batch_size=50,
        track_examples=len(y_train),
    )
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9))
    train = tf.data.Dataset.from_tensor_slices((x_train, y_train, np.arange(len(y_train))))
    model.fit(train.shuffle(len(y_train), seed=0).batch(50), epochs=10, verbose=0)

    issues = gdw_tf.find_label_issues(model, x_train, y_train)

    flagged = issues.in_input_order("flagged")
    hits = int((flagged & changed).sum())
    assert hits / changed.sum() > 0.9  # recall (0.975 when written)
    assert hits / flagged.sum() > 0.85  # precision (0.93 when written)
    # The suggestion restores most changed labels.
    suggested = issues.in_input_order("suggested_label")
    assert np.mean(suggested[changed] == y[rest][changed]) > 0.85


# --------------------------------------------------------------------------------------------
# The report


class _ReportParser(html.parser.HTMLParser):
    """Collects the ids of the flagged-examples table and the inline images of a report."""

    def __init__(self):
        super().__init__()
        self.flagged_ids, self.images, self.sections = [], [], []
        self._in_id = self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "td" and attrs.get("class") == "id":
            self._in_id = True
        if tag == "img":
            self.images.append(attrs["src"])
        if tag == "h2":
            self._in_h2 = True

    def handle_endtag(self, tag):
        self._in_id = self._in_id and tag != "td"
        self._in_h2 = self._in_h2 and tag != "h2"

    def handle_data(self, text):
        if self._in_id:
            self.flagged_ids.append(text)
        if self._in_h2:
            self.sections.append(text)


def _parse(path):
    parser = _ReportParser()
    with open(path, encoding="utf-8") as file:
        parser.feed(file.read())
    return parser


def test_report_of_feature_rows_lists_every_flagged_example(tmp_path):
    rng = np.random.default_rng(4)
    probabilities = _probabilities(rng, 80, 4)
    given = rng.integers(0, 4, 80)
    features = rng.normal(size=(80, 12))
    issues = label_issues.rank_label_issues(probabilities, given, ids=np.arange(80) * 10)
    path = run_dir_lib.write_report(str(tmp_path), issues, images=features)

    parsed = _parse(path)
    assert parsed.flagged_ids == [str(i) for i in issues.id[issues.flagged]]
    assert not parsed.images  # rows, not thumbnails
    # No history or weights in this directory: those sections say so or are left out.
    assert "Accuracy per epoch" not in parsed.sections
    with open(path, encoding="utf-8") as file:
        page = file.read()
    assert "No recorded weights" in page
    assert "<a href='review.html'>review.html</a>" in page  # the run's review page, beside it
    assert "review.html" not in report.render_report(issues)  # no link without one


# --------------------------------------------------------------------------------------------
# A training run writes label_issues.csv and report.html


@pytest.mark.slow
def test_training_run_writes_label_issues_and_a_report(tmp_path):
    run_dir = str(tmp_path / "run")
    train_main(
        *TINY_FASHION_MNIST,
        "--model=mlp",
        "--epochs=2",
        "--noise=uniform",
        "--ratio=0.6",
        f"--output_dir={run_dir}",
    )

    split = split_lib.Split.load(os.path.join(run_dir, "split.npz"))
    table = label_issues.read_label_issues_csv(os.path.join(run_dir, "label_issues.csv"))
    assert list(table)[: len(label_issues.CSV_COLUMNS)] == list(label_issues.CSV_COLUMNS)
    # The trusted rows follow the training rows, their ids of the same form (the meta set's
    # indices into the dataset's training split).
    sets = np.array(table["set"])
    n = len(split.train_indices)
    assert (sets[:n] == "training").all() and (sets[n:] == "trusted").all()
    np.testing.assert_array_equal(np.sort(np.array(table["id"][n:], np.int64)), split.meta_indices)
    table = {name: values[:n] for name, values in table.items()}
    ids = np.array(table["id"], np.int64)
    # One row per training example, identified by its index in the dataset's training split.
    np.testing.assert_array_equal(np.sort(ids), split.train_indices)

    # The scores are the saved model's margins on the unaugmented training images.
    dataset = datasets.load_dataset("fashion_mnist")
    backbone = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    mean, std = input_pipeline.normalization_stats("fashion_mnist", dataset.x_train[:300])
    logits = backbone.predict(input_pipeline.normalize(dataset.x_train[ids], mean, std), verbose=0)
    logits = np.asarray(logits, np.float64)
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    given = np.array(table["given_label"], np.int64)
    position = np.searchsorted(split.train_indices, ids)
    np.testing.assert_array_equal(given, split.train_noisy_labels[position])
    # With the meta set as trusted set: score < 0 where the model rejected the wrong labels,
    # else each given label's lowest scores (margins under the truth probe's probabilities), as
    # many as results.json's estimate of its wrong labels.
    flagged = np.array(table["flagged"]) == "1"
    with open(os.path.join(run_dir, "results.json")) as file:
        wrong_labels = json.load(file)["wrong_labels"]
    estimate = wrong_labels["estimate"]
    # The probes read the model's penultimate features too (the MLP has a classifier layer).
    assert estimate["probe_inputs"] == wrong_count.PROBE_INPUTS[True]
    if estimate["flags_cut_at_estimate"]:
        _, meta_probabilities, features, meta_features = label_issues.probe_features(
            backbone,
            input_pipeline.normalize(dataset.x_train[ids], mean, std),
            input_pipeline.normalize(dataset.x_train[split.meta_indices], mean, std),
        )
        probabilities = wrong_count.truth_probabilities(
            probabilities,
            meta_probabilities,
            split.meta_labels,
            features=features,
            trusted_features=meta_features,
            l2=estimate["truth_probe_l2"],
        )
    np.testing.assert_allclose(
        np.array(table["score"], float), _margins_by_loops(probabilities, given), atol=2e-5
    )
    score = np.array(table["score"], float)
    assert estimate["flags_cut_at_estimate"] == estimate["model_learned_wrong_labels"]
    assert estimate["model_learned_wrong_labels"] == (
        estimate["rejected_share"] < wrong_count.REJECTED_SHARE
    )
    if estimate["flags_cut_at_estimate"]:
        for label, count in enumerate(estimate["per_given_label"]):
            here = given == label
            assert flagged[here].sum() == round(count)
            if flagged[here].any() and (~flagged[here]).any():
                assert score[here][flagged[here]].max() <= score[here][~flagged[here]].min()
    else:
        np.testing.assert_array_equal(flagged, score < 0)
    assert wrong_labels["flagged"] == flagged.sum() > 0
    assert wrong_labels["true"] == int(split.train_corrupted.sum())
    low, high = wrong_labels["estimate"]["interval"]
    assert low <= wrong_labels["estimate"]["count"] <= high
    with np.load(os.path.join(run_dir, "example_weights.npz")) as weights:
        by_id = dict(zip(weights["index"], weights["instance_weight"]))
    np.testing.assert_allclose(
        np.array(table["instance_weight"], float), [by_id[i] for i in ids], atol=1e-6
    )

    parsed = _parse(os.path.join(run_dir, "report.html"))
    assert parsed.flagged_ids == [str(i) for i in ids[flagged]]
    assert len(parsed.images) == min(report.GALLERY_SIZE, len(ids))
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images)
    assert {"Accuracy per epoch", "Estimated label noise", "Weight against loss"} <= set(
        parsed.sections
    )


# --------------------------------------------------------------------------------------------
# scripts/weights_under_instance_noise.py: the meta gradient's alignment with each example


@pytest.fixture(scope="module")
def weights_script():
    """scripts/weights_under_instance_noise.py as a module."""
    return load_script("weights_under_instance_noise")


def test_meta_alignment_equals_the_dot_product_of_exact_gradients(weights_script):

    keras.utils.set_random_seed(0)
    backbone = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(20, 6)).astype("float32"), rng.integers(0, 3, 20)
    x_meta, y_meta = rng.normal(size=(30, 6)).astype("float32"), rng.integers(0, 3, 30)

    alignment = weights_script.meta_alignment(backbone, x, y, x_meta, y_meta)

    def gradient(inputs, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, backbone(inputs))
            )
        return np.concatenate(
            [g.numpy().ravel() for g in tape.gradient(loss, backbone.trainable_variables)]
        )

    meta = gradient(x_meta, y_meta)
    exact = [gradient(x[i : i + 1], y[i : i + 1]) @ meta for i in range(len(y))]
    np.testing.assert_allclose(alignment, exact, rtol=0.02, atol=1e-3 * np.abs(exact).max())
    assert (np.sign(alignment) == np.sign(exact)).mean() > 0.9


def test_stage2_on_the_given_label_matches_gdws_own_stage2(weights_script):
    from gdw_tf.core import weighting

    rng = np.random.default_rng(1)
    logits = rng.normal(size=(12, 4)) * 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = rng.integers(0, 4, 12)
    onehot = np.eye(4)[y]
    logit_change = rng.normal(size=(12, 4))  # J·u
    omega0 = weighting.zero_mean_constraint(np.tile(rng.random((12, 1)), (1, 4)), p, onehot)
    g = -(0.1 / 12) * (p - onehot) * logit_change  # g = −(α/B) e ⊙ (J·u)
    omega1 = weighting.stage2_update(omega0, g, outer_lr=1e-3, clip=1.0, p=p, onehot=onehot)
    change = np.asarray(omega1 - omega0)[np.arange(12), y]

    predicted, parts = weights_script.stage2_on_given_label(p, y, logit_change)

    # The same up to one positive factor (α β / (B S), no clip or clamp active).
    factor = change / predicted
    np.testing.assert_allclose(factor, factor[0], rtol=1e-5)
    assert factor[0] > 0
    np.testing.assert_allclose(parts.sum(axis=1), predicted)
    assert (parts[np.arange(12), y] == 0).all()


# --------------------------------------------------------------------------------------------
# The trusted set, checked: its rows in label_issues.csv and first in the review


def _clusters(rng, per_class, num_classes, dims=5):
    """Examples around one centre per class, with their true classes."""
    centres = 6.0 * np.eye(num_classes, dims)
    true = np.repeat(np.arange(num_classes), per_class)
    return (centres[true] + rng.normal(size=(len(true), dims))).astype(np.float32), true


def test_trusted_labels_their_neighbours_outvote_are_flagged_and_reviewed_first(
    tmp_path, monkeypatch
):
    """Three clusters; 30% of the training labels are wrong, the trusted labels right but for
    two. The neighbours' vote (most training labels around an example are right) flags exactly
    those two, suggests their true class, and the review begins with them."""
    monkeypatch.setattr(neighbours, "NEIGHBOURS", 30)
    rng = np.random.default_rng(3)
    features, true = _clusters(rng, 60, 3)
    given = true.copy()
    wrong = rng.random(len(true)) < 0.3
    given[wrong] = (true[wrong] + 1) % 3
    trusted_features, trusted_true = _clusters(rng, 8, 3)
    trusted_labels = trusted_true.copy()
    trusted_labels[[1, 12]] = [2, 0]  # two wrong trusted labels
    probabilities = _probabilities(rng, len(given), 3)
    issues = label_issues.rank_label_issues(
        probabilities,
        given,
        trusted_probabilities=_probabilities(rng, 24, 3),
        trusted_labels=trusted_labels,
        features=features,
        trusted_features=trusted_features,
        trusted_ids=np.arange(1000, 1024),
    )
    checks = issues.trusted
    assert checks.evidence == "neighbours"
    assert set(checks.id[checks.flagged]) == {1001, 1012}
    assert list(checks.id[:2]) in ([1001, 1012], [1012, 1001])  # most contradicted first
    assert checks.suggested_label[:2].tolist() == trusted_true[checks.position[:2]].tolist()
    # The score, recomputed: the shares of the 30 nearest training examples' given labels.
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    for i in range(len(checks)):
        query = trusted_features[checks.position[i]]
        nearest = np.argsort(-(unit @ (query / np.linalg.norm(query))))[:30]
        shares = np.bincount(given[nearest], minlength=3) / 30
        label = checks.label[i]
        others = np.delete(shares, label)
        assert checks.score[i] == pytest.approx(shares[label] - others.max())

    in_trusted, positions = label_issues.review_order(issues)
    assert in_trusted[:2].all() and not in_trusted[2:].any()
    assert len(positions) == 2 + len(given)  # then every training example

    path = tmp_path / "label_issues.csv"
    label_issues.write_label_issues_csv(path, issues)
    table = label_issues.read_label_issues_csv(path)
    sets = np.array(table["set"])
    assert (sets == "training").sum() == len(given) and (sets == "trusted").sum() == 24
    trusted_rows = np.flatnonzero(sets == "trusted")
    assert [table["id"][i] for i in trusted_rows[:2]] == [str(i) for i in checks.id[:2]]
    ranked = sorted(
        (int(rank), table["set"][i], table["id"][i])
        for i, rank in enumerate(table["review_rank"])
        if rank
    )
    assert [r[1] for r in ranked[:2]] == ["trusted", "trusted"]
    assert [r[0] for r in ranked] == list(range(1, len(positions) + 1))
    assert {table["flagged"][i] for i in trusted_rows[2:]} == {"0"}


def test_without_features_the_trusted_check_reads_the_model():
    rng = np.random.default_rng(4)
    labels = np.arange(12) % 3
    trusted = np.full((12, 3), 0.1)
    trusted[np.arange(12), labels] = 0.8
    trusted[4] = [0.1, 0.1, 0.8]  # the model disagrees with this one (labelled 1)
    issues = label_issues.rank_label_issues(
        _probabilities(rng, 20, 3),
        rng.integers(0, 3, 20),
        trusted_probabilities=trusted,
        trusted_labels=labels,
    )
    assert issues.trusted.evidence == "model"
    np.testing.assert_array_equal(issues.trusted.position[issues.trusted.flagged], [4])
    np.testing.assert_allclose(
        np.sort(issues.trusted.score), np.sort(label_issues.label_margin(trusted, labels))
    )


def test_a_reviewed_label_contradicted_again_comes_back_first():
    rng = np.random.default_rng(5)
    probabilities = _probabilities(rng, 40, 3)
    given = rng.integers(0, 3, 40)
    reviewed = np.zeros(40, bool)
    reviewed[[3, 17, 25]] = True
    issues = label_issues.rank_label_issues(probabilities, given, reviewed=reviewed)
    _, positions = label_issues.review_order(issues)
    second = [p for p in positions if issues.reviewed[p]]
    flagged_reviewed = np.flatnonzero(issues.reviewed & issues.flagged)
    assert len(flagged_reviewed) >= 1  # the seed flags at least one of them
    assert positions[: len(second)].tolist() == sorted(flagged_reviewed.tolist())


def test_the_training_review_is_a_random_sample_spread_over_the_suggested_classes():
    rng = np.random.default_rng(6)
    probabilities = _probabilities(rng, 300, 4)
    given = rng.integers(0, 4, 300)
    reviewed = np.zeros(300, bool)
    reviewed[:20] = True  # positions in input order; some are flagged, some not
    issues = label_issues.rank_label_issues(probabilities, given, reviewed=reviewed)
    in_trusted, positions = label_issues.review_order(issues)
    assert not in_trusted.any()
    second = np.flatnonzero(issues.reviewed & issues.flagged)
    np.testing.assert_array_equal(positions[: len(second)], second)
    sample = positions[len(second) :]
    # Every example not reviewed, once.
    np.testing.assert_array_equal(np.sort(sample), np.flatnonzero(~issues.reviewed))
    # In rounds: each prefix of whole rounds holds as many of each suggested class.
    suggested = issues.suggested_label[sample]
    smallest = min(int((suggested == k).sum()) for k in range(4))
    for rounds in range(1, smallest + 1):
        counts = np.bincount(suggested[: 4 * rounds], minlength=4)
        assert counts.tolist() == [rounds] * 4
    # Drawn at random within a class, not in score order.
    first_of_class = [sample[suggested == k] for k in range(4)]
    assert any(np.any(np.diff(members) < 0) for members in first_of_class)
