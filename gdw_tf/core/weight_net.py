"""The weight net of Meta-Weight-Net and GDW: an MLP from an example's loss to its weight."""

import keras
import numpy as np

from gdw_tf.core.settings import MODEL_DEFAULTS


def build_weight_net(
    hidden: int = MODEL_DEFAULTS.weight_net_hidden, dtype: str | None = None
) -> keras.Model:
    """The Meta-Weight-Net MLP `1 → hidden → 1`: Dense + ReLU, then Dense + sigmoid.

    Initialised as PyTorch's `nn.Linear` (uniform in `±1/√fan_in`, weights and biases), as in the
    reference code.
    """

    def torch_linear_init():
        return keras.initializers.VarianceScaling(
            scale=1.0 / 3.0, mode="fan_in", distribution="uniform"
        )

    inputs = keras.Input((1,), dtype=dtype, name="loss")
    hidden_layer = keras.layers.Dense(
        hidden,
        activation="relu",
        kernel_initializer=torch_linear_init(),
        bias_initializer=keras.initializers.RandomUniform(-1.0, 1.0),
        dtype=dtype,
        name="hidden",
    )
    output_layer = keras.layers.Dense(
        1,
        activation="sigmoid",
        kernel_initializer=torch_linear_init(),
        bias_initializer=keras.initializers.RandomUniform(
            -1.0 / np.sqrt(hidden), 1.0 / np.sqrt(hidden)
        ),
        dtype=dtype,
        name="weight",
    )
    return keras.Model(inputs, output_layer(hidden_layer(inputs)), name="weight_net")
