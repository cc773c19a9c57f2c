"""The weighting arithmetic of GDW and its baselines, written once with `keras.ops`.

Everything here is plain tensor arithmetic on logits, labels and weights: no automatic
differentiation and no model. The backend-specific part of a step (VJPs, JVPs) lives in
`gdw_tf.backend`; the step itself, which strings the two together, in `gdw_tf.core.step`.

Notation follows `docs/ALGORITHM.md`: `B` examples, `C` classes, `p = softmax(z)`,
`e = p − onehot(ỹ)` (the gradient of the cross-entropy with respect to the logits), class-level
weights `ω ∈ R^{B×C}`.
"""

from keras import ops

# GDW clips p at this value wherever it enters e or the zero-mean constraint, so 1 − p_y > 0.
P_MAX = 0.999
# The clamp applied to the class-level weights after the stage-2 step.
OMEGA_MIN = 1e-6
OMEGA_MAX = 1e6


def softmax_error(logits, onehot, p_max=None):
    """The (optionally clipped) softmax `p` and the logit gradient `e = p − onehot` of the CE.

    Args:
      logits: `[B, C]` logits.
      onehot: `[B, C]` one-hot labels, in the logits' dtype.
      p_max: if given, `p` is clipped to at most this value (GDW uses `P_MAX`); the baselines
        use the exact softmax (`None`).

    Returns:
      `(p, e)`, both `[B, C]`, treated as constants by the caller (no gradient flows through them).
    """
    p = ops.softmax(logits, axis=-1)
    if p_max is not None:
        p = ops.minimum(p, ops.convert_to_tensor(p_max, dtype=p.dtype))
    return p, p - onehot


def per_example_cross_entropy(logits, onehot):
    """`ℓ_i = −log softmax(z_i)[ỹ_i]`, computed stably from the logits; `[B]`."""
    return -ops.sum(onehot * ops.log_softmax(logits, axis=-1), axis=-1)


def zero_mean_constraint(omega, p, onehot):
    """Sets the labelled-class weight so that each example's weighted flows sum to zero.

    `ω_{i,ỹ} = Σ_{j≠ỹ} ω_ij p_ij / (1 − p_{i,ỹ})`, which makes `Σ_j ω_ij e_ij = 0` for every `i`,
    the property that the unweighted cross-entropy gradient has. The other entries are unchanged.
    Differentiable in `omega` (the weight net's gradient runs through it); `p` is a constant.

    Args:
      omega: `[B, C]` class-level weights.
      p: `[B, C]` softmax probabilities, clipped below 1 (`softmax_error(..., p_max=P_MAX)`).
      onehot: `[B, C]` one-hot labels.

    Returns:
      The constrained `[B, C]` weights.
    """
    others = 1.0 - onehot
    p_label = ops.sum(p * onehot, axis=-1, keepdims=True)
    omega_label = ops.sum(omega * p * others, axis=-1, keepdims=True) / (1.0 - p_label)
    return omega * others + omega_label * onehot


def stage2_update(omega0, dmeta_domega, *, outer_lr, clip, p, onehot, sum_fn=None):
    """GDW's stage 2: one normalised, clipped descent step on the class-level weights.

    `Δ = clip(β g / Σ|g|, −c, c)`, `ω¹ = clamp(ω⁰ − Δ, 1e−6, 1e6)`, then the zero-mean constraint.
    Where `Σ|g| = 0` (no meta signal at all) the step is zero instead of NaN; the reference would
    divide by zero there.

    Args:
      omega0: `[B, C]` stage-1 weights (after the zero-mean constraint).
      dmeta_domega: `[B, C]` intermediate gradients `g = ∂L_meta/∂ω`.
      outer_lr: `β`, the outer learning rate.
      clip: `c`, the bound on each entry of the step.
      p, onehot: as for `zero_mean_constraint`.
      sum_fn: maps the local `Σ|g|` to the whole batch's, when `dmeta_domega` is only part of
        it (a replica's share); identity by default.

    Returns:
      `ω¹`, `[B, C]`.
    """
    g = ops.stop_gradient(dmeta_domega)
    total = ops.sum(ops.abs(g))
    if sum_fn is not None:
        total = sum_fn(total)
    safe_total = ops.where(total > 0, total, ops.ones_like(total))
    step = ops.where(total > 0, outer_lr * g / safe_total, ops.zeros_like(g))
    step = ops.clip(step, -clip, clip)
    omega1 = ops.clip(ops.stop_gradient(omega0) - step, OMEGA_MIN, OMEGA_MAX)
    return zero_mean_constraint(omega1, p, onehot)


def l2rw_weights(scores, sum_fn=None):
    """Learning-to-reweight example weights: `w_i = max(s_i, 0) / Σ_k max(s_k, 0)`, or all 0.

    Args:
      scores: `[B]` alignment of each example's gradient with the meta gradient.
      sum_fn: maps the local sum `Σ_k max(s_k, 0)` to the whole batch's, when `scores` are only
        part of it (a replica's share); identity by default.

    Returns:
      `[B]` weights, non-negative, summing to 1 over the whole batch unless every score is ≤ 0
      (then all zero).
    """
    positive = ops.maximum(scores, ops.zeros_like(scores))
    total = ops.sum(positive)
    if sum_fn is not None:
        total = sum_fn(total)
    safe_total = ops.where(total > 0, total, ops.ones_like(total))
    return ops.where(total > 0, positive / safe_total, ops.zeros_like(positive))
