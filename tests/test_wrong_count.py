"""Instance-dependent noise (`gdw_tf.data.noise`) and the number of wrong labels estimated with
the trusted set (`gdw_tf.labels.wrong_count`, and the flags of `rank_label_issues` cut at it),
on small synthetic data where the answer is known."""

import dataclasses
import json

import numpy as np
import pytest

from gdw_tf.data import noise
from gdw_tf.labels import label_issues
from gdw_tf.labels import wrong_count

# --------------------------------------------------------------------------------------------
# Instance-dependent noise


def _gaussian_classes(n_per_class, seed, num_classes=3, spread=1.0):
    """Points around `num_classes` centres on a circle, and the exact Bayes posterior."""
    rng = np.random.default_rng(seed)
    angles = 2 * np.pi * np.arange(num_classes) / num_classes
    centres = 2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    labels = np.repeat(np.arange(num_classes), n_per_class)
    x = centres[labels] + spread * rng.normal(size=(len(labels), 2))
    log_density = -0.5 * ((x[:, None, :] - centres[None]) ** 2).sum(-1) / spread**2
    posterior = np.exp(log_density - log_density.max(axis=1, keepdims=True))
    return x, labels, posterior / posterior.sum(axis=1, keepdims=True)


def test_instance_dependent_noise_rate_per_class_and_flips_to_the_likeliest_wrong_class():
    _, labels, posterior = _gaussian_classes(4000, seed=0)
    noisy, flip_probability = noise.instance_dependent_labels(labels, posterior, 0.3, seed=1)

    wrong = noisy != labels
    for k in range(3):
        # Expected rate exactly 0.3 per class; 4000 Bernoulli draws: sd 0.0072.
        assert flip_probability[labels == k].mean() == pytest.approx(0.3, abs=1e-9)
        assert abs(wrong[labels == k].mean() - 0.3) < 0.03
    others = posterior.copy()
    others[np.arange(len(labels)), labels] = -1
    np.testing.assert_array_equal(noisy[wrong], others.argmax(axis=1)[wrong])
    assert flip_probability.min() >= 0 and flip_probability.max() <= 1


def test_instance_dependent_noise_flips_the_ambiguous_examples():
    _, labels, posterior = _gaussian_classes(4000, seed=2)
    noisy, _ = noise.instance_dependent_labels(labels, posterior, 0.2, seed=3)

    wrong = noisy != labels
    p_true = posterior[np.arange(len(labels)), labels]
    ambiguous = p_true < np.quantile(p_true, 0.25)  # the quarter the Bayes rule finds hardest
    clear = p_true > np.quantile(p_true, 0.75)
    assert wrong[ambiguous].mean() > 0.5  # against 0.2 overall
    assert wrong[clear].mean() < 0.02
    assert p_true[wrong].mean() < p_true[~wrong].mean() - 0.3


def test_instance_dependent_noise_is_reproducible_and_checks_its_input():
    _, labels, posterior = _gaussian_classes(500, seed=4)
    first, _ = noise.instance_dependent_labels(labels, posterior, 0.25, seed=7)
    again, _ = noise.instance_dependent_labels(labels, posterior, 0.25, seed=7)
    other, _ = noise.instance_dependent_labels(labels, posterior, 0.25, seed=8)
    np.testing.assert_array_equal(first, again)
    assert (first != other).any()
    with pytest.raises(ValueError, match="ratio"):
        noise.instance_dependent_labels(labels, posterior, 1.0, seed=0)
    with pytest.raises(ValueError, match="probabilities must be"):
        noise.instance_dependent_labels(labels, posterior[:10], 0.2, seed=0)


