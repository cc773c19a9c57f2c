"""Automatic differentiation for the GDW step on the JAX backend.

The same primitives as `gdw_tf.backend.tensorflow`, with `jax.vjp`, `jax.jvp` and
`jax.value_and_grad`. JAX's VJP function is itself differentiable, so the nested
(double-backprop) meta-gradient is `jax.value_and_grad` over it.

One difference: JAX cannot raise from inside a compiled (`jax.jit`) function, so `checked_labels`
checks labels only when they are concrete (`run_eagerly=True`). Under `jit` (the default) a dataset
label outside `[0, num_classes)` is not caught: its one-hot row is all zero. NumPy training data is
still checked before training by `GDWModel.fit`, on every backend.
"""

import jax
import keras
import numpy as np


def vjp(fn, primals):
    """Runs `fn(primals) -> (out, aux)` once and returns `(out, aux, vjp_fn)`.

    `vjp_fn(cotangent)` is `(∂out/∂primals)ᵀ · cotangent`, a list shaped like `primals`. It can be
    called several times, and is differentiable in `cotangent` (the nested meta-gradient uses this).
    """
    out, pullback, aux = jax.vjp(fn, primals, has_aux=True)

    def vjp_fn(cotangent):
        (grads,) = pullback(jax.numpy.asarray(cotangent, dtype=out.dtype))
        return grads

    return out, aux, vjp_fn


def value_and_grad(fn, primals):
    """Runs `fn(primals) -> (scalar, aux)`; returns `(scalar, aux, ∂scalar/∂primals)`."""
    (value, aux), grads = jax.value_and_grad(fn, has_aux=True)(primals)
    return value, aux, grads


def jvp(fn, primals, tangents):
    """Forward mode: returns `(fn(primals), (∂fn/∂primals) · tangents)`."""
    return jax.jvp(fn, (list(primals),), (list(tangents),))


def vjp_and_transpose(vjp_fn, cotangent):
    """`(vjp_fn(cotangent), transpose_fn)`: `vjp_fn` is linear in the cotangent, `c ↦ Jᵀc`, and
    `transpose_fn(tangent)` is its transpose, `J · tangent` (a JVP), by reverse mode over it."""
    grads, pullback = jax.vjp(vjp_fn, cotangent)

    def transpose_fn(tangent):
        (jvp,) = pullback(list(tangent))
        return jvp

    return grads, transpose_fn


def nested_meta_gradient(vjp_fn, cotangent, learning_rate, params, meta_loss_fn):
    """`∂L_meta/∂cotangent` by differentiating through the virtual step (double backprop).

    The virtual step is `θ' = θ − α · vjp_fn(cotangent)`; the meta loss is `meta_loss_fn(θ')`.
    This is what the reference code does with `create_graph=True`.

    Returns:
      `(meta_loss, ∂meta_loss/∂cotangent)`.
    """

    def meta_loss_of(cotangent):
        grads = vjp_fn(cotangent)
        virtual = [p - learning_rate * g for p, g in zip(params, grads)]
        meta_loss, _ = meta_loss_fn(virtual)
        return meta_loss

    return jax.value_and_grad(meta_loss_of)(cotangent)


def read_values(variables):
    """The current values of Keras variables, as arrays (not variables) to differentiate at.

    Inside a `keras.StatelessScope` (the JAX train step runs in one) these are the scope's values.
    """
    return [v.value for v in variables]


def checked_labels(labels, num_classes):
    """`labels`; checked to lie in `[0, num_classes)` only when concrete (not under `jax.jit`)."""
    try:
        values = np.asarray(labels)
    except jax.errors.TracerArrayConversionError:  # Traced by `jax.jit`: no values to check.
        return labels
    if values.size and (values.min() < 0 or values.max() >= num_classes):
        raise ValueError(
            f"training labels must lie in [0, {num_classes}): check the dataset given to fit(); "
            f"found labels from {int(values.min())} to {int(values.max())}."
        )
    return labels


def default_jit_compile():
    """Always: without `jit_compile`, Keras' JAX trainer runs the step op by op."""
    return True


# Keras on JAX distributes a step by sharding its arrays (`keras.distribution`): the step is
# written for the global batch and XLA inserts the collectives, so there are no replicas to
# combine by hand. Under `DataParallel` Keras splits the training batch over the devices; the meta
# batch, gathered inside the step from the meta set (a constant), is split by `shard_batch`.


def num_replicas():
    """1: a sharded JAX step already sees the global batch."""
    return 1


def replica_id():
    """0 (see `num_replicas`)."""
    return 0


def replica_sum(values):
    """`values` unchanged (see `num_replicas`)."""
    return values


def replica_concat(value):
    """`value` unchanged (see `num_replicas`)."""
    return value


def batch_devices():
    """How many devices Keras' distribution splits each batch over (its batch axis), 1 without
    one: each batch's rows must be a multiple of it (`gdw_tf.data.device_batches`)."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])


def shard_batch(value):
    """`value` (examples on axis 0) split over the devices as Keras splits a training batch,
    under `keras.distribution`; unchanged without one, or when the devices do not divide it (an
    uneven split fails outside `jit`)."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return value
    layout = distribution.get_data_layout(value.shape).backend_layout
    if value.shape[0] % layout.mesh.shape[distribution.batch_dim_name]:
        return value
    return jax.lax.with_sharding_constraint(value, layout)
