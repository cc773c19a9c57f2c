"""The benchmark measures every method and reports the figures the speed issue asks for."""

import json
import subprocess
import sys

import keras

import gdw_tf
from gdw_tf import bench


def test_run_times_every_method_and_measures_memory():
    figures = bench.run("small_cnn", 8, 10, steps=2, warmup=1, methods=["ce", "l2rw", "mwnet", "gdw"],
                        jit_compile="false", meta_grad="jvp")
    assert figures["backend"] == keras.backend.backend()
    assert list(figures["ms_per_step"]) == ["ce", "l2rw", "mwnet", "gdw"]
    assert all(ms > 0 for ms in figures["ms_per_step"].values())
    memory = figures["peak_memory_mb"]
    assert memory["gdw"] > memory["ce"] > 0  # a GDW step holds more than a CE step
    table = bench.format_table(figures)
    assert "gdw" in table and "× MW-Net" in table


def test_the_command_ends_with_one_json_line():
    command = [sys.executable, "-m", "gdw_tf.bench", "--model=small_cnn", "--batch_size=4",
               "--steps=1", "--warmup=1", "--methods=ce,gdw", "--jit_compile=false", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert {"device", "model", "batch_size", "ms_per_step", "peak_memory_mb"} <= set(figures)
    assert figures["model"] == "small_cnn" and figures["batch_size"] == 4
    assert list(figures["ms_per_step"]) == ["ce", "gdw"]


def test_meta_interval_is_passed_to_the_models_and_reported(monkeypatch):
    built, model_class = [], gdw_tf.GDWModel

    def recording_model(*args, **kwargs):
        built.append(model_class(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(bench.gdw_tf, "GDWModel", recording_model)
    figures = bench.run("small_cnn", 8, 10, steps=1, warmup=1, methods=["ce", "gdw"],
                        jit_compile="false", meta_grad="jvp", meta_interval=3)
    assert figures["meta_interval"] == 3 and "meta_interval=3" in bench.format_table(figures)
    assert [model.meta_interval for model in built] == [3, 3]
    # One warm-up step, three for memory, three timed: two of the seven were meta steps.
    assert int(built[1].weight_net_optimizer.iterations.numpy()) == 2


def test_meta_interval_is_refused_for_l2rw():
    command = [sys.executable, "-m", "gdw_tf.bench", "--meta_interval=2"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "does not apply to l2rw" in result.stderr


def test_unknown_methods_are_refused():
    command = [sys.executable, "-m", "gdw_tf.bench", "--methods=gdw,bogus"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "bogus" in result.stderr


def test_each_weighting_method_is_timed_per_meta_scope(monkeypatch):
    assert bench.with_scopes(["ce", "mwnet", "gdw"], ["all", "last:3"]) == [
        "ce", "mwnet", "mwnet@last:3", "gdw", "gdw@last:3"]
    built, model_class = [], gdw_tf.GDWModel

    def recording_model(*args, **kwargs):
        built.append(model_class(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(bench.gdw_tf, "GDWModel", recording_model)
    figures = bench.run("small_cnn", 4, 10, steps=1, warmup=1, methods=["gdw"],
                        jit_compile="false", meta_grad="jvp", meta_scopes=["all", "head"])
    assert list(figures["ms_per_step"]) == ["gdw", "gdw@head"]
    assert [model.meta_scope for model in built] == ["all", "head"]
    assert figures["meta_scopes"] == ["all", "head"]
    assert "gdw@head" in bench.format_table(figures)


def test_unknown_meta_scopes_are_refused():
    command = [sys.executable, "-m", "gdw_tf.bench", "--meta_scopes=all,top"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "meta_scope must be 'all', 'head' or 'last:k'" in result.stderr
