"""Every setting of a training run, declared once: the `Config` dataclass and its flags.

`Config` inherits the step's settings from `gdw_tf.core.settings.ModelSettings` (where
`GDWModel` reads its defaults and rules) and adds those of the data and the run. Each field
carries its default, help text, allowed values and check in its metadata (`setting(...)`). From
those:

- `define_flags` declares the flags of `python -m gdw_tf.train` (and, for the fields it names,
  of `python -m gdw_tf.bench` and `python -m gdw_tf.export`), with validators that refuse
  impossible values while the command line is parsed, before any data is loaded;
- `Config.from_flags` turns the parsed flags into the frozen dataclass that library code
  (`gdw_tf.runs.run`) takes; library code never reads flags;
- `Config.check(name, value)` applies the same rule to a Python argument.

Precedence (as absl applies it, left to right): flag defaults, then the flags of
`--flagfile=flags/....flags`, then flags given after it on the command line. The algorithm behind
the settings is described in `docs/ALGORITHM.md`.
"""

import dataclasses
import logging
import math
import os

from absl import flags

from gdw_tf.core import settings
from gdw_tf.core.settings import POSITIVE_INTEGER
from gdw_tf.core.settings import ModelSettings
from gdw_tf.core.settings import non_negative
from gdw_tf.core.settings import positive
from gdw_tf.core.settings import setting
from gdw_tf.data import noise as noise_lib
from gdw_tf.nets import backbones

AUTO_TRUE_FALSE = ("auto", "true", "false")
# The largest --image_size: one 4096x4096 RGB image is 201 MB as float32, a batch of 100 20 GB.
MAX_IMAGE_SIZE = 4096
DISTRIBUTE = ("none", "mirrored", "multi_worker")


def _unknown_dataset(values):
    """What is wrong with `--dataset` (None if nothing): it must be Fashion-MNIST (read
    offline), a registered TFDS dataset, or one prepared in `--data_dir` (its folder
    `<data_dir>/<name>`, as TFDS writes it: a dataset built from own files)."""
    import tensorflow_datasets as tfds

    name, data_dir = values["dataset"], values["data_dir"]
    base = name.split(":")[0].split("/")[0]
    if base == "fashion_mnist" or base in tfds.list_builders(with_community_datasets=False):
        return None
    if data_dir and os.path.isdir(os.path.join(data_dir, base)):
        return None
    return (
        f"--dataset={name} is unknown: use cifar10, cifar100, fashion_mnist, mnist or another "
        "TFDS image-classification dataset name, or one prepared in --data_dir"
        + (f" (there is no {os.path.join(data_dir, base)})." if data_dir else ".")
    )


def _is_data_path(path):
    """Whether `path` is an existing folder, or an existing .csv, .txt or .npz file."""
    return os.path.isdir(path) or (
        os.path.isfile(path) and path.lower().endswith((".csv", ".txt", ".npz"))
    )


