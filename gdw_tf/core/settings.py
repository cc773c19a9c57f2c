"""The settings of the GDW step, declared once, and the rules that tie two of them together.

Each field of `ModelSettings` carries its default, help text, allowed values and check in its
metadata (`setting(...)`). `GDWModel` takes its signature defaults from `MODEL_DEFAULTS` and
checks its arguments with `ModelSettings.check`; the training run's `gdw_tf.runs.config.Config`
inherits these fields, adds the data and run settings, and generates the command-line flags and
their validators from the same declarations. So a model built by the CLI and one built by hand
share defaults, rules and messages.

A rule that ties two settings together is one function here returning what is wrong (or None),
worded once; each entry point (the flags, `GDWModel`, the benchmark, own data) calls it.
"""

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

from gdw_tf.core import meta_scope as meta_scope_lib
from gdw_tf.core import methods

NOT_FINITE = "must be a finite number"
POSITIVE_INTEGER = "must be a positive integer"
META_GRADIENTS = ("jvp", "nested")


def setting(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] | None = None,
    check: Callable[[Any], bool] | None = None,
    message: str | None = None,
    run_defining: bool = True,
) -> Any:
    """A settings field with its flag's metadata.

    Args:
      default: the default value (its type is the flag's: str, int, float or bool; None for an
        optional value).
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


def positive(value: float) -> bool:
    return value > 0


def non_negative(value: float) -> bool:
    return value >= 0


def is_meta_scope(value: str) -> bool:
    """Whether `value` is a `meta_scope` spelling (the backbone is checked later)."""
    try:
        meta_scope_lib.parse(value)
    except ValueError:
        return False
    return True


class Settings:
    """Base of the settings dataclasses: checks a value by its field's declaration."""

    @classmethod
    def field(cls, name: str) -> dataclasses.Field:
        return {field.name: field for field in dataclasses.fields(cls)}[name]

    @classmethod
    def problem(cls, name: str, value: Any) -> str | None:
        """What is wrong with `value` for the setting `name` ("must be > 0"), or None."""
        field = cls.field(name)
        metadata = field.metadata
        if value is None:
            return None
        if metadata["choices"] is not None:
            if value not in metadata["choices"]:
                return f"must be one of {tuple(metadata['choices'])}"
            return None
        if field.type is float and (
            not isinstance(value, numbers.Real)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            return NOT_FINITE
        if field.type is int and (
            not isinstance(value, numbers.Integral) or isinstance(value, bool)
        ):
            return metadata["message"] or "must be an integer"
        if metadata["check"] is not None and not metadata["check"](value):
            return metadata["message"]
        return None

    @classmethod
    def check(cls, name: str, value: Any) -> None:
        """Raises `ValueError` naming the setting `name` if `value` breaks its rule."""
        message = cls.problem(name, value)
        if message is not None:
            raise ValueError(f"{name} {message}; got {value!r}.")


@dataclasses.dataclass(frozen=True)
class ModelSettings(Settings):
    """The settings of the GDW step: `GDWModel`'s arguments, and flags of the same names."""

    method: str = setting(
        "gdw",
        "; ".join(f"{m.name} ({m.summary})" for m in methods.METHODS.values())
        + "; docs/ALGORITHM.md.",
        choices=methods.NAMES,
    )
    meta_batch_size: int = setting(
        100,
        "Meta batch size (reference: 100); at most the meta set's size.",
        check=positive,
        message=POSITIVE_INTEGER,
    )
    outer_lr: float = setting(
        None,
        "GDW's stage-2 step beta (docs/ALGORITHM.md, step 7). Unset = by the number of classes "
        "as the reference: 100 for up to 10 classes, 1000 above (CIFAR-100).",
        check=non_negative,
        message="must be ≥ 0 (or unset: by the number of classes)",
    )
    clip: float = setting(
        0.2,
        "GDW's clip c of each stage-2 step entry (reference: 0.2).",
        check=positive,
        message="must be > 0",
    )
    l2: float = setting(
        5e-4,
        "L2 coefficient added to the real step's gradient, as PyTorch's SGD weight_decay "
        "(reference: 5e-4; docs/ALGORITHM.md, step 8).",
        check=non_negative,
        message="must be ≥ 0",
    )
    weight_net_hidden: int = setting(
        100,
        "Hidden units of the weight net 1 → hidden → 1 (Meta-Weight-Net and the reference: 100).",
        check=positive,
        message=POSITIVE_INTEGER,
    )
    weight_net_lr: float = setting(
        1e-3,
        "Learning rate of the weight net's Adam (PyTorch semantics; reference: 1e-3).",
        check=positive,
        message="must be > 0",
    )
    weight_net_l2: float = setting(
        1e-4,
        "L2 coefficient of the weight net's Adam, added to its gradient (reference: 1e-4).",
        check=non_negative,
        message="must be ≥ 0",
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
        check=positive,
        message=POSITIVE_INTEGER + " (1 = a meta step on every step)",
    )
    meta_scope: str = setting(
        meta_scope_lib.ALL,
        "Parameters the virtual step moves: all (the method as published), head (the classifier "
        "layer only: the meta-gradient needs a forward of the trunk on the meta batch, no "
        "backward through it; a faster approximation) or last:k (the last k units with weights; "
        "a residual block counts as one). The real step always trains the whole network; see "
        "gdw_tf/core/meta_scope.py.",
        check=is_meta_scope,
        message=meta_scope_lib.SPELLING,
    )
    seed: int = setting(
        0,
        "Seed of the split, the noise, the initialisation, the data order and the meta-batch "
        "order.",
        check=lambda v: 0 <= v < 2**32,
        message="must be an integer in [0, 2**32)",
    )


MODEL_DEFAULTS = ModelSettings()


def meta_interval_problem(method: str | methods.Method, meta_interval: int, prefix: str = ""):
    """Why `meta_interval` does not suit `method`, or None.

    Args:
      method: a method name or `gdw_tf.core.methods.Method`.
      meta_interval: steps per meta step.
      prefix: put before setting names ("--" for flags).
    """
    method = methods.get(method)
    if meta_interval > 1 and method.meta_step and not method.weight_net:
        return (
            f"{prefix}meta_interval={meta_interval} needs a weight net to weight the steps "
            f"between meta steps; {method.name} has none: use {prefix}meta_interval=1 with "
            f"{method.name}."
        )
    return None


def meta_batch_problem(
    meta_batch_size: int, num_meta: int, prefix: str = "", meta_set: str = "the meta set"
):
    """Why a meta batch of `meta_batch_size` cannot be drawn from `num_meta` examples, or None.

    Args:
      meta_batch_size: meta examples per step.
      num_meta: the meta set's size.
      prefix: put before setting names ("--" for flags).
      meta_set: what the meta set is called where the message is read.
    """
    if meta_batch_size <= num_meta:
        return None
    return (
        f"{prefix}meta_batch_size={meta_batch_size} exceeds the {num_meta} examples of "
        f"{meta_set}; lower {prefix}meta_batch_size to {num_meta} or less."
    )
