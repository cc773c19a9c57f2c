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


def define_flags(flag_values=flags.FLAGS):
    """Defines the command-line flags (only when run as a script, so importers are unaffected)."""
    flags.DEFINE_string(
        "run_dir",
        None,
        "Run directory holding model.keras and config.json.",
        flag_values=flag_values,
    )
    config_lib.define_flags(flag_values, names=["export_dir", "overwrite", "tf_logs"])
    flags.mark_flags_as_required(["run_dir", "export_dir"], flag_values=flag_values)


def export_from_flags(flag_values):
    """Exports `--run_dir` to `--export_dir`; a bad input exits with one line on stderr."""
    try:
        run_dir.export_run(
            flag_values.run_dir, flag_values.export_dir, overwrite=flag_values.overwrite
        )
    except ValueError as err:
        raise SystemExit("gdw_tf.export: error: " + " ".join(str(err).split())) from None
    print(
        f"Wrote a SavedModel (signature {SIGNATURE!r}, uint8 images in) to {flag_values.export_dir}"
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    export_from_flags(flags.FLAGS)


if __name__ == "__main__":
    define_flags()
    app.run(main)
