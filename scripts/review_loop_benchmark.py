"""The review loop, simulated: train, review in review.html, train again; against a clean set.

    pip install -r scripts/requirements.txt   # playwright: drives the system Chromium
    nice python scripts/review_loop_benchmark.py --runs_dir=runs/review_loop

For each setting (`flags/fashion_mnist_<setting>.flags`, with `--model=mlp`) and seed:

- `clean`: the flag file's run, with its 1,000 clean trusted images (the bar to reach);
- `auto`: the same with `--trusted_data=auto` (no clean label at all), round 1;
- for each reviewer (`--reviewers`): one review of `--review_size` examples of round 1's
  `review.html`, then round 2 with `--corrections`;
- with `--rounds=250,250,500`, for each reviewer, several rounds: review the first 250 of round
  1's page, train; review the first 250 of that run's page, train with both files; review 500
  more, train with all three: the accuracy after 250, 500 and 1,000 reviews.

The reviewer opens the page in headless Chromium and works down it in its order (the order of
`label_issues.csv`'s `review_rank`, trusted examples and second looks included), reads each
example's id off the page, and types a class:

- `oracle`: the true label (the dataset's);
- `erring`: the true label, except for a seeded `--error_rate` of the examples, where it types
  the first class of the page's list (the model's most probable classes; for a trusted example,
  its neighbours' labels) that is not the true one: the mistake a person led by the model makes.

Reported per run: test accuracy (last epoch), the trusted set's size and, where known, how
many of its labels are wrong; per review: the examples reviewed, of them trusted examples and
second looks, the wrong answers given, the labels truly wrong among those reviewed.

Resumable: a finished run (results.json) and a saved review (corrections.csv + review.json) are
skipped. Results in `<runs_dir>/<setting>_seed<seed>/metrics.json` and printed as Markdown.
"""

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
AUTO = ("--trusted_data=auto",)

FLAGS = flags.FLAGS
flags.DEFINE_string("runs_dir", os.path.join(REPO, "runs", "review_loop"), "Runs go here.")
flags.DEFINE_list("settings", ["flip_40"], "flags/fashion_mnist_<setting>.flags")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds (--seed of every run).")
flags.DEFINE_list("reviewers", ["oracle", "erring"], "oracle and/or erring.")
flags.DEFINE_integer("review_size", 500, "Examples in the one review.", lower_bound=1)
flags.DEFINE_list("rounds", [], "Review sizes of successive rounds (e.g. 250,250,500).")
flags.DEFINE_float("error_rate", 0.1, "The erring reviewer's share of wrong answers.")
flags.DEFINE_multi_string(
    "train_flag", [], "Extra flag for every training, e.g. --train_flag=--epochs=5."
)
flags.DEFINE_string("chromium", CHROMIUM, "The browser the reviewer drives.")


def train(run_dir, setting, seed, extra=()):
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
            f"--seed={seed}",
            *FLAGS.train_flag,
            *extra,
            f"--output_dir={run_dir}",
        ]
        print(" ".join(command[1:]), flush=True)
        subprocess.run(command, check=True)
    with open(results) as file:
        return json.load(file)


def simulated_review(run_dir, true_labels, size, out_dir, reviewer, seed):
    """Reviews the first `size` examples of `run_dir/review.html` in Chromium as `reviewer`
    does; writes `out_dir/corrections.csv` and returns the review's figures."""
    corrections = os.path.join(out_dir, "corrections.csv")
    summary_path = os.path.join(out_dir, "review.json")
    if os.path.exists(corrections) and os.path.exists(summary_path):
        with open(summary_path) as file:
            return json.load(file)
    from playwright.sync_api import sync_playwright

    os.makedirs(out_dir, exist_ok=True)
    errs = np.random.default_rng(seed).random(size) < (
        FLAGS.error_rate if reviewer == "erring" else 0.0
    )
    figures = dict.fromkeys(("reviewed", "trusted", "second_looks", "answered_wrong"), 0)
    figures["truly_wrong"] = 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=FLAGS.chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(accept_downloads=True)
        start = time.perf_counter()
        page.goto("file://" + os.path.join(os.path.abspath(run_dir), "review.html"))
        data = page.evaluate("DATA")
        for item in data["items"][:size]:
            shown = page.inner_text("#meta").split(" · ")[1].removeprefix("id ")
            assert shown == item["id"], (shown, item["id"])  # the page shows this item now
            truth = int(true_labels[int(item["id"])])
            answer = truth
            if errs[figures["reviewed"]]:
                answer = next(int(k) for k, _ in item["top"] if int(k) != truth)
                figures["answered_wrong"] += 1
            figures["truly_wrong"] += truth != item["given"]
            figures["trusted"] += item["set"] == "trusted"
            figures["second_looks"] += bool(item["reviewed"])
            page.keyboard.press(str(answer))  # 10 classes: one digit
            figures["reviewed"] += 1
        figures["review_seconds"] = time.perf_counter() - start
        with page.expect_download() as download:
            page.keyboard.press("d")
        download.value.save_as(corrections)
        browser.close()
    with open(summary_path, "w") as file:
        json.dump(figures, file, indent=1)
    return figures


