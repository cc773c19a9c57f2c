"""Automatic differentiation and cross-replica sums for the GDW step on the TensorFlow backend.

`vjp` and `jvp` follow `jax.vjp` and `jax.jvp`: a function of a list of tensors, its output, and
a function (or value) for the product with a cotangent (or tangent). A persistent tape lets one
forward pass serve several VJPs, as GDW's step needs (`G(ω⁰)` and `G(ω¹)`).

Under a `tf.distribute` strategy each replica runs the step on its share of the batch; the
`replica_*` functions combine what must be computed over the global batch (sums, the virtual
step's gradient, the meta gradient). Without a strategy they are the identity.
"""

import tensorflow as tf
from keras.src.backend.tensorflow.trainer import _collective_all_reduce_multi_worker

_ZERO = tf.UnconnectedGradients.ZERO


def vjp(fn, primals):
    """Runs `fn(primals) -> (out, aux)` once and returns `(out, aux, vjp_fn)`.

    `vjp_fn(cotangent)` is `(∂out/∂primals)ᵀ · cotangent`, a list shaped like `primals`. It can be
    called several times; called under an outer tape that watches `cotangent`, the product is
    itself differentiable in `cotangent` (the nested-tape meta-gradient relies on this).
    """
    tape = tf.GradientTape(persistent=True)
    with tape:
        tape.watch(primals)
        out, aux = fn(primals)

    def vjp_fn(cotangent):
        return tape.gradient(out, primals, output_gradients=cotangent, unconnected_gradients=_ZERO)

    return out, aux, vjp_fn


def value_and_grad(fn, primals):
    """Runs `fn(primals) -> (scalar, aux)`; returns `(scalar, aux, ∂scalar/∂primals)`."""
    with tf.GradientTape() as tape:
        tape.watch(primals)
        value, aux = fn(primals)
    return value, aux, tape.gradient(value, primals, unconnected_gradients=_ZERO)


def jvp(fn, primals, tangents):
    """Forward mode: returns `(fn(primals), (∂fn/∂primals) · tangents)`."""
    with tf.autodiff.ForwardAccumulator(primals, tangents) as accumulator:
        out = fn(primals)
    return out, accumulator.jvp(out, unconnected_gradients=_ZERO)


def vjp_and_transpose(vjp_fn, cotangent):
    """`(vjp_fn(cotangent), transpose_fn)`: `vjp_fn` is linear in the cotangent, `c ↦ Jᵀc`, and
    `transpose_fn(tangent)` is its transpose, `J · tangent` (a JVP), by reverse mode over it."""
    with tf.GradientTape() as tape:
        tape.watch(cotangent)
        grads = vjp_fn(cotangent)

    def transpose_fn(tangent):
        return tape.gradient(
            grads, cotangent, output_gradients=tangent, unconnected_gradients=_ZERO
        )

    return grads, transpose_fn


def nested_meta_gradient(vjp_fn, cotangent, learning_rate, params, meta_loss_fn):
    """`∂L_meta/∂cotangent` by differentiating through the virtual step (double backprop).

    The virtual step is `θ' = θ − α · vjp_fn(cotangent)`; the meta loss is `meta_loss_fn(θ')`.
    This is what the reference code does with `create_graph=True`.

    Returns:
      `(meta_loss, ∂meta_loss/∂cotangent)`.
    """
    with tf.GradientTape() as tape:
        tape.watch(cotangent)
        grads = vjp_fn(cotangent)
        virtual = [p - learning_rate * g for p, g in zip(params, grads)]
        meta_loss, _ = meta_loss_fn(virtual)
    return meta_loss, tape.gradient(meta_loss, cotangent, unconnected_gradients=_ZERO)


def read_values(variables):
    """The current values of Keras variables, as tensors (not variables) to differentiate at."""
    return [tf.identity(v.value) for v in variables]


def checked_labels(labels, num_classes):
    """`labels`, with a run-time check that each lies in `[0, num_classes)`."""
    message = f"training labels must lie in [0, {num_classes}): check the dataset given to fit()"
    with tf.control_dependencies(
        [
            tf.debugging.assert_non_negative(labels, message=message),
            tf.debugging.assert_less(labels, tf.cast(num_classes, labels.dtype), message=message),
        ]
    ):
        return tf.identity(labels)


def multi_worker_logs(logs):
    """A step's scalar logs, as Keras can average them over the workers of a
    `MultiWorkerMirroredStrategy` (shape `[1]`; Keras reduces them along axis 0, which a
    scalar lacks: keras-team/keras#20585); unchanged otherwise."""
    if not _collective_all_reduce_multi_worker(tf.distribute.get_strategy()):
        return logs
    return {name: tf.reshape(value, [1]) for name, value in logs.items()}


def _replica_context():
    """The replica context of a tf.distribute strategy with several replicas, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return None
    return context


def num_replicas():
    """How many replicas run this step together (1 without a tf.distribute strategy)."""
    context = _replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def replica_id():
    """This replica's index in `[0, num_replicas())`; 0 without a strategy."""
    context = _replica_context()
    return 0 if context is None else context.replica_id_in_sync_group


def replica_sum(values):
    """`values` (a tensor or a list of them) summed over the replicas; unchanged with one."""
    context = _replica_context()
    if context is None:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.SUM, values)


def replica_concat(value):
    """The replicas' `value`s concatenated along axis 0, in replica order; unchanged with one."""
    context = _replica_context()
    if context is None:
        return value
    return context.all_gather(value, axis=0)


def shard_batch(value):
    """`value` unchanged: each replica already holds its share (see `replica_id`)."""
    return value


def batch_devices():
    """1: `tf.distribute` shares out a batch that its replicas do not divide itself
    (`gdw_tf.data.device_batches`)."""
    return 1


def default_jit_compile():
    """Whether to compile with XLA by default: on GPUs (on CPUs TF's graph mode is faster)."""
    return bool(tf.config.list_physical_devices("GPU"))
