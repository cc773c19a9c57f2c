"""The benchmark measures every method and reports the figures the speed issue asks for."""

import json

import keras
import pytest
from absl import app
from absl import flags
from absl.testing import flagsaver

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


@pytest.fixture(scope="module")
def bench_flags():
    """The benchmark's flags, defined once (as `python -m gdw_tf.bench` does) and parsed."""
    if "steps" not in flags.FLAGS:
        bench.define_flags()
    flags.FLAGS.mark_as_parsed()


def test_main_ends_with_one_json_line(capsys, bench_flags):
    with flagsaver.flagsaver(model="small_cnn", batch_size=4, steps=1, warmup=1,
                             methods=["ce", "gdw"], jit_compile="false", json=True):
        bench.main(["bench"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(last)
    assert {"device", "model", "batch_size", "ms_per_step", "peak_memory_mb"} <= set(figures)
    assert figures["model"] == "small_cnn" and figures["batch_size"] == 4


def test_unknown_methods_are_refused(bench_flags):
    with flagsaver.flagsaver(methods=["gdw", "bogus"]):
        with pytest.raises(app.UsageError, match="bogus"):
            bench.main(["bench"])
