"""A complete, resumable training run: data protocol → GDWModel → fit → results on disk.

`run(config)` does what `python -m gdw_tf.train` does, from a plain `gdw_tf.runs.config.Config`:

1. refuses an output directory holding a finished run (unless `overwrite`) or an unfinished
   run with another configuration — before any data is loaded;
2. loads the dataset, builds the split (`build_split`: the benchmark protocol's
   `gdw_tf.data.split.make_split` with its disjoint clean meta set, label noise and long tail,
   or own data's; then the reviews, the automatic trusted set) and saves it with the
   configuration — or, resuming, loads them;
3. trains `GDWModel` with SGD, the reference's per-epoch cosine schedule, validation on the test
   set each epoch, and Keras callbacks for the progress bar, `history.csv`, TensorBoard logs,
   per-epoch backups (`BackupAndRestore`) and a stop on a non-finite loss;
4. writes `example_weights.npz`, `label_issues.csv`, `report.html` and `review.html`,
   `model.keras` (the backbone), optionally a serving export, and last `results.json`, whose
   presence marks the run finished.

The run directory's files are listed in `gdw_tf.runs.run_dir`; devices in `gdw_tf.runs.distribute`.

Resuming: a run started again with the same configuration continues from the last finished
epoch and ends with the weights an uninterrupted run ends with. `BackupAndRestore` restores
every variable of the model (backbone, both optimizers, meta-batch position, example weights,
meta augmentation's counter); `_ReplayDataOrder` restores the training data's shuffle and
augmentation order, which `tf.data` keeps outside the model. (Both rely on TensorFlow's
deterministic ops for bit-equal results: `tf.config.experimental.enable_op_determinism()`.)
"""

import dataclasses
import json
import os
import shutil
import time

import keras
import numpy as np

from gdw_tf import backend
from gdw_tf.core import methods
from gdw_tf.core.meta_sampling import MetaAugmentation
from gdw_tf.core.model import GDWModel
from gdw_tf.core.model import resolve_outer_lr
from gdw_tf.core.settings import MODEL_DEFAULTS
from gdw_tf.core.settings import ModelSettings
from gdw_tf.core.settings import meta_batch_problem
from gdw_tf.data import corrections as corrections_lib
from gdw_tf.data import datasets
from gdw_tf.data import image_files
from gdw_tf.data import input_pipeline
from gdw_tf.data import meta_stream
from gdw_tf.data import own_data
from gdw_tf.data import split as split_lib
from gdw_tf.nets import backbones
from gdw_tf.runs import auto_meta
from gdw_tf.runs import callbacks
from gdw_tf.runs import config as config_lib
from gdw_tf.runs import distribute
from gdw_tf.runs import lock
from gdw_tf.runs import results as results_lib
from gdw_tf.runs import run_dir
from gdw_tf.runs import serving
from gdw_tf.runs import stages as stages_lib
from gdw_tf.runs.config import Config


def run(config: Config) -> dict:
    """Trains as `config` says, writes the run directory, and returns the results dict.

    With `config.distribute="multi_worker"`, every worker calls this with the same config; a
    worker other than the chief writes `output_dir/workers/<task type><index>` instead of
    `output_dir` (see the module docstring) and returns its own, identical, results.

    Raises:
      ValueError: on bad input (a finished run or another config in `output_dir`, an unknown
        or corrupt dataset, a meta set larger than the smallest class allows, a meta batch that
        does not split across the replicas, ...), before any training.
      NonFiniteLossError: if the loss became non-finite (the last good epoch stays in backup/).
    """
    start = time.perf_counter()
    stages = stages_lib.Stages()
    stages.mark("start")
    # First: MultiWorkerMirroredStrategy must exist before TensorFlow runs any op.
    strategy = distribute.make_strategy(config.distribute)
    config = distribute.worker_config(config, strategy)
    replicas = distribute.num_replicas(strategy)
    distribute.check_replicas(config, replicas)
    with lock.hold(config.output_dir):  # One process per run directory.
        return _run(config, strategy, replicas, start=start, stages=stages)


