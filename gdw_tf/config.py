"""The training run's configuration: its absl flags, and the plain `Config` they become.

`define_flags` declares every flag of `python -m gdw_tf.train` on a `FlagValues` (the train
module passes `absl.flags.FLAGS`), with help strings that cite `GDW_SPEC.md` and validators that
refuse impossible values while the command line is parsed, before any data is loaded.
`Config.from_flags` turns the parsed flags into a frozen dataclass; library code
(`gdw_tf.run`) takes that and never reads flags.

Precedence (as absl applies it, left to right): flag defaults, then the flags of
`--flagfile=flags/....flags`, then flags given after it on the command line.
"""

import dataclasses
import os

import tensorflow_datasets as tfds
from absl import flags

from gdw_tf import data
from gdw_tf import meta_scope
from gdw_tf import models
from gdw_tf import step

METHODS = step.METHODS
AUTO_TRUE_FALSE = ("auto", "true", "false")
DISTRIBUTE = ("none", "mirrored", "multi_worker")
OUTER_LR_BY_CLASSES = -1.0

# Fields that only say where things are or how fast they run: a resumed run may change them.
# `distribute` too: a run may resume on other devices, and `mirrored` does not fix the number of
# replicas anyway (it takes the GPUs it finds). The steps are those of one device on the same
# global batches, up to the rounding of cross-replica sums and BatchNorm's per-replica batch
# statistics; results.json records `num_replicas`.
_RUN_INDEPENDENT_FIELDS = ("data_dir", "output_dir", "export_dir", "overwrite", "jit_compile",
                           "verbose", "distribute")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run needs; field names and meanings are those of the flags."""

    output_dir: str
    dataset: str = "cifar10"
    data_dir: str | None = None
    noise: str = "uniform"
    ratio: float = 0.4
    imbalance: float = 1.0
    num_meta: int = 1000
    method: str = "gdw"
    model: str = "resnet32"
    epochs: int = 80
    batch_size: int = 100
    meta_batch_size: int = 100
    lr: float = 0.1
    momentum: float = 0.9
    l2: float = 5e-4
    outer_lr: float = OUTER_LR_BY_CLASSES
    clip: float = 0.2
    meta_grad: str = "jvp"
    meta_interval: int = 1
    meta_scope: str = "all"
    seed: int = 0
    augment: str = "auto"
    jit_compile: str = "auto"
    max_train_examples: int = 0
    max_test_examples: int = 0
    export_dir: str | None = None
    distribute: str = "none"
    overwrite: bool = False
    verbose: int = 1

    @classmethod
    def from_flags(cls, flag_values):
        """The config of parsed flags (every field of `Config` is a flag of the same name)."""
        return cls(**{field.name: flag_values[field.name].value
                      for field in dataclasses.fields(cls)})

    def to_dict(self):
        """The config as a JSON-ready dict."""
        return dataclasses.asdict(self)

    def run_defining(self):
        """The fields that change the data, the model or the training (all but paths/speed)."""
        return {name: value for name, value in self.to_dict().items()
                if name not in _RUN_INDEPENDENT_FIELDS}


def define_flags(flag_values):
    """Defines the flags of `python -m gdw_tf.train`, with their validators, on `flag_values`."""
    fv = flag_values
    spec = "see GDW_SPEC.md"

    # Data protocol.
    flags.DEFINE_string(
        "dataset", "cifar10",
        "cifar10, cifar100, fashion_mnist, mnist, or any TFDS image-classification dataset with "
        "`image`/`label` features and train/test splits (reference recipe: CIFAR; " + spec + ").",
        flag_values=fv)
    flags.DEFINE_string(
        "data_dir", None,
        "Directory of the data: TFDS' data_dir, or for fashion_mnist a folder with the four "
        "original idx .gz files (otherwise ~/.keras/datasets/fashion-mnist and "
        "/usr/share/datasets/fashion-mnist are searched).", flag_values=fv)
    flags.DEFINE_enum(
        "noise", "uniform", data.NOISE_MODELS,
        "Label-noise model of the training set (" + spec + ", 'Noise models'): uniform = "
        "r/C 11' + (1-r) I as Meta-Weight-Net and the reference (40% leaves ~36% wrong); "
        "symmetric = always another class; flip = each class to one other class drawn from "
        "--seed; pair = class k to k+1.", flag_values=fv)
    flags.DEFINE_float(
        "ratio", 0.4, "Noise ratio r in [0, 1] (ignored with --noise=none).", flag_values=fv)
    flags.DEFINE_float(
        "imbalance", 1.0,
        "Long-tail factor rho = n_max/n_min >= 1: class k keeps n_max * rho^(-k/(C-1)) "
        "training examples (" + spec + "); 1 = balanced.", flag_values=fv)
    flags.DEFINE_integer(
        "num_meta", 1000,
        "Size of the clean, class-balanced meta set taken out of the training set before noise "
        "(a multiple of the number of classes; reference: 1000).", flag_values=fv)
    flags.DEFINE_integer(
        "max_train_examples", 0,
        "Use only the first N examples of the training split (0 = all). For tests and quick "
        "looks, not for paper numbers.", flag_values=fv)
    flags.DEFINE_integer(
        "max_test_examples", 0,
        "Evaluate on only the first N test examples (0 = all). For tests and quick looks, not "
        "for paper numbers.", flag_values=fv)
    flags.DEFINE_enum(
        "augment", "auto", AUTO_TRUE_FALSE,
        "Reflect-pad 4, random crop, horizontal flip of training and meta images (" + spec +
        ", recipe). auto = on for 32x32 RGB datasets (CIFAR), off otherwise.", flag_values=fv)

    # Method and model.
    flags.DEFINE_enum(
        "method", "gdw", METHODS,
        "gdw (class-level weights), mwnet (Meta-Weight-Net instance weights), l2rw "
        "(learning to reweight) or ce (plain cross-entropy); " + spec + ".", flag_values=fv)
    flags.DEFINE_enum(
        "model", "resnet32", models.MODEL_NAMES,
        "Backbone: resnet32 (the reference's ResNet-32, " + spec + "), small_cnn (two conv "
        "blocks, for 28x28 images on a CPU) or mlp.", flag_values=fv)

    # Optimisation.
    flags.DEFINE_integer("epochs", 80, "Epochs E of the cosine schedule (reference: 80).",
                         flag_values=fv)
    flags.DEFINE_integer("batch_size", 100, "Training batch size (reference: 100).",
                         flag_values=fv)
    flags.DEFINE_integer("meta_batch_size", 100, "Meta batch size (reference: 100); at most "
                         "--num_meta.", flag_values=fv)
    flags.DEFINE_float(
        "lr", 0.1, "Initial SGD learning rate; epoch e uses lr (1 + cos(pi e / E)) / 2 as the "
        "reference (" + spec + ", recipe). Also the virtual step's alpha_t.", flag_values=fv)
    flags.DEFINE_float("momentum", 0.9, "SGD momentum of the real step (reference: 0.9).",
                       flag_values=fv)
    flags.DEFINE_float(
        "l2", 5e-4, "L2 coefficient added to the real step's gradient, as PyTorch's SGD "
        "weight_decay (reference: 5e-4; " + spec + ", step 8).", flag_values=fv)
    flags.DEFINE_float(
        "outer_lr", OUTER_LR_BY_CLASSES,
        "GDW's stage-2 step beta (" + spec + ", step 7). -1 = by the number of classes as the "
        "reference: 100 for up to 10 classes, 1000 above (CIFAR-100).", flag_values=fv)
    flags.DEFINE_float("clip", 0.2, "GDW's clip c of each stage-2 step entry (reference: 0.2).",
                       flag_values=fv)
    flags.DEFINE_enum(
        "meta_grad", "jvp", step.META_GRADIENTS,
        "How the meta-gradient is computed: jvp (one JVP of the training logits) or nested (double "
        "backprop, as the reference's create_graph); " + spec + ", step 5.", flag_values=fv)
    flags.DEFINE_integer(
        "meta_interval", 1,
        "Take the meta step (virtual step, meta-gradient, weight-net update) on every k-th step "
        "only, as Meta-Weight-Net's code: steps k, 2k, ...; the others weight examples by the "
        "current weight net (for gdw: the instance weight on every class) at about a CE step's "
        "cost. 1 = the method as published. Not for l2rw; with --distribute on TensorFlow, 1 only.",
        flag_values=fv)
    flags.DEFINE_string(
        "meta_scope", "all",
        "Parameters the virtual step moves: all (the method as published), head (the classifier "
        "layer only: the meta-gradient needs a forward of the trunk on the meta batch, no backward "
        "through it; a faster approximation) or last:k (the last k units with weights; a residual "
        "block counts as one). The real step always trains the whole network; see "
        "gdw_tf/meta_scope.py.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of the split, the noise, the initialisation, the "
                         "data order and the meta-batch order.", flag_values=fv)

    # Run.
    flags.DEFINE_string("output_dir", None, "Run directory: results, logs, checkpoints, model. "
                        "An unfinished run there is resumed.", flag_values=fv)
    flags.DEFINE_string("export_dir", None, "If set, export a serving SavedModel (uint8 images "
                        "in, normalisation inside) there at the end.", flag_values=fv)
    flags.DEFINE_enum(
        "distribute", "none", DISTRIBUTE,
        "Devices to train on: none = one device; mirrored = tf.distribute.MirroredStrategy "
        "over this machine's devices (TensorFlow's default: all GPUs, else the CPU; on Keras' "
        "JAX backend, keras.distribution.DataParallel over JAX's devices); multi_worker = "
        "tf.distribute.MultiWorkerMirroredStrategy (TensorFlow backend), the cluster read from "
        "the TF_CONFIG environment variable, every worker running the same command (the chief "
        "writes --output_dir, the others <output_dir>/workers/worker<i>). --batch_size and "
        "--meta_batch_size are global, split across the replicas; "
        "--meta_batch_size must be a multiple of the number of replicas.", flag_values=fv)
    flags.DEFINE_boolean("overwrite", False, "Start over: delete the run files in --output_dir "
                         "(a finished, unfinished or different run) and a non-empty "
                         "--export_dir instead of refusing them.", flag_values=fv)
    flags.DEFINE_enum("jit_compile", "auto", AUTO_TRUE_FALSE,
                      "XLA-compile the train step; auto = on when a GPU is visible (TensorFlow), always (JAX).",
                      flag_values=fv)
    flags.DEFINE_integer("verbose", 1, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one "
                         "line per epoch.", flag_values=fv)

    flags.mark_flag_as_required("output_dir", flag_values=fv)
    _register_validators(fv)


def _register_validators(fv):
    """Refuses impossible flag values at parse time, naming the fix."""
    checks = {
        "ratio": (lambda v: 0.0 <= v <= 1.0,
                  "--ratio must lie in [0, 1] (a noise probability); e.g. --ratio=0.4."),
        "imbalance": (lambda v: v >= 1.0,
                      "--imbalance is n_max/n_min and must be >= 1; use 1 for a balanced set."),
        "num_meta": (lambda v: v > 0,
                     "--num_meta must be a positive multiple of the number of classes."),
        "epochs": (lambda v: v > 0, "--epochs must be a positive integer."),
        "batch_size": (lambda v: v > 0, "--batch_size must be a positive integer."),
        "meta_batch_size": (lambda v: v > 0, "--meta_batch_size must be a positive integer."),
        "lr": (lambda v: v > 0, "--lr must be > 0."),
        "momentum": (lambda v: 0.0 <= v < 1.0, "--momentum must lie in [0, 1)."),
        "l2": (lambda v: v >= 0, "--l2 must be >= 0."),
        "outer_lr": (lambda v: v >= 0 or v == OUTER_LR_BY_CLASSES,
                     "--outer_lr must be >= 0, or -1 for the reference's default by classes."),
        "clip": (lambda v: v > 0, "--clip must be > 0."),
        "meta_interval": (lambda v: v >= 1, "--meta_interval must be a positive integer (1 = a "
                          "meta step on every step)."),
        "seed": (lambda v: v >= 0, "--seed must be >= 0."),
        "meta_scope": (_is_meta_scope, "--meta_scope must be all, head or last:k with an "
                       "integer k >= 1 (e.g. --meta_scope=last:2)."),
        "max_train_examples": (lambda v: v >= 0, "--max_train_examples must be >= 0 (0 = all)."),
        "max_test_examples": (lambda v: v >= 0, "--max_test_examples must be >= 0 (0 = all)."),
        "verbose": (lambda v: v in (0, 1, 2), "--verbose must be 0, 1 or 2."),
        "dataset": (_is_known_dataset,
                    "unknown --dataset: use cifar10, cifar100, fashion_mnist, mnist or another "
                    "TFDS image-classification dataset name."),
        "data_dir": (lambda v: v is None or os.path.isdir(v),
                     "--data_dir is not an existing directory: create it and put the data "
                     "there, or leave the flag out to use the default locations."),
    }
    for name, (checker, message) in checks.items():
        flags.register_validator(name, checker, message=message, flag_values=fv)
    flags.register_multi_flags_validator(
        ["meta_batch_size", "num_meta"],
        lambda v: v["meta_batch_size"] <= v["num_meta"],
        message="--meta_batch_size must not exceed --num_meta (the meta set's size).",
        flag_values=fv)
    flags.register_multi_flags_validator(
        ["method", "meta_interval"],
        lambda v: v["method"] != "l2rw" or v["meta_interval"] == 1,
        message="--meta_interval above 1 needs a weight net to weight the steps between meta "
        "steps; l2rw has none: use --meta_interval=1 with --method=l2rw.",
        flag_values=fv)


def _is_meta_scope(value):
    """Whether `value` is a `GDWModel(meta_scope=...)` spelling (the backbone is checked later)."""
    try:
        meta_scope.parse(value)
    except ValueError:
        return False
    return True


def _is_known_dataset(name):
    """Whether `name` is Fashion-MNIST (read offline) or a registered TFDS dataset."""
    base = name.split(":")[0].split("/")[0]
    return base == "fashion_mnist" or base in tfds.list_builders(with_community_datasets=False)
