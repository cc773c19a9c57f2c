"""Per-step time and memory of CE, L2RW, MW-Net and GDW, measured in one process.

    python -m gdw_tf.bench --model=resnet32 --batch_size=100 --steps=20 [--jit_compile=...] [--json]
    python -m gdw_tf.bench --methods=ce,mwnet,gdw --meta_interval=5   # meta step every 5th step
    python -m gdw_tf.bench --meta_scopes=all,head,last:2   # each weighting method per meta scope

Each method trains the same backbone on random data through `GDWModel`'s compiled train
function (what `fit` runs), on the Keras backend in use (`KERAS_BACKEND=tensorflow|jax`).
Time: median over `--steps` steps after `--warmup` steps; the methods' timed steps take turns
(one step of each per round), so a slowdown of a shared machine hits them alike. With
`--meta_interval=k` a round runs k consecutive steps of each method (one of them a meta step),
and the time per step is theirs divided by k. With `--meta_scopes` each weighting method runs
once per `GDWModel(meta_scope=...)`, reported as e.g. `gdw@head` ("all" keeps the plain name).
Memory, TensorFlow: the allocator's
peak during those steps minus what was allocated before them
(`tf.config.experimental.get_memory_info`), i.e. what one step needs on top of the model; where
the allocator keeps no statistics (`TF_CPU_ALLOCATOR_USE_BFC=false`), the process's peak resident
memory during those steps minus its resident memory before (Linux), else `n/a` (JSON null); JAX
(always compiled by XLA): the compiled step's temporary buffers (`memory_analysis()`).
With `--json` the last line printed is one JSON object.
"""

import dataclasses
import gc
import itertools
import json
import platform
import statistics
import time

import keras
import numpy as np
from absl import app
from absl import flags

import gdw_tf
from gdw_tf import backend
from gdw_tf.core import meta_scope as meta_scope_lib
from gdw_tf.core import methods as methods_lib
from gdw_tf.core import settings
from gdw_tf.nets import backbones
from gdw_tf.runs import config as config_lib

# The settings shared with `python -m gdw_tf.train`, declared in `gdw_tf.runs.config`.
# The meta batch is as large as the training batch.
SHARED_SETTINGS = ("model", "batch_size", "meta_grad", "meta_interval", "jit_compile")


@dataclasses.dataclass(frozen=True)
class Bench:
    """What to time: the shared settings (`gdw_tf.runs.config`) and the benchmark's own."""

    methods: tuple
    steps: int
    warmup: int
    num_classes: int
    meta_scopes: tuple = (meta_scope_lib.ALL,)
    model: str = config_lib.DEFAULTS.model
    batch_size: int = config_lib.DEFAULTS.batch_size
    meta_grad: str = config_lib.DEFAULTS.meta_grad
    meta_interval: int = config_lib.DEFAULTS.meta_interval
    jit_compile: str = config_lib.DEFAULTS.jit_compile

    @classmethod
    def from_flags(cls, flag_values):
        """The benchmark of parsed flags."""
        values = {field.name: flag_values[field.name].value for field in dataclasses.fields(cls)}
        return cls(
            **{
                **values,
                "methods": tuple(values["methods"]),
                "meta_scopes": tuple(values["meta_scopes"]),
            }
        )


def define_flags(flag_values=flags.FLAGS):
    """Defines the benchmark's flags: the shared settings, then its own."""
    config_lib.define_flags(flag_values, [*SHARED_SETTINGS, "tf_logs"])
    flags.DEFINE_integer(
        "steps", 20, "Timed steps per method.", lower_bound=1, flag_values=flag_values
    )
    flags.DEFINE_integer(
        "warmup",
        3,
        "Untimed steps first (tracing, compilation).",
        lower_bound=1,
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "methods",
        list(methods_lib.NAMES[::-1]),
        f"Methods to time, in order: some of {', '.join(methods_lib.NAMES)}.",
        flag_values=flag_values,
    )
    flags.register_validator(
        "methods",
        lambda names: bool(names),
        message=f"--methods is empty; give some of {','.join(methods_lib.NAMES)}.",
        flag_values=flag_values,
    )
    flags.register_validator(
        "methods",
        lambda names: set(names) <= set(methods_lib.NAMES),
        message=f"--methods: unknown method; choose from {', '.join(methods_lib.NAMES)}.",
        flag_values=flag_values,
    )
    flags.DEFINE_list(
        "meta_scopes",
        [meta_scope_lib.ALL],
        "GDWModel meta_scope values to time "
        "each weighting method with: all, head, last:k (rows gdw@head, ...).",
        flag_values=flag_values,
    )
    flags.register_validator("meta_scopes", _check_meta_scopes, flag_values=flag_values)
    flags.DEFINE_integer("num_classes", 10, "Classes.", lower_bound=2, flag_values=flag_values)
    flags.DEFINE_bool(
        "json", False, "End with one JSON line of the figures.", flag_values=flag_values
    )
    config_lib.register_rule(
        flag_values,
        ["methods", "meta_interval"],
        lambda v: next(
            filter(
                None,
                (
                    settings.meta_interval_problem(m, v["meta_interval"], prefix="--")
                    for m in v["methods"]
                ),
            ),
            None,
        ),
    )


