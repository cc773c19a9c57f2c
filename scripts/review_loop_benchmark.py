"""The review loop, simulated: train, review the most suspicious labels in review.html, train again.

    pip install -r scripts/requirements.txt   # playwright: drives the system Chromium
    nice python scripts/review_loop_benchmark.py --runs_dir=runs/review_loop

For each setting (`flags/fashion_mnist_<setting>.flags`, with `--model=mlp`) and each start
(`auto`: `--trusted_data=auto --auto_meta_per_class=100`, no clean data at all; `clean`: the
protocol's 1,000 clean meta images):

1. round 1: `python -m gdw_tf.train --flagfile=... --model=mlp [--trusted_data=auto ...]`;
2. review: a simulated reviewer opens round 1's `review.html` in headless Chromium and, for
   each of the first `--review_size` flagged examples, reads the example's id off the page,
   looks up its true label (the dataset's) and types it; then presses `d` and saves the
   downloaded `corrections.csv`. Timed: from the page's load to the last decision, and per
   decision (key press to the next example shown);
3. round 2: the same command with `--corrections=<that file>`.

Reported per round: test accuracy (last epoch), the flagged set's precision, recall and F1
against the injected noise (over that round's training set, whose labels the corrections
changed), and for the review: the share of reviewed labels that really were wrong (the
reviewer's useful work), how many joined the trusted set, and the review's time.

Resumable: a finished run (results.json) and a saved review (corrections.csv + review.json) are
skipped. Results in `<runs_dir>/<setting>_<start>/metrics.json` and printed as Markdown.
"""

import csv
import json
import os
import subprocess
import sys
import time

import numpy as np
from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHROMIUM = "/usr/bin/chromium"
STARTS = {
    "auto": ("--trusted_data=auto", "--auto_meta_per_class=100"),
    "clean": (),
}

FLAGS = flags.FLAGS
flags.DEFINE_string("runs_dir", os.path.join(REPO, "runs", "review_loop"), "Runs go here.")
flags.DEFINE_list("settings", ["flip_40", "uniform_60"], "flags/fashion_mnist_<setting>.flags")
flags.DEFINE_list("starts", list(STARTS), "auto (no clean data) and/or clean (1,000 clean).")
flags.DEFINE_integer("review_size", 500, "Flagged examples reviewed per round.", lower_bound=1)
flags.DEFINE_multi_string(
    "train_flag", [], "Extra flag for every training, e.g. --train_flag=--epochs=5."
)
flags.DEFINE_string("chromium", CHROMIUM, "The browser the reviewer drives.")


def train(run_dir, setting, start, extra=()):
    """One training run (skipped if finished); returns its results.json."""
    results = os.path.join(run_dir, "results.json")
    if not os.path.exists(results):
        command = [
            sys.executable,
            "-m",
            "gdw_tf.train",
            f"--flagfile={os.path.join(REPO, 'flags', f'fashion_mnist_{setting}.flags')}",
            "--model=mlp",
            "--verbose=2",
            *STARTS[start],
            *FLAGS.train_flag,
            *extra,
            f"--output_dir={run_dir}",
        ]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
    with open(results) as file:
        return json.load(file)


