"""Reviewed labels (`corrections.csv`, from a run's `review.html`) turned into trusted data.

A person who reviewed an example has checked its label, so the example is *trusted*: it takes
its reviewed label and joins the meta set, which is what GDW (and MW-Net, L2RW) learn from.
The meta sampler draws meta batches uniformly from the meta set, so a meta set whose classes
are unequally represented weights the classes unequally in every meta loss. Hence the rules,
by where the meta set came from:

- An automatic trusted set (`--trusted_data=auto`: examples whose labels a warm-up model's
  features back clearly) is a stand-in until people have reviewed. Every reviewed training
  example joins the meta set and takes the place of an automatic example of its reviewed class
  (drawn with a fixed seed; it leaves the run) while the class has one left. The review page
  offers representative examples spread evenly over the classes
  (`gdw_tf.labels.label_issues.review_order`), so the meta set keeps its size and balance and
  turns, review by review, from those clear examples into reviewed examples that represent
  the data, which is what a meta set should be
  (docs/LABEL_ISSUES.md, "The review loop", has the measurements).
- A trusted set that a person gave (or the benchmark's clean one) is kept whole, and every
  class of it grows by the same number of reviewed examples,

      a = min over classes k of (reviewed examples whose reviewed label is k),

  the first `a` of each class in review order (the order of the files, then of their rows).
  A balanced meta set stays balanced; an unbalanced one keeps its counts' differences. The
  reviewed examples left over stay in the training set with their reviewed labels.

A reviewed example that is already in the meta set takes its reviewed label there. Everything
not reviewed stays as it was.

`corrections.csv` has one row per reviewed example with at least the columns `id` (as in
`label_issues.csv`: a training or a trusted example) and `reviewed_label` (a class index, or a
class name); the review page also writes `given_label`, `decision`, `suggested_label`, `rank`,
`score`, `given_class` and `reviewed_class`, of which `decision` and `reviewed_class` are read
(below). A row whose `decision` is `remove` takes its example out of the run, whichever set it
is in (the reviewer found no class that fits it: its label can neither steer the run nor be
learned); its `reviewed_label` is not read. Another row whose `reviewed_label` is empty is not
a review (skipped).

Several files are read in the order given, each a later review: a later file's review of an id
replaces an earlier file's (the second look at a label the next run contradicted). Within one
file, two different reviews of one id are refused. A file re-saved by a spreadsheet is read as
it saved it (`gdw_tf.data.csv_cells`: UTF-8 with or without BOM, `,` `;` or tab, CRLF, `'`-escaped
cells), and ids are compared as `csv_cells.normalize_id` gives them everywhere (two spellings
of one path are one id, so they cannot give one example two reviews).

Which class a `reviewed_label` names, when the class names are known:

    a cell equal to a class name is that class (names first);
    else a cell that is an integer in [0, C) is the class of that index;
    a cell that is the name of one class and the index of another (class folders `1`..`10`:
    `3` names the folder `3`, index 2, and is the index of the folder `4`) is ambiguous, and
    is refused unless the row's `reviewed_class` names one of the two.

A non-empty `reviewed_class` must name the class that `reviewed_label` gives (the review page
writes both; a spreadsheet edit of one of them alone is refused rather than guessed).

    fixed = gdw_tf.data.corrections.apply_corrections(
        x_train, y_train, corrections="corrections.csv", meta_data=(x_meta, y_meta))
    model = gdw_tf.GDWModel(backbone, num_classes, meta_data=fixed.meta_data)
    model.fit(fixed.x, fixed.y, ...)
"""

import dataclasses
import json
import os
import re
from collections.abc import Sequence

import numpy as np

from gdw_tf.data import csv_cells

CORRECTIONS_FILE = "corrections.csv"
REQUIRED_COLUMNS = ("id", "reviewed_label")
REMOVE = "remove"  # the `decision` that takes an example out of the run
REMOVED = -1  # its `Corrections.reviewed_labels` entry


