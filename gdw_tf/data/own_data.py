"""Your own data: a folder tree of images, a CSV, a list or an `.npz`, read into a `Dataset`.

`load_own_data(train_data, trusted_data=..., test_data=..., options=OwnDataOptions(...))`
reads it from Python; `python -m gdw_tf.train --train_data=PATH` (and `--trusted_data`,
`--test_data`, and the flags named as `OwnDataOptions`' fields) reads it for a run, in place of
`--dataset`'s benchmark protocol. Each PATH is one of:

- a directory with one sub-folder per class holding its images (`.bmp`, `.gif`, `.jpeg`,
  `.jpg`, `.png`), the convention of `keras.utils.image_dataset_from_directory`; the class
  names are the sub-folders' names, other files are skipped as Keras skips them;
- a `.csv` file with a header row, a label column (`label_column`) and either a column of
  image paths (`image_column`, relative to `image_root` or else the CSV's folder) or
  numeric feature columns (every other column); optionally a column marking trusted rows
  (`trusted_column`);
- a `.txt` list file, one `relative/path.jpg label` per line (Clothing1M's and WebVision's
  form), paths relative to `image_root` or else to the file's folder;
- a `.npz` file with arrays `x` (uint8 images `[N, H, W]` or `[N, H, W, C]`, or numeric
  features `[N, D]`) and `y` (labels `[N]`, integers or strings).

Image files (folders, CSVs of paths, lists) are streamed: the dataset holds their paths
(`gdw_tf.data.image_files.ImageFiles`), and the input pipeline decodes, resizes and augments
them in a parallel `tf.data` map, so the images are never all in memory. Before
training, one parallel pass decodes every file once (cached in the run directory for a resumed
run): an unreadable file is skipped and listed in `skipped_files.txt`, with one warning line.
What operating systems leave beside images (`__MACOSX/`, `._*`, `.DS_Store`) is ignored. An
`.npz`'s images are arrays in memory. An empty folder, an unknown label in the trusted or test
set, a trusted set missing a class or equal to the training set, and images of different sizes
without `image_size` are one-line `ValueError`s before any training. Images become one
shape: grayscale if every image is (gray or gray+alpha), RGB otherwise (alpha dropped); resized
bilinearly to `image_size` squares if that is set, otherwise all images must share one size.

The trusted (meta) set is `trusted_data` (a second folder or file), or the rows of
`trusted_column`; a run with `--trusted_data=auto` reads none and chooses it from the noisy
training data (`gdw_tf.runs.auto_meta`). The trusted examples are appended to the training
arrays (`x_train`, with `trusted` marking them), so a split (`own_split`) indexes one array as
on the benchmarks. The labels of own data are the given ones; their truth is unknown, so the
split records no corruption and the results no realised noise or detection AUROC
(`truth_known=False`).
"""

import csv
import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from gdw_tf.data import datasets
from gdw_tf.data import ids as ids_lib
from gdw_tf.data import image_files
from gdw_tf.data import split as split_lib
from gdw_tf.data.worker_share import WorkerShare

IMAGE_EXTENSIONS = image_files.IMAGE_EXTENSIONS
read_image = image_files.read_image
# The run directory's record of the image scan (`image_files.scan`) and of the files skipped.
SCAN_FILE = "image_scan.npz"
SKIPPED_FILE = "skipped_files.txt"
# A set with more unreadable files than this share is refused rather than trained without them.
MAX_UNREADABLE_SHARE = 0.5
_TRUE = ("1", "true", "yes", "y", "t")
_FALSE = ("0", "false", "no", "n", "f", "")


class _Source:
    """One file or folder as read: images or features, raw labels, ids, trusted marks."""

    def __init__(self, path, x, labels, ids, *, trusted=None, feature_names=None, files=None):
        self.path = path
        # A list of uint8 [H, W, C] arrays (an .npz's images), float32 [N, D] (features), or
        # None with `files`, the image files' paths (decoded when read, `image_files`).
        self.x = x
        self.files = files
        self.shapes = None  # Image files: their native (channels, height, width), once scanned.
        self.labels = labels  # list of str
        self.ids = ids  # list of str
        self.trusted = trusted  # bool array, or None
        self.feature_names = feature_names  # a CSV's feature columns, or None

    @property
    def is_images(self):
        return self.files is not None or isinstance(self.x, list)

    def keep(self, mask):
        """The source with only the rows of the bool `mask`."""
        pick = np.flatnonzero(mask)
        return _Source(
            self.path,
            None if self.x is None else [self.x[i] for i in pick],
            [self.labels[i] for i in pick],
            [self.ids[i] for i in pick],
            trusted=None if self.trusted is None else self.trusted[pick],
            feature_names=self.feature_names,
            files=None if self.files is None else [self.files[i] for i in pick],
        )


