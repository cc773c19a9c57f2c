"""The README's picture of review.html (`docs/review_screenshot.png`), made from scratch.

    pip install -r scripts/requirements.txt   # playwright: drives the system Chromium
    nice python scripts/review_screenshot.py --work_dir=/tmp/review_screenshot

Fashion-MNIST's first 4,000 training images (Debian's copy) are written as PNGs into one folder
per class name (`photos/<class>/train_<index>.png`), 30% of them, a seeded random choice, into
the folder of another class (each class's images moved to one other class: a random
derangement of the classes); its first 1,000 test images likewise, all in their own class
(`test_photos/`). Then a run with no clean labels,

    python -m gdw_tf.train --train_data=photos/ --trusted_data=auto --auto_meta_per_class=20
        --meta_batch_size=100 --test_data=test_photos/ --epochs=6 --lr=0.02 --batch_size=100
        --output_dir=runs/mine

(in `work_dir`), and its `review.html` in Chromium (1100×620), where the keys `--keys` are
pressed before the screenshot.
"""

import os
import subprocess
import sys

import numpy as np
from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/review_screenshot", "Images and the run go here.")
flags.DEFINE_string("out", "docs/review_screenshot.png", "The screenshot.")
flags.DEFINE_list("keys", ["a", "a", "k", "a", "3", "a", "a"], "Keys pressed on the page first.")
flags.DEFINE_string("chromium", "/usr/bin/chromium", "The browser.")

TRAIN_IMAGES = 4000
TEST_IMAGES = 1000
WRONG_SHARE = 0.3
SEED = 0
# Fashion-MNIST's classes in label order, as folder names.
CLASS_NAMES = (
    "T-shirt_top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle_boot",
)


def write_folders(work_dir):
    """Writes `work_dir/photos/` (30% in a wrong class folder) and `work_dir/test_photos/`."""
    import tensorflow as tf

    from gdw_tf.data import datasets

    data = datasets.load_fashion_mnist_idx(datasets.DEBIAN_FASHION_MNIST_DIR)
    rng = np.random.default_rng(SEED)
    target = rng.permutation(10)
    while np.any(target == np.arange(10)):  # a derangement: no class keeps its images
        target = rng.permutation(10)
    labels = data.y_train[:TRAIN_IMAGES].copy()
    wrong = rng.random(TRAIN_IMAGES) < WRONG_SHARE
    labels[wrong] = target[labels[wrong]]
    for folder, images, given, prefix in (
        ("photos", data.x_train[:TRAIN_IMAGES], labels, "train"),
        ("test_photos", data.x_test[:TEST_IMAGES], data.y_test[:TEST_IMAGES], "test"),
    ):
        root = os.path.join(work_dir, folder)
        if os.path.exists(os.path.join(root, ".done")):
            continue
        for i, (image, label) in enumerate(zip(images, given)):
            path = os.path.join(root, CLASS_NAMES[label], f"{prefix}_{i:05d}.png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tf.io.write_file(path, tf.io.encode_png(image))
        open(os.path.join(root, ".done"), "w").close()
    print(f"{int(wrong.sum())} of {TRAIN_IMAGES} training images in a wrong class folder")


def main(argv):
    del argv
    write_folders(FLAGS.work_dir)
    run_dir = os.path.join(FLAGS.work_dir, "runs", "mine")
    if not os.path.exists(os.path.join(run_dir, "results.json")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "gdw_tf.train",
                "--train_data=photos/",
                "--trusted_data=auto",
                "--auto_meta_per_class=20",
                "--meta_batch_size=100",
                "--test_data=test_photos/",
                "--epochs=6",
                "--lr=0.02",
                "--batch_size=100",
                "--verbose=2",
                "--output_dir=runs/mine",
            ],
            cwd=FLAGS.work_dir,  # ids as a user's: relative to where the run starts
            check=True,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=FLAGS.chromium, args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1100, "height": 620})
        page.goto("file://" + os.path.join(os.path.abspath(run_dir), "review.html"))
        for key in FLAGS.keys:
            page.keyboard.press(key)
        page.screenshot(path=FLAGS.out)
        browser.close()
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    app.run(main)
