"""Which parameters the virtual step moves: the whole backbone, or only its top.

`GDWModel(meta_scope=...)` takes one of:

- `"all"` (default): every trainable parameter, the method as published (docs/ALGORITHM.md).
- `"head"`: the last layer that owns trainable weights (the classifier's Dense layer in the
  bundled backbones); the same as `"last:1"`.
- `"last:k"`: the last `k` units that own trainable weights, counted back from the output. A
  unit is the part of the network between two *split points*: tensors through which every path
  from the input to the logits passes. In a chain of layers (`small_cnn`, `mlp`) a unit is one
  layer with weights (`small_cnn`: `last:2` adds `block2_bn`, `last:3` the whole second conv
  block); a residual block cannot be split inside (its shortcut bypasses its layers), so in
  `resnet32` a unit is a whole residual block: `last:2` is the head and `stage3_block5`.

With a restricted scope the backbone is split at the split point into a trunk and a top. The
training forward (`gdw_tf.core.step.forward`) also returns the trunk's features; the virtual step
`θ'_top = θ_top − α G_top(ω)` moves only the top's parameters, with `G_top` the gradient of the
top on those features (held constant); the meta batch runs through the trunk once, in training
mode and without gradient, then through the top at `θ'_top`. So `∂L_meta/∂ω` and `∂L_meta/∂φ`
need no backward pass through the trunk (Meta-Weight-Net's FaMUS and IEG's
`meta_partial_level` make the same approximation). The real step is unchanged: the full
network's step with the learned weights.
"""

from typing import Any

import keras
from keras import ops

from gdw_tf import backend
from gdw_tf.core import step as step_lib
from gdw_tf.core.methods import Method

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
    graph = getattr(backbone, "_functional", None) or backbone  # a Sequential's graph
    inputs = getattr(backbone, "inputs", None)
    outputs = getattr(backbone, "outputs", None)
    if (
        not inputs
        or not outputs
        or len(inputs) != 1
        or len(outputs) != 1
        or getattr(graph, "_nodes", None) is None
    ):
        raise ValueError(
            f"meta_scope={meta_scope!r} needs a functional backbone with one input and one "
            f"output, to split at a layer; {type(backbone).__name__} has no such layer graph. "
            "Use meta_scope='all'."
        )
    point, units = _split_point(backbone, graph._nodes, count)
    if point is None:
        raise ValueError(
            f"meta_scope={meta_scope!r}: the backbone {backbone.name!r} has only {units} units "
            "with trainable weights that can be split off (see gdw_tf.core.meta_scope); use a "
            "smaller k or meta_scope='all'."
        )
    if point is inputs[0]:
        return None
    return BackboneSplit(backbone, point)


def _split_point(backbone, nodes, count):
    """`(tensor, units)`: the input of the `count`-th unit from the output (`None` if there are
    fewer), and how many units were found. `nodes`: the keys of the backbone graph's nodes (its
    layers may also have nodes in other graphs, e.g. those of an earlier split, which calls them
    again)."""
    output = backbone.outputs[0]
    layers = [layer for layer in backbone.layers if not isinstance(layer, keras.layers.InputLayer)]
    weights = 0
    units = 0
    for layer in reversed(layers):
        own = [
            node for i, node in enumerate(layer._inbound_nodes) if f"{id(layer)}_ib-{i}" in nodes
        ]  # Keras' key of a graph's node
        if len(own) != 1:
            continue  # a shared layer: its input is not one tensor
        node_inputs = own[0].input_tensors
        if len(node_inputs) != 1:
            continue
        point = node_inputs[0]
        if point is backbone.inputs[0]:
            tail_weights = len(backbone.trainable_variables)
        else:
            try:
                tail = keras.Model(point, output)
            except ValueError:
                continue  # the output also depends on tensors before `point` (a shortcut)
            tail_weights = len(tail.trainable_variables)
        if tail_weights > weights:
            weights = tail_weights
            units += 1
            if units == count:
                return point, units
    return None, units


