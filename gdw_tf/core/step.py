"""One training step of GDW, MW-Net, L2RW or cross-entropy, as pure functions.

`forward` runs step 1 of `docs/ALGORITHM.md` (the training forward, with a VJP that later steps
reuse);
`meta_gradient` runs steps 2–5 (stage-1 weights, virtual step, meta loss, intermediate gradients)
and returns the gradients of the meta loss with respect to the stage-1 weights and to the weight
net; `real_gradient` runs steps 7–8 (stage-2 weights and the backbone gradient). Between the two
the caller updates the weight net (step 6). On the steps that skip the meta step
(`GDWModel(meta_interval=k)`), `no_meta_gradient` stands in for `meta_gradient`. All are pure
functions of (weights, batch, meta batch): nothing is assigned and no model is copied; the
backbone runs on substitute weights through `stateless_call`.

The intermediate gradients `g = ∂L_meta/∂ω` come from one of two formulations:

- `"jvp"` (default): `u = ∇_{θ'} L_meta`, then `g = −(α/B) · e ⊙ (J_θ z · u)` with one JVP of the
  training logits. The virtual step's gradient `G(c) = Jᵀc` is linear in its logit cotangent `c`,
  and the JVP is its transpose applied to `u` (reverse mode over the VJP, which reuses the
  training forward's activations: 1–8% faster per step on a CPU than a forward-mode JVP, which
  recomputes them; `docs/PERFORMANCE.md`). L2RW has no virtual step and uses forward mode.
  Nothing is differentiated through the meta loss.
- `"nested"`: differentiate the meta loss through the virtual update itself (double backprop), as
  the reference code does with `create_graph=True`. Kept for checking; one replica only.

Under a `tf.distribute` strategy each replica holds a share of the training and the meta batch.
Every mean is over the global batch (`backend.replica_sum` of the sizes), the virtual step's
gradient `G(ω⁰)` and the meta gradient `u` are summed over the replicas before use, and so are
the normalisers `Σ|g|` (stage 2) and `Σ max(s, 0)` (L2RW). The gradients these functions return
for an optimizer (the weight net's `∂L_meta/∂φ`, the real step's `G(ω¹)`) are each replica's
share of the sum: Keras' optimizers sum them over the replicas when they apply them.

Where this departs from the reference code (GGchen1997/GDW-NIPS2021) and why:

- One forward pass of the training batch serves both VJPs `G(ω⁰)` and `G(ω¹)` and the real step;
  the reference runs the batch forward three times and rebuilds a model copy twice per step. The
  numbers are the same: the passes run at the same `θ` on the same batch.
- BatchNorm moving statistics move once per step (from that shared forward). The virtual and meta
  passes leave them alone; in the reference they update throw-away copies.
- MW-Net and L2RW use the exact softmax gradient; the reference's MW-Net path reuses GDW's `p`
  clipped at 0.999.
- Stage 2 takes a zero step when `Σ|g| = 0` instead of dividing by zero.
- L2RW is not in the reference; it follows Ren et al. (2018) on the same machinery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from typing import NamedTuple

import keras
from keras import ops

from gdw_tf import backend
from gdw_tf.core import weighting
from gdw_tf.core.backbone_split import BackboneSplit
from gdw_tf.core.methods import Method
from gdw_tf.core.methods import weighted_cotangent


class Forward(NamedTuple):
    """Step 1: the training forward at `θ`, shared by every backbone gradient of the step.

    Attributes:
      logits: `[B, C]` training logits at `θ`.
      non_trainable: the backbone's non-trainable values after the forward (BatchNorm moving
        statistics moved once).
      onehot: `[B, C]` one-hot given labels.
      probabilities, error: `[B, C]` softmax `p` (clipped at 0.999 for GDW) and
        `e = p − onehot`, constants.
      per_example_loss: `[B]` cross-entropy `ℓ_i` against the given labels, a constant.
      vjp_fn: `cotangent [B, C] -> list of ∂/∂θ`; `vjp_fn(ω ⊙ e / B)` is `G(ω)`.
      features: with a `gdw_tf.core.backbone_split.BackboneSplit`, the trunk's features of the
        batch (else `None`).
    """

    logits: Any
    non_trainable: Any
    onehot: Any
    probabilities: Any
    error: Any
    per_example_loss: Any
    vjp_fn: Callable
    features: Any = None


class MetaGradient(NamedTuple):
    """What `meta_gradient` computes beyond the forward pass.

    Attributes:
      instance_weights: `[B]` the weight net's `v_i = V_φ(ℓ_i)` (zeros for L2RW).
      weights: the stage-1 weights that enter the virtual step: `ω⁰ [B, C]` for GDW, `v [B]` for
        MW-Net, zeros `[B]` for L2RW.
      dmeta_dweights: `∂L_meta/∂weights`, shaped like `weights`.
      weight_net_grads: `∂L_meta/∂φ`, a list shaped like the weight net's trainable variables
        (`None` for L2RW).
      meta_loss: scalar meta loss at the virtual weights `θ'`.
    """

    instance_weights: Any
    weights: Any
    dmeta_dweights: Any
    weight_net_grads: list | None
    meta_loss: Any


class RealGradient(NamedTuple):
    """What `real_gradient` computes.

    Attributes:
      grads: the backbone gradient of the real step, `G(ω¹)` for GDW (no L2 term).
      instance_weights: `[B]` weights of the real step (MW-Net: from the updated weight net;
        L2RW: `B · w_i` so that 1 is the average; GDW: the stage-1 `v_i`; CE: ones).
      class_weights: `[B, C]` `ω¹` for GDW, else `None`.
    """

    grads: list
    instance_weights: Any
    class_weights: Any


def _as_dtype(value, dtype):
    """A scalar in `dtype`; Python numbers are converted exactly, not through float32."""
    if isinstance(value, (int, float)):
        return ops.convert_to_tensor(value, dtype=dtype)
    return ops.cast(value, dtype)


def global_batch_size(per_example):
    """The number of examples in the global batch of which `per_example` (`[b, ...]`) is a
    share, in its dtype."""
    return backend.replica_sum(ops.cast(ops.shape(per_example)[0], per_example.dtype))


def forward(
    method: Method,
    backbone: keras.Model,
    *,
    trainable: list,
    non_trainable: list,
    x: Any,
    y: Any,
    num_classes: int,
    split: BackboneSplit | None = None,
) -> Forward:
    """Step 1: the training forward at `θ` (training mode), with its VJP; a `Forward`.

    `method` is a `gdw_tf.core.methods.Method` (for its softmax clip). With `split` (a
    `gdw_tf.core.backbone_split.BackboneSplit` of `backbone`) the same forward also returns the
    trunk's features, for a virtual step over the top only (`meta_gradient(..., split=split)`).
    """

    def logits_fn(params):
        if split is not None:
            logits, new_non_trainable = split.training_forward(params, non_trainable, x)
        else:
            logits, new_non_trainable = backbone.stateless_call(
                params, non_trainable, x, training=True
            )
        return float32_at_least(logits), new_non_trainable

    logits, new_non_trainable, vjp_fn = backend.vjp(logits_fn, trainable)
    features = None
    if split is not None:
        new_non_trainable, features = new_non_trainable
    logits_const = ops.stop_gradient(logits)
    onehot = ops.one_hot(y, num_classes, dtype=logits.dtype)
    probabilities, error = weighting.softmax_error(logits_const, onehot, method.softmax_clip)
    return Forward(
        logits=logits,
        non_trainable=new_non_trainable,
        onehot=onehot,
        probabilities=probabilities,
        error=error,
        per_example_loss=weighting.per_example_cross_entropy(logits_const, onehot),
        vjp_fn=vjp_fn,
        features=features,
    )


def weight_net_output(weight_net: keras.Model, weight_net_trainable: list, per_example_loss: Any):
    """`v_i = V_φ(ℓ_i)` with the weight net on substitute weights; `[B]`."""
    out, _ = weight_net.stateless_call(
        weight_net_trainable,
        backend.read_values(weight_net.non_trainable_variables),
        ops.expand_dims(per_example_loss, -1),
    )
    return ops.squeeze(out, -1)


def meta_gradient(
    method: Method,
    fwd: Forward,
    *,
    backbone: keras.Model,
    weight_net: keras.Model,
    trainable: list,
    non_trainable: list,
    weight_net_trainable: list,
    x: Any,
    x_meta: Any,
    y_meta: Any,
    learning_rate: Any,
    num_classes: int,
    meta_grad: str = "jvp",
    split: BackboneSplit | None = None,
) -> MetaGradient:
    """Steps 2–5 of a GDW (or MW-Net, L2RW) step: the meta-gradients, as a pure function.

    Args:
      method: a `gdw_tf.core.methods.Method` with a meta step (GDW, MW-Net, L2RW).
      fwd: the step's `Forward` (from `forward` on the same batch and weights, and `split`).
      backbone: the classifier (a built `keras.Model`, inputs → logits).
      weight_net: the MW-Net MLP `1 → hidden → 1` (unused by L2RW).
      trainable, non_trainable: values of the backbone's trainable and non-trainable variables.
      weight_net_trainable: values of the weight net's trainable variables.
      x: the training inputs of `fwd`.
      x_meta, y_meta: clean meta batch.
      learning_rate: `α_t`, the backbone's current learning rate (the virtual step's).
      num_classes: `C`.
      meta_grad: "jvp" or "nested" (see the module docstring).
      split: the backbone's `BackboneSplit` for a virtual step over its top only
        (`gdw_tf.core.meta_scope`), or `None` for every parameter.

    Returns:
      A `MetaGradient`.
    """
    if split is not None:
        fwd, backbone, trainable, non_trainable, x, x_meta = _top_only(
            split, fwd, trainable=trainable, non_trainable=non_trainable, x_meta=x_meta
        )
    dtype = fwd.logits.dtype
    batch_size = global_batch_size(fwd.logits)

    # 2. Stage-1 weights as a function of φ, so that the meta-gradient reaches the weight net.
    def stage1(phi):
        return stage1_weights(method, fwd, weight_net, phi)

    if method.virtual_step:
        weights, instance_weights, stage1_vjp = backend.vjp(stage1, weight_net_trainable)
        virtual_lr = _as_dtype(learning_rate, dtype)
    else:
        # L2RW: weights start at 0, so θ' = θ; α scales every score alike and is set to 1.
        weights = ops.zeros_like(fwd.per_example_loss)
        instance_weights = weights
        virtual_lr = ops.cast(1.0, dtype)

    # The virtual step's logit cotangent: G(weights) = fwd.vjp_fn(cotangent).
    cotangent = weighted_cotangent(weights, fwd.error, batch_size)

    def meta_loss_fn(params):
        meta_logits = training_logits(backbone, params, non_trainable, x_meta)
        onehot = ops.one_hot(y_meta, num_classes, dtype=meta_logits.dtype)
        losses = weighting.per_example_cross_entropy(meta_logits, onehot)
        return ops.sum(losses) / global_batch_size(losses), ()

    # 3–5. Virtual step θ' = θ − α G, meta loss at θ', and ∂L_meta/∂cotangent = −α J_θ z · u.
    if meta_grad == "nested":
        meta_loss, dmeta_dcotangent = backend.nested_meta_gradient(
            fwd.vjp_fn, cotangent, virtual_lr, trainable, meta_loss_fn
        )
    else:
        if not method.virtual_step:
            # No virtual step (θ' = θ), so no G to transpose: the JVP in forward mode.
            virtual = trainable

            def logits_jvp(tangent):
                _, jvp = backend.jvp(
                    lambda params: training_logits(backbone, params, non_trainable, x),
                    trainable,
                    tangent,
                )
                return jvp
        else:
            # G(c) = Jᵀc is linear in the cotangent c; its transpose gives the JVP J · u from
            # the activations the training forward already holds (forward mode would recompute
            # them). Each replica's J · u on its own examples: the transpose of its share of G.
            local_grads, logits_jvp = backend.vjp_and_transpose(fwd.vjp_fn, cotangent)
            grads = backend.replica_sum(local_grads)
            virtual = [t - virtual_lr * g for t, g in zip(trainable, grads)]
        meta_loss, _, meta_grads = backend.value_and_grad(meta_loss_fn, virtual)
        meta_loss, meta_grads = backend.replica_sum((meta_loss, meta_grads))
        dmeta_dcotangent = -virtual_lr * logits_jvp(meta_grads)

    # Chain rule through cotangent = weights ⊙ e / B.
    dmeta_domega = dmeta_dcotangent * fwd.error / batch_size
    if method.class_level:
        dmeta_dweights = dmeta_domega
    else:
        dmeta_dweights = ops.sum(dmeta_domega, axis=-1)

    # 6 (gradient only). ∂L_meta/∂φ = Σ g ∂weights/∂φ, through the zero-mean constraint for GDW.
    weight_net_grads = stage1_vjp(dmeta_dweights) if method.weight_net else None

    return MetaGradient(
        instance_weights=instance_weights,
        weights=weights,
        dmeta_dweights=dmeta_dweights,
        weight_net_grads=weight_net_grads,
        meta_loss=meta_loss,
    )


def _top_only(split, fwd, *, trainable, non_trainable, x_meta):
    """The arguments of `meta_gradient` for a virtual step over `split`'s top only:
    `(fwd, top, top_trainable, top_non_trainable, features, meta_features)`, the features of
    the training and the meta batch from the trunk, held constant."""
    top = split.top
    top_trainable = split.top_values(trainable)
    top_non_trainable = split.top_values(non_trainable, trainable=False)
    features = ops.stop_gradient(fwd.features)

    def top_logits(params):
        logits, new_non_trainable = top.stateless_call(
            params, top_non_trainable, features, training=True
        )
        return float32_at_least(logits), new_non_trainable

    # G_top(c): the top's gradient on the training batch's features (a small forward again).
    _, _, top_vjp = backend.vjp(top_logits, top_trainable)
    meta_features = split.trunk_features(trainable, non_trainable, x_meta)
    return (
        fwd._replace(vjp_fn=top_vjp),
        top,
        top_trainable,
        top_non_trainable,
        features,
        meta_features,
    )


def stage1_weights(
    method: Method, fwd: Forward, weight_net: keras.Model, weight_net_trainable: list
) -> tuple:
    """Step 2: `(weights, v)`, the stage-1 weights and the weight net's `v_i = V_φ(ℓ_i)`.

    `weights` is the method's `stage1` rule of `v`: `ω⁰ [B, C]` for GDW (`v_i` on every class,
    then the zero-mean constraint), `v [B]` for MW-Net.
    """
    v = weight_net_output(weight_net, weight_net_trainable, fwd.per_example_loss)
    return method.stage1(v, fwd), v


def no_meta_gradient(
    method: Method, fwd: Forward, weight_net: keras.Model, weight_net_trainable: list
) -> MetaGradient:
    """A step that skips the meta step (`GDWModel(meta_interval=k)`, k > 1): a `MetaGradient`
    like `meta_gradient`'s, with the stage-1 weights of the current weight net and zero
    gradients, so that `real_gradient` takes the real step without a meta-gradient.

    MW-Net's real step is then its usual one. GDW's stage-2 step is zero, so `ω¹ = ω⁰`: `v_i` on
    every class, instance weighting by the weight net. For weight-net methods only: L2RW has
    no weight net to carry weights from one meta step to the next.
    """
    weights, instance_weights = stage1_weights(method, fwd, weight_net, weight_net_trainable)
    return MetaGradient(
        instance_weights=instance_weights,
        weights=weights,
        dmeta_dweights=ops.zeros_like(weights),
        weight_net_grads=[ops.zeros_like(phi) for phi in weight_net_trainable],
        meta_loss=ops.zeros((), dtype=fwd.logits.dtype),
    )


def training_logits(backbone: keras.Model, params: list, non_trainable: list, x: Any):
    """Training-mode logits on substitute weights, BatchNorm statistics discarded."""
    logits, _ = backbone.stateless_call(params, non_trainable, x, training=True)
    return float32_at_least(logits)


def float32_at_least(logits):
    """Logits of a mixed-precision backbone (float16, bfloat16) cast to float32, in which the
    losses and the weighting arithmetic run; float32 and float64 logits as they are."""
    if keras.backend.standardize_dtype(logits.dtype) in ("float16", "bfloat16"):
        return ops.cast(logits, "float32")
    return logits


def real_gradient(
    method: Method,
    fwd: Forward,
    *,
    meta: MetaGradient | None = None,
    weight_net: keras.Model | None = None,
    weight_net_trainable: list | None = None,
    outer_lr: float | None = None,
    clip: float | None = None,
) -> RealGradient:
    """Steps 7–8: the real step's weights and backbone gradient (without the L2 term).

    Args:
      method: a `gdw_tf.core.methods.Method`; its `real_weights` rule gives the weights.
      fwd: the step's `Forward`.
      meta: the step's `MetaGradient` (not for CE).
      weight_net, weight_net_trainable: MW-Net only: the weight net and its *updated* weights.
      outer_lr, clip: GDW only: the stage-2 step's `β` and `c`.

    Returns:
      A `RealGradient`.
    """
    context = {
        "updated_v": lambda: weight_net_output(
            weight_net, weight_net_trainable, fwd.per_example_loss
        ),
        "outer_lr": outer_lr,
        "clip": clip,
        "sum_fn": backend.replica_sum,
    }
    real = method.real_weights(fwd, meta, global_batch_size(fwd.error), context)
    return RealGradient(
        grads=fwd.vjp_fn(ops.stop_gradient(real.cotangent)),
        instance_weights=ops.stop_gradient(real.instance_weights),
        class_weights=real.class_weights,
    )
