"""Image files streamed from disk: a lazy `[N, H, W, C]` uint8 array that `tf.data` decodes.

Own images (a folder tree, a CSV of image paths, a `.txt` list file) are not decoded into
memory. `ImageFiles` holds their paths and the shape every image is decoded to (channels,
height and width); `gdw_tf.data.input_pipeline` reads, decodes, converts and resizes them in a
parallel `tf.data` map, so the images themselves are never all in memory (what a run's memory
does grow by per image, measured: docs/PERFORMANCE.md).

`ImageFiles` acts as a read-only uint8 array where the code around it needs one: `shape`,
`dtype`, `ndim`, `len`; indexing with a slice or an index array gives another `ImageFiles`
(nothing is decoded), with an integer the decoded image, and `np.asarray(files)` decodes all
(for small sets: the meta set, tests). Its base, `StreamedImages`, is that interface for any
kind of key the pipeline reads an image from; `gdw_tf.data.tfds_records.TfdsRecords` reads
the records of a prepared TFDS dataset through it. Each file is decoded as `read_image` decodes it:
`tf.io.decode_image`'s first frame, grayscale kept as one channel only if every image is gray,
alpha dropped, resized bilinearly (rounded back to uint8) when its size is not the target.

`scan` finds the unreadable files of a list before training, in one parallel pass that decodes
every file (`tf.data`, all cores; in a cluster, each worker its share), and records each
image's channels and size; its result can be cached in the run directory so a resumed run does
not pay for it again. An image that
becomes unreadable later (deleted, truncated, on a share that hiccups) is left out by
`StreamedImages.decode_batch`, which the input pipeline decodes with, and listed
(`list_skipped`, the run directory's `skipped_files.txt`). Files in an image format that is not
read (`.tif`, `.heic`, ...: `UNREAD_IMAGE_EXTENSIONS`) are named as such (`unread_images`).
"""

import dataclasses
import logging
import os
import re
import threading

import numpy as np
import tensorflow as tf

from gdw_tf.data import ids
from gdw_tf.data.worker_share import WorkerShare

# The image formats `keras.utils.image_dataset_from_directory` reads.
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
# Image formats that are not read (`tf.io.decode_image` reads none but WebP, which Keras' folder
# reader leaves out): found in a folder or a list, they are counted and named.
UNREAD_IMAGE_EXTENSIONS = (".avif", ".heic", ".heif", ".jp2", ".jxl", ".tif", ".tiff", ".webp")
# Files and folders that operating systems leave beside the images: macOS' resource forks
# (`__MACOSX/`, AppleDouble `._name`), its folder settings, Windows' thumbnail caches.
OS_DEBRIS = ("__MACOSX", ".DS_Store", "Thumbs.db", "desktop.ini")

# Files decoded by one pipeline of `scan` (it makes one after another).
SCAN_BLOCK = 16384
# Paths joined at a time by `RowTable`, and paths per string it holds.
ROW_TABLE_BLOCK = 16384
ROW_TABLE_PIECE = 64


def is_os_debris(name: str) -> bool:
    """Whether a file or folder name is left by an operating system, not data: `__MACOSX`,
    AppleDouble `._*` files, `.DS_Store`, `Thumbs.db`, `desktop.ini`, hidden (`.`) names."""
    return name in OS_DEBRIS or name.startswith(".")


def unread_images(paths) -> str:
    """The files of `paths` in a format that is not read (`UNREAD_IMAGE_EXTENSIONS`), counted
    per extension with one named: e.g. "12 .tif files (a/1.tif)"; "" if there are none."""
    found = {}
    for path in paths:
        extension = os.path.splitext(path)[1].lower()
        if extension in UNREAD_IMAGE_EXTENSIONS:
            found.setdefault(extension, []).append(path)
    return ", ".join(
        f"{len(files)} {extension} file{'s' * (len(files) > 1)} ({min(files)})"
        for extension, files in sorted(found.items())
    )


