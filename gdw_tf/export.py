"""`python -m gdw_tf.export`: a finished run's backbone as a SavedModel for serving.

    python -m gdw_tf.export --run_dir=RUN --export_dir=DIR [--overwrite]

The run directory is one written by `python -m gdw_tf.train` (`model.keras`, `config.json`); the
SavedModel is described in `gdw_tf.runs.serving`. A bad input exits with one line on stderr.
"""

from absl import app
from absl import flags

from gdw_tf.runs import config as config_lib
from gdw_tf.runs import run_dir
from gdw_tf.runs.serving import SIGNATURE


def define_flags():
    """Defines the command-line flags (only when run as a script, so importers are unaffected)."""
    flags.DEFINE_string("run_dir", None, "Run directory holding model.keras and config.json.")
    config_lib.define_flags(flags.FLAGS, names=["export_dir", "overwrite"])
    flags.mark_flags_as_required(["run_dir", "export_dir"])


def main(argv):
    """Exports `--run_dir` to `--export_dir`; a bad input exits with one line on stderr."""
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS
    try:
        run_dir.export_run(FLAGS.run_dir, FLAGS.export_dir, overwrite=FLAGS.overwrite)
    except ValueError as err:
        raise SystemExit("gdw_tf.export: error: " + " ".join(str(err).split())) from None
    print(f"Wrote a SavedModel (signature {SIGNATURE!r}, uint8 images in) to {FLAGS.export_dir}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