@dataclasses.dataclass(frozen=True)
class OwnDataOptions:
    """How own data's files are read; each field is the flag of the same name of
    `python -m gdw_tf.train` (whose defaults are these).

    Attributes:
      label_column: a CSV's label column.
      image_column: a CSV's column of image paths; a CSV without it holds numeric features in
        every column but the label and trusted ones.
      trusted_column: a CSV's column marking the trusted rows (1/0, true/false, yes/no), or None.
      image_root: the folder that a list file's or a CSV's image paths are relative to; None:
        the list's or CSV's own folder.
      image_size: resize every image to this square (bilinear); 0: keep the size, which all
        images must then share.
    """

    label_column: str = "label"
    image_column: str = "image"
    trusted_column: str | None = None
    image_root: str | None = None
    image_size: int = 0


def load_own_data(
    train_data: str,
    *,
    trusted_data: str | None = None,
    test_data: str | None = None,
    options: OwnDataOptions = OwnDataOptions(),
    work_dir: str | None = None,
    share: WorkerShare | None = None,
) -> datasets.Dataset:
    """The training, trusted and test sets of own data (see the module docstring) as one
    `Dataset`.

    Image files (folders, CSVs of paths, `.txt` lists) are not decoded here: `x_train` and
    `x_test` are `image_files.ImageFiles`, decoded by the input pipeline. Every file is decoded
    once first, in one parallel pass (`image_files.scan`): an unreadable file is skipped and
    named in `work_dir/skipped_files.txt`, with one warning line (a set with more than half
    of its files unreadable is refused instead).

    Args:
      train_data: a folder of class sub-folders, a `.csv`, a `.txt` list or an `.npz`.
      trusted_data: a second such path holding the trusted set, or None (the rows of
        `options.trusted_column`, if any, are the trusted set).
      test_data: a test set with correct labels, or None.
      options: how the files are read (`OwnDataOptions`).
      work_dir: a directory, or None: where the scan is cached (a resumed run reads it
        instead of scanning again) and the skipped files are listed.
      share: this worker's share of the scan, in a cluster (`image_files.scan`).

    Returns:
        An `Dataset` whose `x_train` holds the training examples followed by the trusted
        ones (`trusted` marks them), `y_train` their given labels (ints in `[0, C)`, classes in
        `class_names` order), `train_ids` each row's file path or `<csv>:<line>` or `.npz`
        index (`ids.Ids`, a sequence of `str` over one bytes array), and `x_test`/`y_test`
        (empty without `test_data`). A trusted set, if any, has every class and leaves some
        examples to train on.

    Raises:
        ValueError: with one line naming the file and the problem, for any bad input.
    """
    train = read_source(train_data, options)
    if options.trusted_column and train.trusted is None:
        raise ValueError(
            f"{train_data}: --trusted_column={options.trusted_column} needs a CSV with that column."
        )
    sources = {"train": train}
    if trusted_data:
        sources["trusted"] = read_source(trusted_data, options)
        _check_not_the_training_set(train, sources["trusted"])
    if test_data:
        sources["test"] = read_source(test_data, options)
    kind = {True: "images", False: "features"}
    for source in sources.values():
        if source.is_images != train.is_images:
            raise ValueError(
                f"{source.path} holds {kind[source.is_images]} but {train.path} "
                f"{kind[train.is_images]}; give every set in one form."
            )
    if train.is_images:
        sources, arrays = _images(sources, options.image_size, work_dir, share)
        train = sources["train"]
    else:
        arrays = _unify_features(sources)

    class_names = class_order(train.labels)
    if len(class_names) < 2:
        raise ValueError(
            f"{train_data}: needs at least 2 classes; found "
            f"{len(class_names)} ({', '.join(class_names) or 'none'})."
        )
    labels = {
        name: to_indices(source.labels, class_names, source.path)
        for name, source in sources.items()
    }

    trusted = train.trusted if train.trusted is not None else np.zeros(len(train.ids), bool)
    x_train, y_train = arrays["train"], labels["train"]
    if "trusted" in sources:
        x_train = _concatenate(x_train, arrays["trusted"])
        y_train = np.concatenate([y_train, labels["trusted"]])
        trusted = np.concatenate([trusted, np.ones(len(labels["trusted"]), bool)])
    ids = _train_ids([sources[name] for name in ("train", "trusted") if name in sources], x_train)
    if trusted.any():
        missing = sorted(set(range(len(class_names))) - set(y_train[trusted].tolist()))
        if missing:
            name = trusted_set_name(train_data, trusted_data, options.trusted_column)
            raise ValueError(
                f"the trusted set ({name}) has no example of class "
                f"{', '.join(class_names[k] for k in missing)}; every class needs at least one."
            )
        if trusted.all():
            raise ValueError(
                f"every example of {train_data} is trusted: nothing is left to train on."
            )
    if "test" in sources:
        x_test, y_test = arrays["test"], labels["test"]
    else:
        x_test, y_test = x_train[:0], y_train[:0]
    return datasets.Dataset(
        x_train,
        y_train,
        x_test,
        y_test,
        len(class_names),
        train_ids=ids,
        class_names=tuple(class_names),
        trusted=trusted,
    )


