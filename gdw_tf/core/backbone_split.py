"""A backbone split at one tensor into a trunk and a top: the last units of the network.

A *unit* is the part of the network between two *split points*: tensors through which every
path from the input to the logits passes. In a chain of layers (`small_cnn`, `mlp`) a unit is
one layer with weights (`small_cnn`: two units from the output add `block2_bn`, three the whole
second conv block); a residual block cannot be split inside (its shortcut bypasses its layers),
so in `resnet32` a unit is a whole residual block: two units are the head and `stage3_block5`.

Two users: the meta scope (`gdw_tf.core.meta_scope`), whose virtual step moves only the top's
parameters, and the label-issue probes (`gdw_tf.labels.label_issues.probe_features`), which read
the trunk's features below the classifier.

`split_top` reads a functional model's layer graph (`_functional`, `_nodes`, `_inbound_nodes`),
which Keras does not document.
"""

import keras
from keras import ops


def split_top(backbone, units):
    """The `BackboneSplit` of `backbone` whose top is its last `units` units, or `None` where
    that top is the whole network.

    Raises:
      ValueError: for a backbone without a layer graph (subclassed), or one with fewer than
        `units` units.
    """
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
            "a split needs a functional backbone with one input and one output; "
            f"{type(backbone).__name__} has no such layer graph."
        )
    point, found = _split_point(backbone, graph._nodes, units)
    if point is None:
        raise ValueError(
            f"the backbone {backbone.name!r} has only {found} units with trainable weights that "
            "can be split off (see gdw_tf.core.backbone_split)."
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

    Raises:
      ValueError: if the backbone holds variables outside its layer graph.
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
                f"the backbone {backbone.name!r} holds variables outside its layer graph."
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
