"""One worker's share of a pass that every worker of a `multi_worker` run needs whole.

Several passes over the data give each worker the same result: the scan of the image files
(`image_files.scan`), the index of a streamed TFDS split (`tfds_records.split_records`), the
normalisation sample (`input_pipeline.normalization_stats`) and the label-issue pass
(`gdw_tf.labels.label_issues.find_label_issues`). In a cluster each worker reads only its own
block of the rows (`rows`) and the workers' results are then added up (`sum`, an all-reduce
across the workers) or joined in worker order (`concatenate`). The workers also agree on the
epoch they resume from (`gdw_tf.runs.backup`). `gdw_tf.runs.distribute.worker_share` makes
the share of a run's strategy.

A sum of integers is exact, and so is a float sum to which only one worker adds a non-zero
value (`x + 0 == x`): the passes thus give each worker what one process computes alone, as
far as the rows' own arithmetic does.
"""

import dataclasses
from collections.abc import Callable

import numpy as np

# Values per all-reduce: a larger array is added up in parts of at most this many.
CHUNK = 1 << 22


@dataclasses.dataclass(frozen=True)
class WorkerShare:
    """Worker `index` of `count`, and the all-reduce that adds up an array across them.

    Attributes:
      index, count: this worker's place (the chief is 0) and the number of workers.
      all_reduce: `all_reduce(array)`, the sum of every worker's `array` (same shape and dtype
        on every worker: int32, int64, float32 or float64); every worker calls it, in the same
        order.
    """

    index: int
    count: int
    all_reduce: Callable[[np.ndarray], np.ndarray]

    def rows(self, n: int) -> slice:
        """This worker's block of `n` rows: the `index`-th of `count` contiguous blocks whose
        sizes differ by at most one."""
        return slice(n * self.index // self.count, n * (self.index + 1) // self.count)

    def sum(self, array) -> np.ndarray:
        """The sum of every worker's `array`, added up in parts of at most `CHUNK` values."""
        array = np.ascontiguousarray(array)
        flat = array.reshape(-1)
        parts = [self.all_reduce(flat[i : i + CHUNK]) for i in range(0, len(flat), CHUNK)]
        return np.concatenate(parts).reshape(array.shape) if parts else array.copy()

    def concatenate(self, local) -> np.ndarray:
        """Every worker's `local` rows (the same trailing shape and dtype on each), joined in
        worker order."""
        local = np.asarray(local)
        sizes = np.zeros(self.count, np.int64)
        sizes[self.index] = len(local)
        sizes = self.sum(sizes)
        start = int(sizes[: self.index].sum())
        whole = np.zeros((int(sizes.sum()), *local.shape[1:]), local.dtype)
        whole[start : start + len(local)] = local
        return self.sum(whole)
