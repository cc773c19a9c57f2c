"""The backend-specific part of a GDW step: automatic differentiation, reading variables,
cross-replica sums, and the trainer that runs the step (`Trainer`, a mixin of `GDWModel`).

Everything else (the weighting arithmetic, the step, the model) is written once with `keras.ops`.
This mirrors Keras' own layout, where a small trainer per backend sits under shared logic.

Beside it, one thing of the process that runs any backend: `return_freed_memory`.
"""

import ctypes

import keras


def return_freed_memory():
    """Hands the free pages of the process' heaps back to the system (glibc's `malloc_trim`;
    nothing where there is none). The file list's and the scan's strings, and the tables of
    `tf.data` pipelines that are done, are freed in heaps that otherwise stay resident
    (docs/PERFORMANCE.md, issue 29)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return
    trim(0)


if keras.backend.backend() == "tensorflow":
    from gdw_tf.backend.tensorflow import batch_devices
    from gdw_tf.backend.tensorflow import checked_labels
    from gdw_tf.backend.tensorflow import default_jit_compile
    from gdw_tf.backend.tensorflow import jvp
    from gdw_tf.backend.tensorflow import multi_worker_logs
    from gdw_tf.backend.tensorflow import nested_meta_gradient
    from gdw_tf.backend.tensorflow import num_replicas
    from gdw_tf.backend.tensorflow import read_values
    from gdw_tf.backend.tensorflow import replica_concat
    from gdw_tf.backend.tensorflow import replica_id
    from gdw_tf.backend.tensorflow import replica_sum
    from gdw_tf.backend.tensorflow import shard_batch
    from gdw_tf.backend.tensorflow import value_and_grad
    from gdw_tf.backend.tensorflow import vjp
    from gdw_tf.backend.tensorflow import vjp_and_transpose

    class Trainer:
        """TensorFlow: Keras' trainer runs the model's stateful step (in a `tf.function`)."""

        def train_step(self, data):
            return multi_worker_logs(self._train_step(data))

        def test_step(self, data):
            return multi_worker_logs(self._test_step(data))

        def _maybe_symbolic_build(self, iterator=None, data_batch=None):
            # GDWModel creates all its variables in __init__ and compile(), under the strategy's
            # scope: nothing to build. Under a strategy Keras would take a batch from an extra
            # iterator over the data, which starts a reshuffling dataset's next pass (another
            # data order than on one device), and reduce it across workers, which fails with
            # MultiWorkerMirroredStrategy (keras-team/keras#20585).
            pass

elif keras.backend.backend() == "jax":
    from gdw_tf.backend.jax import batch_devices
    from gdw_tf.backend.jax import checked_labels
    from gdw_tf.backend.jax import default_jit_compile
    from gdw_tf.backend.jax import jvp
    from gdw_tf.backend.jax import nested_meta_gradient
    from gdw_tf.backend.jax import num_replicas
    from gdw_tf.backend.jax import read_values
    from gdw_tf.backend.jax import replica_concat
    from gdw_tf.backend.jax import replica_id
    from gdw_tf.backend.jax import replica_sum
    from gdw_tf.backend.jax import shard_batch
    from gdw_tf.backend.jax import value_and_grad
    from gdw_tf.backend.jax import vjp
    from gdw_tf.backend.jax import vjp_and_transpose
    from gdw_tf.backend.jax_trainer import JAXTrainer as Trainer
else:
    raise ImportError(
        "gdw_tf supports the TensorFlow and JAX backends; "
        f"KERAS_BACKEND={keras.backend.backend()!r}."
    )


def resolve_jit_compile(jit_compile):
    """A `--jit_compile` value, "auto", "true" or "false", as a bool; "auto" is this backend's
    default (TensorFlow: XLA when a GPU is visible; JAX: always)."""
    if jit_compile == "auto":
        return default_jit_compile()
    return jit_compile == "true"


__all__ = [
    "Trainer",
    "batch_devices",
    "checked_labels",
    "default_jit_compile",
    "jvp",
    "nested_meta_gradient",
    "num_replicas",
    "read_values",
    "replica_concat",
    "replica_id",
    "replica_sum",
    "resolve_jit_compile",
    "shard_batch",
    "value_and_grad",
    "vjp",
    "vjp_and_transpose",
]