def simulated_review(run_dir, true_labels, size, out_dir):
    """Reviews the first `size` examples of `run_dir/review.html` with their true labels in
    Chromium; writes `out_dir/corrections.csv` and returns the review's figures."""
    corrections = os.path.join(out_dir, "corrections.csv")
    summary_path = os.path.join(out_dir, "review.json")
    if os.path.exists(corrections) and os.path.exists(summary_path):
        with open(summary_path) as file:
            return json.load(file)
    from playwright.sync_api import sync_playwright

    os.makedirs(out_dir, exist_ok=True)
    per_decision, reviewed, wrong = [], 0, 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=FLAGS.chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(accept_downloads=True)
        start = time.perf_counter()
        page.goto("file://" + os.path.join(os.path.abspath(run_dir), "review.html"))
        loaded = time.perf_counter() - start
        meta = page.locator("#meta")
        text = meta.inner_text()
        while reviewed < size:
            # "rank R · id X · score S": the reviewer reads the id and knows the truth.
            example_id = text.split(" · ")[1].removeprefix("id ")
            given = int(page.inner_text("#given-name").split(" ")[0])
            truth = int(true_labels[int(example_id)])
            wrong += truth != given
            tick = time.perf_counter()
            page.keyboard.press(str(truth))  # 10 classes: one digit
            reviewed += 1
            if reviewed == size:
                break
            text = meta.inner_text()
            if text.split(" · ")[1] == f"id {example_id}":  # the last example on the page
                break
            per_decision.append(time.perf_counter() - tick)
        total = time.perf_counter() - start
        with page.expect_download() as download:
            page.keyboard.press("d")
        download.value.save_as(corrections)
        browser.close()
    figures = {
        "reviewed": reviewed,
        "truly_wrong": int(wrong),
        "useful_share": wrong / max(reviewed, 1),
        "page_load_seconds": loaded,
        "review_seconds": total,
        "decision_ms_median": 1000 * float(np.median(per_decision)) if per_decision else None,
        "decision_ms_max": 1000 * float(np.max(per_decision)) if per_decision else None,
    }
    with open(summary_path, "w") as file:
        json.dump(figures, file, indent=1)
    return figures


def flag_scores(run_dir):
    """Precision, recall, F1 of the run's flagged set against its training set's corrupted
    labels (`example_weights.npz`, which knows the injected noise)."""
    with open(os.path.join(run_dir, "label_issues.csv"), newline="") as file:
        rows = list(csv.DictReader(file))
    flagged = {int(r["id"]) for r in rows if r["flagged"] == "1"}
    with np.load(os.path.join(run_dir, "example_weights.npz")) as stored:
        wrong = {int(i) for i, c in zip(stored["index"], stored["corrupted"]) if c}
    hit = len(flagged & wrong)
    precision, recall = hit / max(len(flagged), 1), hit / max(len(wrong), 1)
    return {
        "flagged": len(flagged),
        "wrong": len(wrong),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / max(precision + recall, 1e-12),
    }


def main(argv):
    del argv
    from gdw_tf.data import datasets

    true_labels = datasets.load_dataset("fashion_mnist").y_train
    table = []
    for setting in FLAGS.settings:
        for start in FLAGS.starts:
            base = os.path.join(FLAGS.runs_dir, f"{setting}_{start}")
            first = os.path.join(base, "round1")
            results = [train(first, setting, start)]
            review = simulated_review(first, true_labels, FLAGS.review_size, base)
            second = os.path.join(base, "round2")
            corrections = os.path.join(base, "corrections.csv")
            results.append(train(second, setting, start, (f"--corrections={corrections}",)))
            rounds = []
            for run_dir, result in zip((first, second), results):
                scores = flag_scores(run_dir)
                rounds.append(
                    {
                        "test_accuracy": result["test_accuracy"]["last"],
                        **scores,
                        "num_meta": result["config"]["num_meta"],
                        "auto_meta_purity": (result.get("auto_meta") or {}).get("purity"),
                        "corrections": result.get("corrections"),
                    }
                )
            metrics = {"setting": setting, "start": start, "review": review, "rounds": rounds}
            with open(os.path.join(base, "metrics.json"), "w") as file:
                json.dump(metrics, file, indent=1)
            table.append(metrics)
    print(
        "\n| setting | start | round | meta set | test acc. | flagged | precision | recall | F1 "
        "| reviewed (truly wrong) | joined trusted | review time |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for m in table:
        for number, r in enumerate(m["rounds"], 1):
            c = r["corrections"] or {}
            review = (
                f"{m['review']['reviewed']} ({m['review']['useful_share']:.1%})"
                if number == 1
                else "—"
            )
            seconds, median = m["review"]["review_seconds"], m["review"]["decision_ms_median"]
            time_text = f"{seconds:.1f} s (median {median:.0f} ms)" if number == 1 else ""
            print(
                f"| {m['setting']} | {m['start']} | {number} | {r['num_meta']} | "
                f"{r['test_accuracy']:.4f} | {r['flagged']} | {r['precision']:.3f} | "
                f"{r['recall']:.3f} | {r['f1']:.3f} | {review} | "
                f"{c.get('added_to_trusted', '—')} | {time_text} |"
            )


if __name__ == "__main__":
    app.run(main)