def _run(config, strategy, replicas, *, start, stages):
    """`run`, once the run directory is this process's."""
    run_dir.prepare_output_dir(config)
    if config.model_weights == "imagenet":  # Found or downloaded now, before the data is read.
        backbones.check_imagenet_weights(config.model)
    # Python, NumPy and TensorFlow seeds: the initial weights, and with the dataset's own seeds
    # (which TensorFlow combines with its global seed) the data order.
    keras.utils.set_random_seed(config.seed)

    # Data: the dataset, then the split (drawn once, then reloaded). In a cluster each worker
    # decodes its share of the scan, the normalisation sample and the label-issue pass.
    share = distribute.worker_share(strategy)
    dataset = load_data(config, share=share)
    backend.return_freed_memory()
    stages.mark("data")
    split = run_dir.load_or_make_split(
        config, dataset.y_train, make=lambda: build_split(config, dataset)
    )
    stages.mark("split")
    settings = run_settings(config, dataset, split, replicas, share=share)
    run_dir.write_json(
        os.path.join(config.output_dir, run_dir.CONFIG_FILE),
        {"config": config.to_dict(), **settings.to_dict()},
    )

    # Pipelines: the noisy training set with example indices; the clean meta set streamed with
    # it if its images are (only the rows drawn are decoded), else decoded here.
    mean, std = settings.normalization["mean"], settings.normalization["std"]
    x_train = dataset.x_train[split.train_indices]
    meta_step = methods.get(config.method).meta_step
    x_meta = dataset.x_train[split.meta_indices]
    stream_meta = meta_step and image_files.is_streamed(x_meta)

    def add_meta_batches(data, input_context):
        return meta_stream.with_meta_batches(
            data,
            x_meta,
            split.meta_labels,
            lambda: model.meta_draws(),  # The model, built below, when fit starts reading.
            meta_batch_size=settings.meta_batch_size,
            mean=mean,
            std=std,
            input_context=input_context,
        )

    train_data, fit_data = distribute.training_data(
        strategy,
        lambda input_context: input_pipeline.train_dataset(
            x_train,
            split.train_noisy_labels,
            config.batch_size,
            seed=config.seed,
            augment=settings.augment,
            mean=mean,
            std=std,
            with_index=True,
            input_context=input_context,
        ),
        streamed=image_files.is_streamed(x_train),
        extend=add_meta_batches if stream_meta else None,
    )
    test_data = None  # Own data without --test_data: no test accuracy.
    if len(dataset.x_test):
        test_data = distribute.evaluation_data(
            strategy,
            lambda input_context: input_pipeline.eval_dataset(
                dataset.x_test,
                dataset.y_test,
                config.batch_size,
                mean,
                std,
                input_context=input_context,
            ),
            streamed=image_files.is_streamed(dataset.x_test),
        )
    meta_data = None
    if meta_step and not stream_meta:
        meta_data = (input_pipeline.normalize(x_meta, mean, std).numpy(), split.meta_labels)

    # Model and training: one pass of the (reshuffling) training set per epoch.
    with strategy.scope():
        model = build_gdw_model(config, settings, meta_data)
    if stream_meta:
        model.stream_meta_data(split.meta_labels)
    stages.mark("pipelines_and_model")
    model.fit(
        fit_data,
        steps_per_epoch=settings.steps_per_epoch,
        shuffle=False,
        validation_data=test_data,
        epochs=config.epochs,
        callbacks=callbacks.make_callbacks(
            config, train_data, settings.steps_per_epoch, share=share
        ),
        verbose=config.verbose,
    )
    # The training pipelines' tables (every key, label and position) are not read again.
    del train_data, fit_data
    backend.return_freed_memory()
    stages.mark("training")

    # Outputs; results.json last, as the mark of a finished run.
    output_dir = config.output_dir
    history = run_dir.read_history(output_dir)
    example_weights = results_lib.example_weights(model, split, ids=dataset.train_ids)
    run_dir.write_npz(os.path.join(output_dir, run_dir.EXAMPLE_WEIGHTS_FILE), example_weights)
    example_weights.pop("id", None)  # Written; the results read the weights (N strings less).
    stages.mark("example_weights")
    issues = results_lib.training_label_issues(
        model,
        dataset,
        split,
        x_train,
        mean=mean,
        std=std,
        batch_size=config.batch_size,
        share=share,
    )
    stages.mark("label_issues")
    run_dir.write_label_issues_and_report(
        output_dir,
        issues,
        images=x_train,
        stages=stages,
        trusted_images=dataset.x_train[split.meta_indices],
    )
    model.backbone.save(os.path.join(output_dir, run_dir.MODEL_FILE))
    if config.export_dir:
        serving.export_serving(model.backbone, config.export_dir, mean, std)
    results = results_lib.make_results(
        config, settings, split, history, example_weights, time.perf_counter() - start
    )
    results["wrong_labels"] = results_lib.wrong_labels_summary(issues, split)
    if split.meta_source == "auto":
        results["auto_meta"] = auto_meta.summary(
            split,
            config,
            true_labels=None if config.train_data else dataset.y_train,
            ids=dataset.train_ids,
        )
    if split.corrections:
        results["corrections"] = json.loads(split.corrections)
    stages.mark("model_and_results")
    results["timing"]["stages"] = stages.records
    run_dir.write_json(os.path.join(output_dir, run_dir.RESULTS_FILE), results)
    shutil.rmtree(os.path.join(output_dir, run_dir.BACKUP_DIR), ignore_errors=True)
    return results