def _train_ids(sources, x_train):
    """The ids of `x_train`'s rows, those of `sources` in turn, as `ids.Ids`: where every id is
    its image file's path (folders), `x_train`'s own key array, shared; else the ids' bytes."""
    if image_files.is_streamed(x_train) and all(s.ids == s.files for s in sources):
        return ids_lib.Ids(x_train.keys)
    return ids_lib.Ids(np.concatenate([ids_lib.encode(source.ids) for source in sources]))


def trusted_set_name(train_data, trusted_data, trusted_column):
    """How messages name the trusted set: its path, or the marked rows of `train_data`."""
    if trusted_data:
        return trusted_data
    return f"the rows of {train_data} marked in {trusted_column!r}"


def _check_not_the_training_set(train, trusted):
    """Refuses a trusted set that is the training set itself (the same files or rows): its
    labels are the noisy ones the meta set is meant to judge."""
    same_path = os.path.realpath(train.path) == os.path.realpath(trusted.path)
    same_files = (
        train.files is not None
        and trusted.files is not None
        and {os.path.realpath(f) for f in trusted.files}
        == {os.path.realpath(f) for f in train.files}
    )
    if same_path or same_files:
        raise ValueError(
            f"--trusted_data={trusted.path} is the training set itself (the same "
            f"{'files' if same_files and not same_path else 'data'}): its labels are the noisy "
            "ones GDW judges. Give a separately checked set, or --trusted_data=auto to choose "
            "one from the noisy data."
        )


def _concatenate(a, b):
    if image_files.is_streamed(a):
        return a.concatenate(b)
    return np.concatenate([a, b])


def own_split(labels, trusted, num_classes, seed):
    """The split of own data: the trusted rows are the meta set, the others the training set.

    The given labels are kept as they are; their truth is unknown (`truth_known=False`): the
    true labels are recorded as -1, and the noise rate and transition matrices as NaN.
    """
    labels = np.asarray(labels, np.int64)
    trusted = np.asarray(trusted, bool)
    train_indices = np.flatnonzero(~trusted)
    nan_matrix = np.full((num_classes, num_classes), np.nan)
    return split_lib.Split(
        num_classes=num_classes,
        noise="none",
        ratio=0.0,
        imbalance=1.0,
        seed=int(seed),
        meta_indices=np.flatnonzero(trusted),
        meta_labels=labels[trusted],
        train_indices=train_indices,
        train_true_labels=np.full(len(train_indices), -1, np.int64),
        train_noisy_labels=labels[train_indices],
        train_corrupted=np.zeros(len(train_indices), bool),
        transition_matrix=nan_matrix,
        empirical_transition_matrix=nan_matrix.copy(),
        realised_noise_rate=float("nan"),
        truth_known=False,
        meta_source="trusted",
    )


# --------------------------------------------------------------------------------------------
# Reading one source


def read_source(path, options=OwnDataOptions()):
    """Reads a folder tree, a `.csv` or an `.npz` (see the module docstring) into a `_Source`.

    Raises:
        ValueError: for a missing path, an unknown kind of file, or bad content.
    """
    if os.path.isdir(path):
        return read_folder(path)
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such file or folder.")
    extension = os.path.splitext(path)[1].lower()
    if extension == ".csv":
        return read_csv(
            path,
            options.label_column,
            options.image_column,
            options.trusted_column,
            image_root=options.image_root,
        )
    if extension == ".npz":
        return read_npz(path)
    if extension == ".txt":
        return read_list(path, image_root=options.image_root)
    raise ValueError(
        f"{path}: expected a folder of class sub-folders, a .csv, a .txt list or an .npz file."
    )