def test_projection_dependent_noise_follows_xia_et_al():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6000, 8, 8), dtype=np.uint8)
    labels = rng.integers(0, 4, 6000)
    noisy, flip_rate = noise.projection_dependent_labels(
        images, labels, 0.35, num_classes=4, seed=1
    )

    # Flip rates: N(0.35, 0.1²) truncated to [0, 1]; realised wrong labels at that rate.
    assert flip_rate.min() >= 0 and flip_rate.max() <= 1
    assert flip_rate.mean() == pytest.approx(0.35, abs=0.005)
    assert flip_rate.std() == pytest.approx(0.1, abs=0.005)
    wrong = noisy != labels
    assert wrong.mean() == pytest.approx(0.35, abs=0.02)
    # The wrong label depends on the image: with one projection per class and pixels of this
    # scale, the softmax is nearly one-hot, so the same image always goes the same way.
    again, _ = noise.projection_dependent_labels(
        np.concatenate([images[:1]] * 2000), np.full(2000, labels[0]), 0.35, num_classes=4, seed=1
    )
    targets = again[again != labels[0]]
    assert np.bincount(targets, minlength=4).max() > 0.95 * len(targets)
    # Seeded; integer and [0, 1] float images give the same labels.
    same, _ = noise.projection_dependent_labels(images / 255.0, labels, 0.35, num_classes=4, seed=1)
    np.testing.assert_array_equal(same, noisy)
    other, _ = noise.projection_dependent_labels(images, labels, 0.35, num_classes=4, seed=2)
    assert (other != noisy).any()
    with pytest.raises(ValueError, match="ratio"):
        noise.projection_dependent_labels(images, labels, 1.0, num_classes=4, seed=1)


def test_softmax_regression_learns_separable_classes():
    x, labels, posterior = _gaussian_classes(500, seed=5, spread=0.5)
    probabilities = noise.softmax_regression_probabilities(x, labels, 3, seed=0, epochs=5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    # The Bayes rule's accuracy here is about 0.99; a linear model can match it.
    bayes = (posterior.argmax(axis=1) == labels).mean()
    assert (probabilities.argmax(axis=1) == labels).mean() > bayes - 0.02


# --------------------------------------------------------------------------------------------
# The number of wrong labels


def _noisy_model(n, num_classes, transition, seed, sharpness=4.0, accuracy=1.0, spread=0.2):
    """Model probabilities and given labels of class-conditional noise with a known `transition`.

    The "model" believes the true class with probability `accuracy` (else a random other one)
    and outputs a noisy distribution peaked at that belief; given labels are drawn from
    `transition[true]`, independently of the model. With `accuracy=1` the belief is the true
    class: GLC's premise (a model of the given labels whose input tells the classes apart);
    a small `spread` keeps P(given | log-probabilities) nearly linear, as the probe assumes.
    """
    rng = np.random.default_rng(seed)
    true = rng.integers(0, num_classes, n)
    belief = np.where(
        rng.random(n) < accuracy, true, (true + rng.integers(1, num_classes, n)) % num_classes
    )
    logits = sharpness * np.eye(num_classes)[belief] + spread * rng.normal(size=(n, num_classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    cumulative = np.cumsum(transition, axis=1)
    given = (rng.random(n)[:, None] > cumulative[true]).sum(axis=1)
    return probabilities, np.minimum(given, num_classes - 1), true


def test_estimate_recovers_the_number_of_wrong_labels_of_known_noise():
    transition = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.4, 0.6]])
    probabilities, given, true = _noisy_model(20000, 3, transition, seed=0)
    trusted_probabilities, _, trusted_true = _noisy_model(3000, 3, transition, seed=1)

    result = wrong_count.estimate_wrong_labels(
        probabilities, given, trusted_probabilities, trusted_true, bootstrap=100
    )

    wrong = given != true
    assert result.count == pytest.approx(wrong.sum(), rel=0.05)
    low, high = result.interval
    assert low < wrong.sum() < high and high - low < 0.1 * wrong.sum()
    true_per_label = np.bincount(given[wrong], minlength=3)
    np.testing.assert_allclose(result.per_given_label, true_per_label, rtol=0.12)
    # C[true, given] recovers the transition matrix the labels were drawn from.
    np.testing.assert_allclose(result.transition_matrix, transition, atol=0.05)
    assert result.count == pytest.approx(sum(result.per_given_label))


