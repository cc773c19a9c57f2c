"""`GDWModel`: a `keras.Model` whose `train_step` does GDW, MW-Net, L2RW or plain CE.

`fit` sees only the (noisy) training data; meta batches are drawn inside the step from the clean
meta set given at construction. The step itself is `gdw_tf.core.step`; this module holds the Keras
plumbing: variables, optimizers, metrics, meta-batch sampling and serialization.

Departures from the reference code are listed in `gdw_tf.core.step`. One more lives here: the
backbone optimizer is the user's Keras optimizer; `keras.optimizers.SGD(momentum=0.9)` stores a
velocity already scaled by the learning rate, so when the learning rate changes (the cosine
schedule, once an epoch) its next steps differ slightly from PyTorch's SGD, which scales the whole
buffer by the new rate. Between changes the two are the same update.
"""

import dataclasses
from typing import Any

import keras
import numpy as np
from keras import ops

from gdw_tf import backend
from gdw_tf.core import meta_sampling
from gdw_tf.core import meta_scope as meta_scope_lib
from gdw_tf.core import methods
from gdw_tf.core import settings as settings_lib
from gdw_tf.core import step as step_lib
from gdw_tf.core import weighting
from gdw_tf.core.optimizers import TorchAdam
from gdw_tf.core.settings import MODEL_DEFAULTS as _DEFAULT
from gdw_tf.core.settings import ModelSettings
from gdw_tf.core.weight_net import build_weight_net

_TRAIN_METRICS = ("train/loss", "train/accuracy")
_TEST_METRICS = ("loss", "accuracy")


def resolve_outer_lr(outer_lr: float | None, num_classes: int) -> float:
    """GDW's `β`: `outer_lr`, or when it is None the reference's 100 for up to 10 classes and
    1000 above (CIFAR-100)."""
    if outer_lr is None:
        return 100.0 if num_classes <= 10 else 1000.0
    return float(outer_lr)


