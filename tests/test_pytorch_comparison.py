"""scripts/pytorch_comparison.py: gdw_tf's step against the authors' PyTorch step.

PyTorch and the authors' code are optional (not in the `test` extra): the tests that run them
skip, with the script's own one-line reason, without PyTorch, and the end-to-end one also
without a checkout of their code named by `GDW_REFERENCE_DIR` (`git clone
https://github.com/GGchen1997/GDW-NIPS2021`; the script's docstring says which commit).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import REPO
from conftest import load_script

SCRIPT = os.path.join(REPO, "scripts", "pytorch_comparison.py")
# A stand-in for the authors' main.py: their names and call signatures, a step that sleeps
# 0.2 s and logs what it was given.
STAND_IN = os.path.join(REPO, "tests", "pytorch_reference_stand_in", "main.py")


@pytest.fixture(scope="module")
def comparison():
    return load_script("pytorch_comparison")


def test_without_their_code_or_torch_it_says_how_to_get_them(comparison, tmp_path, monkeypatch):
    clone = (
        f"git clone https://github.com/GGchen1997/GDW-NIPS2021 {tmp_path}; "
        "git checkout 9aa54d3bd68c930887486b3736f3d29d880d66b9"
    )
    assert comparison.reference_problem(str(tmp_path)) == (
        f"--reference_dir={tmp_path} holds no main.py of the authors: {clone}."
    )
    assert comparison.reference_problem(None).startswith("--reference_dir= holds no main.py")

    (tmp_path / "main.py").write_text("")
    monkeypatch.setattr(comparison.importlib.util, "find_spec", lambda name: None)
    assert comparison.reference_problem(str(tmp_path)) == (
        "PyTorch is not installed (optional for gdw_tf): pip install torch torchvision."
    )


def test_the_comparison_is_steps_per_second_and_their_time_over_ours(comparison):
    reference = {"ms_per_step": {"gdw": 2185.0, "mwnet": 2249.0}, "torch": "2.13.0+cpu"}
    gdw_tf = {"ms_per_step": {"ce": 318.0, "gdw": 1032.0, "mwnet": 1025.0}}

    rows = comparison.compare(reference, gdw_tf)

    assert list(rows) == ["gdw", "mwnet"]
    assert rows["gdw"] == pytest.approx(
        {
            "reference_ms_per_step": 2185.0,
            "reference_steps_per_second": 1 / 2.185,
            "gdw_tf_ms_per_step": 1032.0,
            "gdw_tf_steps_per_second": 1 / 1.032,
            "speed_up": 2185 / 1032,
        }
    )
    table = comparison.format_table(
        rows,
        {**reference, "device": "cpu", "threads": 2},
        {"keras": "3.15.1", "backend": "tensorflow", "device": "CPU"},
        batch_size=100,
        steps=8,
        warmup=2,
    )
    assert table.splitlines()[2].split() == ["gdw", "2185.0", "0.46", "1032.0", "0.97", "2.12×"]


def _skip_if_unable(comparison, reference_dir):
    """Skips the test, saying why, where the script could not time the authors' step."""
    problem = comparison.reference_problem(reference_dir and str(reference_dir))
    if problem:
        pytest.skip(problem)


@pytest.mark.slow
def test_their_train_function_is_timed_per_step_on_one_batch(comparison, tmp_path):
    shutil.copy(STAND_IN, tmp_path)
    _skip_if_unable(comparison, tmp_path)

    figures = comparison.time_reference(
        str(tmp_path), ["gdw", "mwnet"], batch_size=4, steps=3, warmup=1, threads=1
    )

    calls = [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]
    shapes = [[4, 3, 32, 32], [4], [4], [4], [4, 3, 32, 32], [4]]
    assert calls == [["gdw", 4, shapes]] * 4 + [["mw-net", 4, shapes]] * 4
    for ms in figures["ms_per_step"].values():
        assert 200 <= ms < 2000  # the sleep, and what a busy machine adds
    assert figures["device"] == "cpu" and figures["threads"] == 1


@pytest.mark.slow
def test_against_the_authors_code_at_a_tiny_size(comparison):
    reference_dir = os.environ.get("GDW_REFERENCE_DIR")
    _skip_if_unable(comparison, reference_dir)
    run = subprocess.run(
        [
            sys.executable,
            SCRIPT,
            f"--reference_dir={reference_dir}",
            "--batch=4",
            "--steps=1",
            "--warmup=1",
            "--threads=1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    theirs = figures["reference"]["ms_per_step"]["gdw"]
    ours = figures["gdw_tf"]["ms_per_step"]["gdw"]
    assert theirs > 0 and ours > 0
    assert figures["comparison"]["gdw"]["speed_up"] == pytest.approx(theirs / ours)
    assert (figures["gdw_tf"]["model"], figures["gdw_tf"]["batch_size"]) == ("resnet32", 4)
    assert f"{theirs:.1f}" in run.stdout.splitlines()[-2]