class BackboneSplit:
    """A backbone split at one tensor into a trunk and a top that share its layers.

    A plain object (not a Keras layer), so that a model holding it tracks no extra variables.
    All calls are stateless, on values ordered as the backbone's variables.

    Attributes:
      top_layers: names of the top's layers with trainable weights.
    """

    def __init__(self, backbone, point):
        output = backbone.outputs[0]
        self._both = keras.Model(backbone.inputs[0], [point, output])
        self._trunk = keras.Model(backbone.inputs[0], point)
        self._top = keras.Model(point, output)
        trainable = {id(v): i for i, v in enumerate(backbone.trainable_variables)}
        non_trainable = {id(v): i for i, v in enumerate(backbone.non_trainable_variables)}
        if {id(v) for v in self._both.non_trainable_variables} != set(non_trainable) or {
            id(v) for v in self._both.trainable_variables
        } != set(trainable):
            raise ValueError(
                f"backbone {backbone.name!r} holds variables outside its layer graph; use "
                "meta_scope='all'."
            )

        def order(variables, index):
            return [index[id(v)] for v in variables]

        self._both_trainable = order(self._both.trainable_variables, trainable)
        self._both_non_trainable = order(self._both.non_trainable_variables, non_trainable)
        self._trunk_trainable = order(self._trunk.trainable_variables, trainable)
        self._trunk_non_trainable = order(self._trunk.non_trainable_variables, non_trainable)
        self._top_trainable = order(self._top.trainable_variables, trainable)
        self._top_non_trainable = order(self._top.non_trainable_variables, non_trainable)
        self.top_layers = [layer.name for layer in self._top.layers if layer.trainable_weights]

    @property
    def features_and_logits(self):
        """The backbone as a `keras.Model` with two outputs: the trunk's features and the
        logits."""
        return self._both

    @property
    def top(self):
        """The top as a `keras.Model` from the trunk's features to the logits."""
        return self._top

    def training_forward(self, trainable, non_trainable, x):
        """The backbone in training mode on substitute weights: `(logits, (non_trainable after
        the forward, features))`, both value lists in the backbone's order."""
        (features, logits), new_values = self._both.stateless_call(
            _take(trainable, self._both_trainable),
            _take(non_trainable, self._both_non_trainable),
            x,
            training=True,
        )
        new_non_trainable = list(non_trainable)
        for i, value in zip(self._both_non_trainable, new_values):
            new_non_trainable[i] = value
        return logits, (new_non_trainable, features)

    def trunk_features(self, trainable, non_trainable, x):
        """The trunk's features of `x` in training mode, BatchNorm statistics discarded, as a
        constant."""
        features, _ = self._trunk.stateless_call(
            _take(trainable, self._trunk_trainable),
            _take(non_trainable, self._trunk_non_trainable),
            x,
            training=True,
        )
        return ops.stop_gradient(features)

    def top_values(self, values, trainable=True):
        """The top's share of the backbone's trainable (or non-trainable) `values`, in the top's
        order."""
        return _take(values, self._top_trainable if trainable else self._top_non_trainable)


def _take(values, indices):
    return [values[i] for i in indices]


def meta_gradient(
    split: BackboneSplit,
    method: Method,
    fwd: step_lib.Forward,
    *,
    weight_net: keras.Model,
    trainable: list,
    non_trainable: list,
    weight_net_trainable: list,
    x_meta: Any,
    y_meta: Any,
    learning_rate: Any,
    num_classes: int,
    meta_grad: str = "jvp",
) -> step_lib.MetaGradient:
    """`gdw_tf.core.step.meta_gradient` with the virtual step over the top's parameters only.

    Args:
      split: the backbone's `BackboneSplit`.
      fwd: the step's `Forward` from `gdw_tf.core.step.forward(..., split=split)` (with features).
      Others: as `gdw_tf.core.step.meta_gradient` (`trainable`, `non_trainable`: the whole
        backbone's).

    Returns:
      A `MetaGradient`.
    """
    top = split.top
    top_trainable = split.top_values(trainable)
    top_non_trainable = split.top_values(non_trainable, trainable=False)
    features = ops.stop_gradient(fwd.features)

    def top_logits(params):
        logits, new_non_trainable = top.stateless_call(
            params, top_non_trainable, features, training=True
        )
        return step_lib.float32_at_least(logits), new_non_trainable

    # G_top(c): the top's gradient on the training batch's features (a small forward again).
    _, _, top_vjp = backend.vjp(top_logits, top_trainable)
    meta_features = split.trunk_features(trainable, non_trainable, x_meta)
    return step_lib.meta_gradient(
        method,
        fwd._replace(vjp_fn=top_vjp),
        backbone=top,
        weight_net=weight_net,
        trainable=top_trainable,
        non_trainable=top_non_trainable,
        weight_net_trainable=weight_net_trainable,
        x=features,
        x_meta=meta_features,
        y_meta=y_meta,
        learning_rate=learning_rate,
        num_classes=num_classes,
        meta_grad=meta_grad,
    )
