"""A trusted (meta) set chosen from the noisy training data: `--trusted_data=auto`.

GDW, MW-Net and L2RW need a small set with correct labels. Without one, we pick it from the
noisy data: a short cross-entropy warm-up of the run's backbone on every training example,
then, in each class, `per_class` representatives of the examples whose given label the most
examples around them share (`select_representatives`). Those leave the training set and become
the meta set, with their given labels.

Why neighbours and not the warm-up model's confidence alone. Early in training a network fits
the labels that agree with the bulk of the data before it memorises the rest, so its most
confident agreements are mostly correct labels; but where one class receives the flips of
several others (Fashion-MNIST's flip noise sends Pullover, Dress and Sneaker to Trouser: two
thirds of the Trouser labels are wrong), the warm-up model is also confident about some
wrong ones, and the 100 most confident "Trouser" examples held 52 sneakers. The labels of an
example's nearest neighbours in the warm-up model's features still tell: around a sneaker
most examples are sneakers, and most sneakers keep their label. So each example's label is
scored by how much its `neighbours.NEIGHBOURS` nearest training examples (cosine similarity of
the classifier layer's inputs) outvote every other class for it.

Why representatives and not the most backed alone. The most backed (or most confident) examples
are the easiest, typical ones, all from the middle of their class; a trusted set steers the
weights best when it covers its class as a random clean sample does. So, in each class, the
`BACKED_SHARE` most backed examples are clustered (k-means) into `per_class` regions and the
example nearest each centre is chosen: examples about as sure as the most backed, spread over
the class. Measured in docs/LABEL_ISSUES.md ("Automatic trusted set"); the set is still not a
random sample (the ambiguous examples are never backed), and on the benchmarks `results.json`
reports its purity.

On a benchmark (`--dataset`) the split is first drawn as usual, so the noisy training set is
the one the clean-meta run trains on; the clean held-out meta examples are then left unused,
and the meta set is chosen from the noisy training set instead.

It trains a model, so it belongs to the run (`gdw_tf.runs.run.build_split` calls it), and reads
the run's `Config`; the split's change is `Split`'s own (`without_meta`, `move_to_meta`).
"""

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from gdw_tf import backend
from gdw_tf.core import backbone_split
from gdw_tf.data import device_batches
from gdw_tf.data import input_pipeline
from gdw_tf.labels import label_issues
from gdw_tf.labels import neighbours
from gdw_tf.labels import representatives
from gdw_tf.nets import backbones
from gdw_tf.runs import config as config_lib


def require_per_class(given_labels, num_classes, per_class):
    """Raises ValueError (one line) if a class has fewer than `per_class` given labels."""
    counts = np.bincount(np.asarray(given_labels, np.int64), minlength=num_classes)
    short = np.flatnonzero(counts < per_class)
    if short.size:
        k = int(short[0])
        raise ValueError(
            f"class {k} has {counts[k]} training examples, fewer than the {per_class} per "
            "class asked of the automatic trusted set; lower --auto_meta_per_class."
        )


def select_confident(probabilities, given_labels, num_classes, per_class):
    """Per class, the examples whose given label the model finds most probable.

    Args:
        probabilities: `[N, C]` predicted class probabilities.
        given_labels: `[N]` given labels in `[0, C)`.
        num_classes: `C`.
        per_class: examples to choose per class.

    Returns:
        The chosen positions, sorted ascending (`C * per_class` of them). Within a class, ties
        go to the lower position.

    Raises:
        ValueError: if a class has fewer than `per_class` examples.
    """
    require_per_class(given_labels, num_classes, per_class)
    return np.sort(np.concatenate(_most_confident(probabilities, given_labels, per_class)))


def _most_confident(probabilities, given_labels, count):
    """Per class `k` (in order), the positions of at most `count` examples given `k`, the one
    whose given label the model finds most probable first (ties: the lower position first)."""
    given_labels = np.asarray(given_labels, np.int64)
    agreement = np.asarray(probabilities)[np.arange(len(given_labels)), given_labels]
    ranked = []
    for k in range(np.shape(probabilities)[1]):
        members = np.flatnonzero(given_labels == k)
        # A stable sort of -agreement keeps the lower position first among equals.
        ranked.append(members[np.argsort(-agreement[members], kind="stable")[:count]])
    return ranked