def load_data(config, *, share=None):
    """The dataset, cut to `max_train_examples` / `max_test_examples` if they are set; or the
    own data of `config.train_data` (`load_own_data`; the image scan is cached, and skipped
    files listed, in the run directory). `share`: this worker's share of the scan of the image
    files or of the index of a streamed TFDS split."""
    if config.train_data:
        return load_own_data(config, work_dir=config.output_dir, share=share)
    dataset = datasets.load_dataset(
        config.dataset, config.data_dir, image_size=config.image_size, share=share
    )
    train, test = config.max_train_examples or None, config.max_test_examples or None
    return dataset._replace(
        x_train=dataset.x_train[:train],
        y_train=dataset.y_train[:train],
        x_test=dataset.x_test[:test],
        y_test=dataset.y_test[:test],
    )


def load_own_data(config, *, work_dir=None, share=None):
    """The own data of `config` (`gdw_tf.data.own_data.load_own_data`), refused where the run
    cannot use it: features with `--export_dir`, no trusted set for a method that learns from
    one, or fewer trusted examples than an explicit `--meta_batch_size`.

    Raises:
      ValueError: with one line, for bad data (`own_data`'s errors) or one of those.
    """
    auto = config.trusted_data == "auto"  # Chosen later, from the noisy data (`auto_meta`).
    dataset = own_data.load_own_data(
        config.train_data,
        trusted_data=None if auto else config.trusted_data,
        test_data=config.test_data,
        options=own_data_options(config),
        work_dir=work_dir,
        share=share,
    )
    if config.export_dir and len(dataset.x_train.shape) == 2:
        raise ValueError(
            "--export_dir writes a serving model of uint8 images; "
            f"{config.train_data} holds features: drop --export_dir."
        )
    if auto or not methods.get(config.method).meta_step:
        return dataset
    trusted = dataset.trusted
    if not trusted.any() and config.trusted_column:
        raise ValueError(
            f"{config.train_data}: no row is marked trusted in column "
            f"{config.trusted_column!r}; --method={config.method} needs some."
        )
    if not trusted.any():
        raise ValueError(
            f"--method={config.method} needs a trusted set: give --trusted_data=PATH, "
            "--trusted_column=NAME or --trusted_data=auto (chosen from the noisy data)."
        )
    name = own_data.trusted_set_name(config.train_data, config.trusted_data, config.trusted_column)
    problem = meta_batch_problem(
        config.meta_batch_size,
        int(trusted.sum()),
        prefix="--",
        meta_set=f"the trusted set ({name})",
    )
    if problem and config.meta_batch_size != MODEL_DEFAULTS.meta_batch_size:
        raise ValueError(problem)
    return dataset


