"""The data protocol's split: a clean, class-balanced meta set and a noisy, long-tailed
training set drawn from one dataset's training split.

`make_split` follows Meta-Weight-Net and the GDW reference code: a small clean, class-balanced
meta set is taken out of the training set, the rest gets label noise from one of the noise
models of `gdw_tf.data.noise`, and is then subsampled into a long tail by true class.

Where we depart from the reference code, and why:

- The reference draws the meta set with seed 1 and the training set with `--seed`, so most
  "clean" meta images also sit, with noisy labels, in the training set. Here one seeded
  permutation gives both, and they are disjoint (asserted).
- The reference's flip noise reseeds NumPy with 1, so its flip targets are the same in every
  run. Here they come from the run's seed; `pair` is the fixed permutation of other papers.
- The reference's `flip2` is not offered (it fails an assert there).
- Its `uniform` leaves about 36% of labels wrong at "40%"; we keep that definition, add
  `symmetric`, and record the realised noise rate and transition matrix in every `Split`.

A `Split` changes only through its own methods (`move_to_meta`, `relabel_train`,
`relabel_meta`, `without`, `without_meta`), each returning a new `Split` whose statistics of the
training set (corrupted flags, empirical transition matrix, realised noise rate) are recomputed.
"""

import dataclasses

import numpy as np

from gdw_tf.data import noise as noise_lib


