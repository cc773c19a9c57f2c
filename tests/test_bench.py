"""The benchmark measures every method and reports the figures the speed issue asks for."""

import json
import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from absl import flags

import gdw_tf
from gdw_tf import bench

# A quick benchmark of CE and GDW on a small CNN, ending with its JSON line.
SMALL_BENCH_COMMAND = (
    sys.executable,
    "-m",
    "gdw_tf.bench",
    "--model=small_cnn",
    "--batch_size=4",
    "--steps=1",
    "--warmup=1",
    "--methods=ce,gdw",
    "--jit_compile=false",
    "--json",
)


@pytest.mark.slow
def test_run_times_every_method_and_measures_memory():
    figures = bench.run(
        bench.Bench(
            model="small_cnn",
            batch_size=8,
            num_classes=10,
            steps=2,
            warmup=1,
            methods=("ce", "l2rw", "mwnet", "gdw"),
            jit_compile="false",
            meta_grad="jvp",
        )
    )
    assert figures["backend"] == keras.backend.backend()
    assert list(figures["ms_per_step"]) == ["ce", "l2rw", "mwnet", "gdw"]
    assert all(ms > 0 for ms in figures["ms_per_step"].values())
    memory = figures["peak_memory_mb"]
    assert memory["gdw"] > memory["ce"] > 0  # a GDW step holds more than a CE step
    table = bench.format_table(figures)
    assert "gdw" in table and "× MW-Net" in table


@pytest.mark.slow
def test_the_command_ends_with_one_json_line():
    command = list(SMALL_BENCH_COMMAND)
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"device", "model", "batch_size", "ms_per_step", "peak_memory_mb"} <= set(figures)
    assert figures["model"] == "small_cnn" and figures["batch_size"] == 4
    assert list(figures["ms_per_step"]) == ["ce", "gdw"]


def _record_models(monkeypatch):
    """A list to which every `GDWModel` the benchmark builds is appended."""
    built, model_class = [], gdw_tf.GDWModel

    def recording_model(*args, **kwargs):
        built.append(model_class(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(bench.gdw_tf, "GDWModel", recording_model)
    return built


@pytest.mark.slow
def test_meta_interval_is_passed_to_the_models_and_reported(monkeypatch):
    built = _record_models(monkeypatch)
    figures = bench.run(
        bench.Bench(
            model="small_cnn",
            batch_size=8,
            num_classes=10,
            steps=1,
            warmup=1,
            methods=("ce", "gdw"),
            jit_compile="false",
            meta_grad="jvp",
            meta_interval=3,
        )
    )
    assert figures["meta_interval"] == 3 and "meta_interval=3" in bench.format_table(figures)
    assert [model.meta_interval for model in built] == [3, 3]
    # One warm-up step, three for memory, three timed: two of the seven were meta steps.
    assert int(built[1].weight_net_optimizer.iterations.numpy()) == 2


@pytest.mark.slow
def test_the_command_runs_where_the_allocator_keeps_no_statistics():
    command = list(SMALL_BENCH_COMMAND)
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPU_ALLOCATOR_USE_BFC": "false"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    memory = figures["peak_memory_mb"]
    assert list(memory) == ["ce", "gdw"]
    # The process's resident peak (Linux), or unavailable; never a crash.
    assert all(value is None or value >= 0 for value in memory.values())


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux /proc only")
def test_process_memory_sees_a_new_allocation():
    read_memory = bench._start_process_memory()
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, written, so resident
    used = read_memory()
    del block
    assert used is not None and 60 * 2**20 <= used <= 200 * 2**20


def test_the_table_shows_memory_that_could_not_be_measured_as_na():
    figures = {
        "model": "mlp",
        "batch_size": 8,
        "device": "CPU",
        "keras": keras.__version__,
        "backend": "tensorflow",
        "jit_compile": False,
        "meta_grad": "jvp",
        "meta_interval": 1,
        "ms_per_step": {"ce": 1.0, "gdw": 3.0},
        "peak_memory_mb": {"ce": None, "gdw": None},
    }
    rows = bench.format_table(figures).splitlines()[2:]
    assert rows[1].split() == ["gdw", "3.0", "3.00", "-", "n/a", "-"]


@pytest.mark.slow
def test_each_weighting_method_is_timed_per_meta_scope(monkeypatch):
    assert bench.with_scopes(["ce", "mwnet", "gdw"], ["all", "last:3"]) == [
        "ce",
        "mwnet",
        "mwnet@last:3",
        "gdw",
        "gdw@last:3",
    ]
    built = _record_models(monkeypatch)
    figures = bench.run(
        bench.Bench(
            model="small_cnn",
            batch_size=4,
            num_classes=10,
            steps=1,
            warmup=1,
            methods=("gdw",),
            jit_compile="false",
            meta_grad="jvp",
            meta_scopes=("all", "head"),
        )
    )
    assert list(figures["ms_per_step"]) == ["gdw", "gdw@head"]
    assert [model.meta_scope for model in built] == ["all", "head"]
    assert figures["meta_scopes"] == ["all", "head"]
    assert "gdw@head" in bench.format_table(figures)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--meta_interval=2"], "l2rw has none: use --meta_interval=1"),
        (["--methods="], "--methods is empty"),
        (["--methods=gdw,bogus"], "--methods: unknown method"),
        (["--meta_scopes=all,top"], "meta_scope must be all, head or last:k"),
    ],
)
def test_impossible_flags_are_refused_while_parsing(args, message):
    flag_values = flags.FlagValues()
    bench.define_flags(flag_values)
    with pytest.raises(flags.IllegalFlagValueError, match=re.escape(message)):
        flag_values(["prog", *args])