def test_a_large_training_set_fits_the_label_probe_on_a_seeded_sample(monkeypatch):
    transition = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.4, 0.6]])
    probabilities, given, true = _noisy_model(20000, 3, transition, seed=0)
    trusted_probabilities, _, trusted_true = _noisy_model(3000, 3, transition, seed=1)
    full = wrong_count.estimate_wrong_labels(
        probabilities, given, trusted_probabilities, trusted_true, bootstrap=0
    )
    monkeypatch.setattr(wrong_count, "LABEL_PROBE_EXAMPLES", 4000)

    sampled = [
        wrong_count.estimate_wrong_labels(
            probabilities, given, trusted_probabilities, trusted_true, bootstrap=0, seed=seed
        ).count
        for seed in (0, 0, 1)
    ]

    assert sampled[0] == sampled[1] != sampled[2]  # seeded: the same sample for the same seed
    # A fifth of the examples fit the label probe almost as well: the count is the same within
    # 2% (and within 5% of the truth, as with all of them).
    assert sampled[0] == pytest.approx(full.count, rel=0.02)
    assert sampled[2] == pytest.approx((given != true).sum(), rel=0.05)


def test_estimate_is_near_zero_on_clean_labels_and_refuses_a_missing_class():
    transition = np.eye(3)
    probabilities, given, true = _noisy_model(5000, 3, transition, seed=2)
    trusted_probabilities, _, trusted_true = _noisy_model(600, 3, transition, seed=3)
    result = wrong_count.estimate_wrong_labels(
        probabilities, given, trusted_probabilities, trusted_true, bootstrap=0
    )
    assert result.count < 0.01 * len(given)
    assert result.interval is None
    with pytest.raises(ValueError, match="no example of class"):
        wrong_count.estimate_wrong_labels(
            probabilities,
            given,
            trusted_probabilities[trusted_true < 2],
            trusted_true[trusted_true < 2],
        )


def test_estimate_divides_out_the_confusions_of_a_model_that_rejected_the_wrong_labels():
    """The model believes the true class (it rejected the wrong labels) but confuses the true
    classes of 10% of the examples: GLC alone reads those confusions on the trusted set as
    noise (1.2-1.6x the truth here); the second probe measures them and they are divided out."""
    transition = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.4, 0.6]])
    probabilities, given, true = _noisy_model(20000, 3, transition, seed=0, accuracy=0.9)
    trusted_probabilities, _, trusted_true = _noisy_model(3000, 3, transition, 1, accuracy=0.9)
    result = wrong_count.estimate_wrong_labels(
        probabilities, given, trusted_probabilities, trusted_true, bootstrap=0
    )
    wrong = int((given != true).sum())
    assert not result.model_learned_wrong_labels
    assert result.rejected_share >= wrong_count.REJECTED_SHARE
    assert result.count == pytest.approx(wrong, rel=0.05)
    np.testing.assert_allclose(result.transition_matrix, transition, atol=0.05)


