"""`python -m gdw_tf.train`: one training run of GDW (or MW-Net, L2RW, CE) from flags.

    python -m gdw_tf.train --flagfile=flags/cifar10_uniform_40.flags --output_dir=runs/c10_u40

The flags (`gdw_tf.runs.config.define_flags`) are read here only and become a `Config`; the run
itself is `gdw_tf.runs.run.run`. Precedence: flag defaults, then `--flagfile`, then flags that come
after it on the command line. Bad input ends the program with one line on stderr naming the
problem and the fix, and exit status 2 (1 for a loss that became non-finite or a backup that
could not be written); absl reports invalid flag values itself (exit status 1).
"""

import sys

from absl import app
from absl import flags

from gdw_tf.runs import backup
from gdw_tf.runs import callbacks
from gdw_tf.runs import config as config_lib
from gdw_tf.runs import run as run_lib

FLAGS = flags.FLAGS
config_lib.define_flags(FLAGS)
flags.adopt_module_key_flags(config_lib)  # --helpshort lists them as this program's flags.


def main(argv):
    """Runs training with the parsed flags (the results are in `--output_dir`)."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    config = config_lib.Config.from_flags(FLAGS)
    try:
        run_lib.run(config)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except (callbacks.NonFiniteLossError, backup.BackupError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
