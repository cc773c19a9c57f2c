"""What a person sees from `python -m gdw_tf.train`: no TensorFlow C++ log lines unless
`--tf_logs`, and a run that ends with a short summary of `results.json`."""

import json
import os
import re
import subprocess
import sys

import pytest
from conftest import REPO
from conftest import TINY_FASHION_MNIST

import gdw_tf

# A C++ log line of TensorFlow (glog/absl style), or absl's note before the first ones.
TF_LOG_LINE = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl::InitializeLog)")


def _train(*args):
    """`python -m gdw_tf.train ARGS` in a fresh process, with TensorFlow's logging unset."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "gdw_tf.train", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_a_run_prints_no_tensorflow_logs_and_ends_with_a_summary_of_its_results(tmp_path):
    output_dir = str(tmp_path / "run")
    finished = _train(
        *TINY_FASHION_MNIST, "--noise=uniform", "--ratio=0.4", f"--output_dir={output_dir}"
    )

    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stderr == ""  # Not a line of TensorFlow's (they go to stderr).
    with open(os.path.join(output_dir, "results.json")) as file:
        results = json.load(file)
    lines = finished.stdout.splitlines()
    assert len(lines) == 7  # Not results.json's hundreds.
    minutes = results["timing"]["total_seconds"] / 60
    assert lines[0] == f"Finished in {minutes:.1f} min: {output_dir}"
    accuracy = results["test_accuracy"]
    assert lines[1].split() == [
        "test",
        "accuracy",
        f"{100 * accuracy['last']:.2f}%",
        "(last",
        "epoch;",
        "best",
        f"{100 * accuracy['best']:.2f}%)",
    ]
    wrong = results["wrong_labels"]
    low, high = wrong["estimate"]["interval"]
    assert lines[2].split(None, 2)[2] == (
        f"{wrong['flagged']:,} flagged, {round(wrong['estimate']['count']):,} estimated "
        f"(95% interval {round(low):,} to {round(high):,}), {wrong['true']:,} truly wrong "
        "(noise injected)"
    )
    for line, name in zip(
        lines[3:], ["report.html", "review.html", "label_issues.csv", "results.json"]
    ):
        assert line.split()[:2] == [name, os.path.join(output_dir, name)]
        assert os.path.isfile(line.split()[1])

    # --tf_logs shows them (a second run of a finished directory is refused after the import).
    shown = _train("--tf_logs", "--dataset=fashion_mnist", f"--output_dir={output_dir}")
    assert shown.returncode == 2
    assert any(TF_LOG_LINE.match(line) for line in shown.stderr.splitlines()), shown.stderr
    assert shown.stderr.splitlines()[-1].startswith(f"error: {output_dir} holds a finished run")


@pytest.mark.parametrize(
    "args, silenced",
    [
        (["--epochs=1"], True),
        (["--tf_logs"], False),
        (["--tf_logs=true"], False),
        (["--tf_logs", "--notf_logs"], True),
        (["--tf_logs=false"], True),
        (["--flagfile=FLAGFILE", "--epochs=1"], False),  # The flag file says --tf_logs.
        (["--flagfile=FLAGFILE", "--notf_logs"], True),
    ],
)
def test_the_programs_read_tf_logs_before_tensorflow_is_imported(
    args, silenced, tmp_path, monkeypatch
):
    flagfile = tmp_path / "logs.flags"
    flagfile.write_text("--tf_logs\n")
    args = [arg.replace("FLAGFILE", str(flagfile)) for arg in args]
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "gdw_tf.train", *args])
    assert (gdw_tf._quiet_start() == "tensorflow") is silenced


def test_tf_logs_are_left_alone_outside_the_programs(monkeypatch):
    monkeypatch.setattr(sys, "orig_argv", ["python3", "-m", "my_project.train", "--epochs=1"])
    assert gdw_tf._quiet_start() is None
    monkeypatch.setattr(sys, "orig_argv", ["python3", "my_script.py"])
    assert gdw_tf._quiet_start() is None