@dataclasses.dataclass(frozen=True)
class Corrections:
    """Reviews read from one or more `corrections.csv` files, one per reviewed id.

    Attributes:
      ids: the reviewed examples' ids, as text (`label_issues.csv`'s `id`).
      reviewed_labels: `[R]` int labels in `[0, C)`, or `REMOVED` for an example the review
        takes out of the run.
      sources: where each review was read (`file:line`).
      files: the files read, in order.
    """

    ids: tuple
    reviewed_labels: np.ndarray
    sources: tuple
    files: tuple

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class CorrectedData:
    """Training data and meta set after `apply_corrections`.

    Attributes:
      x, y: the training examples left in the training set (reviewed ones there carry their
        reviewed label).
      ids: their ids.
      meta_data: `(x_meta, y_meta)`: the given meta set (if any) followed by the reviewed
        examples that joined it.
      summary: counts, as `correct_split`'s summary.
    """

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray
    meta_data: tuple
    summary: dict


def parse_paths(paths: str | Sequence[str]) -> list[str]:
    """`"a.csv,b.csv"` or a list of paths → the list of paths (empty entries dropped)."""
    if isinstance(paths, str | os.PathLike):
        paths = str(paths).split(",")
    return [str(path).strip() for path in paths if str(path).strip()]


def read_corrections(
    paths: str | Sequence[str],
    *,
    num_classes: int,
    class_names: Sequence[str] | None = None,
) -> Corrections:
    """Reads and checks reviews from one or more `corrections.csv` files.

    The files may be as a spreadsheet saved them (`gdw_tf.data.csv_cells.read_table`: BOM,
    `;` or tab, CRLF, `'`-escaped cells). Ids are kept as `csv_cells.normalize_id` gives them,
    so one example spelled two ways is one id. A reviewed label is read by the module
    docstring's rule (a class name first, then an index).

    Args:
      paths: a path, several separated by commas, or a list of paths.
      num_classes: `C`; a reviewed label is an integer in `[0, C)`...
      class_names: ...or one of these names.

    Returns:
      The `Corrections`, one per reviewed id, in the order the ids first appear: a later
      file's review replaces an earlier file's; one id reviewed twice alike counts once (where
      it was first read).

    Raises:
      ValueError: (one line) for a missing file, a file without the `id` and
        `reviewed_label` columns, a row with missing cells, a reviewed label that is not a
        class or is ambiguous, or two different reviews of one id in one file.
    """
    files = parse_paths(paths)
    if not files:
        raise ValueError("--corrections names no file; give FILE[,FILE...] of corrections.csv.")
    names = {str(name): k for k, name in enumerate(class_names or ())}
    by_id = {}  # normalised id → (label, source), the latest file's review last
    for path in files:
        if not os.path.isfile(path):
            raise ValueError(f"corrections file {path} does not exist.")
        _, rows = csv_cells.read_table(path, REQUIRED_COLUMNS)
        in_file = {}
        for line, row in rows:
            text = row["reviewed_label"].strip()
            removed = row.get("decision", "").strip().lower() == REMOVE
            if not text and not removed:
                continue  # Not reviewed.
            source = f"{path}:{line}"
            label = (
                REMOVED
                if removed
                else _reviewed_label(
                    text, row.get("reviewed_class", ""), source, num_classes, names
                )
            )
            if not row["id"].strip():
                raise ValueError(f"{source}: the id is empty; give it as in label_issues.csv.")
            example_id = csv_cells.normalize_id(row["id"])
            if example_id in in_file and in_file[example_id][0] != label:
                raise ValueError(
                    f"id {example_id!r} is reviewed as {_shown(in_file[example_id][0])} "
                    f"({in_file[example_id][1]}) and as {_shown(label)} ({source}); keep one "
                    "review of it."
                )
            in_file.setdefault(example_id, (label, source))
        for example_id, review in in_file.items():
            if by_id.get(example_id, (None,))[0] != review[0]:
                by_id[example_id] = review  # A later review replaces an earlier one.
    return Corrections(
        ids=tuple(by_id),
        reviewed_labels=np.array([label for label, _ in by_id.values()], np.int64),
        sources=tuple(source for _, source in by_id.values()),
        files=tuple(files),
    )


