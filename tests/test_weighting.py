"""The weighting arithmetic against direct NumPy computations."""

import numpy as np
import pytest
from keras import ops

from gdw_tf.core import weighting


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)


def _problem(seed, batch=6, classes=4, scale=3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(batch, classes))
    labels = rng.integers(0, classes, batch)
    onehot = np.eye(classes)[labels]
    return rng, logits, labels, onehot


def test_softmax_error_clips_p_for_gdw_only():
    _, logits, _, onehot = _problem(0, scale=1.0)
    logits[0] = [20.0, 0.0, 0.0, 0.0]  # p ≈ 1 on class 0
    p_exact, e_exact = (np.asarray(t) for t in weighting.softmax_error(logits, onehot))
    p_gdw, e_gdw = (np.asarray(t) for t in weighting.softmax_error(logits, onehot, weighting.P_MAX))
    np.testing.assert_allclose(p_exact, _softmax(logits), rtol=1e-12)
    np.testing.assert_allclose(e_exact, _softmax(logits) - onehot, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(p_gdw, np.minimum(_softmax(logits), 0.999), rtol=1e-12)
    assert p_gdw.max() == pytest.approx(0.999)
    np.testing.assert_allclose(e_gdw, p_gdw - onehot, atol=1e-15)


def test_per_example_cross_entropy_matches_log_softmax():
    _, logits, labels, onehot = _problem(1)
    expected = -np.log(_softmax(logits)[np.arange(len(labels)), labels])
    np.testing.assert_allclose(
        np.asarray(weighting.per_example_cross_entropy(logits, onehot)), expected, rtol=1e-10
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_zero_mean_constraint_makes_weighted_flows_sum_to_zero(seed):
    rng, logits, labels, onehot = _problem(seed, scale=8.0)  # some p clipped at 0.999
    p, e = weighting.softmax_error(logits, onehot, weighting.P_MAX)
    omega = rng.uniform(0.1, 2.0, size=logits.shape)
    constrained = np.asarray(weighting.zero_mean_constraint(omega, p, onehot))
    np.testing.assert_allclose((constrained * np.asarray(e)).sum(axis=1), 0.0, atol=1e-12)
    # Only the labelled entry changes, and it is the p-weighted mean of the others.
    others = onehot == 0
    np.testing.assert_array_equal(constrained[others], omega[others])
    p = np.asarray(p)
    rows = np.arange(len(labels))
    expected = (omega * p * others).sum(axis=1) / (1.0 - p[rows, labels])
    np.testing.assert_allclose(constrained[rows, labels], expected, rtol=1e-12)


def test_zero_mean_constraint_keeps_uniform_weights_when_p_unclipped():
    _, logits, _, onehot = _problem(3, scale=1.0)
    p, _ = weighting.softmax_error(logits, onehot, weighting.P_MAX)
    v = np.linspace(0.2, 0.9, logits.shape[0])[:, None] * np.ones_like(logits)
    np.testing.assert_allclose(
        np.asarray(weighting.zero_mean_constraint(v, p, onehot)), v, rtol=1e-12
    )


def test_stage2_update_is_a_normalised_clipped_step():
    rng, logits, labels, onehot = _problem(4)
    p, _ = weighting.softmax_error(logits, onehot, weighting.P_MAX)
    omega0 = rng.uniform(0.2, 1.0, size=logits.shape)
    g = rng.normal(scale=1e-6, size=logits.shape)
    beta, clip = 100.0, 0.2
    step = np.clip(beta * g / np.abs(g).sum(), -clip, clip)
    omega1 = np.clip(omega0 - step, 1e-6, 1e6)
    p = np.asarray(p)
    rows = np.arange(len(labels))
    omega1[rows, labels] = (omega1 * p * (1 - onehot)).sum(axis=1) / (1 - p[rows, labels])
    actual = np.asarray(
        weighting.stage2_update(omega0, g, outer_lr=beta, clip=clip, p=p, onehot=onehot)
    )
    np.testing.assert_allclose(actual, omega1, rtol=1e-12)
    assert np.abs(step).max() == pytest.approx(clip)  # the clip is active in this problem


def test_stage2_update_takes_no_step_without_signal():
    _, logits, _, onehot = _problem(5)
    p, _ = weighting.softmax_error(logits, onehot, weighting.P_MAX)
    omega0 = np.asarray(weighting.zero_mean_constraint(np.full(logits.shape, 0.5), p, onehot))
    actual = np.asarray(
        weighting.stage2_update(
            omega0, np.zeros_like(omega0), outer_lr=100.0, clip=0.2, p=p, onehot=onehot
        )
    )
    assert np.all(np.isfinite(actual))
    np.testing.assert_allclose(actual, omega0, rtol=1e-12)


@pytest.mark.parametrize(
    "scores",
    [
        np.array([0.3, -1.0, 2.0, 0.0, 1e-9]),
        np.array([-0.3, -1.0, -2.0]),
        np.zeros(4),
        np.random.default_rng(0).normal(size=100),
    ],
)
def test_l2rw_weights_are_nonnegative_and_sum_to_one_or_vanish(scores):
    w = np.asarray(weighting.l2rw_weights(ops.convert_to_tensor(scores)))
    assert np.all(w >= 0)
    positive = np.maximum(scores, 0)
    if positive.sum() > 0:
        assert w.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(w, positive / positive.sum(), rtol=1e-12)
    else:
        np.testing.assert_array_equal(w, 0.0)
