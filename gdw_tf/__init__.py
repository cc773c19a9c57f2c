"""gdw_tf: Generalized Data Weighting (Chen et al., NeurIPS 2021) for Keras 3 / TensorFlow.

The public API is the names below (`__all__`); the packages under `gdw_tf` show the layers:

- `gdw_tf.backend`: what differs between TensorFlow and JAX;
- `gdw_tf.core`: the GDW step and `GDWModel` (settings, method table, weighting, meta scope);
- `gdw_tf.nets`: the backbones;
- `gdw_tf.data`: datasets, the split and noise, your own data, the `tf.data` pipelines;
- `gdw_tf.labels`: wrong labels, ranked, and their number estimated;
- `gdw_tf.pages`: the run's report and review pages (templates as package data);
- `gdw_tf.runs`: training runs from a `Config`: flags, run directory, backups, results, serving;
- `python -m gdw_tf.train`, `gdw_tf.export`, `gdw_tf.bench`: the programs.

A package imports only from those above it in this list. `GDWModel`, `find_label_issues` and
the other names of `gdw_tf.core` and `gdw_tf.labels.label_issues` need Keras alone (with JAX or
TensorFlow); the names that need TensorFlow (the input pipeline, the serving export) load on
first use. `import gdw_tf` registers the backbones' own layers (`OptionAShortcut`,
`ApplicationPreprocessing`), so that `keras.saving.load_model` reads every `model.keras` a run
writes.

Imported by `python -m gdw_tf.train` (or `export`, `bench`), it first silences TensorFlow's C++ log
lines, unless that command line says `--tf_logs`: TensorFlow writes them while it is imported,
before any flag is parsed. A library user's TensorFlow logging is left alone.
"""

import contextlib
import importlib
import os
import re
import sys
import tempfile

from absl import flags as _flags

# The programs whose TensorFlow C++ log lines are silenced unless `--tf_logs` is given, each with
# the module whose import starts TensorFlow for it (on Keras' JAX backend the benchmark does not).
_PROGRAMS = {"gdw_tf.train": "tensorflow", "gdw_tf.export": "tensorflow", "gdw_tf.bench": "keras"}
# A C++ log line (glog/absl style: severity, date, time), or absl's note that precedes them.
_TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog)")


def _quiet_start():
    """The module to import with TensorFlow's start-up log lines dropped: the program's
    (`_PROGRAMS`) if this process is `python -m gdw_tf.<program>` without `--tf_logs`, else None.

    Read from the command line (flag files expanded) before the flags are parsed: TensorFlow
    writes most of its log lines when it is imported, which `import gdw_tf` does.
    """
    argv = getattr(sys, "orig_argv", [])
    if "-m" not in argv[:-1] or argv[argv.index("-m") + 1] not in _PROGRAMS:
        return None
    program = argv[argv.index("-m") + 1]
    args = argv[argv.index("-m") + 2 :]
    try:
        args = _flags.FlagValues().read_flags_from_files(args, force_gnu=False)
    except _flags.Error:
        pass  # absl reports a bad flag file when it parses the flags.
    show = False
    for arg in args:  # The last mention wins, as in absl.
        name, _, value = arg.partition("=")
        if name == "--tf_logs":
            show = value.lower() in ("", "true", "t", "1")
        elif name == "--notf_logs":
            show = False
    return None if show else _PROGRAMS[program]


@contextlib.contextmanager
def _tf_start_up_logs_dropped():
    """Drops the C++ log lines written to stderr (file descriptor 2) inside the block; other
    output (a Python warning or traceback) is written to stderr afterwards."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile("w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines(keepends=True):
                if not _TF_LOG_LINE.match(line):
                    sys.stderr.write(line)


if (_start := _quiet_start()) is not None:
    # Post-start-up log lines obey TF_CPP_MIN_LOG_LEVEL (3: none, errors included; a value set in
    # the environment wins); those of the start-up, written before it is read, are dropped.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _tf_start_up_logs_dropped():
        importlib.import_module(_start)

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