@dataclasses.dataclass(frozen=True)
class Config(ModelSettings):
    """Everything a training run needs; each field is the flag of the same name. The step's
    settings (method, meta_batch_size, ...) are inherited from `ModelSettings`."""

    # Data protocol.
    dataset: str = setting(
        "cifar10",
        "cifar10, cifar100, fashion_mnist, mnist, or any TFDS image-classification dataset with "
        "`image`/`label` features and train/test splits (reference recipe: CIFAR; "
        "docs/ALGORITHM.md), registered or prepared in --data_dir.",
    )
    data_dir: str = setting(
        None,
        "Directory of the data: TFDS' data_dir, or for fashion_mnist a folder with the four "
        "original idx .gz files (otherwise ~/.keras/datasets/fashion-mnist and "
        "/usr/share/datasets/fashion-mnist are searched).",
        check=os.path.isdir,
        message="is not an existing directory: create it and put the data there, or leave the "
        "flag out to use the default locations",
        run_defining=False,
    )
    noise: str = setting(
        "uniform",
        "Label-noise model of the training set (docs/ALGORITHM.md, 'Data protocol'): uniform = "
        "r/C 11' + (1-r) I as Meta-Weight-Net and the reference (40% leaves ~36% wrong); "
        "symmetric = always another class; flip = each class to one other class drawn from "
        "--seed; pair = class k to k+1.",
        choices=noise_lib.NOISE_MODELS,
    )
    ratio: float = setting(
        0.4,
        "Noise ratio r in [0, 1] (ignored with --noise=none).",
        check=lambda v: 0.0 <= v <= 1.0,
        message="must lie in [0, 1] (a noise probability); e.g. --ratio=0.4",
    )
    imbalance: float = setting(
        1.0,
        "Long-tail factor rho = n_max/n_min >= 1: class k keeps n_max * rho^(-k/(C-1)) "
        "training examples (docs/ALGORITHM.md); 1 = balanced.",
        check=lambda v: v >= 1.0,
        message="is n_max/n_min and must be ≥ 1; use 1 for a balanced set",
    )
    num_meta: int = setting(
        1000,
        "Size of the clean, class-balanced meta set taken out of the training set before noise "
        "(a multiple of the number of classes; reference: 1000).",
        check=positive,
        message="must be a positive multiple of the number of classes",
    )
    max_train_examples: int = setting(
        0,
        "Use only the first N examples of the training split (0 = all). For tests and quick "
        "looks, not for paper numbers.",
        check=non_negative,
        message="must be ≥ 0 (0 = all)",
    )
    max_test_examples: int = setting(
        0,
        "Evaluate on only the first N test examples (0 = all). For tests and quick looks, not "
        "for paper numbers.",
        check=non_negative,
        message="must be ≥ 0 (0 = all)",
    )
    # Own data (gdw_tf.data.own_data) and the automatic trusted set (gdw_tf.runs.auto_meta).
    train_data: str = setting(
        None,
        "Train on your own data instead of --dataset's benchmark protocol: a folder with one "
        "sub-folder of images per class (as keras.utils.image_dataset_from_directory), a .csv "
        "(a --label_column, and an --image_column of image paths or numeric feature columns) or "
        "an .npz of x (uint8 images or features [N, D]) and y. No noise is added; --dataset, "
        "--noise, --ratio, --imbalance, --num_meta (except for auto) and --max_*_examples are "
        "ignored.",
        check=_is_data_path,
        message="must be an existing folder (one sub-folder per class), .csv or .npz file",
    )
    trusted_data: str = setting(
        None,
        "The trusted (meta) set with correct labels: a folder, .csv or .npz as --train_data; or "
        "'auto' to choose a class-balanced one from the noisy training data after a short "
        "cross-entropy warm-up (--auto_meta_per_class, --auto_meta_warmup_epochs; also on the "
        "benchmarks, instead of the clean held-out meta set).",
        check=lambda v: v == "auto" or _is_data_path(v),
        message="must be 'auto' or an existing folder, .csv or .npz file",
    )
    test_data: str = setting(
        None,
        "Own data: a test set with correct labels (folder, .csv or .npz) evaluated each epoch. "
        "Without it a run with --train_data reports no test accuracy.",
        check=_is_data_path,
        message="must be an existing folder, .csv or .npz file",
    )
    label_column: str = setting(
        "label", "Own data, CSV: the label column's name.", check=bool, message="must name a column"
    )
    image_column: str = setting(
        "image",
        "Own data, CSV: the column of image paths (relative to the CSV's folder); a CSV without "
        "it holds numeric features in every column but the label and trusted ones.",
    )
    image_root: str = setting(
        None,
        "Own data: the folder that the image paths of a .txt list file or a CSV's --image_column "
        "are relative to. Default: the list's or CSV's own folder.",
        check=os.path.isdir,
        message="is not an existing directory",
        run_defining=False,
    )
    trusted_column: str = setting(
        None,
        "Own data, CSV: a column marking the trusted rows (1/0, true/false, yes/no); they form "
        "the meta set and are left out of the training set.",
    )
    image_size: int = setting(
        0,
        "Own images, and TFDS datasets: resize every image to NxN (bilinear) as it is read. "
        "0 = keep the size, which all images must then share.",
        check=lambda v: 0 <= v <= MAX_IMAGE_SIZE,
        message=f"must be ≥ 0 and ≤ {MAX_IMAGE_SIZE} (0 = keep the size; one "
        f"{MAX_IMAGE_SIZE}x{MAX_IMAGE_SIZE} RGB image is 201 MB as "
        "float32)",
    )
    model_weights: str = setting(
        None,
        "Initial weights of the backbone: for a keras.applications --model, 'imagenet' (Keras' "
        "ImageNet weights, from its cache ~/.keras/models, downloaded there if missing) or a "
        "local file of its weights without the top (include_top=False); otherwise a "
        ".weights.h5 file of the same backbone. Default: a fresh initialisation.",
        check=lambda v: v == "imagenet" or os.path.isfile(v),
        message="is not an existing file (nor 'imagenet')",
    )
    auto_meta_per_class: int = setting(
        0,
        "--trusted_data=auto: examples per class in the chosen meta set; 0 = --num_meta / the "
        "number of classes.",
        check=non_negative,
        message="must be ≥ 0 (0 = --num_meta / classes)",
    )
    auto_meta_warmup_epochs: int = setting(
        2,
        "--trusted_data=auto: epochs of cross-entropy training (on all the noisy training data, "
        "learning rate --lr) before choosing the meta set.",
        check=positive,
        message=POSITIVE_INTEGER,
    )
    corrections: str = setting(
        None,
        "Reviewed labels: FILE[,FILE...] of corrections.csv downloaded from a run's review.html "
        "(columns id, reviewed_label). Each reviewed example takes its reviewed label and joins "
        "the trusted meta set, every class by the same number so that its balance is kept; the "
        "rest stay in the training set with their reviewed labels (gdw_tf.data.corrections).",
        check=lambda v: all(os.path.isfile(p.strip()) for p in v.split(",") if p.strip()),
        message="must name existing corrections.csv files, separated by commas",
    )
    augment: str = setting(
        "auto",
        "Reflect-pad 4, random crop, horizontal flip of training and meta images "
        "(docs/ALGORITHM.md, recipe). auto = on for 32x32 RGB datasets (CIFAR), off otherwise.",
        choices=AUTO_TRUE_FALSE,
    )

    # Method and model.
    model: str = setting(
        "auto",
        "Backbone: resnet32 (the reference's ResNet-32), small_cnn (two conv blocks, for 28x28 "
        "images on a CPU), mlp, or a keras.applications model by name (ResNet50, MobileNetV2, "
        "...; see --model_weights). auto = resnet32 on --dataset, small_cnn for own images, mlp "
        "for own features.",
        choices=("auto",) + backbones.MODEL_NAMES + backbones.APPLICATION_NAMES,
    )

    # Optimisation.
    epochs: int = setting(
        80,
        "Epochs E of the cosine schedule (reference: 80).",
        check=positive,
        message=POSITIVE_INTEGER,
    )
    batch_size: int = setting(
        100, "Training batch size (reference: 100).", check=positive, message=POSITIVE_INTEGER
    )
    lr: float = setting(
        0.1,
        "Initial SGD learning rate; epoch e uses lr (1 + cos(pi e / E)) / 2 as the reference "
        "(docs/ALGORITHM.md, recipe). Also the virtual step's alpha_t.",
        check=positive,
        message="must be > 0",
    )
    momentum: float = setting(
        0.9,
        "SGD momentum of the real step (reference: 0.9).",
        check=lambda v: 0.0 <= v < 1.0,
        message="must lie in [0, 1)",
    )

    # Run.
    output_dir: str = setting(
        None,
        "Run directory: results, logs, checkpoints, model. An unfinished run there is resumed.",
        run_defining=False,
    )
    export_dir: str = setting(
        None,
        "Directory to write a serving SavedModel to (uint8 images in, normalisation inside); "
        "python -m gdw_tf.train writes it at the end of the run.",
        run_defining=False,
    )
    # A run may resume on other devices, and `mirrored` does not fix the number of replicas
    # anyway (it takes the GPUs it finds). The steps are those of one device on the same global
    # batches, up to the rounding of cross-replica sums and BatchNorm's per-replica batch
    # statistics; results.json records `num_replicas`.
    distribute: str = setting(
        "none",
        "Devices to train on: none = one device; mirrored = tf.distribute.MirroredStrategy "
        "over this machine's devices (TensorFlow's default: all GPUs, else the CPU; on Keras' "
        "JAX backend, keras.distribution.DataParallel over JAX's devices); multi_worker = "
        "tf.distribute.MultiWorkerMirroredStrategy (TensorFlow backend), the cluster read from "
        "the TF_CONFIG environment variable, every worker running the same command (the chief "
        "writes --output_dir, the others <output_dir>/workers/worker<i>). --batch_size and "
        "--meta_batch_size are global, split across the replicas; --meta_batch_size must be a "
        "multiple of the number of replicas.",
        choices=DISTRIBUTE,
        run_defining=False,
    )
    mixed_precision: bool = setting(
        False,
        "Train in Keras' mixed_bfloat16 precision: the backbone computes in bfloat16 with "
        "float32 weights; losses, example weights and the weight net stay float32. For GPUs "
        "with bfloat16 (NVIDIA Ampere and newer) and TPUs; slower on most CPUs.",
    )
    overwrite: bool = setting(
        False,
        "Replace instead of refusing: the run files in --output_dir (a finished, unfinished or "
        "different run; gdw_tf.train starts it over) and a non-empty --export_dir.",
        run_defining=False,
    )
    jit_compile: str = setting(
        "auto",
        "XLA-compile the train step; auto = on when a GPU is visible (TensorFlow), always (JAX).",
        choices=AUTO_TRUE_FALSE,
        run_defining=False,
    )
    verbose: int = setting(
        1,
        "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.",
        check=lambda v: v in (0, 1, 2),
        message="must be 0, 1 or 2",
        run_defining=False,
    )
    tf_logs: bool = setting(
        False,
        "Show TensorFlow's C++ log lines (oneDNN, CUDA, absl) on stderr; without it the programs "
        "silence them (read from the command line before TensorFlow is imported).",
        run_defining=False,
    )

    @classmethod
    def from_flags(cls, flag_values):
        """The config of parsed flags (every field of `Config` is a flag of the same name)."""
        return cls(
            **{field.name: flag_values[field.name].value for field in dataclasses.fields(cls)}
        )

    def to_dict(self):
        """The config as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def run_defining(self):
        """The fields that change the data, the model or the training (all but paths/speed)."""
        return {
            field.name: getattr(self, field.name)
            for field in dataclasses.fields(self)
            if field.metadata["run_defining"]
        }


DEFAULTS = Config()


def resolve_meta_batch_size(meta_batch_size: int, num_meta: int, *, replicas: int = 1) -> int:
    """The meta batch size of a run: `meta_batch_size`, or, if that is the default and the meta
    set is smaller, the meta set's size cut to a multiple of `replicas` (a person with a small
    trusted set did not ask for 100; each replica takes an equal share). Set to another value,
    it is demanded (`settings.meta_batch_problem`)."""
    if (
        meta_batch_size == settings.MODEL_DEFAULTS.meta_batch_size
        and 0 < num_meta < meta_batch_size
    ):
        resolved = max(num_meta - num_meta % replicas, replicas)
        logging.warning(
            "The trusted set holds %d examples: meta batches of %d (not the default "
            "--meta_batch_size=%d).",
            num_meta,
            resolved,
            meta_batch_size,
        )
        return int(resolved)
    return int(meta_batch_size)


def define_flags(flag_values, names=None):
    """Defines the flags of the `Config` fields `names` (all by default) on `flag_values`, each
    with its validator; with all of them, also `--output_dir`'s requirement and the rules that
    tie two flags together (`gdw_tf.core.settings`)."""
    names = [field.name for field in dataclasses.fields(Config)] if names is None else names
    for name in names:
        _define_flag(Config.field(name), flag_values)
    if "output_dir" in names:
        flags.mark_flag_as_required("output_dir", flag_values=flag_values)
    if {"dataset", "data_dir"} <= set(names):
        register_rule(flag_values, ["dataset", "data_dir"], _unknown_dataset)
    if {"meta_batch_size", "num_meta"} <= set(names):
        register_rule(
            flag_values,
            ["meta_batch_size", "num_meta"],
            lambda v: settings.meta_batch_problem(
                v["meta_batch_size"],
                v["num_meta"],
                prefix="--",
                meta_set=f"the meta set (--num_meta={v['num_meta']})",
            ),
        )
    if {"model", "model_weights"} <= set(names):
        flags.register_multi_flags_validator(
            ["model", "model_weights"],
            lambda v: v["model_weights"] != "imagenet" or v["model"] in backbones.APPLICATION_NAMES,
            message="--model_weights=imagenet needs a keras.applications --model (ResNet50, "
            "MobileNetV2, ...).",
            flag_values=flag_values,
        )
    if {"method", "meta_interval"} <= set(names):
        register_rule(
            flag_values,
            ["method", "meta_interval"],
            lambda v: settings.meta_interval_problem(v["method"], v["meta_interval"], prefix="--"),
        )
    if {"train_data", "trusted_data", "test_data", "trusted_column"} <= set(names):
        flags.register_multi_flags_validator(
            ["train_data", "trusted_data", "test_data", "trusted_column"],
            lambda v: (
                v["train_data"] is not None
                or (
                    v["trusted_data"] in (None, "auto")
                    and v["test_data"] is None
                    and v["trusted_column"] is None
                )
            ),
            message="--trusted_data=PATH, --test_data and --trusted_column describe own data and "
            "need --train_data; the benchmarks (--dataset) take their clean meta set from the "
            "dataset, or use --trusted_data=auto.",
            flag_values=flag_values,
        )
        flags.register_multi_flags_validator(
            ["trusted_data", "trusted_column"],
            lambda v: v["trusted_data"] is None or v["trusted_column"] is None,
            message="give the trusted set once: --trusted_data or --trusted_column, not both.",
            flag_values=flag_values,
        )


def register_rule(flag_values, names, problem):
    """Validates the flags `names` together by `problem` (a dict of their values → what is wrong,
    or None), whose message is the error's."""

    def checker(values):
        message = problem(values)
        if message is not None:
            raise flags.ValidationError(message)
        return True

    flags.register_multi_flags_validator(names, checker, flag_values=flag_values)