# The examples whose label the neighbours back most, as a share of a class's candidates: the
# k-means clusters are made among them (at least `per_class` of them). Chosen on Fashion-MNIST
# flip 40%, seeds 0 and 1, by the purity of the chosen labels against how well they cover the
# class (docs/LABEL_ISSUES.md, "Representatives of what the neighbours back").
BACKED_SHARE = 0.1
# At most this many examples are candidates (a seeded sample of more): the neighbours' vote
# costs candidates × voters similarities (`neighbours.VOTERS` at most).
CANDIDATES = 100_000


def select_representatives(probabilities, features, given_labels, num_classes, per_class, seed=0):
    """Per class, representatives of the examples whose given label their neighbours back most
    (module docstring).

    Args:
        probabilities: `[N, C]` the warm-up model's probabilities.
        features: `[N, ...]` its features (the classifier layer's inputs).
        given_labels: `[N]` given labels in `[0, C)`.
        num_classes: `C`.
        per_class: examples to choose per class.
        seed: of the k-means seedings (and of the candidates' sample beyond `CANDIDATES`:
            each class in proportion, at least `per_class` of it).

    Returns:
        The chosen positions, sorted ascending (`C * per_class` of them). In each class, the
        candidates are ranked by the margin of the given label's share of their
        `neighbours.NEIGHBOURS` nearest examples' labels (cosine similarity of the features)
        over the largest other label's share, ties to the warm-up model's probability of the
        given label; the first `BACKED_SHARE` of them (at least `per_class`) are clustered by
        k-means into `per_class` clusters (unit-length features), and the member nearest each
        centre is chosen (an empty cluster's place goes to the most backed example left).

    Raises:
        ValueError: if a class has fewer than `per_class` examples.
    """
    given_labels = np.asarray(given_labels, np.int64)
    require_per_class(given_labels, num_classes, per_class)
    features = np.asarray(features).reshape(len(given_labels), -1)
    rng = np.random.default_rng(seed)
    candidates = _candidates(given_labels, num_classes, per_class, rng)
    labels = given_labels[candidates]
    votes = neighbours.neighbour_votes(features, given_labels, features[candidates], num_classes)
    margin = label_issues.label_margin(votes, labels)
    confidence = np.asarray(probabilities)[candidates, labels]
    ranked = candidates[np.lexsort((-confidence, -margin))]  # most backed first
    chosen = []
    for k in range(num_classes):
        members = ranked[given_labels[ranked] == k]
        backed = members[: max(per_class, int(BACKED_SHARE * len(members)))]
        chosen.append(_nearest_centres(backed, features, per_class, rng))
    return np.sort(np.concatenate(chosen))


