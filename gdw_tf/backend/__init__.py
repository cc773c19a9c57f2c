"""The backend-specific part of a GDW step: automatic differentiation and reading variables.

Everything else (the weighting arithmetic, the step, the model) is written once with `keras.ops`.
This mirrors Keras' own layout, where a small trainer per backend sits under shared logic.
"""

import keras

if keras.backend.backend() == "tensorflow":
    from gdw_tf.backend.tensorflow import checked_labels
    from gdw_tf.backend.tensorflow import jvp
    from gdw_tf.backend.tensorflow import nested_meta_gradient
    from gdw_tf.backend.tensorflow import read_values
    from gdw_tf.backend.tensorflow import value_and_grad
    from gdw_tf.backend.tensorflow import vjp
else:
    raise ImportError(
        f"gdw_tf supports the TensorFlow backend; KERAS_BACKEND={keras.backend.backend()!r}."
    )

__all__ = ["checked_labels", "jvp", "nested_meta_gradient", "read_values", "value_and_grad", "vjp"]
