"""Which parameters the virtual step moves: the whole backbone, or only its top.

`GDWModel(meta_scope=...)` takes one of:

- `"all"` (default): every trainable parameter, the method as published (docs/ALGORITHM.md).
- `"head"`: the last layer that owns trainable weights (the classifier's Dense layer in the
  bundled backbones); the same as `"last:1"`.
- `"last:k"`: the last `k` units that own trainable weights, counted back from the output
  (`gdw_tf.core.backbone_split` says what a unit is: one layer with weights in a chain of
  layers, a whole residual block in `resnet32`, whose `last:2` is the head and
  `stage3_block5`).

With a restricted scope the backbone is split (a `gdw_tf.core.backbone_split.BackboneSplit`)
into a trunk and a top. The training forward (`gdw_tf.core.step.forward(..., split=...)`) also
returns the trunk's features; in `gdw_tf.core.step.meta_gradient(..., split=...)` the virtual
step `θ'_top = θ_top − α G_top(ω)` moves only the top's parameters, with `G_top` the gradient of
the top on those features (held constant); the meta batch runs through the trunk once, in
training mode and without gradient, then through the top at `θ'_top`. So `∂L_meta/∂ω` and
`∂L_meta/∂φ` need no backward pass through the trunk (Meta-Weight-Net's FaMUS and IEG's
`meta_partial_level` make the same approximation). The real step is unchanged: the full
network's step with the learned weights.
"""

from gdw_tf.core import backbone_split

ALL = "all"
HEAD = "head"
SPELLING = "must be all, head or last:k with an integer k ≥ 1 (e.g. last:2)"


def parse(meta_scope):
    """The number `k` of top units of `meta_scope` (`None` for "all").

    Raises:
      ValueError: for a value that is not "all", "head" or "last:k" with an integer k ≥ 1.
    """
    if meta_scope == ALL:
        return None
    if meta_scope == HEAD:
        return 1
    if isinstance(meta_scope, str) and meta_scope.startswith("last:"):
        count = meta_scope[len("last:") :]
        if count.isdigit() and int(count) >= 1:
            return int(count)
    raise ValueError(f"meta_scope {SPELLING}; got {meta_scope!r}.")


def split_backbone(backbone, meta_scope):
    """The `BackboneSplit` of `backbone` for `meta_scope`, or `None` for "all" (and for a scope
    whose top would be the whole network: that is "all").

    Raises:
      ValueError: for an unknown scope, a backbone without a layer graph (subclassed), or one
        with fewer than `k` units.
    """
    count = parse(meta_scope)
    if count is None:
        return None
    try:
        return backbone_split.split_top(backbone, count)
    except ValueError as error:
        raise ValueError(
            f"meta_scope={meta_scope!r}: {error} Use meta_scope='all'"
            f"{' or a smaller k' if count > 1 else ''}."
        ) from None