def own_data_options(config):
    """How the run reads own data: `config`'s fields of `own_data.OwnDataOptions` (the flags of
    the same names)."""
    names = [field.name for field in dataclasses.fields(own_data.OwnDataOptions)]
    return own_data.OwnDataOptions(**{name: getattr(config, name) for name in names})


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What a run derives from its config and data; saved beside the config in `config.json`
    (export reads the shapes and the normalisation there) and `results.json`.

    Attributes:
      dataset, num_classes, input_shape: the data's name ("own_data" for `--train_data`),
        classes and per-example shape.
      model, class_names: the resolved backbone name; the classes' names (own data) or None.
      normalization: `{"mean": [...], "std": [...]}` per channel, of images scaled to [0, 1];
        for streamed image files also `images_sampled`, how many images gave them.
      meta_batch_size: `config.meta_batch_size`, or the meta set's size if that is smaller and
        the flag was left at its default (`config.resolve_meta_batch_size`).
      augment, outer_lr, jit_compile: `config`'s `auto`/unset values resolved.
      num_train, num_meta, steps_per_epoch: the split's sizes and the steps of an epoch.
      num_replicas: the replicas that share each batch.
    """

    dataset: str
    model: str
    class_names: list
    num_classes: int
    input_shape: list
    normalization: dict
    augment: bool
    outer_lr: float
    jit_compile: bool
    num_train: int
    num_meta: int
    meta_batch_size: int
    steps_per_epoch: int
    num_replicas: int

    def to_dict(self):
        """The settings as a JSON-ready dict."""
        return dataclasses.asdict(self)


def run_settings(config, dataset, split, num_replicas, *, share=None):
    """The run's `RunSettings` (`share`: this worker's share of the normalisation sample)."""
    name = "own_data" if config.train_data else config.dataset
    input_shape = [int(d) for d in dataset.x_train.shape[1:]]
    mean, std = normalization_of(config, dataset.x_train, share=share)
    normalization = {"mean": [float(m) for m in mean], "std": [float(s) for s in std]}
    if (
        image_files.is_streamed(dataset.x_train)
        and resolve_model(config, input_shape) not in backbones.APPLICATION_NAMES
    ):
        normalization["images_sampled"] = len(
            input_pipeline.normalization_sample(len(dataset.x_train))
        )
    return RunSettings(
        dataset=name,
        model=resolve_model(config, input_shape),
        class_names=list(dataset.class_names) if dataset.class_names else None,
        num_classes=int(dataset.num_classes),
        input_shape=input_shape,
        normalization=normalization,
        augment=resolve_augment(config.augment, input_shape),
        outer_lr=resolve_outer_lr(config.outer_lr, dataset.num_classes),
        jit_compile=backend.resolve_jit_compile(config.jit_compile),
        num_train=int(len(split.train_indices)),
        num_meta=int(len(split.meta_indices)),
        meta_batch_size=config_lib.resolve_meta_batch_size(
            config.meta_batch_size, len(split.meta_indices), replicas=num_replicas
        ),
        steps_per_epoch=distribute.steps_per_epoch(len(split.train_indices), config.batch_size),
        num_replicas=int(num_replicas),
    )


def normalization_of(config, x_train, *, share=None):
    """The run's per-channel `(mean, std)`: the data's (`input_pipeline.normalization_stats`,
    with this worker's `share` of its sample), or for a `keras.applications` backbone, which
    preprocesses raw pixels itself, those that leave the pixels as they are
    (`backbones.raw_pixel_statistics`)."""
    if resolve_model(config, x_train.shape[1:]) in backbones.APPLICATION_NAMES:
        return backbones.raw_pixel_statistics(x_train.shape[-1])
    name = "own_data" if config.train_data else config.dataset
    return input_pipeline.normalization_stats(name, x_train, share=share)


def build_gdw_model(config, settings, meta_data):
    """The compiled `GDWModel` of the run, tracking every training example's weights; in
    mixed_bfloat16 precision with `config.mixed_precision` (the global policy is restored)."""
    policy = keras.mixed_precision.global_policy()
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        return _build_gdw_model(config, settings, meta_data)
    finally:
        keras.mixed_precision.set_global_policy(policy)


def _build_gdw_model(config, settings, meta_data):
    backbone = backbones.build_model(
        settings.model, settings.input_shape, settings.num_classes, weights=config.model_weights
    )
    # The step's settings are `Config`'s fields inherited from `ModelSettings`.
    step_settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(ModelSettings)}
    model = GDWModel(
        backbone,
        settings.num_classes,
        meta_data=meta_data,
        meta_augmentation=MetaAugmentation(seed=config.seed) if settings.augment else None,
        track_examples=settings.num_train,
        **{
            **step_settings,
            "outer_lr": settings.outer_lr,
            "meta_batch_size": settings.meta_batch_size,
        },
    )
    # L2 is in the step (PyTorch-style, GDWModel(l2=...)), not in the optimizer.
    model.compile(
        keras.optimizers.SGD(config.lr, momentum=config.momentum), jit_compile=settings.jit_compile
    )
    return model


def build_split(config, dataset):
    """The run's split, built in order: the base split; the reviews (`--corrections`), read and
    found in it; the automatic trusted set (`--trusted_data=auto`); the reviews applied.

    The base split is the benchmark protocol's (`split.make_split`: a clean meta set, noise,
    a long tail) or own data's (`own_data.own_split`: the trusted rows are the meta set). The
    automatic set is chosen as without reviews (the same warm-up on the same labels), and the
    reviews are applied to the split it leaves (`corrections.correct_split`), so a reviewed
    example it chose takes its reviewed label in the meta set.

    Raises:
      ValueError: before any warm-up, for a meta set the classes cannot fill, a bad corrections
        file or a reviewed id that is not in the data the run trains on.
    """
    # Reviews first: a bad file is refused before the data is split or a warm-up runs.
    reviews = None
    if config.corrections:
        reviews = corrections_lib.read_corrections(
            config.corrections, num_classes=dataset.num_classes, class_names=dataset.class_names
        )
    if config.train_data:
        split = own_data.own_split(
            dataset.y_train, dataset.trusted, dataset.num_classes, config.seed
        )
    else:
        split = benchmark_split(config, dataset.y_train, dataset.num_classes)
    auto = config.trusted_data == "auto"
    if reviews is not None:
        # Found in what the warm-up leaves of the split (the automatic set drops the meta set).
        reviews = corrections_lib.locate_reviews(
            split.without_meta() if auto else split, reviews, ids=dataset.train_ids
        )
    if auto:
        mean, std = normalization_of(config, dataset.x_train)
        input_shape = list(dataset.x_train.shape[1:])
        split = auto_meta.auto_split(
            split,
            config,
            resolve_model(config, input_shape),
            dataset.x_train,
            mean=mean,
            std=std,
            augment=resolve_augment(config.augment, input_shape),
        )
        keras.utils.set_random_seed(config.seed)  # The run starts as without warm-up.
    if reviews is not None:
        split, _ = corrections_lib.correct_split(split, reviews)
    return split


def benchmark_split(config, labels, num_classes):
    """The benchmark protocol's split of `labels` (`split.make_split`) with `config`'s meta
    set, noise, long tail and seed.

    Raises:
      ValueError: if the smallest class cannot fill a class-balanced meta set of `num_meta`.
    """
    smallest = int(np.bincount(labels, minlength=num_classes).min())
    if config.num_meta > num_classes * smallest:
        raise ValueError(
            f"--num_meta={config.num_meta} is too large: the smallest class of {config.dataset} "
            f"has {smallest} training examples, so a class-balanced meta set holds at most "
            f"{num_classes * smallest} ({num_classes} classes x {smallest}). Lower --num_meta"
            + (" or raise --max_train_examples." if config.max_train_examples else ".")
        )
    return split_lib.make_split(
        labels,
        num_classes,
        num_meta=config.num_meta,
        noise=config.noise,
        ratio=config.ratio,
        imbalance=config.imbalance,
        seed=config.seed,
    )


def resolve_model(config, input_shape):
    """`--model=auto` is resnet32 on the benchmarks, small_cnn for own images, mlp for own
    features; any other name stays."""
    if config.model != "auto":
        return config.model
    if not config.train_data:
        return "resnet32"
    return "small_cnn" if len(input_shape) == 3 else "mlp"


def resolve_augment(augment, input_shape):
    """`auto` is on for 32x32 RGB images (CIFAR), as the reference augments CIFAR."""
    if augment == "auto":
        return tuple(input_shape) == (32, 32, 3)
    return augment == "true"
