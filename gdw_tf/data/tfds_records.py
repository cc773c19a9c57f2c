"""The records of a prepared TFDS split, streamed: a lazy uint8 `[N, H, W, C]` array whose images
`tf.data` reads from TFDS' own files and decodes, so that the images are never all in memory.

TFDS prepares a dataset as TFRecord files, one serialized example per record. `split_records`
reads a split's files once, in order, without decoding an image: the length of every record
(hence its byte offset) and its label; in a cluster, each worker reads its block of the files.
Record `i` is the `i`-th example of the split's files in their order (TFDS' own order with
`tfds.ReadConfig(interleave_cycle_length=1)`), fixed for a prepared dataset: it is the
example's index in a run (example weights, `label_issues.csv`, the data order of a resumed
run). A record's key is `(file, offset, length)`: 24 bytes an
image, and 8 for its label.

`TfdsRecords.read` fetches one record by its place (`os.pread` of `length` bytes at `offset`,
in a `tf.numpy_function`: TensorFlow has no op that reads part of a file without reading
what comes before it), parses it with the dataset's own features (the image kept
encoded) and decodes the image as TFDS does (`tfds.features.Image.decode_example`); then
`StreamedImages.decode` converts its channels and resizes it bilinearly, as own image files are.
"""

import os
import threading

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from gdw_tf.data import image_files
from gdw_tf.data.worker_share import WorkerShare

# A TFRecord record: an 8-byte length and its 4-byte CRC, the data, the data's 4-byte CRC.
_RECORD_HEAD, _RECORD_OVERHEAD = 12, 16


class _RecordReader:
    """Reads `length` bytes at `offset` of one of `files` (`os.pread`: thread-safe, no seek
    shared between threads), each file opened once per process."""

    def __init__(self, files):
        self.files = tuple(files)
        self._descriptors = {}
        self._lock = threading.Lock()

    def __call__(self, file, offset, length):
        file = int(file)
        descriptor = self._descriptors.get(file)
        if descriptor is None:
            with self._lock:  # Opened by one thread only.
                descriptor = self._descriptors.get(file)
                if descriptor is None:
                    descriptor = os.open(self.files[file], os.O_RDONLY)
                    self._descriptors[file] = descriptor
        data = os.pread(descriptor, int(length), int(offset))
        if len(data) != length:
            raise OSError(f"{self.files[file]}: {len(data)} bytes at {offset}, {length} expected.")
        return np.array(data, dtype=object)

    def __del__(self):
        for descriptor in self._descriptors.values():
            os.close(descriptor)


class TfdsRecords(image_files.StreamedImages):
    """Records of prepared TFDS files as a lazy uint8 array (see the module doc).

    Args:
      keys: int64 `[N, 3]`: per record, its file (a position in `files`), byte offset, length.
      files: the TFRecord files.
      features: the dataset's `tfds.features.FeaturesDict` (an `image` feature).
      height, width, channels: as `image_files.StreamedImages`.
    """

    def __init__(self, keys, *, files, features, height: int, width: int, channels: int):
        super().__init__(
            np.asarray(keys, np.int64).reshape(-1, 3), height=height, width=width, channels=channels
        )
        self.files = tuple(files)
        self.features = features
        self._reader = _RecordReader(self.files)

    def _like(self, keys):
        like = TfdsRecords(
            keys,
            files=self.files,
            features=self.features,
            height=self.height,
            width=self.width,
            channels=self.channels,
        )
        like._reader = self._reader  # One set of open files.
        return like

    def describe(self, key):
        file, offset, _ = (int(k) for k in key)
        try:
            self.decode(tf.constant(key))
        except (tf.errors.OpError, OSError, ValueError) as err:
            reason = str(getattr(err, "message", err)).strip().splitlines()[0]
            return f"{self.files[file]}, record at byte {offset}: unreadable ({reason})."
        return f"{self.files[file]}, record at byte {offset}: could not be read when its turn came."

    def read(self, key):
        record = tf.numpy_function(self._reader, tf.unstack(key), tf.string, stateful=False)
        record.set_shape([])
        encoded = self.features.deserialize_example(
            record, decoders={"image": tfds.decode.SkipDecoding()}
        )["image"]
        return self.features["image"].decode_example(encoded)


def split_records(
    builder, split: str, *, image_size: int, share: WorkerShare | None = None
) -> tuple[TfdsRecords, np.ndarray]:
    """A prepared split's images, streamed at `image_size` squares, and its int64 labels.

    Reads every record of the split's files once (no image is decoded): its length, hence its
    place, and its label. With a `share` (a worker of a cluster), this worker reads only its
    block of the files, and the workers' records are joined in file order.

    Raises:
      ValueError: if the split is not stored as TFDS' uncompressed TFRecord files.
    """
    if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
        raise ValueError(
            f"{builder.name} is stored as {builder.info.file_format.value} files; streaming "
            "reads TFRecord files (prepare it with TFDS' default file format)."
        )
    features = builder.info.features
    instructions = builder.info.splits[split].file_instructions
    files = [os.fspath(instruction.filename) for instruction in instructions]
    own = range(len(files))
    if share is not None:
        own = own[share.rows(len(files))]
    keys, labels = [np.zeros((0, 3), np.int64)], [np.zeros(0, np.int64)]
    for position in own:
        instruction = instructions[position]
        records = tf.data.TFRecordDataset(files[position]).map(
            lambda record: (
                tf.cast(tf.strings.length(record), tf.int64),
                features.deserialize_example(
                    record, decoders={"image": tfds.decode.SkipDecoding()}
                )["label"],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        lengths, file_labels = _concatenated(records.batch(4096).as_numpy_iterator())
        ends = np.cumsum(lengths + _RECORD_OVERHEAD)
        if ends[-1:].sum() != os.path.getsize(files[position]):
            raise ValueError(
                f"{files[position]} is not an uncompressed TFRecord file: its records do not "
                "fill it."
            )
        offsets = ends - lengths - _RECORD_OVERHEAD + _RECORD_HEAD
        place = slice(instruction.skip, instruction.skip + instruction.take)
        if instruction.take < 0:  # TFDS' "to the end".
            place = slice(instruction.skip, None)
        column = np.full(len(lengths), position, np.int64)
        keys.append(np.stack([column, offsets, lengths], axis=1)[place])
        labels.append(file_labels[place].astype(np.int64))
    keys, labels = np.concatenate(keys), np.concatenate(labels)
    if share is not None:
        keys, labels = share.concatenate(keys), share.concatenate(labels)
    channels = 1 if features["image"].shape[-1] == 1 else 3
    images = TfdsRecords(
        keys, files=files, features=features, height=image_size, width=image_size, channels=channels
    )
    return images, labels


def _concatenated(batches):
    """The columns of `(lengths, labels)` batches, each concatenated (empty if none)."""
    batches = list(batches)
    if not batches:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return tuple(np.concatenate(column) for column in zip(*batches))