@dataclasses.dataclass(frozen=True, eq=False)
class Split:
    """A meta/training split with its noisy labels, as drawn by `make_split`.

    Indices point into the arrays the split was drawn from, each set's in ascending order;
    training arrays are aligned with `train_indices`, `meta_labels` with `meta_indices`.
    """

    num_classes: int
    noise: str
    ratio: float
    imbalance: float
    seed: int
    meta_indices: np.ndarray
    meta_labels: np.ndarray
    train_indices: np.ndarray
    train_true_labels: np.ndarray
    train_noisy_labels: np.ndarray
    train_corrupted: np.ndarray
    transition_matrix: np.ndarray
    empirical_transition_matrix: np.ndarray
    realised_noise_rate: float
    # False for own data: the given labels are all we know (true labels -1, rates NaN).
    truth_known: bool = True
    # Where the meta set comes from: "clean" (held out before noise), "trusted" (the user's
    # trusted set) or "auto" (chosen from the noisy training data, `gdw_tf.runs.auto_meta`).
    meta_source: str = "clean"
    # Reviews applied to the split (`gdw_tf.data.corrections.correct_split`): their summary as
    # JSON, "" if none, and the indices of the reviewed examples left in it.
    corrections: str = ""
    reviewed_indices: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    def move_to_meta(self, positions) -> "Split":
        """The split with the training examples at `positions` moved to the meta set, with
        their training (given) labels.

        Args:
          positions: positions in the training set (into `train_indices`).
        """
        positions = np.asarray(positions, np.int64)
        keep = np.ones(len(self.train_indices), bool)
        keep[positions] = False
        meta_indices = np.concatenate([self.meta_indices, self.train_indices[positions]])
        meta_labels = np.concatenate([self.meta_labels, self.train_noisy_labels[positions]])
        order = np.argsort(meta_indices, kind="stable")
        return dataclasses.replace(
            self,
            meta_indices=meta_indices[order],
            meta_labels=meta_labels[order],
            train_indices=self.train_indices[keep],
            train_true_labels=self.train_true_labels[keep],
            train_noisy_labels=self.train_noisy_labels[keep],
        )._recounted()

    def relabel_train(self, positions, labels) -> "Split":
        """The split with the training examples at `positions` given `labels`."""
        noisy = self.train_noisy_labels.copy()
        noisy[np.asarray(positions, np.int64)] = labels
        return dataclasses.replace(self, train_noisy_labels=noisy)._recounted()

    def relabel_meta(self, positions, labels) -> "Split":
        """The split with the meta examples at `positions` (into `meta_indices`) given
        `labels`."""
        meta_labels = self.meta_labels.copy()
        meta_labels[np.asarray(positions, np.int64)] = labels
        return dataclasses.replace(self, meta_labels=meta_labels)

    def without(self, train_positions=(), meta_positions=()) -> "Split":
        """The split without the training examples at `train_positions` and the meta examples
        at `meta_positions` (into `meta_indices`): they leave the split."""
        keep_train = np.ones(len(self.train_indices), bool)
        keep_train[np.asarray(train_positions, np.int64)] = False
        keep_meta = np.ones(len(self.meta_indices), bool)
        keep_meta[np.asarray(meta_positions, np.int64)] = False
        return dataclasses.replace(
            self,
            meta_indices=self.meta_indices[keep_meta],
            meta_labels=self.meta_labels[keep_meta],
            train_indices=self.train_indices[keep_train],
            train_true_labels=self.train_true_labels[keep_train],
            train_noisy_labels=self.train_noisy_labels[keep_train],
        )._recounted()

    def without_meta(self) -> "Split":
        """The split with an empty meta set: its examples leave the split."""
        return dataclasses.replace(
            self, meta_indices=self.meta_indices[:0], meta_labels=self.meta_labels[:0]
        )

    def _recounted(self) -> "Split":
        """The split with the training set's statistics recomputed from its labels: corrupted
        flags, empirical transition matrix and realised noise rate where the truth is known;
        no corruption and NaN otherwise (own data)."""
        true, noisy, num_classes = self.train_true_labels, self.train_noisy_labels, self.num_classes
        if not self.truth_known:
            return dataclasses.replace(
                self,
                train_corrupted=np.zeros(len(noisy), bool),
                empirical_transition_matrix=np.full((num_classes, num_classes), np.nan),
                realised_noise_rate=float("nan"),
            )
        return dataclasses.replace(
            self,
            train_corrupted=true != noisy,
            empirical_transition_matrix=noise_lib.empirical_transition_matrix(
                true, noisy, num_classes
            ),
            realised_noise_rate=noise_lib.realised_noise_rate(true, noisy),
        )

    def save(self, path):
        """Writes the split to a `.npz` file at `path`."""
        with open(path, "wb") as file:
            np.savez(file, **dataclasses.asdict(self))

    @classmethod
    def load(cls, path):
        """Reads a split written by `save`.

        Raises:
            ValueError: if the file lacks any of the split's fields.
        """
        with np.load(path, allow_pickle=False) as stored:
            fields = {
                field.name: stored[field.name]
                for field in dataclasses.fields(cls)
                if field.name in stored
            }
        missing = [
            field.name
            for field in dataclasses.fields(cls)
            if field.name not in fields and field.default is dataclasses.MISSING
        ]
        if missing:
            raise ValueError(f"{path} is not a saved Split: it lacks {missing}.")
        scalars = {
            "num_classes": int,
            "noise": str,
            "ratio": float,
            "imbalance": float,
            "seed": int,
            "realised_noise_rate": float,
            "truth_known": bool,
            "meta_source": str,
            "corrections": str,
        }
        for name, cast in scalars.items():
            if name in fields:
                fields[name] = cast(fields[name])
        return cls(**fields)


