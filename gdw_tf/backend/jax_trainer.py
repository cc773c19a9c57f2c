"""`GDWModel`'s train and test steps on Keras' JAX trainer: the shared step, run on explicit state.

Keras' JAX trainer (`keras/src/backend/jax/trainer.py`) compiles `train_step(state, data)`, a pure
function of `state = (trainable, non_trainable, optimizer, metrics)` values that returns
`(logs, new_state)`. `GDWModel._train_step` is written once, against Keras variables (it reads them,
calls `optimizer.apply`, assigns BatchNorm statistics, the meta-batch cursor and the per-example
weights, updates metrics). Here it runs inside a `keras.StatelessScope` that maps every variable it
touches to its value in `state`: reads see the state, assignments are recorded in the scope instead
of applied, and the new state is read back from the scope. This is how Keras' own
`optimizer.stateless_apply` and `metric.stateless_update_state` are built, so the step is as pure as
Keras' default one and `jax.jit` compiles it whole; only the autodiff calls inside it are
JAX-specific (`gdw_tf.backend.jax`).

The weight net's optimizer has variables of its own (Adam's moments and step count) that Keras'
state does not carry: the trainer passes `model.optimizer.variables` only. They travel at the end of
the optimizer part of the state: `_get_jax_state` appends their values, `jax_state_sync` writes them
back, and `_get_state_sharding_spec` gives them shardings, so `fit`, `train_on_batch`, callbacks
that sync mid-epoch and checkpoints all see them like the backbone optimizer's.

Under `keras.distribution` (e.g. `DataParallel`) Keras' trainer compiles the step with these
shardings as its output shardings and shards each batch; XLA partitions the step for the global
batch, so it takes the steps one device takes (`tests/test_jax_distribute.py`).
"""

import keras

_STATE_NAMES = (
    "trainable_variables",
    "non_trainable_variables",
    "optimizer_variables",
    "metrics_variables",
)


class JAXTrainer:
    """Mixin for `GDWModel` under `KERAS_BACKEND=jax`; put it before `keras.Model` in the bases."""

    def train_step(self, state, data):
        """One step of `self._train_step` on `state`; returns `(logs, new_state)`."""
        variables = (
            self.trainable_variables,
            self.non_trainable_variables,
            self._all_optimizer_variables(),
            self.metrics_variables,
        )
        return _stateless(self._train_step, data, variables, state)

    def test_step(self, state, data):
        """One evaluation step on `state = (trainable, non_trainable, metrics)`."""
        variables = (self.trainable_variables, self.non_trainable_variables, self.metrics_variables)
        return _stateless(self._test_step, data, variables, state)

    def _all_optimizer_variables(self):
        return list(self.optimizer.variables) + list(self.weight_net_optimizer.variables)

    # Carrying the weight-net optimizer's variables in the optimizer part of the state.

    def _get_jax_state(
        self,
        trainable_variables=False,
        non_trainable_variables=False,
        optimizer_variables=False,
        metrics_variables=False,
        purge_model_variables=False,
    ):
        state = super()._get_jax_state(
            trainable_variables=trainable_variables,
            non_trainable_variables=non_trainable_variables,
            optimizer_variables=optimizer_variables,
            metrics_variables=metrics_variables,
            purge_model_variables=purge_model_variables,
        )
        if optimizer_variables:
            state = list(state)
            position = int(trainable_variables) + int(non_trainable_variables)
            state[position] = list(state[position]) + [
                v.value for v in self.weight_net_optimizer.variables
            ]
            state = tuple(state)
        if purge_model_variables:
            # Keras empties the variables here and writes them back from `_jax_state` after the
            # last step. If the first step raises (the step's ValueErrors come at tracing), there
            # is no `_jax_state` yet and the model would be left without values: keep these.
            wanted = (
                trainable_variables,
                non_trainable_variables,
                optimizer_variables,
                metrics_variables,
            )
            names = [name for name, on in zip(_STATE_NAMES, wanted) if on]
            self._jax_state = dict(zip(names, state))
        return state

    def jax_state_sync(self):
        state = getattr(self, "_jax_state", None)
        if state and not self._jax_state_synced and state.get("optimizer_variables"):
            values = state["optimizer_variables"][len(self.optimizer.variables) :]
            for variable, value in zip(self.weight_net_optimizer.variables, values):
                variable.assign(value)
        super().jax_state_sync()

    def _get_state_sharding_spec(self):
        trainable, non_trainable, optimizer, metrics = super()._get_state_sharding_spec()
        optimizer = list(optimizer) + [
            v.value.sharding for v in self.weight_net_optimizer.variables
        ]
        return trainable, non_trainable, optimizer, metrics


def _stateless(step, data, variables, values):
    """Runs `step(data)` with each variable in `variables` read from, and written to, `values`.

    Args:
      step: a function of `data` that reads and assigns Keras variables, returning logs.
      data: the batch.
      variables: a tuple of lists of Keras variables.
      values: a tuple of lists of arrays, the variables' values (same structure).

    Returns:
      `(logs, new_values)`, `new_values` shaped like `values`; nothing is assigned.
    """
    mapping = []
    for group, group_values in zip(variables, values):
        if len(group) != len(group_values):
            raise ValueError(
                f"the JAX state has {len(group_values)} values for {len(group)} variables; "
                "was the model changed (or recompiled) in the middle of fit()?"
            )
        mapping.extend(zip(group, group_values))
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = step(data)
    new_values = tuple(
        [_current(scope, v, old) for v, old in zip(group, group_values)]
        for group, group_values in zip(variables, values)
    )
    return logs, new_values


def _current(scope, variable, old):
    value = scope.get_current_value(variable)
    return old if value is None else value
