"""Memory and throughput of own image files streamed from disk (issue 20); figures printed and
saved as JSON, for docs/PERFORMANCE.md.

Fashion-MNIST's training images are written once as a folder tree of RGB PNGs, as a new user
would: a trusted folder of 50 images per class, and training folders of 6,000 and of all the
other 59,500 images. Then, each a separate `python -m gdw_tf.train` process under
`/usr/bin/time -f %M` (peak resident memory):

1. memory: one epoch at --image_size=96 with --model=mlp --lr=0.01 (GDW, the trusted folder
   as meta set) on 6,000 and on 59,500 images, from the data scan to report.html;
2. decoding: images decoded and resized to 96x96 per second by the input pipeline's parallel
   map (`ImageFiles.dataset()`), over the first 20,000 files; and out of the whole training
   pipeline (`input_pipeline.train_dataset`: decoded after the shuffle, cropped, flipped,
   batched, normalised), over the same files;
3. streamed against in memory: one epoch of small_cnn (GDW, 28x28, as the files are) on the
   59,500 images, once from the folder tree and once from an .npz of the same images in the
   same order (held in memory as today); the epoch time is history.csv's time/epoch_seconds.
4. TFDS (part `tfds`): the 6,000 and the 59,500 training folders prepared as TFDS datasets
   (`fmnist_png_6000`, `fmnist_png_59500`: a `train` split of the PNG files as they are,
   declared of varying size, so streamed from their TFRecord files; `tfds_records`), then
   one epoch at --image_size=96 with --model=mlp --lr=0.01 --num_meta=500 on each (GDW, the
   meta set drawn from the split, every 10th image held out as the test set); before them,
   the pass that reads the 59,500 records' places and labels, and the training pipeline's
   rate on the records (as in 2).

    nice python scripts/streaming_benchmark.py --work_dir=/tmp/streaming --out=streaming.json

The runs are sequential; wrap the command in `nice` on a shared machine and say so.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRUSTED_PER_CLASS = 50


def write_pngs(work_dir):
    """Writes Fashion-MNIST's 60,000 training images (Debian's copy) as RGB PNGs under
    `work_dir/png/<label>/<index>.png`, once.

    Returns:
      `(images, labels, paths, trusted, rest)`: the `[60000, 28, 28, 1]` images, their labels,
      the PNGs' paths, and the indices of the trusted examples (the first `TRUSTED_PER_CLASS` of
      each class) and of the others.
    """
    import tensorflow as tf

    from gdw_tf.data import datasets

    data = datasets.load_fashion_mnist_idx(datasets.DEBIAN_FASHION_MNIST_DIR)
    images, labels = data.x_train, data.y_train
    trusted = np.concatenate([np.flatnonzero(labels == k)[:TRUSTED_PER_CLASS] for k in range(10)])
    rest = np.setdiff1d(np.arange(len(labels)), trusted)
    png_dir = os.path.join(work_dir, "png")
    paths = [os.path.join(png_dir, str(labels[i]), f"{i:05d}.png") for i in range(len(labels))]
    if not os.path.exists(os.path.join(png_dir, "done")):
        for k in range(10):
            os.makedirs(os.path.join(png_dir, str(k)), exist_ok=True)

        def write(image, path):
            rgb = tf.repeat(image, 3, axis=-1)
            tf.io.write_file(path, tf.io.encode_png(rgb))
            return 0

        dataset = tf.data.Dataset.from_tensor_slices((images, paths)).map(
            write, num_parallel_calls=tf.data.AUTOTUNE
        )
        for _ in dataset.batch(1024):
            pass
        open(os.path.join(png_dir, "done"), "w").close()
    return images, labels, paths, trusted, rest


def write_trees(work_dir):
    """Writes the trusted folder and the 6,000 and 59,500 training folders (hard links to one
    set of PNGs, `write_pngs`) and an .npz of the 59,500 as RGB; returns their paths."""
    if not os.path.exists(os.path.join(work_dir, "done")):
        images, labels, paths, trusted, rest = write_pngs(work_dir)
        for name, chosen in (
            ("trusted", trusted),
            ("train_6000", rest[:6000]),
            ("train_59500", rest),
        ):
            for i in chosen:
                target = os.path.join(work_dir, name, str(labels[i]), f"{i:05d}.png")
                os.makedirs(os.path.dirname(target), exist_ok=True)
                os.link(paths[i], target)
        # The 59,500 in the folder tree's reading order (class folders, then file names).
        order = rest[np.lexsort((rest, labels[rest].astype(str)))]
        rgb = np.repeat(images[order], 3, axis=-1)
        np.savez(os.path.join(work_dir, "train_59500.npz"), x=rgb, y=labels[order].astype(str))
        rgb = np.repeat(images[trusted], 3, axis=-1)
        np.savez(os.path.join(work_dir, "trusted.npz"), x=rgb, y=labels[trusted].astype(str))
        open(os.path.join(work_dir, "done"), "w").close()
    return {
        "trusted": os.path.join(work_dir, "trusted"),
        "train_6000": os.path.join(work_dir, "train_6000"),
        "train_59500": os.path.join(work_dir, "train_59500"),
        "npz": os.path.join(work_dir, "train_59500.npz"),
        "trusted_npz": os.path.join(work_dir, "trusted.npz"),
    }


def prepare_tfds(work_dir, trees):
    """Prepares the 6,000 and 59,500 training folders as TFDS datasets in `work_dir/tfds`
    (once); returns that data_dir and the seconds it took."""
    import tensorflow_datasets as tfds

    data_dir = os.path.join(work_dir, "tfds")
    start = time.perf_counter()
    for count in (6000, 59500):
        name = f"fmnist_png_{count}"
        if os.path.isdir(os.path.join(data_dir, name)):
            continue
        root = trees[f"train_{count}"]
        examples = [
            (f"{label}/{file}", {"image": os.path.join(root, label, file), "label": int(label)})
            for label in sorted(os.listdir(root))
            for file in sorted(os.listdir(os.path.join(root, label)))
        ]
        tfds.dataset_builders.store_as_tfds_dataset(
            name=name,
            version="1.0.0",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            split_datasets={"train": examples},
            data_dir=data_dir,
            download_config=tfds.download.DownloadConfig(try_download_gcs=False),
        )
    return data_dir, time.perf_counter() - start


def tfds_rates(data_dir, name, size=96):
    """The seconds of the pass that reads a prepared split's record places and labels
    (`tfds_records.split_records`), and images per second out of the training pipeline on its
    records (as `training_pipeline_rate`, over the first 20,000 records)."""
    import tensorflow_datasets as tfds

    from gdw_tf.data import tfds_records

    start = time.perf_counter()
    records, labels = tfds_records.split_records(
        tfds.builder(name, data_dir=data_dir), "train", image_size=size
    )
    index_seconds = time.perf_counter() - start
    return index_seconds, _pipeline_rate(records[:20000], labels[:20000])


def timed_run(args, output_dir):
    """Runs `python -m gdw_tf.train args` under /usr/bin/time; returns (peak RSS in MB,
    wall seconds, the run's epoch seconds)."""
    stats = output_dir + ".time"
    command = ["/usr/bin/time", "-f", "%M", "-o", stats, sys.executable, "-m", "gdw_tf.train"]
    command += [*args, f"--output_dir={output_dir}", "--overwrite", "--verbose=0"]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPOSITORY)
    wall = time.perf_counter() - start
    with open(stats) as file:
        peak_kb = int(file.read().split()[-1])
    with open(os.path.join(output_dir, "results.json")) as file:
        results = json.load(file)
    return peak_kb / 1024, wall, results["timing"]["seconds_per_epoch"][0]


