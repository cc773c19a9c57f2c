"""`python -m gdw_tf.train`: one training run of GDW (or MW-Net, L2RW, CE) from flags.

    python -m gdw_tf.train --flagfile=flags/cifar10_uniform_40.flags --output_dir=runs/c10_u40

The flags (`gdw_tf.runs.config.define_flags`) are read here only and become a `Config`; the run
itself is `gdw_tf.runs.run.run`. Precedence: flag defaults, then `--flagfile`, then flags that come
after it on the command line. Bad input ends the program with one line on stderr naming the
problem and the fix, and exit status 2 (1 for a loss that became non-finite or a backup that
could not be written); absl reports invalid flag values itself (exit status 1). A finished run
ends with a short summary on stdout (`summary`); `results.json` holds everything.

TensorFlow's C++ log lines are silenced unless `--tf_logs` is given: `gdw_tf/__init__.py` does it,
because `python -m gdw_tf.train` imports the package, and with it TensorFlow, before this module.
"""

import os
import sys

from absl import app
from absl import flags

from gdw_tf.runs import backup
from gdw_tf.runs import callbacks
from gdw_tf.runs import config as config_lib
from gdw_tf.runs import run as run_lib
from gdw_tf.runs import run_dir

FLAGS = flags.FLAGS
config_lib.define_flags(FLAGS)
flags.adopt_module_key_flags(config_lib)  # --helpshort lists them as this program's flags.


def main(argv):
    """Runs training with the parsed flags (the results are in `--output_dir`)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    config = config_lib.Config.from_flags(FLAGS)
    try:
        results = run_lib.run(config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (callbacks.NonFiniteLossError, backup.BackupError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    print(summary(results))


def summary(results):
    """A few lines to read at a glance at the end of a run: test accuracy, the wrong labels
    estimated, flagged and (where the noise was injected) true, and where the files are."""
    output_dir = results["config"]["output_dir"]
    lines = [f"Finished in {results['timing']['total_seconds'] / 60:.1f} min: {output_dir}"]
    accuracy = results["test_accuracy"]
    if accuracy is None:
        lines.append("  test accuracy     none (no --test_data)")
    else:
        lines.append(
            f"  test accuracy     {accuracy['last']:.2%} (last epoch; best {accuracy['best']:.2%})"
        )
    wrong = results["wrong_labels"]
    estimate = wrong["estimate"]
    labels = f"{wrong['flagged']:,} flagged"
    if estimate is not None:
        low, high = estimate["interval"]
        labels += f", {estimate['count']:,.0f} estimated (95% interval {low:,.0f} to {high:,.0f})"
    if wrong["true"] is not None:
        labels += f", {wrong['true']:,} truly wrong (noise injected)"
    lines.append(f"  wrong labels      {labels}")
    for name, what in (
        (run_dir.REPORT_FILE, "the run at a glance"),
        (run_dir.REVIEW_FILE, "review labels by keyboard, the trusted set first"),
        (run_dir.LABEL_ISSUES_FILE, "every example, most suspicious label first"),
        (run_dir.RESULTS_FILE, "all the numbers"),
    ):
        lines.append(f"  {name:<17} {os.path.join(output_dir, name)}  ({what})")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