def run_figures(result, true_labels):
    """What a run's results.json says: test accuracy, trusted set size and wrong labels."""
    meta = result.get("auto_meta") or {}
    figures = {
        "test_accuracy": result["test_accuracy"]["last"],
        "num_meta": result["config"]["num_meta"],
        "corrections": result.get("corrections"),
    }
    if meta.get("indices") is not None:
        figures["num_meta"] = len(meta["indices"])
        wrong = np.asarray(true_labels)[meta["indices"]] != np.asarray(meta["given_labels"])
        figures["meta_wrong"] = int(wrong.sum())
    return figures


def main(argv):
    del argv
    from gdw_tf.data import datasets

    true_labels = datasets.load_dataset("fashion_mnist").y_train
    table = []
    for setting in FLAGS.settings:
        for seed in (int(s) for s in FLAGS.seeds):
            base = os.path.join(FLAGS.runs_dir, f"{setting}_seed{seed}")
            row = {"setting": setting, "seed": seed}
            row["clean"] = run_figures(
                train(os.path.join(base, "clean"), setting, seed), true_labels
            )
            first = os.path.join(base, "auto")
            row["auto"] = run_figures(train(first, setting, seed, AUTO), true_labels)
            for reviewer in FLAGS.reviewers:
                out = os.path.join(base, f"{reviewer}_{FLAGS.review_size}")
                review = simulated_review(
                    first, true_labels, FLAGS.review_size, out, reviewer, seed
                )
                files = (os.path.join(out, "corrections.csv"),)
                result = train(
                    os.path.join(out, "round2"),
                    setting,
                    seed,
                    AUTO + (f"--corrections={','.join(files)}",),
                )
                row[reviewer] = {"review": review, **run_figures(result, true_labels)}
                previous, files, done, rounds = first, (), 0, []
                for number, size in enumerate(int(s) for s in FLAGS.rounds):
                    out = os.path.join(base, f"{reviewer}_rounds", f"review{number + 1}")
                    review = simulated_review(
                        previous, true_labels, size, out, reviewer, seed * 100 + number
                    )
                    files += (os.path.join(out, "corrections.csv"),)
                    done += size
                    previous = os.path.join(out, "next_run")
                    result = train(
                        previous, setting, seed, AUTO + (f"--corrections={','.join(files)}",)
                    )
                    rounds.append(
                        {"reviews": done, "review": review, **run_figures(result, true_labels)}
                    )
                if rounds:
                    row[f"{reviewer}_rounds"] = rounds
            table.append(row)
            # One file per setting and seed; another invocation's reviewers are kept.
            path = os.path.join(base, "metrics.json")
            stored = {}
            if os.path.exists(path):
                with open(path) as file:
                    stored = json.load(file)
            with open(path, "w") as file:
                json.dump({**stored, **row}, file, indent=1)
    print_tables(table)


def print_tables(table):
    """The Markdown tables of `metrics.json`."""
    reviewers = FLAGS.reviewers
    print(
        "\n| setting | seed | clean 1,000 | auto | "
        + " | ".join(f"auto + {FLAGS.review_size} ({r})" for r in reviewers)
        + " |"
    )
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in reviewers) + " |")
    for row in table:
        cells = [f"{row['clean']['test_accuracy']:.4f}", _run_cell(row["auto"])]
        for reviewer in reviewers:
            r = row[reviewer]
            review = r["review"]
            cells.append(
                f"{r['test_accuracy']:.4f} ({review['truly_wrong']} wrong labels found, "
                f"{review['answered_wrong']} wrong answers, {review['trusted']} trusted)"
            )
        print(f"| {row['setting']} | {row['seed']} | " + " | ".join(cells) + " |")
    if not FLAGS.rounds:
        return
    print(
        "\n| setting | seed | reviewer | reviews | test acc. | trusted set (wrong) | second looks |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in table:
        for reviewer in reviewers:
            for r in row.get(f"{reviewer}_rounds", ()):
                print(
                    f"| {row['setting']} | {row['seed']} | {reviewer} | {r['reviews']} | "
                    f"{r['test_accuracy']:.4f} | {_meta_cell(r)} | "
                    f"{r['review']['second_looks']} |"
                )


def _run_cell(figures):
    return f"{figures['test_accuracy']:.4f} ({_meta_cell(figures)})"


def _meta_cell(figures):
    wrong = figures.get("meta_wrong")
    return f"{figures['num_meta']}" + (f", {wrong} wrong" if wrong is not None else "")


if __name__ == "__main__":
    app.run(main)