def _candidates(given_labels, num_classes, per_class, rng):
    """The positions whose labels are scored, ascending: all, or beyond `CANDIDATES` examples a
    seeded sample of each class in proportion to its size (at least `per_class` of it)."""
    n = len(given_labels)
    if n <= CANDIDATES:
        return np.arange(n)
    sampled = []
    for k in range(num_classes):
        members = np.flatnonzero(given_labels == k)
        count = min(len(members), max(per_class, CANDIDATES * len(members) // n))
        sampled.append(rng.choice(members, count, replace=False))
    return np.sort(np.concatenate(sampled))


def _nearest_centres(backed, features, per_class, rng):
    """Of `backed` (positions, most backed first), the member nearest each centre of a k-means
    clustering into `per_class` clusters; fewer clusters that hold a member: the most backed
    of the others fill the places."""
    if len(backed) == per_class:
        return backed
    unit = neighbours.unit_rows(features[backed])
    _, assignment, distances = representatives.kmeans(unit, per_class, rng)
    picked = representatives.nearest_members(assignment, distances)
    picked = picked[picked >= 0]
    rest = np.setdiff1d(np.arange(len(backed)), picked)  # ascending: the most backed first
    return backed[np.concatenate([picked, rest[: per_class - len(picked)]]).astype(np.int64)]


def per_class_count(config, num_classes):
    """`--auto_meta_per_class`, or `--num_meta / C` when it is 0."""
    if config.auto_meta_per_class:
        return config.auto_meta_per_class
    if config.num_meta % num_classes:
        raise ValueError(
            f"--num_meta={config.num_meta} is not a multiple of the {num_classes} "
            "classes; set --auto_meta_per_class."
        )
    return config.num_meta // num_classes


def warm_up(config, model_name, x, labels, num_classes, *, mean, std, augment):
    """Trains a fresh backbone with cross-entropy on `(x, labels)`; returns what it predicts.

    SGD with `config.lr` and `config.momentum`, constant, for `config.auto_meta_warmup_epochs`
    epochs over the data in `config.batch_size` batches (no L2).

    Returns:
        `(probabilities, features)`: `[N, C]` float32 softmax probabilities of the examples of
        `x`, in order, and `[N, D]` the inputs of the backbone's classifier layer
        (`backbone_split.split_top(backbone, 1)`), flattened; features are None for a
        backbone without a layer graph.
    """
    keras.utils.set_random_seed(config.seed)
    backbone = backbones.build_model(
        model_name, x.shape[1:], num_classes, weights=config.model_weights
    )
    backbone.compile(
        keras.optimizers.SGD(config.lr, momentum=config.momentum),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # On JAX's devices, each batch cut to a multiple of them; Keras told how many stay.
    devices = backend.batch_devices()
    steps = device_batches.steps_per_epoch(len(x), config.batch_size, devices)
    backbone.fit(
        device_batches.even_batches(
            input_pipeline.train_dataset(
                x, labels, config.batch_size, seed=config.seed, augment=augment, mean=mean, std=std
            ),
            devices,
            pad=False,
        ).apply(tf.data.experimental.assert_cardinality(steps)),
        epochs=config.auto_meta_warmup_epochs,
        shuffle=False,
        verbose=config.verbose,
    )
    try:
        split = backbone_split.split_top(backbone, 1)
    except ValueError:
        split = None
    predictor = backbone if split is None else split.features_and_logits
    outputs = device_batches.predict(
        predictor, input_pipeline.eval_dataset(x, labels, config.batch_size, mean, std), devices
    )
    features, logits = (None, outputs) if split is None else outputs
    probabilities = keras.ops.convert_to_numpy(keras.ops.softmax(logits, axis=-1))
    if features is not None:
        features = np.asarray(features).reshape(len(x), -1)
    return probabilities, features


def auto_split(split, config, model_name, x, *, mean, std, augment):
    """`split` with its meta set replaced by examples chosen from its training set.

    Args:
        split: a `gdw_tf.data.split.Split` whose training set (indices into `x`, given labels) is
            the pool.
        config: the run's `Config`.
        model_name: the backbone of the warm-up (the run's, resolved).
        x: the examples the split indexes.
        mean, std: the normalisation of `x`.
        augment: whether the warm-up augments its batches.

    Returns:
        A new `gdw_tf.data.split.Split` (`meta_source="auto"`): meta set = the chosen examples
        with their given labels, training set = the others.

    Raises:
        ValueError: if a class has too few examples, or the meta set would be smaller than
            `--meta_batch_size`.
    """
    per_class = per_class_count(config, split.num_classes)
    meta_batch_size = config_lib.resolve_meta_batch_size(
        config.meta_batch_size, per_class * split.num_classes
    )
    if per_class * split.num_classes < meta_batch_size:
        raise ValueError(
            f"the automatic trusted set would hold {per_class * split.num_classes} examples "
            f"({per_class} per class), fewer than --meta_batch_size={config.meta_batch_size}; "
            "raise --auto_meta_per_class or lower --meta_batch_size."
        )
    given = split.train_noisy_labels
    require_per_class(given, split.num_classes, per_class)  # Before the warm-up is spent.
    probabilities, features = warm_up(
        config,
        model_name,
        x[split.train_indices],
        given,
        split.num_classes,
        mean=mean,
        std=std,
        augment=augment,
    )
    if features is None:
        chosen = select_confident(probabilities, given, split.num_classes, per_class)
    else:
        chosen = select_representatives(
            probabilities, features, given, split.num_classes, per_class, seed=config.seed
        )
    return dataclasses.replace(split.without_meta().move_to_meta(chosen), meta_source="auto")


def summary(split, config, true_labels=None, ids=None):
    """The `auto_meta` entry of `results.json`: what was chosen, and its purity if known.

    Args:
        split: the run's split (`meta_source="auto"`).
        config: the run's `Config`.
        true_labels: the true labels of the examples the split indexes (benchmarks), or None.
        ids: the names of those examples (own data), or None.
    """
    result = {
        "per_class": int(len(split.meta_indices) // split.num_classes),
        "warmup_epochs": int(config.auto_meta_warmup_epochs),
        "indices": split.meta_indices.tolist(),
        "given_labels": split.meta_labels.tolist(),
        "purity": None,
        "purity_per_class": None,
    }
    if ids is not None:
        result["ids"] = [ids[i] for i in split.meta_indices]
    if true_labels is not None and split.truth_known:
        correct = np.asarray(true_labels)[split.meta_indices] == split.meta_labels
        result["purity"] = float(correct.mean())
        result["purity_per_class"] = [
            float(correct[split.meta_labels == k].mean()) for k in range(split.num_classes)
        ]
    return result
