"""The names of a data set's rows (file paths, `<csv>:<line>`, `.npz` indices), held as one
fixed-width bytes array and read back as `str`.

A Python `str` per row costs about 95 bytes (its object and a pointer) where the name's bytes
take about 40 (docs/PERFORMANCE.md, issue 29); where the names are the image files' paths, the
rows share the key array of `gdw_tf.data.image_files.ImageFiles` and cost nothing more.
"""

import os
from collections.abc import Sequence

import numpy as np


def encode(names) -> np.ndarray:
    """`names` (str) as a fixed-width bytes array, one byte per ASCII character (a `str` array
    takes four); `os.fsencode`, so any path comes back as it was (`Ids`)."""
    return np.array([os.fsencode(name) for name in names], dtype=bytes).reshape(-1)


def as_slice(index):
    """An index array of consecutive ascending positions as the slice that selects the same
    rows (a view of an array, not a copy); any other index as it is."""
    if (
        isinstance(index, np.ndarray)
        and index.ndim == 1
        and index.dtype.kind in "iu"
        and len(index)
        and index[0] >= 0
        and index[-1] - index[0] == len(index) - 1
        and np.all(np.diff(index) == 1)
    ):
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


class Ids(Sequence):
    """Row names as a read-only sequence of `str` over a bytes array (`encode`'s).

    An integer gives the name; a slice, an index array or a bool mask gives the `Ids` of those
    rows (a view where the rows are consecutive, `as_slice`). It equals a tuple or list of the
    same names, as the tuple of `str` it replaces did.

    Args:
      names: a NumPy bytes array, e.g. `encode(strings)` or `ImageFiles.keys`.
    """

    def __init__(self, names: np.ndarray):
        if not (isinstance(names, np.ndarray) and names.dtype.kind == "S" and names.ndim == 1):
            raise TypeError(f"Ids holds a 1-D bytes array; got {type(names).__name__}.")
        self.names = names

    def __len__(self):
        return len(self.names)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return os.fsdecode(self.names[key])
        return Ids(self.names[as_slice(key)])

    def __iter__(self):
        return (os.fsdecode(name) for name in self.names)

    def __eq__(self, other):
        if isinstance(other, Ids):
            return np.array_equal(self.names, other.names)
        if isinstance(other, (tuple, list)):
            return len(other) == len(self) and all(a == b for a, b in zip(self, other))
        return NotImplemented

    __hash__ = None

    def __repr__(self):
        shown = ", ".join(repr(name) for name in self[:3])
        return f"Ids([{shown}{', ...' if len(self) > 3 else ''}], {len(self)} rows)"
