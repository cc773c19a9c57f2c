"""Every setting of a training run, declared once: the `Config` dataclass and its flags.

Each field of `Config` carries its default, help text, allowed values and check in its metadata
(`setting(...)`). From those:

- `define_flags` declares the flags of `python -m gdw_tf.train` (and, for the fields it names,
  of `python -m gdw_tf.bench`), with validators that refuse impossible values while the command
  line is parsed, before any data is loaded;
- `Config.from_flags` turns the parsed flags into the frozen dataclass that library code
  (`gdw_tf.runs.run`) takes; library code never reads flags;
- `check(name, value)` applies the same rule to a Python argument: `GDWModel` validates its
  arguments with it, and its signature defaults are `DEFAULTS`' fields, so a model built by the
  CLI and one built by hand share defaults and rules.

Precedence (as absl applies it, left to right): flag defaults, then the flags of
`--flagfile=flags/....flags`, then flags given after it on the command line. The algorithm behind
the settings is described in `docs/ALGORITHM.md`.
"""

import dataclasses
import math
import numbers
import os

from absl import flags

from gdw_tf.core import meta_scope
from gdw_tf.core import methods
from gdw_tf.data import noise as noise_lib
from gdw_tf.nets import backbones

AUTO_TRUE_FALSE = ("auto", "true", "false")
# The largest --image_size: one 4096x4096 RGB image is 201 MB as float32, a batch of 100 20 GB.
MAX_IMAGE_SIZE = 4096
DISTRIBUTE = ("none", "mirrored", "multi_worker")
META_GRADIENTS = ("jvp", "nested")


def setting(default, help, *, choices=None, check=None, message=None, run_defining=True):
    """A `Config` field with its flag's metadata.

    Args:
      default: the default value (its type is the flag's: str, int, float or bool; None for an
        optional string).
      help: the flag's help text.
      choices: the allowed values of an enum.
      check: a predicate on a value that is not None (floats are also refused when NaN or
        infinite, before `check` sees them).
      message: what `check` demands, after the setting's name ("must be > 0").
      run_defining: False for the fields that only say where things are or how fast they run:
        a resumed run may change them.
    """
    return dataclasses.field(
        default=default,
        metadata={
            "help": help,
            "choices": choices,
            "check": check,
            "message": message,
            "run_defining": run_defining,
        },
    )


def _positive(value):
    return value > 0


def _non_negative(value):
    return value >= 0


