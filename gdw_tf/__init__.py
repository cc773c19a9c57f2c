"""gdw_tf: Generalized Data Weighting (Chen et al., NeurIPS 2021) for Keras 3 / TensorFlow.

The public API is the names below (`__all__`); the packages under `gdw_tf` show the layers:

- `gdw_tf.backend`: what differs between TensorFlow and JAX;
- `gdw_tf.core`: the GDW step and `GDWModel` (settings, method table, weighting, meta scope);
- `gdw_tf.nets`: the backbones;
- `gdw_tf.data`: datasets, the split and noise, your own data, the `tf.data` pipelines;
- `gdw_tf.labels`: wrong labels, ranked, and the run's report;
- `gdw_tf.runs`: training runs from a `Config`: flags, run directory, backups, results, serving;
- `python -m gdw_tf.train`, `gdw_tf.export`, `gdw_tf.bench`: the programs.

A package imports only from those above it in this list. `GDWModel`, `find_label_issues` and
the other names of `gdw_tf.core` and `gdw_tf.labels.label_issues` need Keras alone (with JAX or
TensorFlow); the names that need TensorFlow (the input pipeline, the serving export) load on
first use. `import gdw_tf` registers the backbones' own layers (`OptionAShortcut`,
`ApplicationPreprocessing`), so that `keras.saving.load_model` reads every `model.keras` a run
writes.
"""

import importlib

from gdw_tf.core.model import GDWModel
from gdw_tf.core.model import resolve_outer_lr
from gdw_tf.core.optimizers import TorchAdam
from gdw_tf.core.settings import MODEL_DEFAULTS
from gdw_tf.core.settings import ModelSettings
from gdw_tf.core.weight_net import build_weight_net
from gdw_tf.data.corrections import apply_corrections
from gdw_tf.data.corrections import read_corrections
from gdw_tf.data.split import balanced_meta_subset
from gdw_tf.labels.label_issues import LabelIssues
from gdw_tf.labels.label_issues import find_label_issues
from gdw_tf.labels.label_issues import rank_label_issues
from gdw_tf.labels.label_issues import read_label_issues_csv
from gdw_tf.labels.label_issues import write_label_issues_csv
from gdw_tf.nets import backbones as _backbones  # noqa: F401  Registers its layers for load_model.

# Name → module, imported on first use (they need TensorFlow).
_NEED_TENSORFLOW = {
    "normalize": "gdw_tf.data.input_pipeline",
    "normalization_stats": "gdw_tf.data.input_pipeline",
    "train_dataset": "gdw_tf.data.input_pipeline",
    "eval_dataset": "gdw_tf.data.input_pipeline",
    "export_serving": "gdw_tf.runs.serving",
}

__all__ = [
    "MODEL_DEFAULTS",
    "GDWModel",
    "LabelIssues",
    "ModelSettings",
    "TorchAdam",
    "apply_corrections",
    "balanced_meta_subset",
    "build_weight_net",
    "find_label_issues",
    "rank_label_issues",
    "read_corrections",
    "read_label_issues_csv",
    "resolve_outer_lr",
    "write_label_issues_csv",
    *_NEED_TENSORFLOW,
]
__version__ = "0.1.0"


def __getattr__(name):
    if name in _NEED_TENSORFLOW:
        return getattr(importlib.import_module(_NEED_TENSORFLOW[name]), name)
    raise AttributeError(f"module 'gdw_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
