"""The devices a run trains on (`--distribute`): the `tf.distribute` strategy (or Keras' JAX
`DataParallel`), its number of replicas, each worker's run directory, and what several replicas
cannot run.

Devices (`config.distribute`): `none` trains on one device; `mirrored` and `multi_worker` build
the model under a `tf.distribute` strategy, each replica taking its share of every (global)
training and meta batch; `num_replicas` is recorded with the settings. On Keras' JAX backend
`mirrored` is Keras' `DataParallel` over JAX's devices, and `multi_worker` is refused. With
`multi_worker` every worker runs the same command, trains the same weights and writes a complete
run directory of its own: the chief (task type `chief`, or `worker` 0 when the cluster has no
chief) writes `output_dir`, every other worker `output_dir/workers/<task type><index>` (e.g.
`workers/worker1`), which the chief leaves alone. Each worker thus resumes from its own backup
(the workers' backups are interchangeable).

Training data (`training_data`): images in memory go to the strategy whole, and `tf.distribute`
gives each replica its share of every batch. Streamed images (files, TFDS records) are shared
out before they are decoded: each worker's input pipeline draws the same shuffle and decodes
only its own replicas' rows of each global batch (`distribute_datasets_from_function`); so
do the validation batches (`evaluation_data`). The passes every worker needs whole (the scan of
the image files, the index of a TFDS split, the normalisation sample, the label-issue pass) are
shared out between the workers too, and their results added up across them (`worker_share`).

On JAX, `DataParallel` needs batches that its devices divide: `training_data` cuts each training
batch to a multiple of them (at most `devices - 1` rows of an epoch left out; `steps_per_epoch`
counts the batches that stay), `evaluation_data` pads each validation batch with rows of zero
weight (`gdw_tf.data.device_batches`), and `--batch_size` must be a multiple of the devices.
"""

import dataclasses
import json
import os
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from gdw_tf import backend
from gdw_tf.core.model import replica_problem
from gdw_tf.data import device_batches
from gdw_tf.data.worker_share import WorkerShare
from gdw_tf.runs.config import DISTRIBUTE
from gdw_tf.runs.run_dir import WORKERS_DIR


def make_strategy(name):
    """The `tf.distribute` strategy of `--distribute=name` (`gdw_tf.runs.config.DISTRIBUTE`).

    `none` is TensorFlow's default strategy (one device); `mirrored` a `MirroredStrategy` over
    TensorFlow's default devices (all GPUs, else the CPU); `multi_worker` a
    `MultiWorkerMirroredStrategy` of the cluster in `TF_CONFIG`, which must be created before
    TensorFlow runs any op. On Keras' JAX backend `mirrored` sets Keras' `DataParallel`
    distribution over JAX's devices instead, and the default strategy is returned.

    Raises:
      ValueError: if `name` is unknown, is `multi_worker` on another backend than TensorFlow,
        or is `multi_worker` without a JSON `TF_CONFIG`.
    """
    if name == "none":
        return tf.distribute.get_strategy()
    if keras.backend.backend() == "jax" and name == "mirrored":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        return tf.distribute.get_strategy()
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            f"--distribute={name} uses tf.distribute, which needs KERAS_BACKEND=tensorflow "
            f"(now {keras.backend.backend()}); --distribute=mirrored trains on this machine's "
            "devices on JAX too."
        )
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        example = (
            '{"cluster": {"worker": ["host0:port", "host1:port"]}, '
            '"task": {"type": "worker", "index": 0}}'
        )
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "--distribute=multi_worker reads the cluster from the TF_CONFIG environment "
                f"variable, which is not set; set it on every worker (e.g. '{example}'), or use "
                "--distribute=mirrored on one machine."
            )
        try:
            json.loads(os.environ["TF_CONFIG"])
        except json.JSONDecodeError as err:
            raise ValueError(
                f"the TF_CONFIG environment variable is not JSON ({err}); set it "
                f"as '{example}' with this worker's index."
            ) from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown --distribute={name!r}; expected one of {', '.join(DISTRIBUTE)}.")


def num_replicas(strategy):
    """How many replicas share each batch: the strategy's, or the devices of Keras' JAX
    distribution."""
    distribution = keras.distribution.distribution() if keras.backend.backend() == "jax" else None
    if distribution is not None:
        return int(np.prod(distribution.device_mesh.shape))
    return strategy.num_replicas_in_sync


def steps_per_epoch(num_train, batch_size):
    """The training steps of an epoch over `num_train` examples in batches of `batch_size`:
    every batch, but on JAX's devices a last one with fewer rows than devices
    (`device_batches.steps_per_epoch`)."""
    return device_batches.steps_per_epoch(num_train, batch_size, backend.batch_devices())


