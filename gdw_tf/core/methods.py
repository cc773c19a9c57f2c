"""The table of weighting methods: one record per method, asked by the step and the model.

Each `Method` says what its step needs (a meta step, a weight net, a virtual step, class-level
weights, GDW's clipped softmax) and holds its two weighting rules: the stage-1 weights that enter
the virtual step, and the real step's weights. `gdw_tf.core.step` strings them together with the
shared autodiff; `GDWModel` reads the properties to build variables and metrics. Adding a method
means adding one record (and its rules) to `METHODS`. The equations are in `docs/ALGORITHM.md`.
"""

import dataclasses
from collections.abc import Callable
from typing import Any
from typing import NamedTuple

from keras import ops

from gdw_tf.core import weighting


class RealWeights(NamedTuple):
    """The real step of a method: its logit cotangent (`G = vjp(cotangent)`), `[B]` instance
    weights, and `[B, C]` class-level weights (None for instance-level methods)."""

    cotangent: Any
    instance_weights: Any
    class_weights: Any = None


def weighted_cotangent(weights, e, batch_size):
    """The logit cotangent `weights ⊙ e / B` of the weighted mean cross-entropy: `weights` is
    `[B]` (one weight per example, broadcast over the classes) or `[B, C]` (class-level)."""
    if len(ops.shape(weights)) == 1:
        weights = ops.expand_dims(weights, -1)
    return weights * e / batch_size


@dataclasses.dataclass(frozen=True)
class Method:
    """One weighting method.

    Attributes:
      name: its name on the command line and in `GDWModel(method=...)`.
      summary: one line for help texts.
      meta_step: whether it learns weights from a meta batch (all but CE).
      weight_net: whether it has a Meta-Weight-Net `V_φ` (its weights outlive a step, so
        `meta_interval > 1` applies).
      class_level: whether its weights are `[B, C]` (one per example and class) rather than `[B]`.
      softmax_clip: the bound on `p` in `e = p − onehot` (GDW's 0.999), or None.
      virtual_step: whether the meta-gradient is taken after a virtual SGD step with the stage-1
        weights; False for L2RW, which scores the examples at weight 0 (`θ' = θ`).
      stage1: `(v, fwd) -> weights`, the stage-1 weights that enter the virtual step from the
        weight net's `v [B]` (weight-net methods only).
      real_weights: `(fwd, meta, batch_size, context) -> RealWeights`, the real step's logit
        cotangent and weights. `context` holds what a rule may need: `updated_v` (a function
        of no argument: the updated weight net's `v`), `outer_lr`, `clip`, `sum_fn`.
    """

    name: str
    summary: str
    meta_step: bool
    weight_net: bool
    class_level: bool
    softmax_clip: float | None
    virtual_step: bool
    stage1: Callable | None
    real_weights: Callable

    @property
    def metrics(self):
        """The names of the training metrics its step logs, beyond the training loss/accuracy."""
        names = ()
        if self.meta_step:
            names += ("meta/loss", "weights/instance_mean")
        if self.class_level:
            names += ("weights/labelled_mean", "weights/other_mean")
        return names


# ------------------------------------------------------------------------------------------------
# The weighting rules


def _gdw_stage1(v, fwd):
    # ω⁰: v_i on every class, then the zero-mean constraint.
    omega = ops.broadcast_to(ops.expand_dims(v, -1), ops.shape(fwd.error))
    return weighting.zero_mean_constraint(omega, fwd.probabilities, fwd.onehot)


def _instance_stage1(v, fwd):
    del fwd
    return v


def _gdw_real(fwd, meta, batch_size, context):
    # ω¹: the stage-2 step of size β along −g / Σ|g|, clipped at c, the zero-mean constraint kept.
    class_weights = weighting.stage2_update(
        meta.weights,
        meta.dmeta_dweights,
        outer_lr=context["outer_lr"],
        clip=context["clip"],
        p=fwd.probabilities,
        onehot=fwd.onehot,
        sum_fn=context["sum_fn"],
    )
    return RealWeights(class_weights * fwd.error / batch_size, meta.instance_weights, class_weights)


def _mwnet_real(fwd, meta, batch_size, context):
    del meta
    v = context["updated_v"]()
    return RealWeights(weighted_cotangent(v, fwd.error, batch_size), v)


def _l2rw_real(fwd, meta, batch_size, context):
    normalised = weighting.l2rw_weights(-meta.dmeta_dweights, sum_fn=context["sum_fn"])
    return RealWeights(ops.expand_dims(normalised, -1) * fwd.error, normalised * batch_size)


def _ce_real(fwd, meta, batch_size, context):
    del meta, context
    return RealWeights(fwd.error / batch_size, ops.ones_like(fwd.per_example_loss))


GDW = Method(
    name="gdw",
    summary="Generalized Data Weighting: class-level weights",
    meta_step=True,
    weight_net=True,
    class_level=True,
    softmax_clip=weighting.P_MAX,
    virtual_step=True,
    stage1=_gdw_stage1,
    real_weights=_gdw_real,
)
MWNET = Method(
    name="mwnet",
    summary="Meta-Weight-Net: instance weights from a weight net of the loss",
    meta_step=True,
    weight_net=True,
    class_level=False,
    softmax_clip=None,
    virtual_step=True,
    stage1=_instance_stage1,
    real_weights=_mwnet_real,
)
L2RW = Method(
    name="l2rw",
    summary="Learning to Reweight: instance weights from the meta-gradient at weight 0",
    meta_step=True,
    weight_net=False,
    class_level=False,
    softmax_clip=None,
    virtual_step=False,
    stage1=None,
    real_weights=_l2rw_real,
)
CE = Method(
    name="ce",
    summary="plain cross-entropy, every example weighted 1",
    meta_step=False,
    weight_net=False,
    class_level=False,
    softmax_clip=None,
    virtual_step=False,
    stage1=None,
    real_weights=_ce_real,
)

METHODS = {method.name: method for method in (GDW, MWNET, L2RW, CE)}
NAMES = tuple(METHODS)


def get(name):
    """The `Method` of `name` (a `Method` is returned as it is).

    Raises:
      ValueError: for an unknown name.
    """
    if isinstance(name, Method):
        return name
    if name not in METHODS:
        raise ValueError(f"method must be one of {NAMES}; got {name!r}.")
    return METHODS[name]
