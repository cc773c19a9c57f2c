"""GDW on your own data: noisy labels, a small trusted subset, and a list of suspicious labels.

Two self-contained examples, each under half a minute on two CPU cores:

- `tabular`: an MLP on synthetic tabular features (Gaussian clusters, 40% of the training labels
  wrong), trained from NumPy arrays. A class-balanced meta set is carved out of a trusted,
  correctly labelled subset with `gdw_tf.balanced_meta_subset`; the rest of that subset is
  the validation set of standard Keras callbacks (`EarlyStopping`, `ReduceLROnPlateau`).
- `images`: your own functional CNN on a `tf.data.Dataset` of images (four Fashion-MNIST classes
  if its files are installed, otherwise synthetic images, and a line on stderr saying so), again
  with 40% wrong labels.

Both models track per-example weights (`track_examples=N` and `(x, y, index)` batches). After
training, the examples whose given label received the lowest weight (`example_label_weights`:
GDW's class-level weight on the given label) are the suspicious ones; since the data were
corrupted here on purpose, the example prints how many of them really are wrong.

    python examples/own_data.py                # both examples
    python examples/own_data.py --part=images  # one of them
"""

import argparse
import dataclasses
import os
import sys

import keras
import numpy as np
import tensorflow as tf

import gdw_tf
from gdw_tf.data import datasets
from gdw_tf.data import noise


@dataclasses.dataclass
class NoisyData:
    """A training set with some wrong labels, a trusted subset, and a clean test set.

    `corrupted` is known only because the noise was added on purpose; in real use it is what
    the suspicious-label list helps you find.
    """

    x_train: np.ndarray
    y_train: np.ndarray  # The given, partly wrong labels.
    corrupted: np.ndarray  # y_train differs from the true label.
    x_trusted: np.ndarray
    y_trusted: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


@dataclasses.dataclass
class Result:
    """What one example reports: test accuracy and how well low weights find wrong labels."""

    test_accuracy: float
    noise_rate: float  # Fraction of wrong training labels: the precision of a random guess.
    precision: float  # Fraction of the flagged labels that are wrong.
    flagged: np.ndarray  # Indices of the training examples flagged as suspicious.
    epochs: int  # Epochs run (EarlyStopping may stop early).


def corrupt(y, noise_ratio, num_classes, seed):
    """Replaces a fraction `noise_ratio` of the labels by another class; (noisy, corrupted)."""
    noisy, _ = noise.corrupt_labels(y, "symmetric", noise_ratio, num_classes, seed)
    return noisy, noisy != y