_POSITIVE_INTEGER = "must be a positive integer"
_NOT_FINITE = "must be a finite number"


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run needs; each field is the flag of the same name."""

    # Data protocol.
    dataset: str = setting(
        "cifar10",
        "cifar10, cifar100, fashion_mnist, mnist, or any TFDS image-classification dataset with "
        "`image`/`label` features and train/test splits (reference recipe: CIFAR; "
        "docs/ALGORITHM.md).",
        check=lambda name: _is_known_dataset(name),
        message="is unknown: use cifar10, cifar100, fashion_mnist, mnist or another TFDS "
        "image-classification dataset name",
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
        check=_positive,
        message="must be a positive multiple of the number of classes",
    )
    max_train_examples: int = setting(
        0,
        "Use only the first N examples of the training split (0 = all). For tests and quick "
        "looks, not for paper numbers.",
        check=_non_negative,
        message="must be ≥ 0 (0 = all)",
    )
    max_test_examples: int = setting(
        0,
        "Evaluate on only the first N test examples (0 = all). For tests and quick looks, not "
        "for paper numbers.",
        check=_non_negative,
        message="must be ≥ 0 (0 = all)",
    )
    # Own data (gdw_tf.data.own_data) and the automatic trusted set (gdw_tf.data.auto_meta).
    train_data: str = setting(
        None,
        "Train on your own data instead of --dataset's benchmark protocol: a folder with one "
        "sub-folder of images per class (as keras.utils.image_dataset_from_directory), a .csv "
        "(a --label_column, and an --image_column of image paths or numeric feature columns) or "
        "an .npz of x (uint8 images or features [N, D]) and y. No noise is added; --dataset, "
        "--noise, --ratio, --imbalance, --num_meta (except for auto) and --max_*_examples are "
        "ignored.",
        check=lambda v: _is_data_path(v),
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
        check=lambda v: _is_data_path(v),
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
        check=_non_negative,
        message="must be ≥ 0 (0 = --num_meta / classes)",
    )
    auto_meta_warmup_epochs: int = setting(
        2,
        "--trusted_data=auto: epochs of cross-entropy training (on all the noisy training data, "
        "learning rate --lr) before choosing the meta set.",
        check=_positive,
        message=_POSITIVE_INTEGER,
    )
    augment: str = setting(
        "auto",
        "Reflect-pad 4, random crop, horizontal flip of training and meta images "
        "(docs/ALGORITHM.md, recipe). auto = on for 32x32 RGB datasets (CIFAR), off otherwise.",
        choices=AUTO_TRUE_FALSE,
    )

    # Method and model.
    method: str = setting(
        "gdw",
        "; ".join(f"{m.name} ({m.summary})" for m in methods.METHODS.values())
        + "; docs/ALGORITHM.md.",
        choices=methods.NAMES,
    )
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
        check=_positive,
        message=_POSITIVE_INTEGER,
    )
    batch_size: int = setting(
        100, "Training batch size (reference: 100).", check=_positive, message=_POSITIVE_INTEGER
    )
    meta_batch_size: int = setting(
        100,
        "Meta batch size (reference: 100); at most --num_meta.",
        check=_positive,
        message=_POSITIVE_INTEGER,
    )
    lr: float = setting(
        0.1,
        "Initial SGD learning rate; epoch e uses lr (1 + cos(pi e / E)) / 2 as the reference "
        "(docs/ALGORITHM.md, recipe). Also the virtual step's alpha_t.",
        check=_positive,
        message="must be > 0",
    )
    momentum: float = setting(
        0.9,
        "SGD momentum of the real step (reference: 0.9).",
        check=lambda v: 0.0 <= v < 1.0,
        message="must lie in [0, 1)",
    )
    l2: float = setting(
        5e-4,
        "L2 coefficient added to the real step's gradient, as PyTorch's SGD weight_decay "
        "(reference: 5e-4; docs/ALGORITHM.md, step 8).",
        check=_non_negative,
        message="must be ≥ 0",
    )
    outer_lr: float = setting(
        None,
        "GDW's stage-2 step beta (docs/ALGORITHM.md, step 7). Unset = by the number of classes "
        "as the reference: 100 for up to 10 classes, 1000 above (CIFAR-100).",
        check=_non_negative,
        message="must be ≥ 0 (or unset: by the number of classes)",
    )
    clip: float = setting(
        0.2,
        "GDW's clip c of each stage-2 step entry (reference: 0.2).",
        check=_positive,
        message="must be > 0",
    )
    meta_grad: str = setting(
        "jvp",
        "How the meta-gradient is computed: jvp (one JVP of the training logits) or nested "
        "(double backprop, as the reference's create_graph); docs/ALGORITHM.md, step 5.",
        choices=META_GRADIENTS,
    )
    meta_interval: int = setting(
        1,
        "Take the meta step (virtual step, meta-gradient, weight-net update) on every k-th step "
        "only, as Meta-Weight-Net's code: steps k, 2k, ...; the others weight examples by the "
        "current weight net (for gdw: the instance weight on every class) at about a CE step's "
        "cost. 1 = the method as published. Not for l2rw; with --distribute on TensorFlow, 1 "
        "only.",
        check=_positive,
        message=_POSITIVE_INTEGER + " (1 = a meta step on every step)",
    )
    meta_scope: str = setting(
        meta_scope.ALL,
        "Parameters the virtual step moves: all (the method as published), head (the classifier "
        "layer only: the meta-gradient needs a forward of the trunk on the meta batch, no "
        "backward through it; a faster approximation) or last:k (the last k units with weights; "
        "a residual block counts as one). The real step always trains the whole network; see "
        "gdw_tf/core/meta_scope.py.",
        check=lambda v: _is_meta_scope(v),
        message="must be all, head or last:k with an integer k ≥ 1 (e.g. --meta_scope=last:2)",
    )
    seed: int = setting(
        0,
        "Seed of the split, the noise, the initialisation, the data order and the meta-batch "
        "order.",
        check=lambda v: 0 <= v < 2**32,
        message="must be an integer in [0, 2**32)",
    )

    # Run.
    output_dir: str = setting(
        None,
        "Run directory: results, logs, checkpoints, model. An unfinished run there is resumed.",
        run_defining=False,
    )
    export_dir: str = setting(
        None,
        "If set, export a serving SavedModel (uint8 images in, normalisation inside) there "
        "at the end.",
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
        "Start over: delete the run files in --output_dir (a finished, unfinished or "
        "different run) and a non-empty --export_dir instead of refusing them.",
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
_FIELDS = {field.name: field for field in dataclasses.fields(Config)}


def problem(name, value):
    """What is wrong with `value` for the setting `name` ("must be > 0"), or None if it is fine."""
    metadata = _FIELDS[name].metadata
    if value is None:
        return None
    if metadata["choices"] is not None:
        if value not in metadata["choices"]:
            return f"must be one of {tuple(metadata['choices'])}"
        return None
    field_type = _FIELDS[name].type
    if field_type is float and (
        not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value)
    ):
        return _NOT_FINITE
    if field_type is int and (not isinstance(value, numbers.Integral) or isinstance(value, bool)):
        return metadata["message"] or "must be an integer"
    if metadata["check"] is not None and not metadata["check"](value):
        return metadata["message"]
    return None


def check(name, value):
    """Raises `ValueError` naming the setting `name` if `value` breaks its rule (Python API)."""
    message = problem(name, value)
    if message is not None:
        raise ValueError(f"{name} {message}; got {value!r}.")


def define_flags(flag_values, names=None):
    """Defines the flags of the `Config` fields `names` (all by default) on `flag_values`, each
    with its validator; with all of them, also `--output_dir`'s requirement and the rules that
    tie two flags together."""
    names = list(_FIELDS) if names is None else list(names)
    for name in names:
        _define_flag(_FIELDS[name], flag_values)
    if "output_dir" in names:
        flags.mark_flag_as_required("output_dir", flag_values=flag_values)
    if {"meta_batch_size", "num_meta"} <= set(names):
        flags.register_multi_flags_validator(
            ["meta_batch_size", "num_meta"],
            lambda v: v["meta_batch_size"] <= v["num_meta"],
            message="--meta_batch_size must not exceed --num_meta (the meta set's size).",
            flag_values=flag_values,
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
        flags.register_multi_flags_validator(
            ["method", "meta_interval"],
            lambda v: meta_interval_problem(methods.get(v["method"]), v["meta_interval"]) is None,
            message="--meta_interval above 1 needs a weight net to weight the steps between meta "
            "steps; l2rw has none: use --meta_interval=1 with --method=l2rw.",
            flag_values=flag_values,
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


def _is_meta_scope(value):
    """Whether `value` is a `GDWModel(meta_scope=...)` spelling (the backbone is checked later)."""
    try:
        meta_scope.parse(value)
    except ValueError:
        return False
    return True


def _is_data_path(path):
    """Whether `path` is an existing folder, or an existing .csv, .txt or .npz file."""
    return os.path.isdir(path) or (
        os.path.isfile(path) and path.lower().endswith((".csv", ".txt", ".npz"))
    )


def meta_interval_problem(method, meta_interval):
    """Why `meta_interval` does not suit `method` (a `methods.Method`), or None."""
    if meta_interval > 1 and method.meta_step and not method.weight_net:
        return (
            f"meta_interval={meta_interval} needs a weight net to weight the steps between "
            f"meta steps; {method.name} has none"
        )
    return None


def _define_flag(field, flag_values):
    metadata, default = field.metadata, field.default
    kwargs = {"flag_values": flag_values}
    if metadata["choices"] is not None:
        flags.DEFINE_enum(
            field.name, default, list(metadata["choices"]), metadata["help"], **kwargs
        )
        return
    if isinstance(default, bool):
        flags.DEFINE_boolean(field.name, default, metadata["help"], **kwargs)
    elif isinstance(default, int):
        flags.DEFINE_integer(field.name, default, metadata["help"], **kwargs)
    elif isinstance(default, float) or field.type is float:
        flags.DEFINE_float(field.name, default, metadata["help"], **kwargs)
    else:
        flags.DEFINE_string(field.name, default, metadata["help"], **kwargs)
    if field.type is float:  # First: inf passes most range checks.
        example = "" if default is None else f"; e.g. --{field.name}={default}"
        flags.register_validator(
            field.name,
            lambda value: value is None or math.isfinite(value),
            message=f"--{field.name} {_NOT_FINITE} (not nan or inf){example}.",
            flag_values=flag_values,
        )
    if metadata["check"] is not None:
        flags.register_validator(
            field.name,
            lambda value, name=field.name: problem(name, value) is None,
            message=f"--{field.name} {metadata['message']}.",
            flag_values=flag_values,
        )


def _is_known_dataset(name):
    """Whether `name` is Fashion-MNIST (read offline) or a registered TFDS dataset."""
    import tensorflow_datasets as tfds

    base = name.split(":")[0].split("/")[0]
    return base == "fashion_mnist" or base in tfds.list_builders(with_community_datasets=False)
