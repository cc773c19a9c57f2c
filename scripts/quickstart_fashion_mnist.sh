#!/usr/bin/env bash
# Quick start: install gdw_tf and Fashion-MNIST, train GDW on Fashion-MNIST with 60% uniform
# label noise for 3 epochs on the CPU. The run ends with a short summary (test accuracy, wrong
# labels, where report.html, review.html and label_issues.csv are); results.json holds the rest.
#
#   bash scripts/quickstart_fashion_mnist.sh [output_dir]    (default: runs/quickstart)
#
# Fashion-MNIST comes from Debian's dataset-fashion-mnist package where apt-get is available
# and we are root, otherwise from Keras' download (into ~/.keras/datasets/fashion-mnist).
# A finished run in output_dir is not overwritten: pass a new directory to train again.
set -euo pipefail

cd "$(dirname "$0")/.."
output_dir="${1:-runs/quickstart}"

python -m pip install -r requirements.txt

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && { apt-get install -y dataset-fashion-mnist \
         || { apt-get update && apt-get install -y dataset-fashion-mnist; }; }; then
  echo "Fashion-MNIST: /usr/share/datasets/fashion-mnist"
else
  python -c "import keras; keras.datasets.fashion_mnist.load_data()"
fi

python -m gdw_tf.train --flagfile=flags/fashion_mnist_uniform_60.flags --epochs=3 \
  --output_dir="$output_dir"