def _check_meta_scopes(scopes):
    """True if every scope parses; otherwise raises `flags.ValidationError` saying why."""
    for scope in scopes:
        try:
            meta_scope_lib.parse(scope)
        except ValueError as error:
            raise flags.ValidationError(str(error)) from None
    return True


def _device():
    """`(device for memory statistics, its description)`."""
    cpu = f"CPU ({platform.processor() or platform.machine()}, {len(_cpus())} cores)"
    if keras.backend.backend() == "jax":
        import jax

        device = jax.devices()[0]
        return device, cpu if device.platform == "cpu" else device.device_kind
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        return "GPU:0", tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
    return "CPU:0", cpu


def _cpus():
    try:
        import os

        return sorted(os.sched_getaffinity(0))
    except AttributeError:
        return [0]


def build_step(method, bench, device):
    """One method's compiled train step on random data: `(step, start_memory)` as
    `_tensorflow_step` returns them. `method` may name a meta scope: "gdw@head"."""
    method, _, meta_scope = method.partition("@")
    model_name, batch_size, num_classes = bench.model, bench.batch_size, bench.num_classes
    keras.utils.set_random_seed(0)
    input_shape = (32, 32, 3) if model_name == "resnet32" else (28, 28, 1)
    backbone = backbones.build_model(model_name, input_shape, num_classes)
    rng = np.random.default_rng(0)
    num_meta = max(2 * batch_size, num_classes)  # every class present
    meta_x = rng.normal(size=(num_meta, *input_shape)).astype("float32")
    meta_y = np.arange(num_meta) % num_classes
    model = gdw_tf.GDWModel(
        backbone,
        num_classes,
        method=method,
        meta_data=(meta_x, meta_y),
        meta_batch_size=batch_size,
        meta_grad=bench.meta_grad,
        meta_interval=bench.meta_interval,
        meta_scope=meta_scope or meta_scope_lib.ALL,
    )
    jit_compile = backend.resolve_jit_compile(bench.jit_compile)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit_compile)
    x = rng.normal(size=(batch_size, *input_shape)).astype("float32")
    y = rng.integers(0, num_classes, batch_size).astype("int32")
    if keras.backend.backend() == "jax":
        return _jax_step(model, x, y)
    return _tensorflow_step(model, x, y, device)


def time_methods(bench, device):
    """Times the methods' train steps; returns `{method: (median ms per step, step MB)}`.

    The timed steps take turns, `meta_interval` consecutive steps of each method per round, so
    that a slowdown of a shared machine falls on every method alike and the ratios stay
    meaningful.
    """
    methods, meta_interval = bench.methods, bench.meta_interval
    built = {method: build_step(method, bench, device) for method in methods}
    memory = {}
    for method, (step, start_memory) in built.items():
        for _ in range(bench.warmup):
            step()
        read_memory = start_memory()
        for _ in range(meta_interval):
            step()
        used = read_memory()
        memory[method] = None if used is None else used / 2**20
    times = {method: [] for method in methods}
    for _ in range(bench.steps):
        for method, (step, _) in built.items():
            start = time.perf_counter()
            for _ in range(meta_interval):
                step()
            times[method].append((time.perf_counter() - start) / meta_interval)
    del built
    keras.backend.clear_session()
    gc.collect()
    return {method: (1000 * statistics.median(times[method]), memory[method]) for method in methods}


def _tensorflow_step(model, x, y, device):
    """`(step, start_memory)`: one compiled step that waits for its result, and a function that
    starts counting memory and returns one that reads the peak bytes since, above the start."""
    import tensorflow as tf

    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    model.make_train_function()

    def step():
        float(model.train_function(iterator)["train/loss"])  # fetching a value waits for the step

    def start_memory():
        try:
            before = tf.config.experimental.get_memory_info(device)["current"]
        except ValueError:  # An allocator without statistics (TF_CPU_ALLOCATOR_USE_BFC=false).
            return _start_process_memory()
        tf.config.experimental.reset_memory_stats(device)
        return lambda: tf.config.experimental.get_memory_info(device)["peak"] - before

    return step, start_memory


