"""Peak memory of a streamed run against its number of training images, stage by stage (issue
29); figures printed and saved as JSON, for docs/PERFORMANCE.md.

Fashion-MNIST's 60,000 training images (Debian's copy) are written once as RGB PNGs; a trusted
folder holds 50 of each class, and each training folder of `--counts` images is a tree of hard
links to the other 59,500 PNGs, cycled: above 59,500 images a file appears under several names
(`c<k>_<name>.png`, its k-th copy), so the disk holds 60,000 images whatever the counts. Each
count is then one `python -m gdw_tf.train` process under `/usr/bin/time -f %M` (peak resident
memory), one after another:

    --train_data=<folder> --trusted_data=<trusted> --image_size=32 --model=mlp --lr=0.01 --epochs=1

from the scan of the folder to `results.json`, with the end-of-run steps (the prediction pass,
the probes, `label_issues.csv`, the report, the review page). The figures per count: the peak
RSS, the wall time, the rows of `label_issues.csv`, and `results.json`'s `timing.stages` (each
stage's seconds, resident memory at its end and peak so far: `gdw_tf.runs.stages`); then the
peak's growth per added image from the smallest count to each larger one.

    nice python scripts/memory_benchmark.py --work_dir=/tmp/memory_bench \
        --counts=6000,60000,300000 --out=memory.json

With `--form=list` each training set is given as a `.txt` list file instead (one
`<label>/<name>.png <label>` line per image, Clothing1M's and WebVision's form), written into
its folder tree: the million-row run of issue 29 is

    nice python scripts/memory_benchmark.py --work_dir=/tmp/memory_bench \
        --counts=6000,1000000 --form=list --out=million.json

(1,000,000 names for 59,500 files: each file under 16 or 17 names).

With `--trusted_counts`, peak memory against the size of the trusted set instead: one run per
count, on the same `--trusted_train_count` training images (the last of the 59,500), with a
trusted folder of the first `count` of the others (links, as above), at `--image_size`:

    nice python scripts/memory_benchmark.py --work_dir=/tmp/memory_bench --counts= \
        --trusted_counts=1000,20000 --trusted_train_count=1000 --image_size=128

The runs are sequential; wrap the command in `nice` on a shared machine and say so. A run uses
the gdw_tf that `python -m gdw_tf.train` imports: the working directory's first, then
`PYTHONPATH`'s. To measure another checkout, run this script from that checkout's folder with
`PYTHONPATH` set to it.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import streaming_benchmark  # scripts/, beside this one


def write_pngs(work_dir):
    """Fashion-MNIST's 60,000 training images as RGB PNGs under `work_dir/png/<label>/`
    (`streaming_benchmark.write_pngs`, the same layout) and the trusted folder of hard links;
    returns (the other training PNGs' paths, their labels)."""
    _, labels, paths, trusted, rest = streaming_benchmark.write_pngs(work_dir)
    link_tree(os.path.join(work_dir, "trusted"), [paths[i] for i in trusted], labels[trusted])
    return [paths[i] for i in rest], labels[rest]


def link_tree(folder, paths, labels, count=None):
    """A folder tree `folder/<label>/` of `count` hard links to `paths` (cycled; the k-th copy
    of a file is named `c<k>_<name>`), written once; returns `folder`."""
    count = len(paths) if count is None else count
    done = os.path.join(folder, ".done")
    if os.path.exists(done):
        return folder
    for i in range(count):
        copy, j = divmod(i, len(paths))
        name = os.path.basename(paths[j])
        target = os.path.join(folder, str(labels[j]), f"c{copy}_{name}" if copy else name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            os.link(paths[j], target)
    open(done, "w").close()
    return folder


def write_list(folder):
    """`folder/train.txt`: one `<label>/<name> <label>` line per file of the tree `folder`
    (labels and names in sorted order), written once; returns its path."""
    path = os.path.join(folder, "train.txt")
    if not os.path.exists(path):
        labels = sorted(name for name in os.listdir(folder) if name.isdigit())
        with open(path + ".tmp", "w") as file:
            for label in labels:
                for name in sorted(os.listdir(os.path.join(folder, label))):
                    file.write(f"{label}/{name} {label}\n")
        os.replace(path + ".tmp", path)
    return path


def timed_run(args, output_dir):
    """Runs `python -m gdw_tf.train args` under /usr/bin/time; returns its figures: peak RSS
    (MB), wall seconds, rows of label_issues.csv, `timing.stages` of results.json."""
    stats = output_dir + ".time"
    command = ["/usr/bin/time", "-f", "%M", "-o", stats, sys.executable, "-m", "gdw_tf.train"]
    command += [*args, f"--output_dir={output_dir}", "--overwrite", "--verbose=0"]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    with open(stats) as file:
        peak_kb = int(file.read().split()[-1])
    with open(os.path.join(output_dir, "results.json")) as file:
        results = json.load(file)
    with open(os.path.join(output_dir, "label_issues.csv")) as file:
        rows = sum(1 for _ in file) - 1
    return {
        "peak_rss_mb": peak_kb / 1024,
        "wall_s": wall,
        "label_issues_rows": rows,
        "stages": results["timing"].get("stages"),
    }


def print_stages(count, figures, what="images"):
    peak, wall = figures["peak_rss_mb"], figures["wall_s"]
    print(f"\n{count:,} {what}: peak RSS {peak:.0f} MB, wall {wall:.0f} s")
    print(f"{'stage':<22}{'seconds':>10}{'RSS MB':>10}{'peak MB':>10}")
    for stage in figures["stages"] or []:
        print(
            f"{stage['stage']:<22}{stage['seconds']:>10.1f}{stage['rss_mb']:>10.0f}"
            f"{stage['peak_rss_mb']:>10.0f}"
        )


def trusted_runs(work_dir, paths, labels, counts, train_count, image_size):
    """One run per trusted-set size in `counts`, all on the same `train_count` training images;
    returns the figures per count, and the peak's growth from the smallest count to each."""
    if max(counts) + train_count > len(paths):
        raise ValueError(f"{max(counts)} trusted and {train_count} training images: too many.")
    train = link_tree(
        os.path.join(work_dir, f"trusted_train_{train_count}"),
        paths[-train_count:],
        labels[-train_count:],
    )
    runs = {}
    for count in counts:
        trusted = link_tree(
            os.path.join(work_dir, f"trusted_{count}"), paths[:count], labels[:count]
        )
        runs[str(count)] = timed_run(
            [
                f"--train_data={train}",
                f"--trusted_data={trusted}",
                f"--image_size={image_size}",
                "--model=mlp",
                "--lr=0.01",
                "--epochs=1",
            ],
            os.path.join(work_dir, f"run_trusted_{count}"),
        )
        print_stages(count, runs[str(count)], what="trusted images")
    figures = {"image_size": image_size, "train_images": train_count, "runs": runs}
    for count in counts[1:]:
        grown = runs[str(count)]["peak_rss_mb"] - runs[str(counts[0])]["peak_rss_mb"]
        figures[f"mb_grown_{counts[0]}_to_{count}"] = grown
        print(f"peak RSS growth {counts[0]:,} -> {count:,} trusted images: {grown:.0f} MB")
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default="/tmp/memory_benchmark")
    parser.add_argument("--counts", default="6000,60000", help="comma-separated image counts")
    parser.add_argument(
        "--form",
        choices=("folder", "list"),
        default="folder",
        help="give each training set as its folder tree, or as a .txt list file of its files",
    )
    parser.add_argument(
        "--trusted_counts", default="", help="comma-separated trusted-set sizes (see the doc)"
    )
    parser.add_argument("--trusted_train_count", type=int, default=1000)
    parser.add_argument("--image_size", type=int, default=128, help="of the trusted-set runs")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    counts = sorted(int(c) for c in args.counts.split(",") if c)
    os.makedirs(args.work_dir, exist_ok=True)
    paths, labels = write_pngs(args.work_dir)
    figures = {"cpus": os.cpu_count(), "form": args.form, "runs": {}}
    if args.trusted_counts:
        trusted_counts = sorted(int(c) for c in args.trusted_counts.split(","))
        figures["trusted_runs"] = trusted_runs(
            args.work_dir, paths, labels, trusted_counts, args.trusted_train_count, args.image_size
        )
    for count in counts:
        folder = link_tree(os.path.join(args.work_dir, f"train_{count}"), paths, labels, count)
        train_data = write_list(folder) if args.form == "list" else folder
        run = timed_run(
            [
                f"--train_data={train_data}",
                f"--trusted_data={os.path.join(args.work_dir, 'trusted')}",
                "--image_size=32",
                "--model=mlp",
                "--lr=0.01",
                "--epochs=1",
            ],
            os.path.join(
                args.work_dir, f"run_{count}" if args.form == "folder" else f"run_list_{count}"
            ),
        )
        figures["runs"][str(count)] = run
        print_stages(count, run)
    for count in counts[1:]:
        base = counts[0]
        runs = figures["runs"]
        grown = runs[str(count)]["peak_rss_mb"] - runs[str(base)]["peak_rss_mb"]
        per_image = grown * 1024 / (count - base)
        figures[f"kb_per_image_{base}_to_{count}"] = per_image
        print(f"peak RSS growth {base:,} -> {count:,} images: {per_image:.2f} KB per added image")
    if args.out:
        with open(args.out, "w") as file:
            json.dump(figures, file, indent=2)


if __name__ == "__main__":
    main()