def read_list(path, *, image_root=None):
    """Image files of a list file, one `relative/path.jpg label` per line (the form in which
    Clothing1M and WebVision publish their labels).

    Paths are relative to `image_root`, or else to the list file's folder; the label is the
    line's last word, so a path may hold spaces. Empty lines and `#` comments are skipped. Ids
    are the paths as written.
    """
    try:
        with open(path, encoding="utf-8-sig") as file:
            lines = file.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: cannot read it as a text list ({err}).") from None
    folder = image_root or os.path.dirname(os.path.abspath(path))
    ids, labels = [], []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.rsplit(None, 1)
        if len(parts) != 2:
            raise ValueError(
                f"{path}:{number}: {line!r} is not 'relative/path.jpg label' (a path, a space, "
                "a label)."
            )
        ids.append(parts[0])
        labels.append(parts[1])
    if not ids:
        raise ValueError(f"{path}: no 'relative/path.jpg label' lines.")
    files = [os.path.join(folder, name) for name in ids]
    return _Source(path, None, labels, ids, files=files)


def read_folder(path):
    """Image files of a folder tree, one sub-folder per class (sub-folders in sorted order).

    What operating systems leave beside the images (`image_files.is_os_debris`: `__MACOSX/`,
    AppleDouble `._*` files, `.DS_Store`, hidden names) is skipped, as are non-image files.
    """
    classes = sorted(
        entry.name
        for entry in os.scandir(path)
        if entry.is_dir() and not image_files.is_os_debris(entry.name)
    )
    if not classes:
        raise ValueError(
            f"{path}: no class sub-folders; put each class's images in a folder "
            "named after the class."
        )
    files, labels, others = [], [], []
    for name in classes:
        found, other = [], []
        for root, folders, names in os.walk(os.path.join(path, name)):
            folders[:] = [f for f in folders if not image_files.is_os_debris(f)]
            names = [os.path.join(root, n) for n in names if not image_files.is_os_debris(n)]
            found += [file for file in names if file.lower().endswith(IMAGE_EXTENSIONS)]
            other += [file for file in names if not file.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            unread = image_files.unread_images(other)
            raise ValueError(
                f"{os.path.join(path, name)}: empty class folder (no "
                f"{'/'.join(IMAGE_EXTENSIONS)} images"
                + (
                    f"; found {unread}, a format that is not read: convert to PNG or JPEG)."
                    if unread
                    else ")."
                )
            )
        files += sorted(found)
        labels += [name] * len(found)
        others += other
    unread = image_files.unread_images(others)
    if unread:
        logging.warning("Left out image files in a format that is not read: %s.", unread)
    return _Source(path, None, labels, list(files), files=files)


def read_csv(path, label_column, image_column, trusted_column, image_root=None):
    """Rows of a CSV: image paths or numeric features, a label, optionally a trusted mark.

    Ids are `<path>:<line>` (the header is line 1), or for image rows the image's path.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = next(reader, None)
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ValueError(f"{path}: cannot read it as CSV ({err}).") from None
    if not header:
        raise ValueError(f"{path}: empty file; expected a header row and data rows.")
    header = [name.strip() for name in header]
    if label_column not in header:
        raise ValueError(
            f"{path}: no label column {label_column!r} (columns: "
            f"{', '.join(header)}); name it with --label_column."
        )
    rows = [(line, row) for line, row in enumerate(rows, start=2) if any(v.strip() for v in row)]
    if not rows:
        raise ValueError(f"{path}: no data rows.")
    for line, row in rows:
        if len(row) != len(header):
            raise ValueError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}.")
    column = {name: i for i, name in enumerate(header)}
    labels = [row[column[label_column]].strip() for _, row in rows]
    for (line, _), label in zip(rows, labels):
        if not label:
            raise ValueError(f"{path}:{line}: empty label in column {label_column!r}.")
    trusted = None
    if trusted_column and trusted_column in header:
        trusted = np.array(
            [
                _truth_value(row[column[trusted_column]], path, line, trusted_column)
                for line, row in rows
            ]
        )
    if image_column and image_column in header:
        folder = image_root or os.path.dirname(os.path.abspath(path))
        ids = [row[column[image_column]].strip() for _, row in rows]
        files = [os.path.join(folder, name) for name in ids]
        return _Source(path, None, labels, ids, trusted=trusted, files=files)
    feature_names = [name for name in header if name not in (label_column, trusted_column)]
    if not feature_names:
        raise ValueError(f"{path}: no feature columns and no image column {image_column!r}.")
    features = np.empty((len(rows), len(feature_names)), np.float32)
    for r, (line, row) in enumerate(rows):
        for f, name in enumerate(feature_names):
            value = row[column[name]].strip()
            try:
                features[r, f] = float(value)
            except ValueError:
                raise ValueError(
                    f"{path}:{line}: column {name!r} holds {value!r}, not a number."
                ) from None
            if not np.isfinite(features[r, f]):
                raise ValueError(
                    f"{path}:{line}: column {name!r} holds {value!r}, not a finite number."
                )
    return _Source(
        path,
        features,
        labels,
        [f"{path}:{line}" for line, _ in rows],
        trusted=trusted,
        feature_names=feature_names,
    )


def read_npz(path):
    """Arrays `x` (uint8 images, or numeric features `[N, D]`) and `y` (labels) of an `.npz`."""
    try:
        with np.load(path, allow_pickle=False) as stored:
            if not {"x", "y"} <= set(stored.files):
                raise ValueError(
                    f"{path}: needs arrays 'x' and 'y'; it has {', '.join(stored.files) or 'none'}."
                )
            x, y = stored["x"], stored["y"]
    except ValueError:
        raise
    except Exception as err:  # zipfile, pickle and OS errors all mean "not a readable npz".
        raise ValueError(f"{path}: not a readable .npz file ({err}).") from None
    if y.ndim != 1 or len(y) != len(x) or not len(y):
        raise ValueError(
            f"{path}: 'y' must hold one label per row of 'x' ({len(x)}); its shape is {y.shape}."
        )
    if y.dtype.kind not in "iuU":
        raise ValueError(f"{path}: 'y' must hold integers or strings; its dtype is {y.dtype}.")
    ids = [str(i) for i in range(len(y))]
    labels = [str(v) for v in y.tolist()]
    if x.dtype == np.uint8 and x.ndim in (3, 4):
        images = x[..., np.newaxis] if x.ndim == 3 else x
        if images.shape[-1] not in (1, 2, 3, 4):
            raise ValueError(f"{path}: images of {images.shape[-1]} channels; expected 1 to 4.")
        return _Source(path, list(images), labels, ids)
    if x.ndim == 2 and x.dtype.kind in "iuf":
        features = x.astype(np.float32)
        if not np.isfinite(features).all():
            raise ValueError(f"{path}: 'x' holds NaN or infinite values.")
        return _Source(path, features, labels, ids)
    raise ValueError(
        f"{path}: 'x' must be uint8 images [N, H, W(, C)] or numeric features "
        f"[N, D]; it is {x.dtype} {x.shape}."
    )


# --------------------------------------------------------------------------------------------
# Labels and shapes


def class_order(labels):
    """The classes of the training labels: numerically sorted if all are integers, else sorted."""
    names = set(labels)
    try:
        return sorted(names, key=int)
    except ValueError:
        return sorted(names)


def to_indices(labels, class_names, path):
    """Labels as int64 indices into `class_names`; an unknown label is an error naming it."""
    index = {name: k for k, name in enumerate(class_names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(
            f"{path}: label {unknown[0]!r} is not a class of the training data "
            f"({', '.join(class_names)})"
            + (f" ({len(unknown)} unknown labels)." if len(unknown) > 1 else ".")
        )
    return np.array([index[label] for label in labels], np.int64)


def _images(sources, image_size, work_dir, share):
    """The image sources without their unreadable files, and one uint8 image "array" per source:
    `ImageFiles` for image files, arrays for an `.npz`'s images (all arrays if the two mix).

    Images become one shape: grayscale if every image is (gray or gray+alpha), RGB otherwise;
    `image_size` squares, or the one size all images must share.
    """
    sources = _drop_unreadable(sources, work_dir, share)
    shapes = {}  # (height, width) -> first image of that size
    all_channels = set()
    for source in sources.values():
        if source.files is not None:
            for name, (c, h, w) in zip(source.ids, source.shapes):
                all_channels.add(c)
                shapes.setdefault((h, w), name)
        else:
            for name, image in zip(source.ids, source.x):
                all_channels.add(image.shape[-1])
                shapes.setdefault(image.shape[:2], name)
    channels = 1 if all_channels <= {1, 2} else 3
    if not image_size and len(shapes) > 1:
        (size_a, file_a), (size_b, file_b) = list(shapes.items())[:2]
        raise ValueError(
            f"images of different sizes ({file_a}: {size_a[0]}x{size_a[1]}, "
            f"{file_b}: {size_b[0]}x{size_b[1]}); pass --image_size=N to "
            "resize all to NxN."
        )
    height, width = (image_size, image_size) if image_size else next(iter(shapes))
    streamed = all(source.files is not None for source in sources.values())
    arrays = {}
    for name, source in sources.items():
        if source.files is not None:
            files = image_files.ImageFiles(
                source.files,
                height=height,
                width=width,
                channels=channels,
                skipped_list=work_dir and os.path.join(work_dir, SKIPPED_FILE),
            )
            arrays[name] = files if streamed else files.load()
        else:
            arrays[name] = _convert_arrays(source.x, channels, image_size)
    return sources, arrays


def _drop_unreadable(sources, work_dir, share):
    """Scans every image file of `sources` in one parallel pass (`image_files.scan`), drops the
    unreadable ones (listed in `work_dir/skipped_files.txt`, one warning line) and gives each
    file source its files' native `(channels, height, width)` as `shapes`.

    Raises:
      ValueError: if more than `MAX_UNREADABLE_SHARE` of a set's files are unreadable (wrong
        paths, most likely), naming the first.
    """
    file_sources = [name for name, source in sources.items() if source.files is not None]
    if not file_sources:
        return sources
    paths = [path for name in file_sources for path in sources[name].files]
    found = image_files.scan(
        paths, cache=work_dir and os.path.join(work_dir, SCAN_FILE), share=share
    )
    sources = dict(sources)
    skipped, start = [], 0
    for name in file_sources:
        source = sources[name]
        end = start + len(source.files)
        ok = found.ok[start:end]
        problems = [found.problems[i] for i in range(start, end) if not found.ok[i]]
        if len(problems) > MAX_UNREADABLE_SHARE * len(ok):
            raise ValueError(
                f"{source.path}: {len(problems)} of its {len(ok)} image files are missing or "
                f"unreadable, e.g. {problems[0]} Check the paths (--image_root)."
            )
        kept = source.keep(ok)
        kept.shapes = np.stack(
            [found.channels[start:end], found.heights[start:end], found.widths[start:end]], 1
        )[ok]
        sources[name] = kept
        skipped += problems
        start = end
    if skipped:
        where = ""
        if work_dir:
            image_files.list_skipped(os.path.join(work_dir, SKIPPED_FILE), skipped)
            where = f"; all listed in {os.path.join(work_dir, SKIPPED_FILE)}"
        logging.warning(
            "Skipped %d unreadable image file(s) of %d (e.g. %s)%s",
            len(skipped),
            len(paths),
            skipped[0],
            where,
        )
    return sources


def _convert_arrays(images, channels, image_size):
    """A list of uint8 `[H, W, C]` images as one array of `channels` channels (and
    `image_size` squares, if set)."""
    converted = []
    for image in images:
        if channels == 1:
            image = image[..., :1]
        elif image.shape[-1] < 3:
            image = np.repeat(image[..., :1], 3, axis=-1)
        else:
            image = image[..., :3]
        if image_size and image.shape[:2] != (image_size, image_size):
            resized = tf.image.resize(image, (image_size, image_size), method="bilinear")
            image = np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)
        converted.append(image)
    return np.stack(converted)


def _unify_features(sources):
    """One float32 `[N, D]` array per source; CSV columns are matched by name."""
    train = sources["train"]
    arrays = {"train": train.x}
    for name, source in sources.items():
        if name == "train":
            continue
        x = source.x
        train_names, names = train.feature_names, source.feature_names
        if train_names is not None and names is not None:
            missing = [n for n in train_names if n not in names]
            if missing:
                raise ValueError(
                    f"{source.path}: lacks the feature column {missing[0]!r} of {train.path}."
                )
            x = x[:, [names.index(n) for n in train_names]]
        if x.shape[1] != train.x.shape[1]:
            raise ValueError(
                f"{source.path}: {x.shape[1]} features per row, "
                f"{train.path} has {train.x.shape[1]}."
            )
        arrays[name] = x
    return arrays


def _truth_value(value, path, line, column):
    """A trusted-column cell as a bool (1/0, true/false, yes/no; empty is false)."""
    value = value.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(
        f"{path}:{line}: column {column!r} holds {value!r}; use 1/0, true/false or "
        "yes/no (empty = not trusted)."
    )