def worker_config(config, strategy):
    """`config` as this worker runs it: unchanged on the chief (and without a cluster);
    elsewhere writing to `output_dir/workers/<task type><index>`, exporting nothing."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return config
    task_type, index = resolver.task_type, resolver.task_id
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    if task_type == "chief" or (task_type == "worker" and index == 0 and not has_chief):
        return config
    return dataclasses.replace(
        config,
        output_dir=os.path.join(config.output_dir, WORKERS_DIR, f"{task_type}{index}"),
        export_dir=None,
    )


def worker_share(strategy) -> WorkerShare | None:
    """This worker's share of the passes every worker needs whole (`WorkerShare`), or None
    without a cluster of several workers. Worker 0 is the chief (task type `chief`, else
    `worker` 0); the workers of a cluster with a chief follow it."""
    resolver = strategy.cluster_resolver
    if resolver is None or not resolver.task_type:
        return None
    cluster = resolver.cluster_spec().as_dict()
    has_chief = "chief" in cluster
    count = len(cluster.get("worker", [])) + has_chief
    if count < 2:
        return None
    index = 0 if resolver.task_type == "chief" else resolver.task_id + has_chief
    per_worker = strategy.num_replicas_in_sync // count

    def all_reduce(array):
        # One replica of each worker gives its array, the others zeros: the sum is the workers'.
        values = strategy.experimental_distribute_values_from_function(
            lambda context: (
                tf.constant(array)
                if context.replica_id_in_sync_group % per_worker == 0
                else tf.zeros(array.shape, array.dtype)
            )
        )
        return strategy.reduce(tf.distribute.ReduceOp.SUM, values, axis=None).numpy()

    return WorkerShare(index, count, all_reduce)


def check_replicas(config, num_replicas):
    """Refuses a configuration that cannot train on `num_replicas` replicas (before any data is
    loaded; `GDWModel.fit` applies the same rules).

    Raises:
      ValueError: if the meta batch (or on JAX the batch) does not split evenly across the
        replicas, or the nested meta-gradient or (on TensorFlow) a meta interval above 1, both
        one replica only, is asked for with more than one.
    """
    devices = backend.batch_devices()
    if config.batch_size % devices:
        raise ValueError(
            f"--batch_size={config.batch_size} does not split over the {devices} devices of "
            f"--distribute={config.distribute} on JAX; use a multiple of {devices}."
        )
    problem = replica_problem(
        config.method,
        config.meta_batch_size,
        config.meta_grad,
        config.meta_interval,
        num_replicas,
        prefix="--",
        where=f", --distribute={config.distribute}",
    )
    if problem:
        raise ValueError(problem)


def training_data(
    strategy: tf.distribute.Strategy,
    make_dataset: Callable[[tf.distribute.InputContext | None], tf.data.Dataset],
    *,
    streamed: bool,
    extend: Callable[[tf.data.Dataset, tf.distribute.InputContext | None], tf.data.Dataset]
    | None = None,
) -> tuple[tf.data.Dataset, tf.data.Dataset | tf.distribute.DistributedDataset]:
    """The training data of `fit`, and the dataset whose passes it repeats.

    Args:
      strategy: the run's strategy.
      make_dataset: one pass over the training data (`input_pipeline.train_dataset`), given
        `None` for the whole of each batch, or an input pipeline's `tf.distribute.InputContext`
        for the rows of that pipeline's replicas.
      streamed: the images are streamed (decoded by the pipeline). With several replicas they
        are shared out by `make_dataset(context)` before decoding, so that every worker decodes
        only its share; images in memory are left to the strategy.
      extend: optional; given the repeated dataset and its input context (as `make_dataset`),
        returns what `fit` reads of it (`meta_stream.with_meta_batches` adds the meta batches).

    Returns:
      `(dataset, fit_data)`: this process's one-pass dataset (each iterator over it draws the
      next pass's order, which a resumed run replays: `callbacks.make_callbacks`) and what
      `fit` reads: the repeated dataset, or the strategy's distributed dataset made of it.
    """
    if extend is None:
        extend = lambda dataset, context: dataset  # noqa: E731
    if not streamed or strategy.num_replicas_in_sync == 1:
        # On JAX, each batch cut to a multiple of the devices (`steps_per_epoch`).
        dataset = device_batches.even_batches(
            make_dataset(None), backend.batch_devices(), pad=False
        )
        return dataset, extend(dataset.repeat(), None)
    made = []

    def dataset_fn(context):
        made.append(make_dataset(context))
        return extend(made[-1].repeat(), context)

    fit_data = strategy.distribute_datasets_from_function(dataset_fn)
    if len(made) != 1:  # One input pipeline per worker process.
        raise RuntimeError(f"expected one input pipeline in this process; {len(made)} were made.")
    return made[0], fit_data


def evaluation_data(
    strategy: tf.distribute.Strategy,
    make_dataset: Callable[[tf.distribute.InputContext | None], tf.data.Dataset],
    *,
    streamed: bool,
) -> tf.data.Dataset | tf.distribute.DistributedDataset:
    """The validation data of `fit`: `make_dataset(None)` (`input_pipeline.eval_dataset`),
    which `tf.distribute` shares out; or, for streamed images on several replicas, the
    strategy's distributed dataset of `make_dataset(context)`, each input pipeline decoding
    only its replicas' rows of each batch. The metrics are means over every row either way: on
    JAX, each batch is padded to a multiple of the devices with rows of zero weight
    (`device_batches.even_batches`)."""
    if not streamed or strategy.num_replicas_in_sync == 1:
        return device_batches.even_batches(make_dataset(None), backend.batch_devices(), pad=True)
    return strategy.distribute_datasets_from_function(make_dataset)
