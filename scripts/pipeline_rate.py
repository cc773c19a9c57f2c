"""Images per second, and per CPU-second, of the training pipeline on streamed image files.

Writes `--count` synthetic RGB images (`--format`: png or jpg, `--size` squares) into
`--work_dir` once, then times `gdw_tf.data.input_pipeline.train_dataset` over them (decoded,
resized to `--image_size`, cropped, flipped, batched by 64, normalised), `--passes` passes after
one warm-up pass; prints each pass's rates as JSON. CPU time counts every thread of the process,
so it says what the pipeline costs on a machine that other work shares. To compare two checkouts,
run the same command with each on `PYTHONPATH`:

    PYTHONPATH=. python scripts/pipeline_rate.py --work_dir=/tmp/rate --format=png --size=28 \
        --image_size=32 --count=2000
"""

import argparse
import json
import os
import time

import numpy as np


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work_dir", required=True)
    parser.add_argument("--format", choices=("png", "jpg"), default="png")
    parser.add_argument("--size", type=int, default=28, help="side of the images written")
    parser.add_argument("--image_size", type=int, default=32, help="side they are decoded to")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--passes", type=int, default=4)
    args = parser.parse_args()

    import tensorflow as tf

    from gdw_tf.data import image_files
    from gdw_tf.data import input_pipeline

    folder = os.path.join(args.work_dir, f"{args.format}{args.size}")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = [os.path.join(folder, f"{i:06d}.{args.format}") for i in range(args.count)]
    encode = tf.io.encode_png if args.format == "png" else tf.io.encode_jpeg
    for path in paths:
        if not os.path.exists(path):
            shade = rng.normal(128, 40, (1, 1, 3))
            image = shade + rng.normal(0, 30, (args.size, args.size, 3))
            tf.io.write_file(path, encode(image.clip(0, 255).astype(np.uint8)))
    files = image_files.ImageFiles(paths, height=args.image_size, width=args.image_size, channels=3)
    dataset = input_pipeline.train_dataset(
        files,
        np.arange(args.count) % 10,
        64,
        seed=0,
        augment=True,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        with_index=True,
    )
    for _ in dataset:  # Warm-up: tracing, file caches.
        pass
    for _ in range(args.passes):
        wall, cpu, images = time.perf_counter(), time.process_time(), 0
        for batch in dataset:
            images += int(batch[1].shape[0])
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            json.dumps(
                {
                    "images_per_second": round(images / wall),
                    "images_per_cpu_second": round(images / cpu),
                }
            )
        )


if __name__ == "__main__":
    main()