def _start_process_memory():
    """`start_memory` from the process's resident memory (Linux): resets its peak (`VmHWM`),
    and returns a function that reads the peak since, above the resident memory at the start;
    or one that returns None where the peak cannot be reset (memory not measured)."""

    def status(field):
        with open("/proc/self/status") as file:
            return next(int(line.split()[1]) * 1024 for line in file if line.startswith(field))

    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")  # Resets VmHWM to the current resident size.
        before = status("VmRSS:")
    except (OSError, StopIteration, ValueError):
        return lambda: None
    return lambda: status("VmHWM:") - before


def _jax_step(model, x, y):
    """As `_tensorflow_step`, on JAX: Keras' JAX trainer passes the model's state explicitly."""
    import jax

    batch = (jax.device_put(x), jax.device_put(y))
    model.make_train_function()
    # The weight-net optimizer's state travels in this state too (gdw_tf.backend.jax_trainer).
    state = [
        model._get_jax_state(
            trainable_variables=True,
            non_trainable_variables=True,
            optimizer_variables=True,
            metrics_variables=True,
        )
    ]

    def step():
        logs, state[0] = model.train_function(state[0], itertools.repeat(batch))
        float(logs["train/loss"])

    def start_memory():
        compiled = jax.jit(model.train_step).lower(state[0], batch).compile()
        temp_bytes = compiled.memory_analysis().temp_size_in_bytes
        return lambda: temp_bytes

    return step, start_memory


def with_scopes(methods, meta_scopes):
    """The benchmark's rows: each weighting method once per meta scope ("gdw", "gdw@head"); CE
    once."""
    return [
        method if scope == meta_scope_lib.ALL else f"{method}@{scope}"
        for method in methods
        for scope in (meta_scopes if methods_lib.get(method).meta_step else (meta_scope_lib.ALL,))
    ]


def run(bench):
    """Benchmarks each method of `bench` (a `Bench`), per meta scope; returns the figures as a
    dict."""
    rows = tuple(with_scopes(bench.methods, bench.meta_scopes))
    bench = dataclasses.replace(bench, methods=rows)
    device, device_name = _device()
    figures = time_methods(bench, device)
    return {
        "device": device_name,
        "backend": keras.backend.backend(),
        "model": bench.model,
        "batch_size": bench.batch_size,
        "jit_compile": backend.resolve_jit_compile(bench.jit_compile),
        "meta_grad": bench.meta_grad,
        "meta_interval": bench.meta_interval,
        "meta_scopes": list(bench.meta_scopes),
        "keras": keras.__version__,
        "ms_per_step": {method: figures[method][0] for method in bench.methods},
        "peak_memory_mb": {method: figures[method][1] for method in bench.methods},
    }


def format_table(result):
    """The figures as a text table, with ratios to CE and MW-Net where those were timed."""
    ms, memory = result["ms_per_step"], result["peak_memory_mb"]
    lines = [
        f"{result['model']}, batch {result['batch_size']}, {result['device']}, "
        f"Keras {result['keras']} on {result['backend']}, "
        f"jit_compile={result['jit_compile']}, meta_grad={result['meta_grad']}, "
        f"meta_interval={result['meta_interval']}",
        f"{'method':<12}{'ms/step':>10}{'× CE':>8}{'× MW-Net':>10}{'peak MB':>10}{'× CE':>8}",
    ]
    for method in ms:
        ratio_ce = f"{ms[method] / ms['ce']:.2f}" if "ce" in ms else "-"
        ratio_mw = f"{ms[method] / ms['mwnet']:.2f}" if "mwnet" in ms else "-"
        mem_ce = (
            f"{memory[method] / memory['ce']:.2f}"
            if memory[method] is not None and memory.get("ce")
            else "-"
        )
        mb = "n/a" if memory[method] is None else f"{memory[method]:.1f}"
        lines.append(
            f"{method:<12}{ms[method]:>10.1f}{ratio_ce:>8}{ratio_mw:>10}{mb:>10}{mem_ce:>8}"
        )
    return "\n".join(lines)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    result = run(Bench.from_flags(flags.FLAGS))
    print(format_table(result))
    if flags.FLAGS.json:
        print(json.dumps(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