def make_split(
    labels: np.ndarray,
    num_classes: int,
    *,
    num_meta: int,
    noise: str,
    ratio: float,
    imbalance: float,
    seed: int,
) -> Split:
    """Draws the meta set, the noisy training labels and the long tail from one seed.

    One permutation from `np.random.default_rng(seed)` orders the examples; the meta set takes
    the first `num_meta / C` examples of each class in that order, the rest is the training
    set. The training labels are corrupted with the noise model, then each true class `k` is
    cut to `int(n_max * imbalance**(-k/(C-1)))` examples (its first ones in the permutation;
    all of them if it has fewer), `n_max` being the size of the largest training class.

    Args:
        labels: true labels of the whole original training set, ints in [0, num_classes).
        num_classes: number of classes `C`.
        num_meta: size of the clean meta set, a positive multiple of `C`.
        noise: one of `gdw_tf.data.noise.NOISE_MODELS`.
        ratio: noise ratio in [0, 1].
        imbalance: long-tail factor `n_max / n_min` >= 1 (1: no subsampling).
        seed: the run's seed.

    Returns:
        A `Split` (indices sorted ascending).

    Raises:
        ValueError: for a bad argument, or a class with fewer than `num_meta / C` examples.
    """
    labels = noise_lib.check_labels(labels, num_classes)
    if num_meta < num_classes or num_meta % num_classes:
        raise ValueError(
            f"num_meta must be a positive multiple of the number of classes ({num_classes}) "
            f"so that the meta set is class-balanced; got {num_meta}."
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    is_meta = np.zeros(len(labels), dtype=bool)
    is_meta[_first_per_class(labels[order], num_classes, num_meta // num_classes)] = True
    meta_indices = np.sort(order[is_meta])
    train_order = order[~is_meta]
    if np.intersect1d(meta_indices, train_order).size:
        raise AssertionError("The meta and training sets overlap.")

    true = labels[train_order]
    noisy, matrix = noise_lib.corrupt_labels(true, noise, ratio, num_classes, rng)

    class_sizes = np.bincount(true, minlength=num_classes)
    keep_sizes = np.minimum(
        noise_lib.long_tail_counts(class_sizes.max(), imbalance, num_classes), class_sizes
    )
    rank_in_class = np.empty(len(true), dtype=np.int64)
    for k in range(num_classes):
        in_class = true == k
        rank_in_class[in_class] = np.arange(in_class.sum())
    kept = rank_in_class < keep_sizes[true]

    by_index = np.argsort(train_order[kept])
    train_indices = train_order[kept][by_index]
    true, noisy = true[kept][by_index], noisy[kept][by_index]
    return Split(
        num_classes=num_classes,
        noise=noise,
        ratio=float(ratio),
        imbalance=float(imbalance),
        seed=int(seed),
        meta_indices=meta_indices,
        meta_labels=labels[meta_indices],
        train_indices=train_indices,
        train_true_labels=true,
        train_noisy_labels=noisy,
        train_corrupted=true != noisy,
        transition_matrix=matrix,
        empirical_transition_matrix=noise_lib.empirical_transition_matrix(true, noisy, num_classes),
        realised_noise_rate=noise_lib.realised_noise_rate(true, noisy),
    )


def balanced_meta_subset(
    x: np.ndarray, y: np.ndarray, num_classes: int, *, per_class: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Carves a class-balanced meta set out of a trusted, correctly labelled subset.

    Args:
        x: examples, first axis aligned with `y`.
        y: their (clean) labels in [0, num_classes).
        num_classes: number of classes.
        per_class: meta examples to take from each class.
        seed: seed of the random choice within each class.

    Returns:
        `(x_meta, y_meta)`: `num_classes * per_class` examples in random order.

    Raises:
        ValueError: if a class has fewer than `per_class` examples.
    """
    y = noise_lib.check_labels(y, num_classes)
    order = np.random.default_rng(seed).permutation(len(y))
    chosen = order[_first_per_class(y[order], num_classes, per_class)]
    return x[chosen], y[chosen]


def _first_per_class(ordered_labels, num_classes, per_class):
    """Sorted positions of the first `per_class` labels of each class in `ordered_labels`."""
    if per_class < 1:
        raise ValueError(f"Need at least one meta example per class; got {per_class}.")
    positions = []
    for k in range(num_classes):
        in_class = np.flatnonzero(ordered_labels == k)
        if len(in_class) < per_class:
            raise ValueError(
                f"Class {k} has {len(in_class)} examples, fewer than the {per_class} "
                "needed for a class-balanced meta set."
            )
        positions.append(in_class[:per_class])
    return np.sort(np.concatenate(positions))