def _define_flag(field, flag_values):
    metadata, default = field.metadata, field.default
    kwargs = {"flag_values": flag_values}
    if metadata["choices"] is not None:
        flags.DEFINE_enum(
            field.name, default, list(metadata["choices"]), metadata["help"], **kwargs
        )
        return
    if field.type is bool:
        flags.DEFINE_boolean(field.name, default, metadata["help"], **kwargs)
    elif field.type is int:
        flags.DEFINE_integer(field.name, default, metadata["help"], **kwargs)
    elif field.type is float:
        flags.DEFINE_float(field.name, default, metadata["help"], **kwargs)
    else:
        flags.DEFINE_string(field.name, default, metadata["help"], **kwargs)
    if field.type is float:  # First: inf passes most range checks.
        example = "" if default is None else f"; e.g. --{field.name}={default}"
        flags.register_validator(
            field.name,
            lambda value: value is None or math.isfinite(value),
            message=f"--{field.name} {settings.NOT_FINITE} (not nan or inf){example}.",
            flag_values=flag_values,
        )
    if metadata["check"] is not None:
        flags.register_validator(
            field.name,
            lambda value, name=field.name: Config.problem(name, value) is None,
            message=f"--{field.name} {metadata['message']}.",
            flag_values=flag_values,
        )