def meta_additions(reviewed_labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Which reviewed examples join the meta set: the first `a` of each class, where `a` is
    the smallest number of reviewed examples in any class (see the module docstring).

    Args:
      reviewed_labels: `[R]` reviewed labels in `[0, C)` (or `REMOVED`: never joins), in
        review order.
      num_classes: `C`.

    Returns:
      `[R]` bool, True for the examples that join the meta set (`a * C` of them).
    """
    labels = np.asarray(reviewed_labels, np.int64)
    counts = np.bincount(labels[labels != REMOVED], minlength=num_classes)
    per_class = int(counts.min()) if len(counts) else 0
    rank_in_class = np.zeros(len(labels), np.int64)
    for k in range(num_classes):
        members = labels == k
        rank_in_class[members] = np.arange(int(members.sum()))
    return rank_in_class < per_class


def kept_automatic(
    meta_labels: np.ndarray, reviewed_labels: np.ndarray, num_classes: int
) -> np.ndarray:
    """Which automatic meta examples stay beside the reviewed ones (see the module docstring):
    in each class, each reviewed example takes the place of one automatic example (drawn
    with a fixed seed) while the class has any left.

    Args:
      meta_labels: `[M]` the labels of the automatic meta examples nobody reviewed.
      reviewed_labels: `[R]` the labels of the reviewed examples that are in the meta set.
      num_classes: `C`.

    Returns:
      Sorted positions into `meta_labels` of the automatic examples that stay.
    """
    rng = np.random.default_rng(0)
    reviewed_counts = np.bincount(np.asarray(reviewed_labels, np.int64), minlength=num_classes)
    kept = []
    for k in range(num_classes):
        members = np.flatnonzero(meta_labels == k)
        count = max(len(members) - int(reviewed_counts[k]), 0)
        kept.append(np.sort(rng.choice(members, count, replace=False)))
    return np.sort(np.concatenate(kept)).astype(np.int64)


def correct_split(split, corrections: Corrections, *, ids: Sequence | None = None):
    """A run's split with the reviews applied (the module docstring's rule).

    Args:
      split: a `gdw_tf.data.split.Split` (indices into the dataset).
      corrections: the reviews (`read_corrections`, or `locate_reviews`).
      ids: the dataset's ids, indexed as the split indexes it (own data: file paths, rows);
        None for the benchmarks, whose ids are the indices (and for `locate_reviews`' result).

    Returns:
      `(split, summary)`: a new `Split` (`corrections` holds the summary as JSON,
      `reviewed_indices` the reviewed examples left in it), and the summary dict: `files`,
      `reviewed`, `changed` (reviewed label ≠ the label the data gave), `added_to_trusted`,
      `added_to_trusted_per_class`, `relabelled_in_trusted` (reviewed examples already in the
      meta set), `corrected_in_training` (reviewed examples left in the training set with
      their reviewed label), `removed_from_trusted`, `removed_from_training` (examples the
      review took out of the run), `automatic_replaced` (automatic meta examples that reviewed
      ones replaced: they leave the run).

    Raises:
      ValueError: if a reviewed id is not in the split's training or meta set.
    """
    train_pos, meta_pos = _locate_in_split(split, corrections, ids)
    reviewed = corrections.reviewed_labels
    in_train = train_pos >= 0
    removed = reviewed == REMOVED
    given = np.empty(len(reviewed), np.int64)  # the labels the data gave
    given[in_train] = split.train_noisy_labels[train_pos[in_train]]
    given[~in_train] = split.meta_labels[meta_pos[~in_train]]
    relabelled_meta = ~in_train & ~removed
    kept = in_train & ~removed
    positions, labels = train_pos[kept], reviewed[kept]
    replaced = np.zeros(0, np.int64)  # meta positions of the automatic examples replaced
    if split.meta_source == "auto":
        joins = np.ones(len(labels), bool)
        # The automatic examples nobody reviewed make way for the reviewed ones.
        unreviewed = np.delete(np.arange(len(split.meta_labels)), meta_pos[~in_train])
        stay = kept_automatic(
            split.meta_labels[unreviewed],
            np.concatenate([labels, reviewed[relabelled_meta]]),
            split.num_classes,
        )
        replaced = np.delete(unreviewed, stay)
    else:
        joins = meta_additions(labels, split.num_classes)
    summary = {
        "files": list(corrections.files),
        "reviewed": len(corrections),
        "changed": int((given != reviewed).sum()),
        "added_to_trusted": int(joins.sum()),
        "added_to_trusted_per_class": int(joins.sum()) // split.num_classes,
        "relabelled_in_trusted": int(relabelled_meta.sum()),
        "corrected_in_training": int((~joins).sum()),
        "removed_from_trusted": int((~in_train & removed).sum()),
        "removed_from_training": int((in_train & removed).sum()),
        "automatic_replaced": len(replaced),
    }
    reviewed_indices = np.sort(
        np.concatenate(
            [split.train_indices[positions], split.meta_indices[meta_pos[relabelled_meta]]]
        )
    )
    corrected = (
        split.relabel_meta(meta_pos[relabelled_meta], reviewed[relabelled_meta])
        .relabel_train(positions, labels)
        .without(
            train_pos[in_train & removed],
            np.concatenate([meta_pos[~in_train & removed], replaced]),
        )
    )
    # The training positions moved by `without`: find the joining examples again by index.
    joining = np.isin(corrected.train_indices, split.train_indices[positions[joins]])
    corrected = corrected.move_to_meta(np.flatnonzero(joining))
    return (
        dataclasses.replace(
            corrected, corrections=json.dumps(summary), reviewed_indices=reviewed_indices
        ),
        summary,
    )


def locate_reviews(split, corrections: Corrections, *, ids: Sequence | None = None):
    """The reviews with each id replaced by its example's index into the dataset, checked to be
    in `split`: what `correct_split` then applies (with `ids=None`) to this split, or to one
    made from it.

    Args:
      split: a `gdw_tf.data.split.Split`.
      corrections: the reviews (`read_corrections`).
      ids: the dataset's ids, as `correct_split` takes them.

    Returns:
      `Corrections` whose ids are the indices as text (the benchmarks' ids).

    Raises:
      ValueError: if a reviewed id is not in the split's training or meta set.
    """
    train_pos, meta_pos = _locate_in_split(split, corrections, ids)
    in_train = train_pos >= 0
    rows = np.empty(len(train_pos), np.int64)
    rows[in_train] = split.train_indices[train_pos[in_train]]
    rows[~in_train] = split.meta_indices[meta_pos[~in_train]]
    return dataclasses.replace(corrections, ids=tuple(str(int(row)) for row in rows))


def _locate_in_split(split, corrections, ids):
    """`locate_ids` of the reviewed ids in the split's training and meta sets."""

    def text_ids(indices):
        if ids is None:
            return [str(int(i)) for i in indices]
        return [str(ids[int(i)]) for i in indices]

    return locate_ids(
        corrections.ids,
        train_ids=text_ids(split.train_indices),
        meta_ids=text_ids(split.meta_indices),
    )


def locate_ids(reviewed_ids: Sequence[str], *, train_ids: Sequence, meta_ids: Sequence = ()):
    """Positions of the reviewed ids in the training set and in the meta set (-1: not there).

    Ids are compared as `csv_cells.normalize_id` gives them (`./photos/a.png` is
    `photos/a.png`), so a run may spell its `--train_data` folder another way; an id that is a
    number or `file.csv:line` stays as it is.

    Raises:
      ValueError: if some reviewed id is in neither.
    """
    train_lookup = {csv_cells.normalize_id(i): p for p, i in enumerate(train_ids)}
    meta_lookup = {csv_cells.normalize_id(i): p for p, i in enumerate(meta_ids)}
    keys = [csv_cells.normalize_id(i) for i in reviewed_ids]
    train_pos = np.array([train_lookup.get(key, -1) for key in keys], np.int64)
    meta_pos = np.array(
        [meta_lookup.get(key, -1) if t < 0 else -1 for key, t in zip(keys, train_pos)], np.int64
    )
    unknown = [i for i, t, m in zip(reviewed_ids, train_pos, meta_pos) if t < 0 and m < 0]
    if unknown:
        shown = ", ".join(repr(i) for i in unknown[:3])
        raise ValueError(
            f"{len(unknown)} reviewed id(s) are not in the training data ({shown}"
            f"{', ...' if len(unknown) > 3 else ''}); the corrections belong to other data "
            "(another --dataset, --train_data or --max_train_examples)."
        )
    return train_pos, meta_pos


def apply_corrections(
    x: np.ndarray,
    y: np.ndarray,
    *,
    corrections: str | Sequence[str] | Corrections,
    meta_data: tuple | None = None,
    ids: Sequence | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
) -> CorrectedData:
    """Applies reviews to training arrays and a meta set, for `GDWModel.fit` users.

    Args:
      x, y: the training examples and their given labels (`[N, ...]`, `[N]`).
      corrections: `corrections.csv` path(s) (a list, or comma-separated), or `Corrections`.
      meta_data: optional `(x_meta, y_meta)` trusted set the reviewed examples join.
      ids: `[N]` ids of the training examples, as in `label_issues.csv` (default `0..N-1`,
        the ids `find_label_issues` gives without `ids=`).
      num_classes: `C` (default: one more than the largest label in `y` and `y_meta`).
      class_names: names of the classes, if reviewed labels may be given by name.

    Returns:
      A `CorrectedData`: the remaining training data, the grown meta set and the counts.

    Raises:
      ValueError: as `read_corrections` and `locate_ids`, or for a meta set or `ids` that do not
        fit the data.
    """
    x = np.asarray(x)
    y = np.asarray(y).reshape(-1).astype(np.int64)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} examples but y has {len(y)} labels.")
    if meta_data is None:
        x_meta, y_meta = np.zeros((0,) + x.shape[1:], x.dtype), np.zeros(0, np.int64)
    else:
        x_meta, y_meta = np.asarray(meta_data[0]), np.asarray(meta_data[1]).reshape(-1)
        if len(x_meta) != len(y_meta) or x_meta.shape[1:] != x.shape[1:]:
            raise ValueError(
                "meta_data must be (x_meta, y_meta) with one label per example and the "
                f"training examples' shape {x.shape[1:]}; got {x_meta.shape} and {y_meta.shape}."
            )
        y_meta = y_meta.astype(np.int64)
    if num_classes is None:
        num_classes = int(max(y.max(initial=-1), y_meta.max(initial=-1))) + 1
    ids = np.arange(len(y)) if ids is None else np.asarray(ids)
    if ids.shape[:1] != y.shape:
        raise ValueError(f"ids must have {len(y)} entries, one per example; got {len(ids)}.")
    if not isinstance(corrections, Corrections):
        corrections = read_corrections(
            corrections, num_classes=num_classes, class_names=class_names
        )
    train_pos, _ = locate_ids(corrections.ids, train_ids=ids)
    removed = corrections.reviewed_labels == REMOVED
    train_pos, reviewed = train_pos[~removed], corrections.reviewed_labels[~removed]
    joins = meta_additions(reviewed, num_classes)
    y_fixed = y.copy()
    y_fixed[train_pos] = reviewed
    keep = np.ones(len(y), bool)
    keep[train_pos[joins]] = False
    keep[locate_ids([i for i, r in zip(corrections.ids, removed) if r], train_ids=ids)[0]] = False
    summary = {
        "files": list(corrections.files),
        "reviewed": len(corrections),
        "changed": int((y[train_pos] != reviewed).sum()) + int(removed.sum()),
        "added_to_trusted": int(joins.sum()),
        "added_to_trusted_per_class": int(joins.sum()) // num_classes,
        "relabelled_in_trusted": 0,
        "corrected_in_training": int((~joins).sum()),
        "removed_from_trusted": 0,
        "removed_from_training": int(removed.sum()),
    }
    return CorrectedData(
        x=x[keep],
        y=y_fixed[keep],
        ids=ids[keep],
        meta_data=(
            np.concatenate([x_meta, x[train_pos[joins]]]),
            np.concatenate([y_meta, reviewed[joins]]),
        ),
        summary=summary,
    )


def _reviewed_label(text, class_text, source, num_classes, names):
    """The class a row's `reviewed_label` (and `reviewed_class`, if given) names: the module
    docstring's rule."""
    by_name = names.get(text)
    by_index = int(text) if re.fullmatch(r"[0-9]+", text) and int(text) < num_classes else None
    class_text = (class_text or "").strip()
    by_class = names.get(class_text) if names and class_text else None
    if by_name is not None and by_index is not None and by_name != by_index:
        if by_class not in (by_name, by_index):
            raise ValueError(
                f"{source}: reviewed_label {text!r} is ambiguous: the class named {text!r} "
                f"(index {by_name}) or the class of index {by_index} (named "
                f"{_name_of(names, by_index)!r}); name the class in reviewed_class too."
            )
        return by_class
    label = by_name if by_name is not None else by_index
    if label is None:
        raise ValueError(
            f"{source}: reviewed_label {text!r} is not a class: give an integer "
            f"in [0, {num_classes})" + (" or a class name." if names else ".")
        )
    if names and class_text and by_class != label:
        raise ValueError(
            f"{source}: reviewed_label {text!r} is the class {_name_of(names, label)!r} but "
            f"reviewed_class is {class_text!r}; make them agree (or empty reviewed_class)."
        )
    return label


def _shown(label):
    return "removed" if label == REMOVED else label


def _name_of(names, label):
    return next(name for name, k in names.items() if k == label)