def make_tabular_data(
    num_classes=5,
    num_features=16,
    num_train=2000,
    num_trusted=200,
    num_test=1000,
    noise_ratio=0.4,
    seed=0,
):
    """Gaussian clusters, one per class, standardised; a fraction of training labels wrong."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=0.7, size=(num_classes, num_features))
    sizes = (num_train, num_trusted, num_test)
    labels = rng.integers(0, num_classes, sum(sizes))
    features = centers[labels] + rng.normal(size=(len(labels), num_features))
    features = ((features - features.mean(0)) / features.std(0)).astype("float32")
    x_train, x_trusted, x_test = np.split(features, np.cumsum(sizes)[:-1])
    y_train, y_trusted, y_test = np.split(labels, np.cumsum(sizes)[:-1])
    y_noisy, corrupted = corrupt(y_train, noise_ratio, num_classes, rng)
    return NoisyData(x_train, y_noisy, corrupted, x_trusted, y_trusted, x_test, y_test, num_classes)


def make_image_data(
    classes=(0, 1, 7, 8), num_train=2000, num_trusted=200, num_test=1000, noise_ratio=0.4, seed=0
):
    """uint8 images of a few Fashion-MNIST classes; synthetic ones, said on stderr, where its
    files are not installed."""
    directory = installed_fashion_mnist()
    if directory is None:
        print(
            f"Fashion-MNIST is in none of {', '.join(datasets.fashion_mnist_dirs())} "
            "(apt-get install dataset-fashion-mnist): using synthetic images.",
            file=sys.stderr,
        )
        x_all, y_all = synthetic_images(len(classes) * 1000, max(classes) + 1, seed)
        x_test_all, y_test_all = synthetic_images(len(classes) * 500, max(classes) + 1, seed + 1)
    else:
        x_all, y_all, x_test_all, y_test_all = datasets.load_fashion_mnist_idx(directory)[:4]

    def subset(x, y, n, rng):
        """`n` random examples of `classes`, labels renumbered 0..len(classes)-1."""
        keep = rng.permutation(np.flatnonzero(np.isin(y, classes)))[:n]
        return x[keep], np.searchsorted(classes, y[keep])

    rng = np.random.default_rng(seed)
    x, y = subset(x_all, y_all, num_train + num_trusted, rng)
    x_test, y_test = subset(x_test_all, y_test_all, num_test, rng)
    y_noisy, corrupted = corrupt(y[:num_train], noise_ratio, len(classes), rng)
    return NoisyData(
        x[:num_train],
        y_noisy,
        corrupted,
        x[num_train:],
        y[num_train:],
        x_test,
        y_test,
        len(classes),
    )


def installed_fashion_mnist():
    """The first of `datasets.fashion_mnist_dirs()` that holds Fashion-MNIST's four idx files,
    or None."""
    for directory in datasets.fashion_mnist_dirs():
        files = datasets.FASHION_MNIST_FILES.values()
        if all(os.path.isfile(os.path.join(directory, name)) for name in files):
            return directory
    return None


def synthetic_images(n, num_classes, seed):
    """28x28 uint8 images: a class-specific stripe pattern under noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    rows = np.arange(28)[None, :, None]
    cols = np.arange(28)[None, None, :]
    frequency = (1 + labels % 4)[:, None, None]
    vertical = labels[:, None, None] % 2 == 1
    pattern = np.where(vertical, np.sin(rows / frequency), np.sin(cols / frequency))
    images = 128 + 80 * pattern + rng.normal(scale=40, size=(n, 28, 28))
    return np.clip(images, 0, 255).astype(np.uint8)[..., None], labels


def split_trusted(noisy, per_class, seed):
    """The trusted subset as a class-balanced meta set and, from the rest, a validation set."""
    positions = np.arange(len(noisy.y_trusted))
    meta_positions, y_meta = gdw_tf.balanced_meta_subset(
        positions, noisy.y_trusted, noisy.num_classes, per_class=per_class, seed=seed
    )
    rest = np.setdiff1d(positions, meta_positions)
    return (noisy.x_trusted[meta_positions], y_meta), (noisy.x_trusted[rest], noisy.y_trusted[rest])