def decoding_rate(folder, count=20000, size=96):
    """Images decoded and resized to `size` per second by the pipeline's parallel map."""
    from gdw_tf.data import image_files
    from gdw_tf.data import own_data

    files = own_data.read_folder(folder).files[:count]
    stream = image_files.ImageFiles(files, height=size, width=size, channels=3).dataset()
    start = time.perf_counter()
    n = sum(len(batch) for batch in stream.batch(256).as_numpy_iterator())
    return n / (time.perf_counter() - start)


def training_pipeline_rate(folder, count=20000, size=96):
    """Images per second out of the training pipeline (`input_pipeline.train_dataset`: shuffled
    paths decoded and resized to `size`, cropped, flipped, in batches of 100, normalised) over
    the first `count` files: one pass."""
    from gdw_tf.data import image_files
    from gdw_tf.data import own_data

    files = own_data.read_folder(folder).files[:count]
    images = image_files.ImageFiles(files, height=size, width=size, channels=3)
    return _pipeline_rate(images, np.zeros(len(files), np.int64))


def _pipeline_rate(images, labels):
    """Images per second out of one pass of `input_pipeline.train_dataset` over streamed
    `images` (batches of 100, cropped, flipped, normalised)."""
    from gdw_tf.data import input_pipeline

    dataset = input_pipeline.train_dataset(
        images,
        labels,
        100,
        seed=0,
        augment=True,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        with_index=True,
    )
    start = time.perf_counter()
    n = sum(len(batch[1]) for batch in dataset.as_numpy_iterator())
    return n / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default="/tmp/streaming_benchmark")
    parser.add_argument("--out", default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--skip", default="", help="comma-separated parts to skip: memory,small_cnn,tfds"
    )
    args = parser.parse_args()
    os.makedirs(args.work_dir, exist_ok=True)
    skip = set(filter(None, args.skip.split(",")))
    start = time.perf_counter()
    trees = write_trees(args.work_dir)
    figures = {"write_trees_seconds": time.perf_counter() - start, "cpus": os.cpu_count()}
    print(f"folder trees ready in {figures['write_trees_seconds']:.0f} s", flush=True)

    figures["decoded_resized_96_per_second"] = decoding_rate(trees["train_59500"])
    print(f"decode + resize to 96x96: {figures['decoded_resized_96_per_second']:.0f} images/s")
    figures["training_pipeline_96_per_second"] = training_pipeline_rate(trees["train_59500"])
    print(
        "training pipeline (decode, resize to 96x96, crop, flip, normalise, batches of 100): "
        f"{figures['training_pipeline_96_per_second']:.0f} images/s"
    )

    if "memory" not in skip:
        for name in ("train_6000", "train_59500"):
            peak, wall, epoch = timed_run(
                [
                    f"--train_data={trees[name]}",
                    f"--trusted_data={trees['trusted']}",
                    "--image_size=96",
                    "--model=mlp",
                    "--lr=0.01",
                    "--epochs=1",
                ],
                os.path.join(args.work_dir, f"run_mlp_{name}"),
            )
            figures[f"mlp96_{name}"] = {"peak_rss_mb": peak, "wall_s": wall, "epoch_s": epoch}
            print(f"mlp, 96x96, {name}: peak RSS {peak:.0f} MB, wall {wall:.0f} s", flush=True)
        ratio = (
            figures["mlp96_train_59500"]["peak_rss_mb"] / figures["mlp96_train_6000"]["peak_rss_mb"]
        )
        figures["peak_rss_ratio_59500_over_6000"] = ratio
        print(f"peak RSS ratio 59,500 / 6,000: {ratio:.2f}")

    if "small_cnn" not in skip:
        for kind, train, trusted in (
            ("streamed", trees["train_59500"], trees["trusted"]),
            ("in_memory", trees["npz"], trees["trusted_npz"]),
        ):
            peak, wall, epoch = timed_run(
                [
                    f"--train_data={train}",
                    f"--trusted_data={trusted}",
                    "--model=small_cnn",
                    "--lr=0.05",
                    "--epochs=1",
                ],
                os.path.join(args.work_dir, f"run_small_cnn_{kind}"),
            )
            figures[f"small_cnn_{kind}"] = {"peak_rss_mb": peak, "wall_s": wall, "epoch_s": epoch}
            print(
                f"small_cnn, 28x28, 59,500 {kind}: epoch {epoch:.0f} s, wall {wall:.0f} s, "
                f"peak RSS {peak:.0f} MB",
                flush=True,
            )
    if "tfds" not in skip:
        data_dir, seconds = prepare_tfds(args.work_dir, trees)
        figures["tfds_prepare_seconds"] = seconds
        print(f"TFDS datasets prepared in {seconds:.0f} s", flush=True)
        index_seconds, rate = tfds_rates(data_dir, "fmnist_png_59500")
        figures["tfds_index_59500_seconds"] = index_seconds
        figures["tfds_training_pipeline_96_per_second"] = rate
        print(
            f"TFDS: record places and labels of 59,500 read in {index_seconds:.1f} s; training "
            f"pipeline on its records: {rate:.0f} images/s",
            flush=True,
        )
        for count in (6000, 59500):
            peak, wall, epoch = timed_run(
                [
                    f"--dataset=fmnist_png_{count}",
                    f"--data_dir={data_dir}",
                    "--image_size=96",
                    "--model=mlp",
                    "--lr=0.01",
                    "--num_meta=500",
                    "--epochs=1",
                ],
                os.path.join(args.work_dir, f"run_tfds_mlp_{count}"),
            )
            figures[f"tfds_mlp96_{count}"] = {"peak_rss_mb": peak, "wall_s": wall, "epoch_s": epoch}
            print(
                f"TFDS, mlp, 96x96, {count}: peak RSS {peak:.0f} MB, wall {wall:.0f} s", flush=True
            )
        ratio = (
            figures["tfds_mlp96_59500"]["peak_rss_mb"] / figures["tfds_mlp96_6000"]["peak_rss_mb"]
        )
        figures["tfds_peak_rss_ratio_59500_over_6000"] = ratio
        print(f"TFDS peak RSS ratio 59,500 / 6,000: {ratio:.2f}")
    print(json.dumps(figures, indent=2))
    if args.out:
        with open(args.out, "w") as file:
            json.dump(figures, file, indent=2)


if __name__ == "__main__":
    main()