def _learned_instance_noise(n, seed, memorised=0.0, mean_rate=0.3):
    """Instance-dependent noise that the model has learned: example `i` of true class `y` has
    an ambiguity `a ~ U(0, 1)` and is labelled `(y + 1) mod 3` with probability `f = 2 r a`
    (mean `r`). The model outputs that label distribution, P(given | x), mixed with a share
    `memorised` of the one-hot given label (on its training set, which it memorised)."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 3, n)
    flip = 2 * mean_rate * rng.random(n)
    other = (true + 1) % 3
    probabilities = np.full((n, 3), 1e-3)
    probabilities[np.arange(n), true] += 1 - flip
    probabilities[np.arange(n), other] += flip
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    given = np.where(rng.random(n) < flip, other, true)
    probabilities = (1 - memorised) * probabilities + memorised * np.eye(3)[given]
    return probabilities, given, true


def test_estimate_where_the_model_learned_the_wrong_labels_counts_them_and_cuts_there():
    """A model that learned the annotators' mistakes prefers the given label on most wrong ones:
    score < 0 finds a fraction of them; the trusted set counts them, and the flags are cut
    there."""
    probabilities, given, true = _learned_instance_noise(20000, seed=0, memorised=0.3)
    trusted_probabilities, _, trusted_true = _learned_instance_noise(3000, seed=1)

    result = wrong_count.estimate_wrong_labels(
        probabilities, given, trusted_probabilities, trusted_true, bootstrap=50
    )
    issues = label_issues.rank_label_issues(
        probabilities,
        given,
        trusted_probabilities=trusted_probabilities,
        trusted_labels=trusted_true,
    )

    wrong = given != true
    rejected = int((probabilities.argmax(axis=1) != given).sum())
    assert rejected < 0.3 * wrong.sum()
    assert result.rejected_share == pytest.approx(rejected / result.count)
    assert result.model_learned_wrong_labels
    assert result.count == pytest.approx(wrong.sum(), rel=0.1)
    assert issues.estimate.flags_cut_at_estimate
    assert issues.num_flagged == pytest.approx(result.count, abs=3)
    hits = int((issues.flagged & wrong[issues.position]).sum())
    assert hits > 2 * rejected  # the cut finds more than twice what score < 0 flags at all
    # The scores are margins under the truth probe's probabilities, and a flagged label's
    # suggestion is the likeliest other class: here the true one (the model learned the flip).
    truth = wrong_count.truth_probabilities(probabilities, trusted_probabilities, trusted_true)
    np.testing.assert_allclose(
        issues.in_input_order("score"), label_issues.label_margin(truth, given), atol=1e-12
    )
    flagged_wrong = issues.flagged & wrong[issues.position]
    right_suggestion = issues.suggested_label == true[issues.position]
    assert right_suggestion[flagged_wrong].mean() > 0.95
    assert (probabilities.argmax(axis=1) == true)[wrong].mean() < 0.5

    # An automatic trusted set: the estimate is reported, the model's own scores and flags kept.
    auto = label_issues.rank_label_issues(
        probabilities,
        given,
        trusted_probabilities=trusted_probabilities,
        trusted_labels=trusted_true,
        trusted_for_flags=False,
    )
    assert not auto.estimate.flags_cut_at_estimate
    assert auto.estimate.count == pytest.approx(result.count)
    np.testing.assert_array_equal(auto.flagged, auto.score < 0)
    np.testing.assert_allclose(
        auto.in_input_order("score"), label_issues.label_margin(probabilities, given)
    )


def test_estimate_undercounts_what_the_model_memorised():
    """The documented bias: the label probe learns from memorised, over-confident outputs on the
    training set, and the more the model memorised, the fewer wrong labels it reads."""
    trusted_probabilities, _, trusted_true = _learned_instance_noise(3000, seed=1)
    errors = []
    for memorised in (0.3, 0.7):
        probabilities, given, true = _learned_instance_noise(20000, seed=0, memorised=memorised)
        result = wrong_count.estimate_wrong_labels(
            probabilities, given, trusted_probabilities, trusted_true, bootstrap=0
        )
        errors.append(result.count / (given != true).sum() - 1)
    assert errors[1] < errors[0] - 0.05 and errors[1] < -0.1


def _half_seen_classes(n_per_class, seed):
    """Gaussian classes with instance-dependent noise (`noise.instance_dependent_labels`), and
    a model whose features are the points and whose probabilities read only their first
    coordinate: the Bayes posterior given it, which cannot tell classes 1 and 2 apart (their
    centres share it). A classifier head keeps of its features what predicts the labels it
    was trained on; the features can hold more."""
    x, true, posterior = _gaussian_classes(n_per_class, seed)
    given, _ = noise.instance_dependent_labels(true, posterior, 0.3, seed=seed)
    angles = 2 * np.pi * np.arange(3) / 3
    log_density = -0.5 * (x[:, :1] - 2.0 * np.cos(angles)[None]) ** 2
    first_only = np.exp(log_density - log_density.max(axis=1, keepdims=True))
    return x, first_only / first_only.sum(axis=1, keepdims=True), given, true, posterior


def test_the_truth_probe_reads_in_the_features_what_the_probabilities_lost():
    from gdw_tf.runs.results import auroc

    x, probabilities, given, true, posterior = _half_seen_classes(3000, 0)
    x_trusted, trusted_probabilities, _, trusted_true, _ = _half_seen_classes(300, 1)
    wrong = given != true
    view = {"features": x, "trusted_features": x_trusted}

    estimate = wrong_count.estimate_wrong_labels(
        probabilities, given, trusted_probabilities, trusted_true, bootstrap=0, **view
    )
    assert estimate.probe_inputs == wrong_count.PROBE_INPUTS[True]
    without = wrong_count.truth_probabilities(probabilities, trusted_probabilities, trusted_true)
    with_features = wrong_count.truth_probabilities(
        probabilities,
        trusted_probabilities,
        trusted_true,
        l2=estimate.truth_probe_l2,
        **view,
    )

    def ranking(truth):  # AUROC of the margin under `truth` for "the label is wrong"
        return auroc(-label_issues.label_margin(truth, given), wrong)

    # With the features the truth probe ranks as the Bayes posterior of the points does.
    assert ranking(with_features) > ranking(posterior) - 0.01
    assert ranking(with_features) > ranking(without) + 0.1
    # And it names the class the posterior names on nearly every point.
    agreement = (with_features.argmax(axis=1) == posterior.argmax(axis=1)).mean()
    assert agreement > 0.97
    with pytest.raises(ValueError, match="both features and trusted_features"):
        wrong_count.estimate_wrong_labels(
            probabilities, given, trusted_probabilities, trusted_true, features=x
        )


def test_the_truth_probe_is_regularised_as_the_trusted_set_needs():
    """Few trusted examples and many uninformative features: a strong L2 fits best out of fold;
    many examples and informative features: a weak one."""
    rng = np.random.default_rng(9)
    chosen = []
    for per_class, noise_columns in ((8, 40), (1000, 0)):
        x, probabilities, given, _, _ = _half_seen_classes(1000, 2)
        x_trusted, trusted_probabilities, _, trusted_true, _ = _half_seen_classes(per_class, 3)
        result = wrong_count.estimate_wrong_labels(
            probabilities,
            given,
            trusted_probabilities,
            trusted_true,
            features=np.concatenate([x, rng.normal(size=(len(x), noise_columns))], axis=1),
            trusted_features=np.concatenate(
                [x_trusted, rng.normal(size=(len(x_trusted), noise_columns))], axis=1
            ),
            bootstrap=0,
        )
        assert result.truth_probe_l2 in wrong_count.TRUTH_PROBE_L2
        chosen.append(result.truth_probe_l2)
    assert chosen[0] >= 1e-2 and chosen[1] <= 1e-3


def test_estimate_with_one_trusted_example_per_class_is_finite():
    transition = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.4, 0.6]])
    probabilities, given, _ = _noisy_model(3000, 3, transition, seed=7)
    trusted_probabilities, _, trusted_true = _noisy_model(60, 3, transition, seed=8)
    one_each = [int(np.flatnonzero(trusted_true == k)[0]) for k in range(3)]

    result = wrong_count.estimate_wrong_labels(
        probabilities, given, trusted_probabilities[one_each], trusted_true[one_each]
    )

    assert np.isfinite(result.count) and 0 <= result.count <= len(given)
    assert np.all(np.isfinite(result.interval))
    # What it rests on says that one example a class makes a noisy estimate; 100 do not.
    assert result.smallest_trusted_class == 1
    assert "only 1 in its smallest class" in result.rests_on()
    trusted_probabilities, _, trusted_true = _noisy_model(300, 3, transition, seed=8)
    enough = wrong_count.estimate_wrong_labels(
        probabilities, given, trusted_probabilities, trusted_true, bootstrap=0
    )
    assert enough.smallest_trusted_class >= wrong_count.FEW_TRUSTED_PER_CLASS
    assert "smallest class" not in enough.rests_on()


def test_label_probe_reaches_the_optimum():
    transition = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.4, 0.6]])
    probabilities, given, _ = _noisy_model(3000, 3, transition, seed=4)
    weights, mean, std = wrong_count.fit_label_probe(np.log(probabilities), given, l2=1e-3)
    x = np.concatenate([(np.log(probabilities) - mean) / std, np.ones((len(given), 1))], axis=1)
    logits = x @ weights
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    gradient = x.T @ (p - np.eye(3)[given]) / len(given) + 1e-3 * weights
    assert np.abs(gradient).max() < 1e-8


def test_label_probe_fitted_in_chunks_of_rows_equals_the_fit_on_all_rows_at_once(monkeypatch):
    transition = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.4, 0.6]])
    probabilities, given, _ = _noisy_model(3000, 3, transition, seed=5)
    inputs = np.log(probabilities)
    chunked = wrong_count.fit_label_probe(inputs, given, l2=1e-3)  # 1,024 rows a chunk
    monkeypatch.setattr(wrong_count, "_FIT_ROWS", 7)
    small = wrong_count.fit_label_probe(inputs, given, l2=1e-3)
    monkeypatch.setattr(wrong_count, "_FIT_ROWS", 3000)
    whole = wrong_count.fit_label_probe(inputs, given, l2=1e-3)
    for a, b, c in zip(chunked, small, whole):  # Sums in another order: the last bits differ.
        np.testing.assert_allclose(a, c, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(b, c, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("with_features", [False, True])
def test_label_probe_of_sampled_rows_equals_the_probe_of_their_copies(with_features):
    # The estimate fits the label probe on its sample's rows, its design matrix made chunk by
    # chunk where the fit reads it (not held): the probe of `fit_label_probe` on copies of
    # those rows' inputs. Its means and sums run in another order: the standardisation differs
    # in the last bits, and the weights along the loss' flat directions (it is the same to 16
    # digits at both) by about 1e-7; the probabilities the probes give, by far less.
    transition = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.4, 0.6]])
    probabilities, given, _ = _noisy_model(20000, 3, transition, seed=4)
    features = None
    if with_features:
        features = np.random.default_rng(5).normal(size=(len(given), 6)).astype(np.float32)
    rows = np.random.default_rng(6).choice(len(given), 12000, replace=False)

    lean = wrong_count._fit_label_probe_of_rows(probabilities, features, given, rows, 3)
    copied = wrong_count.fit_label_probe(
        wrong_count._probe_inputs(
            probabilities[rows], None if features is None else features[rows]
        ),
        given[rows],
        num_classes=3,
    )

    assert len(lean) == len(copied) == 3
    for a, b in zip(lean[1:], copied[1:]):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(lean[0], copied[0], rtol=1e-5)
    inputs = wrong_count._probe_inputs(probabilities, features)
    np.testing.assert_allclose(
        wrong_count._predict(lean, inputs), wrong_count._predict(copied, inputs), atol=1e-9
    )


# The keys of results.json's `wrong_labels.estimate`, in their order (docs/LABEL_ISSUES.md).
RESULTS_JSON_KEYS = [
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
    "rests_on",
]


def test_the_estimate_is_frozen_and_its_json_is_results_jsons_entry():
    probabilities, given, _ = _learned_instance_noise(4000, seed=2, memorised=0.3)
    trusted_probabilities, _, trusted_true = _learned_instance_noise(300, seed=3)
    issues = label_issues.rank_label_issues(
        probabilities,
        given,
        trusted_probabilities=trusted_probabilities,
        trusted_labels=trusted_true,
    )
    estimate = dataclasses.replace(issues.estimate, trusted_source="auto")

    with pytest.raises(dataclasses.FrozenInstanceError):
        estimate.count = 0.0
    out = estimate.to_json()
    assert list(out) == RESULTS_JSON_KEYS
    assert json.loads(json.dumps(out)) == out  # JSON's own types: lists, not tuples
    assert out["count"] == pytest.approx(sum(out["per_given_label"]))
    assert out["rate"] == pytest.approx(out["count"] / len(given))
    low, high = out["interval"]
    assert low <= out["count"] <= high
    assert np.shape(out["per_given_label_interval"]) == (3, 2)
    np.testing.assert_allclose(np.sum(out["transition_matrix"], axis=1), 1.0)
    assert set(out["count_if"]) == {"rejected", "learned"}
    assert out["count_if"]["learned"] == pytest.approx(out["count"])  # the model learned them
    assert out["model_learned_wrong_labels"] and out["flags_cut_at_estimate"]
    assert out["num_trusted"] == 300 and out["smallest_trusted_class"] == min(
        np.bincount(trusted_true)
    )
    assert out["probe_inputs"] == wrong_count.PROBE_INPUTS[False]
    assert out["truth_probe_l2"] in wrong_count.TRUTH_PROBE_L2
    assert out["method"] == wrong_count.METHOD and out["trusted_source"] == "auto"
    assert out["rests_on"].startswith("an automatic trusted set of 300 examples")
    assert "true_class_sizes" not in out
    # The ranking's own estimate is a new object; the one it was made from is unchanged.
    assert issues.estimate.trusted_source is None
    assert "learned many of the wrong labels" in issues.estimate.rests_on()


def test_cut_at_estimate_flags_the_lowest_scores_of_each_label():
    rng = np.random.default_rng(0)
    score = rng.random(50)
    given = rng.integers(0, 3, 50)
    flagged = wrong_count.cut_at_estimate(score, given, [2.4, 0.0, 5.6])
    for label, k in ((0, 2), (1, 0), (2, 6)):
        rows = np.flatnonzero(given == label)
        expected = set(rows[np.argsort(score[rows])[:k]].tolist())
        assert set(np.flatnonzero(flagged & (given == label)).tolist()) == expected


def test_rank_label_issues_keeps_score_below_zero_for_class_conditional_noise():
    transition = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.0, 0.4, 0.6]])
    probabilities, given, true = _noisy_model(6000, 3, transition, seed=5)
    trusted_probabilities, _, trusted_true = _noisy_model(900, 3, transition, seed=6)

    without = label_issues.rank_label_issues(probabilities, given)
    issues = label_issues.rank_label_issues(
        probabilities,
        given,
        trusted_probabilities=trusted_probabilities,
        trusted_labels=trusted_true,
    )

    assert without.estimate is None
    # The model resists the noise here (its belief is the true class): it rejects the wrong
    # labels, score < 0 stays the rule, and the estimate agrees with it and with the truth.
    assert not issues.estimate.model_learned_wrong_labels
    assert not issues.estimate.flags_cut_at_estimate
    np.testing.assert_array_equal(issues.flagged, issues.score < 0)
    wrong = int((given != true).sum())
    assert abs(issues.num_flagged - wrong) < 0.05 * wrong
    assert abs(issues.estimate.count - wrong) < 0.05 * wrong
    np.testing.assert_array_equal(issues.score, without.score)
    with pytest.raises(ValueError, match="or neither"):
        label_issues.rank_label_issues(probabilities, given, trusted_labels=trusted_true)


# --------------------------------------------------------------------------------------------
# The benchmark's instance-dependent setting (scripts/label_issues_benchmark.py)


@pytest.mark.slow
def test_benchmark_writes_instance_dependent_fashion_mnist_and_trains_on_it_as_a_user(tmp_path):
    from absl import flags
    from absl.testing import flagsaver
    from conftest import load_script

    benchmark = load_script("label_issues_benchmark")
    data_dir = tmp_path / "instance_20" / "data"

    benchmark.write_instance_noise_data("instance_20", str(data_dir))

    with np.load(data_dir / "truth.npz") as truth:
        true, given = truth["true_label"], truth["given_label"]
        train_rows, trusted_rows = truth["train_rows"], truth["trusted_rows"]
        flip_probability = truth["flip_probability"]
    with np.load(data_dir / "train.npz") as train, np.load(data_dir / "trusted.npz") as trusted:
        np.testing.assert_array_equal(train["y"], given)
        assert train["x"].shape == (59000, 28, 28) and train["x"].dtype == np.uint8
        np.testing.assert_array_equal(np.bincount(trusted["y"]), np.full(10, 100))
    assert not set(train_rows.tolist()) & set(trusted_rows.tolist())
    for k in range(10):  # 20% of each class, up to sampling (sd 0.5%)
        assert abs((given != true)[true == k].mean() - 0.2) < 0.02
    # Most flips are of examples the classifier found ambiguous (flip probability >= 0.5).
    assert (flip_probability[given != true] >= 0.5).mean() > 0.5
    assert (flip_probability[given == true] >= 0.5).mean() < 0.05

    # The GDW run's flags: the flag file's recipe, on these files, its protocol lines dropped.
    # (This process may hold gdw_tf.train's flags too, whose --output_dir is required.)
    with flagsaver.flagsaver():
        flags.FLAGS.unparse_flags()
        required = ["--output_dir=unused"] if "output_dir" in flags.FLAGS else []
        flags.FLAGS(["benchmark", *required])
        run_flags = benchmark.train_flags("instance_20", str(tmp_path / "instance_20" / "gdw"), 1)
    assert f"--train_data={data_dir}/train.npz" in run_flags
    assert f"--trusted_data={data_dir}/trusted.npz" in run_flags
    assert "--lr=0.02" in run_flags and "--model=mlp" in run_flags and "--seed=1" in run_flags
    assert not [f for f in run_flags if f.split("=")[0] in ("--dataset", "--noise", "--num_meta")]


def test_the_report_describes_the_score_and_suggestion_as_computed():
    """Where the flags are cut at the estimate, the score is the truth probe's margin and a
    flagged example is never suggested its given label; the report says so, and quotes no
    benchmark figure of its own."""
    from gdw_tf.pages import report

    probabilities, given, _ = _learned_instance_noise(4000, seed=2, memorised=0.3)
    trusted_probabilities, _, trusted_true = _learned_instance_noise(300, seed=3)
    issues = label_issues.rank_label_issues(
        probabilities,
        given,
        trusted_probabilities=trusted_probabilities,
        trusted_labels=trusted_true,
    )
    assert issues.estimate.flags_cut_at_estimate
    truth = wrong_count.truth_probabilities(
        probabilities,
        trusted_probabilities,
        trusted_true,
        l2=issues.estimate.truth_probe_l2,
    )
    np.testing.assert_allclose(
        issues.score, label_issues.label_margin(truth, given)[issues.position], atol=1e-6
    )
    flagged = issues.flagged
    assert flagged.any() and (issues.suggested_label[flagged] != issues.given_label[flagged]).all()

    page = report.render_report(issues)
    assert "a probe fitted on the trusted set" in page
    assert "under that probe" in page and "under the trained model" not in page
    assert "likeliest class other than the given one" in page
    assert "may keep its given label" not in page
    automatic = dataclasses.replace(
        issues, estimate=dataclasses.replace(issues.estimate, trusted_source="auto")
    )
    assert "20,619" not in report.render_report(automatic)
    assert "docs/LABEL_ISSUES.md" in automatic.estimate.rests_on()
