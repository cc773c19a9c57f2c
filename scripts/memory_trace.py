"""Resident memory of one `python -m gdw_tf.train` run at the entry and exit of its steps, for
docs/PERFORMANCE.md (issue 29): where within a stage the peak is set.

A thread reads the process' resident memory (`/proc/self/statm`) every 20 ms; each entry and
exit of the functions in `TRACED` (the data read, the scan, the pipelines, `fit`, the
label-issue pass and its parts, the files written) writes one line: seconds since the start,
the event, the resident memory then and the highest sampled since the previous line. A profile
hook sees the entries and exits: it holds no reference to the functions' arguments, which a
wrapper would keep resident while the function lets them go. The run's own arguments follow
`--`:

    PYTHONPATH=. nice python scripts/memory_trace.py --log=trace.txt -- \\
        --train_data=<folder> --trusted_data=<trusted> --image_size=32 --model=mlp \\
        --lr=0.01 --epochs=1 --output_dir=<dir> --overwrite --verbose=0

Sampling misses spikes shorter than 20 ms (`/usr/bin/time`'s peak is the exact one).
"""

import argparse
import importlib
import inspect
import sys
import threading
import time

from gdw_tf.runs import stages

# (module, function) pairs whose entry and exit are logged.
TRACED = (
    ("gdw_tf.runs.run", "load_data"),
    ("gdw_tf.data.own_data", "read_source"),
    ("gdw_tf.data.image_files", "scan"),
    ("gdw_tf.data.input_pipeline", "train_dataset"),
    ("gdw_tf.data.input_pipeline", "eval_dataset"),
    ("gdw_tf.runs.results", "example_weights"),
    ("gdw_tf.runs.results", "training_label_issues"),
    ("gdw_tf.labels.label_issues", "probe_features"),
    ("gdw_tf.labels.label_issues", "_predict"),
    ("gdw_tf.labels.label_issues", "rank_label_issues"),
    ("gdw_tf.labels.wrong_count", "estimate_wrong_labels"),
    ("gdw_tf.labels.wrong_count", "_fit_label_probe_of_rows"),
    ("gdw_tf.labels.wrong_count", "truth_probabilities"),
    ("gdw_tf.labels.label_issues", "check_trusted"),
    ("gdw_tf.labels.neighbours", "neighbour_votes"),
    ("gdw_tf.labels.label_issues", "label_margin"),
    ("gdw_tf.labels.label_issues", "_top_classes"),
    ("gdw_tf.labels.label_issues", "write_label_issues_csv"),
    ("gdw_tf.runs.run_dir", "write_report"),
    ("gdw_tf.runs.run_dir", "write_review"),
)


class Trace:
    """The log, and the highest resident memory sampled since its last line."""

    def __init__(self, path):
        self.file = open(path, "w")
        self.start = time.perf_counter()
        self.highest = 0.0
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while True:
            self.highest = max(self.highest, stages.current_rss_mb())
            time.sleep(0.02)

    def event(self, name):
        now = stages.current_rss_mb()
        seconds, highest = time.perf_counter() - self.start, max(self.highest, now)
        self.file.write(
            f"{seconds:8.1f}  {name:<32} rss {now:6.0f} MB  highest since {highest:6.0f} MB\n"
        )
        self.file.flush()
        self.highest = now

    def follow(self, functions):
        """Logs each entry and exit of `functions` (label → function) on this thread: a profile
        hook, not a wrapper, so that no reference to their arguments is held beyond their own
        (a wrapper's frame would keep an array that the function lets go resident)."""
        labels = {inspect.unwrap(function).__code__: label for label, function in functions}

        def profile(frame, event, arg):
            label = labels.get(frame.f_code)
            if label is not None and event in ("call", "return"):
                self.event((">" if event == "call" else "<") + label)

        sys.setprofile(profile)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--log", required=True, help="the trace, one line per event")
    args, run_args = parser.parse_known_args()
    trace = Trace(args.log)
    import keras

    functions = [(name, getattr(importlib.import_module(module), name)) for module, name in TRACED]
    trace.follow([*functions, ("fit", keras.Model.fit)])
    from absl import app

    from gdw_tf import train

    sys.argv = ["gdw_tf.train", *[a for a in run_args if a != "--"]]
    trace.event("start")
    try:
        app.run(train.main)
    finally:
        trace.event("end")


if __name__ == "__main__":
    main()
