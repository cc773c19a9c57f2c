"""Adam with PyTorch's semantics, for the weight net.

The weight net's meta-gradients carry the factor `α_t / B` and are tiny (~1e−6), so the details
of Adam that rarely matter do matter here. PyTorch's `torch.optim.Adam(weight_decay=λ)`, which the
reference code uses, differs from `keras.optimizers.Adam` in two ways:

- the L2 term `λ θ` is added to the gradient before the moments (Keras' `weight_decay` is
  decoupled);
- `θ −= lr · m̂ / (√v̂ + ε)` with ε = 1e−8 added *after* bias correction. Keras adds ε = 1e−7 to the
  uncorrected `√v`, an effective ε of `ε/√(1−β₂ᵗ)`: 32× larger at the first step.
"""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="gdw_tf")
class TorchAdam(keras.optimizers.Optimizer):
    """Adam with L2 added to the gradient and ε added after bias correction (PyTorch's Adam).

    Args:
      learning_rate: step size (float or schedule).
      beta_1, beta_2: decay rates of the first and second moments.
      epsilon: added to `√v̂` after bias correction.
      l2: coefficient of the L2 term `l2 · θ` added to each gradient.
      name: optimizer name.
      **kwargs: other `keras.optimizers.Optimizer` arguments (clipping, EMA, ...).
    """

    def __init__(
        self,
        learning_rate=1e-3,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        l2=0.0,
        name="torch_adam",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.l2 = l2

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums, self._velocities = self.add_optimizer_variables(
            var_list, ["momentum", "velocity"]
        )

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        gradient = ops.cast(gradient, dtype)
        if self.l2:
            gradient = gradient + self.l2 * variable
        # Python floats go straight to `dtype` (a cast would round them through float32).
        step = ops.cast(self.iterations + 1, dtype)
        correction_1 = 1.0 - ops.power(ops.convert_to_tensor(self.beta_1, dtype), step)
        correction_2 = 1.0 - ops.power(ops.convert_to_tensor(self.beta_2, dtype), step)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        self.assign(m, self.beta_1 * m + (1.0 - self.beta_1) * gradient)
        self.assign(v, self.beta_2 * v + (1.0 - self.beta_2) * ops.square(gradient))
        m_hat = m / correction_1
        v_hat = v / correction_2
        self.assign_sub(variable, lr * m_hat / (ops.sqrt(v_hat) + self.epsilon))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "l2": self.l2,
            }
        )
        return config
