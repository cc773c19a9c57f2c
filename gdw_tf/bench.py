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
(`tf.config.experimental.get_memory_info`), i.e. what one step needs on top of the model; JAX
(always compiled by XLA): the compiled step's temporary buffers (`memory_analysis()`).
With `--json` the last line printed is one JSON object.
"""

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
from gdw_tf import meta_scope as meta_scope_lib
from gdw_tf import models
from gdw_tf import step as step_lib


def define_flags():
    """Defines the benchmark's flags."""
    flags.DEFINE_enum("model", "resnet32", list(models.MODEL_NAMES), "Backbone to time.")
    flags.DEFINE_integer("batch_size", 100, "Training and meta batch size.", lower_bound=1)
    flags.DEFINE_integer("steps", 20, "Timed steps per method.", lower_bound=1)
    flags.DEFINE_integer("warmup", 3, "Untimed steps first (tracing, compilation).", lower_bound=1)
    flags.DEFINE_list("methods", list(step_lib.METHODS[::-1]), "Methods to time, in order.")
    flags.DEFINE_list("meta_scopes", ["all"], "GDWModel meta_scope values to time each weighting "
                      "method with: all, head, last:k (rows gdw@head, ...).")
    flags.DEFINE_enum("meta_grad", "jvp", list(step_lib.META_GRADIENTS), "Meta-gradient formulation.")
    flags.DEFINE_integer("meta_interval", 1, "GDWModel's meta_interval: a meta step every k-th "
                         "step (not for l2rw).", lower_bound=1)
    flags.DEFINE_enum(
        "jit_compile", "auto", ["auto", "true", "false"], "XLA; auto: on when a GPU is visible (TensorFlow), always (JAX)."
    )
    flags.DEFINE_integer("num_classes", 10, "Classes.", lower_bound=2)
    flags.DEFINE_bool("json", False, "End with one JSON line of the figures.")


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


def build_step(method, model_name, batch_size, num_classes, jit_compile, meta_grad, device,
               meta_interval=1):
    """One method's compiled train step on random data: `(step, start_memory)` as
    `_tensorflow_step` returns them. `method` may name a meta scope: "gdw@head"."""
    method, _, meta_scope = method.partition("@")
    keras.utils.set_random_seed(0)
    input_shape = (32, 32, 3) if model_name == "resnet32" else (28, 28, 1)
    backbone = models.build_model(model_name, input_shape, num_classes)
    rng = np.random.default_rng(0)
    num_meta = max(2 * batch_size, num_classes)  # every class present
    meta_x = rng.normal(size=(num_meta, *input_shape)).astype("float32")
    meta_y = np.arange(num_meta) % num_classes
    model = gdw_tf.GDWModel(
        backbone, num_classes, method=method, meta_data=(meta_x, meta_y),
        meta_batch_size=batch_size, meta_grad=meta_grad, meta_interval=meta_interval,
        meta_scope=meta_scope or meta_scope_lib.ALL,
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), jit_compile=jit_compile)
    x = rng.normal(size=(batch_size, *input_shape)).astype("float32")
    y = rng.integers(0, num_classes, batch_size).astype("int32")
    if keras.backend.backend() == "jax":
        return _jax_step(model, x, y)
    return _tensorflow_step(model, x, y, device)


def time_methods(methods, model_name, batch_size, num_classes, steps, warmup, jit_compile,
                 meta_grad, device, meta_interval=1):
    """Times the methods' train steps; returns `{method: (median ms per step, step MB)}`.

    The timed steps take turns, `meta_interval` consecutive steps of each method per round, so
    that a slowdown of a shared machine falls on every method alike and the ratios stay
    meaningful.
    """
    built = {method: build_step(method, model_name, batch_size, num_classes, jit_compile,
                                meta_grad, device, meta_interval) for method in methods}
    memory = {}
    for method, (step, start_memory) in built.items():
        for _ in range(warmup):
            step()
        read_memory = start_memory()
        for _ in range(meta_interval):
            step()
        memory[method] = read_memory() / 2**20
    times = {method: [] for method in methods}
    for _ in range(steps):
        for method, (step, _) in built.items():
            start = time.perf_counter()
            for _ in range(meta_interval):
                step()
            times[method].append((time.perf_counter() - start) / meta_interval)
    del built
    keras.backend.clear_session()
    gc.collect()
    return {method: (1000 * statistics.median(times[method]), memory[method])
            for method in methods}


def _tensorflow_step(model, x, y, device):
    """`(step, start_memory)`: one compiled step that waits for its result, and a function that
    starts counting memory and returns one that reads the peak bytes since, above the start."""
    import tensorflow as tf

    iterator = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
    model.make_train_function()

    def step():
        float(model.train_function(iterator)["train/loss"])  # fetching a value waits for the step

    def start_memory():
        before = tf.config.experimental.get_memory_info(device)["current"]
        tf.config.experimental.reset_memory_stats(device)
        return lambda: tf.config.experimental.get_memory_info(device)["peak"] - before

    return step, start_memory


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
    return [method if scope == meta_scope_lib.ALL else f"{method}@{scope}"
            for method in methods
            for scope in ((meta_scope_lib.ALL,) if method == "ce" else meta_scopes)]


def run(model_name, batch_size, num_classes, steps, warmup, methods, jit_compile, meta_grad,
        meta_interval=1, meta_scopes=(meta_scope_lib.ALL,)):
    """Benchmarks each method (per meta scope); returns the figures as a dict."""
    methods = with_scopes(methods, meta_scopes)
    device, device_name = _device()
    jit_compile = backend.resolve_jit_compile(jit_compile)
    figures = time_methods(methods, model_name, batch_size, num_classes, steps, warmup,
                           jit_compile, meta_grad, device, meta_interval)
    ms = {method: figures[method][0] for method in methods}
    memory = {method: figures[method][1] for method in methods}
    return {
        "device": device_name,
        "backend": keras.backend.backend(),
        "model": model_name,
        "batch_size": batch_size,
        "jit_compile": jit_compile,
        "meta_grad": meta_grad,
        "meta_interval": meta_interval,
        "meta_scopes": list(meta_scopes),
        "keras": keras.__version__,
        "ms_per_step": ms,
        "peak_memory_mb": memory,
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
        mem_ce = f"{memory[method] / memory['ce']:.2f}" if "ce" in memory and memory["ce"] else "-"
        lines.append(
            f"{method:<12}{ms[method]:>10.1f}{ratio_ce:>8}{ratio_mw:>10}{memory[method]:>10.1f}{mem_ce:>8}"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    config = flags.FLAGS
    unknown = sorted(set(config.methods) - set(step_lib.METHODS))
    if unknown:
        raise app.UsageError(f"unknown method(s) {unknown}; choose from {list(step_lib.METHODS)}.")
    if config.meta_interval > 1 and "l2rw" in config.methods:
        raise app.UsageError("--meta_interval above 1 does not apply to l2rw (no weight net); "
                             "pass --methods=ce,mwnet,gdw.")
    for scope in config.meta_scopes:
        try:
            meta_scope_lib.parse(scope)
        except ValueError as error:
            raise app.UsageError(str(error)) from error
    result = run(
        config.model, config.batch_size, config.num_classes, config.steps, config.warmup,
        config.methods, config.jit_compile, config.meta_grad, config.meta_interval,
        config.meta_scopes,
    )
    print(format_table(result))
    if config.json:
        print(json.dumps(result))


if __name__ == "__main__":
    define_flags()
    app.run(main)