def indexed_batches(x, y, batch_size, seed):
    """A shuffled `tf.data.Dataset` of `(x, y, index)` batches, for `track_examples`."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y, np.arange(len(y))))
    return dataset.shuffle(len(y), seed=seed, reshuffle_each_iteration=True).batch(batch_size)


def flag_suspicious(model, corrupted, fraction):
    """The `fraction` of training examples whose given label got the lowest weight.

    Returns:
      `(flagged indices, precision)`: precision is the fraction of them that is corrupted.
    """
    label_weights = keras.ops.convert_to_numpy(model.example_label_weights)
    flagged = np.argsort(label_weights, kind="stable")[: max(1, int(fraction * len(corrupted)))]
    return flagged, float(corrupted[flagged].mean())


def report(name, model, noisy, history, flag_fraction, x_test, y_test):
    """Evaluates, flags suspicious labels, prints a summary; returns a `Result`."""
    test_accuracy = model.evaluate(x_test, y_test, verbose=0, return_dict=True)["accuracy"]
    flagged, precision = flag_suspicious(model, noisy.corrupted, flag_fraction)
    label_weights = keras.ops.convert_to_numpy(model.example_label_weights)
    print(f"\n[{name}] clean test accuracy {test_accuracy:.3f} after {len(history.epoch)} epochs")
    print(
        f"[{name}] {len(flagged)} most suspicious labels: {precision:.0%} are wrong "
        f"(a random pick: {noisy.corrupted.mean():.0%})"
    )
    for i in flagged[:5]:
        print(
            f"    example {i}: given label {noisy.y_train[i]}, weight {label_weights[i]:.3g}, "
            f"{'wrong' if noisy.corrupted[i] else 'correct'}"
        )
    return Result(
        float(test_accuracy), float(noisy.corrupted.mean()), precision, flagged, len(history.epoch)
    )


def tabular_example(noisy=None, epochs=30, batch_size=100, per_class=20, flag_fraction=0.2, seed=0):
    """GDW on an MLP from NumPy features; returns a `Result`."""
    if noisy is None:
        noisy = make_tabular_data(seed=seed)
    keras.utils.set_random_seed(seed)
    (x_meta, y_meta), (x_val, y_val) = split_trusted(noisy, per_class, seed)

    # Your own backbone: any Keras model from inputs to logits (no softmax).
    inputs = keras.Input(noisy.x_train.shape[1:])
    hidden = keras.layers.Dense(64, activation="relu")(inputs)
    logits = keras.layers.Dense(noisy.num_classes)(hidden)
    backbone = keras.Model(inputs, logits)

    model = gdw_tf.GDWModel(
        backbone,
        noisy.num_classes,
        method="gdw",
        meta_data=(x_meta, y_meta),
        meta_batch_size=len(y_meta),
        track_examples=len(noisy.y_train),
        seed=seed,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = model.fit(
        indexed_batches(noisy.x_train, noisy.y_train, batch_size, seed),
        epochs=epochs,
        validation_data=(x_val, y_val),
        # `restore_best_weights` restores every variable of the model, the recorded example
        # weights too (those of the best epoch); `start_from_epoch` keeps it from choosing an
        # early epoch, whose weights do not yet tell wrong labels apart. GDWModel's metrics are
        # its own, so Keras needs `mode="max"` to know that higher accuracy is better.
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy",
                mode="max",
                patience=5,
                start_from_epoch=5,
                restore_best_weights=True,
            ),
            keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2),
        ],
        verbose=0,
    )
    return report("tabular", model, noisy, history, flag_fraction, noisy.x_test, noisy.y_test)


def image_example(noisy=None, epochs=6, batch_size=100, per_class=25, flag_fraction=0.2, seed=0):
    """GDW on a small functional CNN from a `tf.data.Dataset` of images; returns a `Result`."""
    if noisy is None:
        noisy = make_image_data(seed=seed)
    keras.utils.set_random_seed(seed)
    (x_meta, y_meta), (x_val, y_val) = split_trusted(noisy, per_class, seed)
    mean, std = gdw_tf.normalization_stats("own_images", noisy.x_train)

    inputs = keras.Input(noisy.x_train.shape[1:])
    x = keras.layers.Conv2D(16, 3, activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Flatten()(x)
    backbone = keras.Model(inputs, keras.layers.Dense(noisy.num_classes)(x))

    model = gdw_tf.GDWModel(
        backbone,
        noisy.num_classes,
        meta_data=(
            gdw_tf.normalize(x_meta, mean, std),
            y_meta,
        ),  # Normalised like training data.
        meta_batch_size=len(y_meta),
        track_examples=len(noisy.y_train),
        seed=seed,
    )
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
    history = model.fit(
        gdw_tf.train_dataset(
            noisy.x_train,
            noisy.y_train,
            batch_size,
            seed=seed,
            augment=False,
            mean=mean,
            std=std,
            with_index=True,
        ),
        epochs=epochs,
        validation_data=gdw_tf.eval_dataset(x_val, y_val, 256, mean, std),
        # Without `restore_best_weights`: it would rewind the recorded example weights, which
        # `report` reads, to the best epoch's, and this short run's best validation epoch can be
        # an early one, whose weights do not yet tell wrong labels apart.
        callbacks=[
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy", mode="max", patience=2, start_from_epoch=2
            )
        ],
        verbose=0,
    )
    x_test = gdw_tf.normalize(noisy.x_test, mean, std)
    return report("images", model, noisy, history, flag_fraction, x_test, noisy.y_test)


def main(argv=None):
    """Runs the examples named by `--part`; returns `{name: Result}`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("tabular", "images", "both"), default="both")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    results = {}
    if args.part in ("tabular", "both"):
        results["tabular"] = tabular_example(seed=args.seed)
    if args.part in ("images", "both"):
        results["images"] = image_example(seed=args.seed)
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