def read_image(path: str) -> np.ndarray:
    """Decodes one image file to a uint8 `[H, W, C]` array (the first frame of a GIF).

    Raises:
        ValueError: naming the file, if it is missing or not a readable image.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: no such image file.")
    try:
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
    except (tf.errors.OpError, ValueError) as err:
        if path.lower().endswith(UNREAD_IMAGE_EXTENSIONS):
            raise ValueError(
                f"{path}: a {os.path.splitext(path)[1]} image, a format that is not read; "
                "convert it to PNG or JPEG."
            ) from None
        message = str(getattr(err, "message", err)).strip().splitlines()[0]
        message = re.sub(r"\{\{.*?\}\}|\[Op:.*$", "", message).strip().rstrip(".")  # TF's op names
        raise ValueError(f"{path}: not a readable image ({message}).") from None
    return image.numpy()


@dataclasses.dataclass(frozen=True)
class Scan:
    """What `scan` found: per file, whether it decodes, and its native channels and size.

    Attributes:
      paths: the files scanned, in order.
      ok: bool `[N]`, the file decodes.
      channels, heights, widths: int `[N]` of the decoded images (0 where not `ok`).
      problems: `{position: one-line reason}` of the files that are not `ok`.
    """

    paths: tuple
    ok: np.ndarray
    channels: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    problems: dict

    def save(self, path: str) -> None:
        """Writes the scan to an `.npz` file (atomically)."""
        positions = np.array(sorted(self.problems), np.int64)
        temporary = path + ".tmp.npz"
        np.savez(
            temporary,
            paths=np.array(self.paths, dtype=str),
            ok=self.ok,
            channels=self.channels,
            heights=self.heights,
            widths=self.widths,
            problem_positions=positions,
            problem_texts=np.array([self.problems[int(i)] for i in positions], dtype=str),
        )
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str) -> "Scan":
        """Reads a scan written by `save`."""
        with np.load(path, allow_pickle=False) as stored:
            return cls(
                paths=tuple(stored["paths"].tolist()),
                ok=stored["ok"],
                channels=stored["channels"],
                heights=stored["heights"],
                widths=stored["widths"],
                problems=dict(
                    zip(stored["problem_positions"].tolist(), stored["problem_texts"].tolist())
                ),
            )


def scan(paths, *, cache: str | None = None, share: WorkerShare | None = None) -> Scan:
    """Decodes every file once, in parallel, to find the unreadable ones and each image's shape.

    Args:
      paths: image file paths.
      cache: an `.npz` file: if it holds the scan of exactly these paths it is returned as
        it is; otherwise the scan is made and written there.
      share: this worker's share, in a cluster: the worker decodes only its block of the
        files (or takes it from its cache), and the workers' blocks are joined, so that every
        worker gets the whole scan. The few unreadable files are read again by each worker,
        for the reason it names.

    Returns:
      A `Scan`. A missing or undecodable file is not `ok`, with its reason in `problems`.
    """
    paths = tuple(str(p) for p in paths)
    cached = None
    if cache and os.path.exists(cache):
        try:
            cached = Scan.load(cache)
        except (OSError, ValueError, KeyError):
            cached = None
        if cached is not None and cached.paths != paths:
            cached = None
    if cached is not None and share is None:
        return cached
    n = len(paths)
    rows = share.rows(n) if share is not None else slice(0, n)
    # Per file: readable (0 or 1), then its channels, height and width; zeros outside `rows`.
    found = np.zeros((n, 4), np.int64)
    if cached is not None:
        found[rows] = _columns(cached)[rows]
    elif rows.stop > rows.start:

        def probe(position, path):
            image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
            return position, tf.shape(image, out_type=tf.int64)

        # In blocks: a pipeline over every path leaves tens of MB resident per 100,000 files
        # (its string tensors' many small allocations), one block's pipeline a fixed amount.
        for start in range(rows.start, rows.stop, SCAN_BLOCK):
            stop = min(start + SCAN_BLOCK, rows.stop)
            positions = np.arange(start, stop, dtype=np.int64)
            dataset = tf.data.Dataset.from_tensor_slices((positions, list(paths[start:stop])))
            dataset = dataset.map(probe, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
            dataset = dataset.ignore_errors().batch(1024)
            for decoded, shapes in dataset.as_numpy_iterator():
                found[decoded, 0] = 1
                found[decoded, 1:] = shapes[:, [2, 0, 1]]
    if share is not None:
        found = share.sum(found)
    if cached is not None and np.array_equal(found, _columns(cached)):
        return cached
    ok = found[:, 0] == 1
    problems = {}
    for position in np.flatnonzero(~ok):
        try:  # Undecodable in the pass: the reason, in the words of the eager decoder.
            read_image(paths[position])
            problems[int(position)] = f"{paths[position]}: not a readable image."
        except ValueError as err:
            problems[int(position)] = str(err)
    result = Scan(paths, ok, found[:, 1], found[:, 2], found[:, 3], problems)
    if cache:
        result.save(cache)
    return result


def _columns(scan: Scan) -> np.ndarray:
    """int64 `[N, 4]`: per file of `scan`, whether it decodes, its channels, height and width."""
    return np.stack([scan.ok, scan.channels, scan.heights, scan.widths], axis=1).astype(np.int64)


class RowTable:
    """The rows of an array (keys, images, labels) as tensors made once, looked up by position
    inside `tf.data`.

    A `tf.string` tensor of N paths holds every path longer than 22 bytes in a heap allocation
    of its own (about 72 bytes for a 38-byte path), which the heap keeps in pieces after the
    tensor is gone. So paths (a NumPy `S` array) are joined into strings of `ROW_TABLE_PIECE`
    paths each, with the offset where each path begins (8 bytes a path), and a lookup copies
    out its piece and slices the path from it. Pieces, not one string: a function that captures
    a tensor of at most 128 elements holds copies of its value (TensorFlow inlines it as a
    constant: a map over 300,000 paths as one 10 MB string took 64 MB more, measured), so only
    a small table is so held. Other arrays (images, labels, a record's place) are one dense
    tensor.

    Args:
      rows: a NumPy array.
    """

    def __init__(self, rows: np.ndarray):
        self.sliced = rows.dtype.kind == "S"
        if not self.sliced:
            self.table = tf.constant(rows)
            return
        lengths = np.char.str_len(rows).astype(np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        # The paths' bytes joined a block at a time (a mask of the whole array would be as
        # large as it), then cut into pieces.
        joined = np.empty(offsets[-1], np.uint8)
        width = rows.dtype.itemsize
        for start in range(0, len(rows), ROW_TABLE_BLOCK):
            block = slice(start, start + ROW_TABLE_BLOCK)
            grid = np.ascontiguousarray(rows[block]).view(np.uint8).reshape(-1, width)
            joined[offsets[start] : offsets[start + len(grid)]] = grid[
                np.arange(width) < lengths[block, None]
            ]
        cuts = offsets[:-1:ROW_TABLE_PIECE].tolist() + [offsets[-1]]
        self.pieces = tf.constant(
            [joined[a:b].tobytes() for a, b in zip(cuts, cuts[1:])], tf.string
        )
        self.offsets = tf.constant(offsets)

    def __call__(self, positions) -> tf.Tensor:
        """The rows at `positions` (an int64 tensor: `positions.shape + row shape`)."""
        if not self.sliced:
            return tf.gather(self.table, positions)
        piece = positions // ROW_TABLE_PIECE
        start = tf.gather(self.offsets, positions)
        return tf.strings.substr(
            tf.gather(self.pieces, piece),
            start - tf.gather(self.offsets, piece * ROW_TABLE_PIECE),
            tf.gather(self.offsets, positions + 1) - start,
        )


class StreamedImages:
    """Images read and decoded by `tf.data`, as a lazy uint8 array `[N, height, width, channels]`.

    The base of `ImageFiles` (files on disk) and `gdw_tf.data.tfds_records.TfdsRecords` (the
    records of a prepared TFDS split). It holds one key per image (`keys`, a NumPy array whose
    rows `tf.data` slices: a path, a record's place) and the shape every image is decoded to; a
    subclass says how a key becomes an image (`read`), and `decode` converts its channels and
    size. The input pipeline shuffles the keys and decodes only the images it yields.

    Args:
      keys: one row per image, in order.
      height, width: the size every image is decoded to (images of another size are resized
        bilinearly, rounded back to uint8).
      channels: 1 (each image's first channel; for sets of gray images) or 3 (gray repeated,
        alpha dropped).
    """

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(
        self, keys, *, height: int, width: int, channels: int, skipped_list: str | None = None
    ):
        if channels not in (1, 3):
            raise ValueError(f"{type(self).__name__} decodes to 1 or 3 channels; got {channels}.")
        self.keys = keys
        self.height, self.width, self.channels = int(height), int(width), int(channels)
        # Images found unreadable by `decode_batch`, `{key bytes: one-line reason}`, shared by
        # every subset; and the file that lists them (`list_skipped`), if any.
        self.unreadable = {}
        self.skipped_list = skipped_list
        self._unreadable_lock = threading.Lock()

    @property
    def shape(self):
        return (len(self.keys), self.height, self.width, self.channels)

    def __len__(self):
        return len(self.keys)

    def __repr__(self):
        return f"{type(self).__name__}({len(self)} images as {self.shape[1:]})"

    def _like(self, keys):
        """The images of `keys` (rows of `self.keys`), decoded as these are."""
        raise NotImplementedError

    def read(self, key):
        """The uint8 image `[h, w, c]` of one key (a tensor), at its own size and channels."""
        raise NotImplementedError

    def describe(self, key) -> str:
        """One line naming the image of `key` (a NumPy row of `keys`) and why it is unreadable."""
        raise NotImplementedError

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self.decode(tf.constant(self.keys[key])).numpy()
        return self._subset(self.keys[ids.as_slice(key)])  # Consecutive rows: a view.

    def _subset(self, keys):
        """`_like(keys)`, sharing what was found unreadable and where it is listed."""
        like = self._like(keys)
        like.unreadable, like.skipped_list = self.unreadable, self.skipped_list
        like._unreadable_lock = self._unreadable_lock
        return like

    def __array__(self, dtype=None, copy=None):
        array = self.load()
        return array if dtype is None else array.astype(dtype)

    def decode(self, key):
        """The uint8 `[height, width, channels]` image of `key` (a tensor): `read`, then the
        channels converted and the size changed as the module doc says."""
        image = self.read(key)
        if self.channels == 1:
            image = image[..., :1]
        else:
            image = tf.cond(
                tf.shape(image)[-1] < 3,
                lambda: tf.repeat(image[..., :1], 3, axis=-1),
                lambda: image[..., :3],
            )
        size = (self.height, self.width)
        image = tf.cond(
            tf.reduce_all(tf.shape(image)[:2] == size),
            lambda: image,
            lambda: tf.cast(
                tf.clip_by_value(tf.round(tf.image.resize(image, size, "bilinear")), 0, 255),
                tf.uint8,
            ),
        )
        return tf.ensure_shape(image, self.shape[1:])

    def decode_batch(self, keys, *columns, transform=None):
        """Decodes a batch of keys without failing on the images that cannot be read (a file
        deleted, truncated, on a share that is gone): those are left out, and recorded in
        `unreadable` (and appended to `skipped_list`, with a warning line) the first time.

        The images are decoded one after the other (the pipeline decodes several batches at
        once), in a `tf.data` map under `ignore_errors`.

        Args:
          keys: a batch of keys (rows of `keys`), a tensor.
          *columns: tensors with a row per key, passed to `transform`.
          transform: optional `transform(image, *row)`, applied to each decoded image (e.g. a
            random crop); it keeps the image's shape and dtype.

        Returns:
          `(images, ok)`: bool `[n]`, which keys were read, and their uint8 images
          `[ok.sum(), height, width, channels]`, in order.
        """
        n = tf.shape(keys)[0]

        def one(position, key, *row):
            image = self.decode(key)
            return position, (image if transform is None else transform(image, *row))

        decoded = tf.data.Dataset.from_tensor_slices((tf.range(n), keys, *columns))
        none = tf.data.Dataset.from_tensors(
            (tf.zeros([0], tf.int32), tf.zeros([0, *self.shape[1:]], tf.uint8))
        )  # If no image could be read.
        positions, images = (
            (decoded.map(one).ignore_errors().batch(tf.cast(tf.maximum(n, 1), tf.int64)))
            .concatenate(none)
            .take(1)
            .get_single_element()
        )
        ok = tf.scatter_nd(positions[:, None], tf.ones_like(positions, tf.bool), [n])
        tf.cond(
            tf.reduce_all(ok),
            lambda: tf.constant(0, tf.int64),
            lambda: tf.numpy_function(
                self._record_unreadable, [tf.boolean_mask(keys, ~ok)], tf.int64, stateful=True
            ),
        )
        return images, ok

    def _record_unreadable(self, keys):
        """Records the images of `keys` (a NumPy batch) found unreadable; returns how many were
        new. Each new one gets a warning line and a line in `skipped_list`."""
        new = []
        with self._unreadable_lock:
            for key in keys:
                name = np.asarray(key).tobytes()
                if name not in self.unreadable:
                    self.unreadable[name] = self.describe(key)
                    new.append(self.unreadable[name])
            if new and self.skipped_list:
                list_skipped(self.skipped_list, new)
        for line in new:
            logging.warning(
                "Skipping an image that became unreadable during the run: %s%s",
                line,
                f" Listed in {self.skipped_list}." if self.skipped_list else "",
            )
        return np.int64(len(new))

    def readable(self) -> np.ndarray:
        """bool `[N]`: the images not found unreadable so far (`decode_batch`)."""
        if not self.unreadable:
            return np.ones(len(self), bool)
        return np.array([np.asarray(key).tobytes() not in self.unreadable for key in self.keys])

    def dataset(self) -> tf.data.Dataset:
        """The decoded images in order, one per element (a parallel, order-keeping map)."""
        keys = RowTable(self.keys)
        return tf.data.Dataset.range(len(self)).map(
            lambda i: self.decode(keys(i)), num_parallel_calls=tf.data.AUTOTUNE
        )

    def load(self) -> np.ndarray:
        """All the images decoded: a uint8 array `shape` (for small sets only)."""
        if not len(self):
            return np.zeros(self.shape, np.uint8)
        return np.concatenate(list(self.dataset().batch(256).as_numpy_iterator()))


class ImageFiles(StreamedImages):
    """Image files as a lazy uint8 array `[N, height, width, channels]` (see the module doc);
    `keys` (also `paths`) are the paths, as bytes.

    Args:
      paths: the files, in order.
      height, width, channels: as `StreamedImages`.
    """

    def __init__(
        self, paths, *, height: int, width: int, channels: int, skipped_list: str | None = None
    ):
        if not (isinstance(paths, np.ndarray) and paths.dtype.kind == "S"):
            paths = ids.encode(paths)
        super().__init__(
            paths, height=height, width=width, channels=channels, skipped_list=skipped_list
        )

    @property
    def paths(self):
        return self.keys

    def _like(self, paths):
        return ImageFiles(paths, height=self.height, width=self.width, channels=self.channels)

    def read(self, path):
        return tf.io.decode_image(tf.io.read_file(path), expand_animations=False)

    def describe(self, path):
        path = os.fsdecode(bytes(path))
        try:
            read_image(path)
        except ValueError as err:
            return str(err)
        return f"{path}: could not be read when its turn came."

    def concatenate(self, other: "ImageFiles") -> "ImageFiles":
        """These files followed by `other`'s (which must decode to the same shape)."""
        if other.shape[1:] != self.shape[1:]:
            raise ValueError(
                f"cannot join images of shapes {self.shape[1:]} and {other.shape[1:]}."
            )
        return self._subset(np.concatenate([self.paths, other.paths]))


def list_skipped(path: str, lines) -> None:
    """Adds `lines` ("<file>: <reason>") to the list of skipped files at `path`, leaving out the
    files it already names."""
    listed = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            listed = file.read().splitlines()
    new = [
        line
        for line in lines
        if not any(line.startswith(old.split(": ")[0] + ": ") for old in listed)
    ]
    if new:
        with open(path, "a", encoding="utf-8") as file:
            file.writelines(line + "\n" for line in new)


def readable(x) -> np.ndarray:
    """bool `[N]`: the rows of `x` not found unreadable (all, for an array in memory)."""
    return x.readable() if is_streamed(x) else np.ones(len(x), bool)


def is_streamed(x) -> bool:
    """Whether `x` is streamed (`StreamedImages`: files, TFDS records) rather than an array."""
    return isinstance(x, StreamedImages)