@keras.saving.register_keras_serializable(package="gdw_tf")
class GDWModel(backend.Trainer, keras.Model):
    """A classifier trained with Generalized Data Weighting (or MW-Net, L2RW, plain CE).

    `fit(x, y)` takes the (noisy) training set; each step draws a meta batch from the clean
    `meta_data` (without replacement, reshuffled each pass over the meta set), learns example
    or class-level weights from it, and takes an SGD step with them. See `docs/ALGORITHM.md`.

    Several devices: create and compile the model under a `tf.distribute` strategy's scope
    (TensorFlow), or after `keras.distribution.set_distribution(DataParallel(...))` (JAX). Each
    replica then takes its share of every training and meta batch, and the step is one device's
    step on the global batch (`gdw_tf.core.step`); `meta_batch_size` must be a multiple of the
    number of replicas. BatchNorm keeps per-replica batch statistics on TensorFlow (moving
    statistics averaged over the replicas) and global ones on JAX.

    Args:
      backbone: a built `keras.Model` mapping inputs to `num_classes` logits.
      num_classes: `C`.
      method: "gdw", "mwnet", "l2rw" or "ce" (`gdw_tf.core.methods.NAMES`).
      meta_data: the clean meta set: a tuple `(x, y)` of arrays, or a `tf.data.Dataset` of
        `(x, y)` (batched or not). May be left out for "ce", or given later with
        `set_meta_data` (a reloaded model does not carry it), or streamed with the training
        data instead (`stream_meta_data`).
      meta_batch_size: meta examples per step.
      outer_lr: `β`, GDW's stage-2 step; None (default) picks the reference's by the number of
        classes: 100 up to 10 classes, 1000 above (CIFAR-100).
      clip: `c`, the bound on each entry of GDW's stage-2 step.
      weight_net_hidden: hidden units of the weight net `1 → hidden → 1`.
      weight_net_lr, weight_net_l2: its Adam (PyTorch semantics, `TorchAdam`) settings.
      l2: L2 coefficient added to the real step's gradient (`G(ω¹) + l2 · θ`), as PyTorch's SGD
        `weight_decay` does. Use a plain Keras optimizer with it (no `weight_decay` there).
      meta_grad: "jvp" (one JVP of the training logits, default) or "nested" (double backprop
        through the meta loss, as the reference; for checking).
      meta_interval: take the meta step (virtual step, meta-gradient, weight-net update) on every
        `meta_interval`-th step only: steps k, 2k, ... counting from 1, as Meta-Weight-Net's
        code does. The other steps weight examples by the current weight net (MW-Net's real
        step; for GDW `ω = v_i` on every class, since the class-level step needs that batch's
        meta-gradient) at about the cost of a CE step, and draw no meta batch. 1 (the default)
        is the method as published. Not for L2RW (no weight net to carry weights between meta
        steps); no effect on CE. On TensorFlow, more than 1 runs on one replica only.
      meta_scope: which parameters the virtual step moves: "all" (default, the method as
        published), "head" (the last layer with trainable weights: the classifier) or "last:k"
        (the last k units with weights; a residual block is one unit). A restricted scope runs
        the trunk below it forward on the meta batch without a backward pass, so the meta step
        costs little more than a forward pass; the real step still trains the whole network.
        Needs a functional backbone. See `gdw_tf.core.meta_scope`; no effect on CE.
      meta_augmentation: optional Keras layer applied to each meta batch in training mode (the
        reference augments meta images like training images).
      seed: seed of the meta-batch order.
      track_examples: if set to the number `N` of training examples, `fit` takes
        `(x, y, index)` batches (`index` in `[0, N)`, e.g.
        `gdw_tf.data.input_pipeline.train_dataset(..., with_index=True)`), and the model keeps
        each example's most recent weights in `example_weights` (instance weight of the real
        step) and `example_label_weights` (GDW: `ω¹` on the given label; other methods: the
        instance weight). After an epoch in which every example is seen once, these are the
        weights of that epoch: low values flag suspicious labels.
      **kwargs: `keras.Model` arguments (name, ...).

    Every argument from `method` to `meta_scope` but `meta_data`, `meta_augmentation` and
    `track_examples` is a field of `gdw_tf.core.settings.ModelSettings`: its default is
    `MODEL_DEFAULTS`' and the flag of the same name's, and it is checked by the same rule.

    Raises:
      ValueError: on an unknown method, a backbone whose output is not `[N, num_classes]`, or a
        meta set that is empty, misses a class, or has labels outside `[0, num_classes)`.
    """

    def __init__(
        self,
        backbone: keras.Model,
        num_classes: int,
        *,
        method: str = _DEFAULT.method,
        meta_data: Any = None,
        meta_batch_size: int = _DEFAULT.meta_batch_size,
        outer_lr: float | None = _DEFAULT.outer_lr,
        clip: float = _DEFAULT.clip,
        weight_net_hidden: int = _DEFAULT.weight_net_hidden,
        weight_net_lr: float = _DEFAULT.weight_net_lr,
        weight_net_l2: float = _DEFAULT.weight_net_l2,
        l2: float = _DEFAULT.l2,
        meta_grad: str = _DEFAULT.meta_grad,
        meta_augmentation: keras.layers.Layer | None = None,
        seed: int = _DEFAULT.seed,
        track_examples: int | None = None,
        meta_interval: int = _DEFAULT.meta_interval,
        meta_scope: str = _DEFAULT.meta_scope,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_arguments(
            backbone,
            num_classes,
            track_examples,
            method=method,
            meta_batch_size=meta_batch_size,
            outer_lr=outer_lr,
            clip=clip,
            weight_net_hidden=weight_net_hidden,
            weight_net_lr=weight_net_lr,
            weight_net_l2=weight_net_l2,
            l2=l2,
            meta_grad=meta_grad,
            meta_interval=meta_interval,
            meta_scope=meta_scope,
            seed=seed,
        )
        self.backbone = backbone
        self.num_classes = int(num_classes)
        self.method = method
        self._method = methods.get(method)
        self.meta_batch_size = int(meta_batch_size)
        self.outer_lr = resolve_outer_lr(outer_lr, num_classes)
        self.clip = float(clip)
        self.weight_net_hidden = int(weight_net_hidden)
        self.weight_net_lr = float(weight_net_lr)
        self.weight_net_l2 = float(weight_net_l2)
        self.l2 = float(l2)
        self.meta_grad = meta_grad
        self.meta_interval = int(meta_interval)
        self.meta_augmentation = meta_augmentation
        self.seed = int(seed)
        self.track_examples = None if track_examples is None else int(track_examples)
        # Checked (and the backbone split) before anything is built; a plain object, untracked.
        self.meta_scope = meta_scope
        self._meta_split = meta_scope_lib.split_backbone(backbone, meta_scope)
        if not self._method.meta_step:
            self._meta_split = None

        # Under a mixed-precision policy the weight net, like the weighting, runs in float32.
        mixed = keras.mixed_precision.global_policy().name.startswith("mixed_")
        self.weight_net = build_weight_net(self.weight_net_hidden, "float32" if mixed else None)
        self.weight_net_optimizer = TorchAdam(self.weight_net_lr, l2=self.weight_net_l2)

        # Meta-batch order: pass `meta_epoch` over the meta set follows
        # `seeded_permutation(num_meta, seed, meta_epoch)`; `meta_cursor` is the position in it.
        # Both are checkpointed with the model.
        # Every replica computes the same values for these and the per-example weights below.
        self.meta_epoch = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            name="meta_epoch",
            aggregation="only_first_replica",
        )
        self.meta_cursor = self.add_weight(
            shape=(),
            initializer="zeros",
            dtype="int32",
            trainable=False,
            name="meta_cursor",
            aggregation="only_first_replica",
        )
        if self.track_examples is not None:
            self.example_weights = self.add_weight(
                shape=(self.track_examples,),
                initializer="zeros",
                trainable=False,
                name="example_weights",
                aggregation="only_first_replica",
            )
            self.example_label_weights = self.add_weight(
                shape=(self.track_examples,),
                initializer="zeros",
                trainable=False,
                name="example_label_weights",
                aggregation="only_first_replica",
            )
        self._meta_x = None
        self._meta_y = None
        self._meta_streamed = False
        self._meta_start = None  # The position `fit` began training at (a streamed meta set).
        if meta_data is not None:
            self.set_meta_data(meta_data)

        names = _TRAIN_METRICS + _TEST_METRICS + self._method.metrics
        self._trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True

    # ----------------------------------------------------------------------------------------
    # Meta set

    def set_meta_data(self, meta_data):
        """Sets the clean meta set: `(x, y)` arrays or a `tf.data.Dataset` of `(x, y)`.

        Raises:
          ValueError: if it is empty, misses a class, has labels that are not integers in
            `[0, num_classes)`, non-finite inputs, inputs that do not fit the backbone, or fewer
            examples than `meta_batch_size`.
        """
        x, y = _meta_arrays(meta_data)
        if y.ndim == 2 and y.shape[-1] == 1:
            y = y[:, 0]
        _check_meta_arrays(x, y, self.num_classes, self.meta_batch_size, self.backbone)
        self._meta_x = ops.convert_to_tensor(x)
        self._meta_y = ops.convert_to_tensor(y.astype("int32"))
        self._meta_streamed = False

    def stream_meta_data(self, y_meta):
        """Sets a meta set that comes with the training data rather than living in the model.

        Each element `fit` reads then ends with its step's meta batch: `(x, y, x_meta, y_meta)`,
        or `(x, y, index, x_meta, y_meta)` with `track_examples`, the rows of the meta set that
        `meta_draws()` gives for that step (`gdw_tf.data.meta_stream.with_meta_batches` builds
        such a dataset from image files, decoding only the rows drawn). On a step that takes no
        meta step (`meta_interval` > 1) the meta batch is not used. The model keeps the labels
        alone, for the checks and the size of the meta set.

        Args:
          y_meta: the meta set's labels, in the order of the rows `meta_draws` gives.

        Raises:
          ValueError: as `set_meta_data`, for the labels.
        """
        y = np.asarray(y_meta)
        if y.ndim == 2 and y.shape[-1] == 1:
            y = y[:, 0]
        _check_meta_arrays(None, y, self.num_classes, self.meta_batch_size, self.backbone)
        self._meta_x = None
        self._meta_y = ops.convert_to_tensor(y.astype("int32"))
        self._meta_streamed = True

    @property
    def num_meta(self):
        """The number of examples in the meta set (0 if none is set)."""
        return 0 if self._meta_y is None else int(self._meta_y.shape[0])

    def meta_draws(self):
        """The rows of the meta set that the training steps draw (`meta_sampling.meta_draws`):
        an iterator of int32 arrays, None for a step that takes no meta step.

        During `fit` they start at the position the model had when training began (after any
        restore of a backup: `fit` records it then), so that a pipeline may call this when it
        starts reading, while the first steps run; outside `fit`, at its current position.
        """
        epoch, cursor, iterations = self._meta_start or self._meta_position()
        return meta_sampling.meta_draws(
            self.num_meta,
            self.meta_batch_size,
            self.seed,
            epoch=epoch,
            cursor=cursor,
            iterations=iterations,
            interval=self.meta_interval,
        )

    def _meta_position(self):
        """`(meta_epoch, meta_cursor, optimizer steps)` as Python ints."""
        variables = (self.meta_epoch, self.meta_cursor, self.optimizer.iterations)
        return tuple(int(variable.numpy()) for variable in variables)

    def _next_meta_batch(self, draw=True, streamed=None):
        """The next meta batch (this replica's share of it): epoch-style sampling without
        replacement. Where `draw` (a boolean tensor) is false, the position in the meta set stays
        where it is, and the batch is not used. With a streamed meta set, `streamed` is the
        batch `(x_meta, y_meta)` the data brought, drawn from the same rows."""
        n, b = self.num_meta, self.meta_batch_size
        cursor, epoch = backend.read_values([self.meta_cursor, self.meta_epoch])
        start, epoch = meta_sampling.next_draw(cursor, epoch, n, b)
        self.meta_epoch.assign(ops.where(draw, epoch, self.meta_epoch.value))
        self.meta_cursor.assign(ops.where(draw, start + b, cursor))
        if streamed is None:
            share = b // backend.num_replicas()
            permutation = meta_sampling.seeded_permutation(n, self.seed, epoch)
            offset = start + backend.replica_id() * share
            indices = ops.take(permutation, offset + ops.arange(share, dtype="int32"))
            x, y = ops.take(self._meta_x, indices, axis=0), ops.take(self._meta_y, indices, axis=0)
        else:
            x, y = streamed[0], ops.cast(ops.reshape(streamed[1], (-1,)), "int32")
        # Split over the devices like a training batch, where a JAX step is sharded.
        x, y = backend.shard_batch(x), backend.shard_batch(y)
        if self.meta_augmentation is not None:
            x = self.meta_augmentation(x, training=True)
        return x, y

    # ----------------------------------------------------------------------------------------
    # Keras plumbing

    def call(self, inputs, training=False):
        return self.backbone(inputs, training=training)

    def compile(
        self, optimizer="sgd", weight_net_optimizer=None, loss=None, metrics=None, **kwargs
    ):
        """Configures training: `optimizer` for the backbone, an optional weight-net optimizer.

        The backbone optimizer's current learning rate is also the virtual step's `α_t`.
        `weight_net_optimizer` defaults to `TorchAdam(weight_net_lr, l2=weight_net_l2)`.
        Other arguments (`jit_compile`, `run_eagerly`, `steps_per_execution`) go to Keras.

        Raises:
          ValueError: if `loss` or `metrics` are given (the step defines both).
        """
        if loss is not None or metrics:
            raise ValueError(
                "GDWModel computes its own loss (cross-entropy with learned weights) and "
                "metrics; call compile() without loss= and metrics=."
            )
        if "mixed_float16" in (self.dtype_policy.name, self.backbone.dtype_policy.name):
            raise ValueError(
                "GDWModel does not scale its losses, which mixed_float16 needs; use "
                "keras.mixed_precision.set_global_policy('mixed_bfloat16') instead."
            )
        super().compile(optimizer=optimizer, **kwargs)
        if weight_net_optimizer is not None:
            self.weight_net_optimizer = keras.optimizers.get(weight_net_optimizer)
        self.optimizer.build(self.backbone.trainable_variables)
        self.weight_net_optimizer.build(self.weight_net.trainable_variables)

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`; NumPy training data is checked first (labels, values, rank).

        A `tf.data.Dataset` is not read ahead of training: a label outside `[0, num_classes)`
        there stops the first step that meets it (graph and eager mode; XLA drops the check).

        Raises:
          ValueError: for labels that are not integers in `[0, num_classes)`, NaN or infinite
            inputs, or inputs whose rank does not fit the backbone; without a meta set where the
            method needs one; or for settings that cannot run on the model's replicas.
        """
        self._check_can_train(kwargs)
        if isinstance(x, np.ndarray) and y is not None and not hasattr(y, "as_numpy_iterator"):
            labels = np.asarray(y)
            if labels.ndim == 2 and labels.shape[-1] == 1:
                labels = labels[:, 0]
            _check_examples(x, labels, self.num_classes, self.backbone, "training")
        if self._meta_streamed:  # Last: after any callback that restores a backup.
            if len(args) > 3:  # fit(x, y, batch_size, epochs, verbose, callbacks, ...)
                args = (*args[:3], [*(args[3] or []), _MetaStart()], *args[4:])
            else:
                kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), _MetaStart()]
        try:
            return super().fit(x, y, *args, **kwargs)
        finally:
            self._meta_start = None

    def train_on_batch(self, x, y=None, *args, **kwargs):
        """`keras.Model.train_on_batch`, after the checks of `fit`."""
        self._check_can_train(kwargs)
        return super().train_on_batch(x, y, *args, **kwargs)

    def _check_can_train(self, fit_kwargs):
        """Refuses to train without what the step needs (the checks of `fit`)."""
        if (
            fit_kwargs.get("sample_weight") is not None
            or fit_kwargs.get("class_weight") is not None
        ):
            raise ValueError(
                "GDWModel learns its own example weights: fit() takes no sample_weight or "
                "class_weight (with track_examples=N, give (x, y, index) batches instead)."
            )
        if not self._method.meta_step:
            return
        if self._meta_y is None:
            raise ValueError(
                f"method={self.method!r} needs a clean meta set: pass meta_data= to GDWModel or "
                "call model.set_meta_data((x_meta, y_meta)) before fit()."
            )
        strategy = getattr(self, "distribute_strategy", None)  # TensorFlow's; JAX shards instead.
        replicas = 1 if strategy is None else strategy.num_replicas_in_sync
        if replicas == 1:
            return
        problem = replica_problem(
            self._method, self.meta_batch_size, self.meta_grad, self.meta_interval, replicas
        )
        if problem:
            raise ValueError(problem)
        if _synchronized_batch_norms(self.backbone):
            raise ValueError(
                "BatchNormalization(synchronized=True) is not supported across replicas (layers "
                f"{_synchronized_batch_norms(self.backbone)}): GDW's meta-gradient does not pass "
                "correctly through its all-reduce. Use synchronized=False (per-replica statistics)."
            )

    def get_compile_config(self):
        config = super().get_compile_config() or {}
        config["weight_net_optimizer"] = keras.saving.serialize_keras_object(
            self.weight_net_optimizer
        )
        return config

    def compile_from_config(self, config):
        """Recompiles a loaded model with both saved optimizers, before their variables load."""
        config = dict(config)
        for key in ("optimizer", "weight_net_optimizer"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        for key in ("loss", "metrics", "weighted_metrics", "loss_weights"):
            config.pop(key, None)
        self.compile(**config)

    @property
    def metrics(self):
        return list(self._trackers.values())

    def _labels(self, y):
        return backend.checked_labels(ops.cast(ops.reshape(y, (-1,)), "int32"), self.num_classes)

    # Each backend's `train_step` and `test_step` (`gdw_tf.backend.Trainer`) run these two, which
    # read and assign the model's variables: directly on TensorFlow, through a
    # `keras.StatelessScope` over the explicit state on JAX.

    def _train_step(self, data):
        streamed = None
        if self._meta_streamed:
            if not isinstance(data, (tuple, list)) or len(data) < 4:
                raise ValueError(
                    "with a streamed meta set (stream_meta_data) each element of the training "
                    "data ends with its step's meta batch: (x, y[, index], x_meta, y_meta) "
                    "(gdw_tf.data.meta_stream.with_meta_batches)."
                )
            data, streamed = tuple(data[:-2]), tuple(data[-2:])
        x, y, index = keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError(
                "GDWModel trains on labelled examples: give fit(x, y), or a dataset of (x, y) "
                "pairs ((x, y, index) with track_examples=N)."
            )
        if (index is None) != (self.track_examples is None):
            raise ValueError(
                "GDWModel learns its own example weights and takes no sample_weight; a third "
                "element (x, y, index) is the example index, used only with track_examples=N."
            )
        y = self._labels(y)
        trainable = backend.read_values(self.backbone.trainable_variables)
        non_trainable = backend.read_values(self.backbone.non_trainable_variables)

        # Forward pass at θ (its VJP serves every backbone gradient of the step).
        fwd = step_lib.forward(
            self._method,
            self.backbone,
            trainable=trainable,
            non_trainable=non_trainable,
            x=x,
            y=y,
            num_classes=self.num_classes,
            split=self._meta_split,
        )

        # Meta-gradients, and the weight-net update.
        meta = is_meta_step = None
        if self._method.meta_step:
            meta, is_meta_step = self._meta_step(fwd, trainable, non_trainable, x, streamed)

        # Real step: G(ω¹) + l2 θ, with weights from the updated weight net.
        real = step_lib.real_gradient(
            self._method,
            fwd,
            meta=meta,
            weight_net=self.weight_net,
            weight_net_trainable=backend.read_values(self.weight_net.trainable_variables),
            outer_lr=self.outer_lr,
            clip=self.clip,
        )
        # Each replica holds its share of G(ω¹) and of the L2 term; the optimizer sums them.
        l2 = self.l2 / backend.num_replicas()
        grads = [g + l2 * t for g, t in zip(real.grads, trainable)]
        self.optimizer.apply(grads, self.backbone.trainable_variables)
        for variable, value in zip(
            self.backbone.non_trainable_variables, _replica_mean_floats(fwd.non_trainable)
        ):
            variable.assign(value)

        # Per-example weights and metrics.
        label_weights = real.instance_weights
        if real.class_weights is not None:  # GDW's ω¹ on the given label.
            label_weights = ops.sum(real.class_weights * fwd.onehot, axis=-1)
        if index is not None:
            self._record_example_weights(index, real.instance_weights, label_weights)
        return self._update_train_metrics(fwd, y, meta, is_meta_step, real, label_weights)

    def _record_example_weights(self, index, instance_weights, label_weights):
        """Keeps the batch's weights at their examples' `index` (gathered from every replica)."""
        index = backend.replica_concat(ops.cast(ops.reshape(index, (-1,)), "int32"))
        index = ops.expand_dims(index, -1)
        for variable, values in (
            (self.example_weights, instance_weights),
            (self.example_label_weights, label_weights),
        ):
            values = backend.replica_concat(ops.cast(values, variable.dtype))
            variable.assign(ops.scatter_update(variable, index, values))

    def _update_train_metrics(self, fwd, y, meta, is_meta_step, real, label_weights):
        """Updates the training metrics with the step; returns the logs (global values)."""
        t = self._trackers
        t["train/loss"].update_state(fwd.per_example_loss)
        t["train/accuracy"].update_state(_correct(fwd.logits, y))
        if meta is not None:
            t["meta/loss"].update_state(
                meta.meta_loss,
                sample_weight=None if is_meta_step is None else ops.cast(is_meta_step, "float32"),
            )
            t["weights/instance_mean"].update_state(real.instance_weights)
        if real.class_weights is not None:
            t["weights/labelled_mean"].update_state(label_weights)
            t["weights/other_mean"].update_state(real.class_weights, sample_weight=1.0 - fwd.onehot)
        logs = {
            name: _global_mean(tracker) for name, tracker in t.items() if name not in _TEST_METRICS
        }
        # Keras' own key first: callbacks that watch `loss` (TerminateOnNaN, EarlyStopping,
        # ReduceLROnPlateau) see the training loss; `train/loss` is the same value, namespaced.
        return {"loss": logs["train/loss"], **logs}

    def _meta_step(self, fwd, trainable, non_trainable, x, streamed=None):
        """Steps 2–6: the meta-gradients and the weight-net update, on every `meta_interval`-th
        step; `(MetaGradient, is_meta_step)`, the second `None` when every step is one.
        `streamed`: the step's meta batch, from the data (`stream_meta_data`)."""
        weight_net_trainable = backend.read_values(self.weight_net.trainable_variables)

        def meta_gradient(x_meta, y_meta):
            return step_lib.meta_gradient(
                self._method,
                fwd,
                backbone=self.backbone,
                weight_net=self.weight_net,
                trainable=trainable,
                non_trainable=non_trainable,
                weight_net_trainable=weight_net_trainable,
                x=x,
                x_meta=x_meta,
                y_meta=y_meta,
                learning_rate=self.optimizer.learning_rate,
                num_classes=self.num_classes,
                meta_grad=self.meta_grad,
                split=self._meta_split,
            )

        if self.meta_interval == 1:
            meta = meta_gradient(*self._next_meta_batch(streamed=streamed))
            if meta.weight_net_grads is not None:
                self.weight_net_optimizer.apply(
                    meta.weight_net_grads, self.weight_net.trainable_variables
                )
            return meta, None

        # Steps k, 2k, ... (counting from 1) take the meta step. Its computation runs in a
        # conditional; the state it changes (meta-set position, weight net, its optimizer) is
        # small and is updated on every step, then kept on meta steps only (as Keras' JAX
        # optimizers do for state in a conditional: JAX's branches cannot assign variables).
        is_meta_step = meta_sampling.is_meta_step(self.optimizer.iterations, self.meta_interval)
        x_meta, y_meta = self._next_meta_batch(draw=is_meta_step, streamed=streamed)
        meta = ops.cond(
            is_meta_step,
            lambda: meta_gradient(x_meta, y_meta),
            lambda: step_lib.no_meta_gradient(
                self._method, fwd, self.weight_net, weight_net_trainable
            ),
        )
        _apply_where(
            is_meta_step,
            self.weight_net_optimizer,
            meta.weight_net_grads,
            self.weight_net.trainable_variables,
        )
        return meta, is_meta_step

    def _test_step(self, data):
        # A sample weight of 0 leaves a row out of the metrics (`device_batches.even_batches`).
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y = self._labels(y)
        logits = step_lib.float32_at_least(self(x, training=False))
        onehot = ops.one_hot(y, self.num_classes, dtype=logits.dtype)
        self._trackers["loss"].update_state(
            weighting.per_example_cross_entropy(logits, onehot), sample_weight=sample_weight
        )
        self._trackers["accuracy"].update_state(_correct(logits, y), sample_weight=sample_weight)
        return {name: _global_mean(self._trackers[name]) for name in _TEST_METRICS}

    def get_config(self):
        meta_augmentation = self.meta_augmentation
        if meta_augmentation is not None:
            meta_augmentation = keras.saving.serialize_keras_object(meta_augmentation)
        return {
            "name": self.name,
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "num_classes": self.num_classes,
            "meta_augmentation": meta_augmentation,
            "track_examples": self.track_examples,
            **{
                field.name: getattr(self, field.name) for field in dataclasses.fields(ModelSettings)
            },
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        if config.get("meta_augmentation") is not None:
            config["meta_augmentation"] = keras.saving.deserialize_keras_object(
                config["meta_augmentation"]
            )
        return cls(**config)


class _MetaStart(keras.callbacks.Callback):
    """Records, for `GDWModel.meta_draws`, the meta-set position at which training begins (the
    streamed meta batches are read while the first steps already move it)."""

    def on_train_begin(self, logs=None):
        self.model._meta_start = self.model._meta_position()


def replica_problem(
    method: str | methods.Method,
    meta_batch_size: int,
    meta_grad: str,
    meta_interval: int,
    replicas: int,
    *,
    prefix: str = "",
    where: str = "",
) -> str | None:
    """Why a model with these settings cannot train on `replicas` replicas, or None.

    Args:
      method: a method name or `gdw_tf.core.methods.Method`.
      meta_batch_size, meta_grad, meta_interval: the model's settings.
      replicas: the number of replicas sharing each batch.
      prefix: put before setting names ("--" for flags).
      where: added after the number of replicas in the message (", --distribute=mirrored").
    """
    if not methods.get(method).meta_step or replicas == 1:
        return None
    if meta_batch_size % replicas:
        return (
            f"{prefix}meta_batch_size={meta_batch_size} must be a multiple of the number of "
            f"replicas ({replicas}{where}): each replica takes an equal share of the meta batch."
        )
    if meta_grad == "nested":
        return (
            f"{prefix}meta_grad=nested runs on one replica only (here {replicas}{where}); use "
            f"{prefix}meta_grad=jvp."
        )
    if meta_interval > 1 and keras.backend.backend() == "tensorflow":
        return (
            f"{prefix}meta_interval={meta_interval} runs on one replica only on TensorFlow (here "
            f"{replicas}{where}): TensorFlow cannot sum over replicas inside the conditional that "
            f"skips the meta step. Use {prefix}meta_interval=1, or Keras' JAX backend "
            "(KERAS_BACKEND=jax, with keras.distribution.DataParallel)."
        )
    return None


def _apply_where(condition, optimizer, grads, variables):
    """`optimizer.apply(grads, variables)` where `condition` (a boolean scalar) holds; otherwise
    the variables and the optimizer's state keep their values. The update is computed either
    way and the values to keep are then chosen, so it suits small models (the weight net)."""
    state = list(variables) + list(optimizer.variables)
    before = backend.read_values(state)
    optimizer.apply(grads, variables)
    for variable, old in zip(state, before):
        variable.assign(ops.where(condition, variable.value, old))


def _synchronized_batch_norms(model):
    """Names of the BatchNormalization layers in `model` that synchronize across replicas."""
    found = []
    for layer in getattr(model, "layers", []):
        if getattr(layer, "synchronized", False):
            found.append(layer.name)
        found += _synchronized_batch_norms(layer)  # inside a nested model
    return found


def _replica_mean_floats(values):
    """The floating-point `values` averaged over the replicas (BatchNorm's moving statistics,
    moved by each replica's own batch statistics), the others as they are; all of them unchanged
    with one replica."""
    replicas = backend.num_replicas()
    floats = [
        i
        for i, value in enumerate(values)
        if keras.backend.is_float_dtype(keras.backend.standardize_dtype(value.dtype))
    ]
    if replicas == 1 or not floats:
        return values
    sums = backend.replica_sum([values[i] for i in floats])
    values = list(values)
    for i, total in zip(floats, sums):
        values[i] = total / replicas
    return values


def _global_mean(tracker):
    """A `keras.metrics.Mean`'s value over all replicas (in a replica, `result()` is that
    replica's alone)."""
    total, count = backend.replica_sum(backend.read_values([tracker.total, tracker.count]))
    return ops.divide_no_nan(total, count)


def _correct(logits, labels):
    return ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), labels), "float32")


def _check_arguments(backbone, num_classes, track_examples, **settings):
    """Refuses bad constructor arguments; the settings by their rules in `gdw_tf.core.settings`."""
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer ≥ 2; got {num_classes!r}.")
    for name, value in settings.items():
        ModelSettings.check(name, value)
    if track_examples is not None and (
        not isinstance(track_examples, (int, np.integer)) or track_examples < 1
    ):
        raise ValueError(f"track_examples must be a positive integer; got {track_examples!r}.")
    problem = settings_lib.meta_interval_problem(settings["method"], settings["meta_interval"])
    if problem:
        raise ValueError(problem)
    if not isinstance(backbone, keras.Model) or not backbone.built:
        raise ValueError(
            "backbone must be a built keras.Model (a functional model, or call it on a batch "
            "first) mapping inputs to logits."
        )
    outputs = getattr(backbone, "outputs", None)
    output_shape = tuple(outputs[0].shape) if outputs else None
    if output_shape is not None and (len(output_shape) != 2 or output_shape[-1] != num_classes):
        raise ValueError(
            f"the backbone's output has shape {output_shape}, but num_classes={num_classes}: "
            f"its last layer must give {num_classes} logits per example."
        )


def _meta_arrays(meta_data):
    """`(x, y)` NumPy arrays from a tuple of arrays or a `tf.data.Dataset` of `(x, y)`."""
    if isinstance(meta_data, (tuple, list)) and len(meta_data) == 2:
        return np.asarray(meta_data[0]), np.asarray(meta_data[1])
    if hasattr(meta_data, "as_numpy_iterator"):
        xs, ys = [], []
        for element in meta_data.as_numpy_iterator():
            if not (isinstance(element, tuple) and len(element) == 2):
                raise ValueError("the meta dataset must yield (x, y) pairs.")
            xs.append(element[0])
            ys.append(element[1])
        if not ys:
            raise ValueError("the meta set is empty: give at least one example of every class.")
        if np.ndim(ys[0]) == 0:
            return np.stack(xs), np.stack(ys)
        return np.concatenate(xs), np.concatenate(ys)
    raise ValueError(
        "meta_data must be a tuple (x_meta, y_meta) of arrays or a tf.data.Dataset of (x, y); "
        f"got {type(meta_data).__name__}."
    )


def _check_examples(x, y, num_classes, backbone, what):
    """Checks labelled examples: integer labels in range, finite inputs of the right rank (the
    labels alone where `x` is None)."""
    if len(y) == 0:
        raise ValueError(f"the {what} set is empty: give at least one example of every class.")
    if y.ndim != 1 or (x is not None and len(x) != len(y)):
        raise ValueError(
            f"{what} labels must be one integer per example; got "
            + ("" if x is None else f"x of {len(x)} examples and ")
            + f"y of shape {y.shape}."
        )
    if not np.issubdtype(y.dtype, np.integer):
        if (
            not np.issubdtype(y.dtype, np.number)
            or not np.all(np.isfinite(y))
            or not np.all(y == np.round(y))
        ):
            raise ValueError(f"{what} labels must be integer class indices; got dtype {y.dtype}.")
    if y.min() < 0 or y.max() >= num_classes:
        raise ValueError(
            f"{what} labels must lie in [0, {num_classes}) (num_classes={num_classes}); found "
            f"labels from {int(y.min())} to {int(y.max())}."
        )
    if x is None:
        return
    if np.issubdtype(x.dtype, np.floating) and not np.all(np.isfinite(x)):
        raise ValueError(f"the {what} inputs contain NaN or infinite values; clean them first.")
    expected = tuple(backbone.inputs[0].shape[1:]) if getattr(backbone, "inputs", None) else None
    if expected is not None and (
        len(expected) != x.ndim - 1
        or any(e is not None and e != a for e, a in zip(expected, x.shape[1:]))
    ):
        raise ValueError(
            f"{what} inputs have shape {x.shape[1:]} per example; the backbone expects {expected}."
        )


def _check_meta_arrays(x, y, num_classes, meta_batch_size, backbone):
    _check_examples(x, y, num_classes, backbone, "meta")
    missing = sorted(set(range(num_classes)) - set(np.unique(y).astype(int).tolist()))
    if missing:
        raise ValueError(
            f"the meta set has no example of class(es) {missing[:10]}; it must be clean and "
            "cover every class (gdw_tf.data.split.balanced_meta_subset builds one)."
        )
    problem = settings_lib.meta_batch_problem(meta_batch_size, len(y))
    if problem:
        raise ValueError(problem)
