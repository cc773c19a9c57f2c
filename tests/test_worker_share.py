"""The passes a `multi_worker` run shares out (`gdw_tf.data.worker_share`): the scan, the
normalisation sample, validation and the label-issue pass give each worker one process's
result while it decodes only its rows; the workers resume from one epoch; and a TFDS split
stored in several files streams.

A cluster is simulated here by threads of this process whose all-reduce adds their arrays
(`_Cluster`); tests/test_distribute_train.py runs real two-worker clusters.
"""

import os
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from conftest import prepare_tfds_images
from conftest import random_sized_images
from conftest import write_png

from gdw_tf.data import datasets
from gdw_tf.data import image_files
from gdw_tf.data import input_pipeline
from gdw_tf.data import own_data
from gdw_tf.data import tfds_records
from gdw_tf.data import worker_share
from gdw_tf.data.worker_share import WorkerShare
from gdw_tf.labels import label_issues
from gdw_tf.runs import backup


class _Cluster:
    """`count` workers, each a thread of this process; their all-reduce adds their arrays."""

    def __init__(self, count):
        self.count = count
        self._barrier = threading.Barrier(count, timeout=120)
        self._arrays = [None] * count

    def _share(self, index):
        def all_reduce(array):
            self._arrays[index] = np.array(array)
            self._barrier.wait()
            total = self._arrays[0].copy()
            for other in self._arrays[1:]:
                total += other
            self._barrier.wait()  # Every worker has its sum before the next one starts.
            return total

        return WorkerShare(index, self.count, all_reduce)

    def run(self, function):
        """`function(share)` on every worker at once; the results, in worker order."""
        results, errors = [None] * self.count, []

        def work(index):
            try:
                results[index] = function(self._share(index))
            except BaseException as err:  # Re-raised below; the others must not wait.
                errors.append(err)
                self._barrier.abort()

        threads = [threading.Thread(target=work, args=(i,)) for i in range(self.count)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results


def _alone(index, count):
    """Worker `index` of `count` whose all-reduce adds nothing of the others' (they give
    zeros): what it computes from its own rows shows."""
    return WorkerShare(index, count, lambda array: np.array(array))


def _image_files(root, rng, n):
    """`n` PNG files of varying sizes and channels under `root`; their paths."""
    paths = []
    for i in range(n):
        size = int(rng.integers(3, 9))
        channels = 1 if i % 4 == 3 else 3
        path = os.path.join(root, f"{i:02d}.png")
        write_png(path, rng.integers(0, 256, (size, size + 1, channels), dtype=np.uint8))
        paths.append(path)
    return paths


def test_a_share_is_a_contiguous_block_and_the_workers_sums_and_rows_are_joined(monkeypatch):
    for n in range(8):
        blocks = [list(range(n))[_alone(i, 3).rows(n)] for i in range(3)]
        assert sum(blocks, []) == list(range(n))
        assert max(map(len, blocks)) - min(map(len, blocks)) <= 1
    monkeypatch.setattr(worker_share, "CHUNK", 5)  # 12 values: added up in three parts
    sums = _Cluster(3).run(lambda share: share.sum(np.full((3, 4), share.index + 1, np.int64)))
    for total in sums:
        np.testing.assert_array_equal(total, np.full((3, 4), 6))
    # Rows of other counts (none on worker 1), joined in worker order.
    local = {0: np.arange(6.0).reshape(3, 2), 1: np.zeros((0, 2)), 2: -np.ones((1, 2))}
    joined = _Cluster(3).run(lambda share: share.concatenate(local[share.index]))
    for whole in joined:
        np.testing.assert_array_equal(whole, np.concatenate([local[0], local[1], local[2]]))


def test_the_scan_is_shared_out_and_gives_every_worker_the_whole(tmp_path):
    paths = _image_files(str(tmp_path / "images"), np.random.default_rng(0), 9)
    with open(paths[4], "wb") as file:
        file.write(b"not a png")
    expected = image_files.scan(paths)
    assert not expected.ok[4] and expected.ok.sum() == 8
    caches = [str(tmp_path / f"scan{i}.npz") for i in range(2)]
    for _ in range(2):  # Scanned; then worker 0 from its cache, worker 1 scanning again.
        scans = _Cluster(2).run(
            lambda share: image_files.scan(paths, cache=caches[share.index], share=share)
        )
        for found in scans + [image_files.Scan.load(cache) for cache in caches]:
            assert found.paths == expected.paths and found.problems == expected.problems
            for name in ("ok", "channels", "heights", "widths"):
                np.testing.assert_array_equal(getattr(found, name), getattr(expected, name))
        os.remove(caches[1])
    # Alone, worker 1 of 2 finds only its own block (the last 5 files, the broken one first)
    # readable: it decoded no other file in the pass.
    alone = image_files.scan(paths, share=_alone(1, 2))
    np.testing.assert_array_equal(alone.ok, np.arange(9) > 4)


def test_the_scan_in_blocks_finds_what_one_pass_over_every_file_finds(tmp_path, monkeypatch):
    paths = _image_files(str(tmp_path / "images"), np.random.default_rng(3), 9)
    for broken in (2, 6):
        with open(paths[broken], "wb") as file:
            file.write(b"not a png")
    whole = [image_files.scan(paths), image_files.scan(paths, share=_alone(1, 2))]
    monkeypatch.setattr(image_files, "SCAN_BLOCK", 3)  # Worker 1 of 2: rows 4 to 8, in two blocks.
    for expected, found in zip(
        whole, [image_files.scan(paths), image_files.scan(paths, share=_alone(1, 2))], strict=True
    ):
        assert found.problems == expected.problems
        for name in ("ok", "channels", "heights", "widths"):
            np.testing.assert_array_equal(getattr(found, name), getattr(expected, name))
    np.testing.assert_array_equal(whole[0].ok, ~np.isin(np.arange(9), [2, 6]))
    np.testing.assert_array_equal(whole[1].ok, (np.arange(9) >= 4) & (np.arange(9) != 6))


def test_the_normalisation_sample_is_shared_out_with_the_same_statistics(tmp_path, monkeypatch):
    paths = _image_files(str(tmp_path), np.random.default_rng(1), 11)
    files = image_files.ImageFiles(paths, height=5, width=5, channels=3)
    monkeypatch.setattr(input_pipeline, "NORMALIZATION_SAMPLE", 7)
    expected = input_pipeline.normalization_stats("own_data", files)
    for mean, std in _Cluster(2).run(
        lambda share: input_pipeline.normalization_stats("own_data", files, share=share)
    ):
        np.testing.assert_array_equal(mean, expected[0])  # Pixel counts add up exactly.
        np.testing.assert_array_equal(std, expected[1])
    # Alone, worker 0 has the statistics of its block of the sample (the first 3 of 7).
    sample = input_pipeline.normalization_sample(11)
    own = np.asarray(files[sample[:3]]).astype(np.float64) / 255.0
    mean, std = input_pipeline.normalization_stats("own_data", files, share=_alone(0, 2))
    np.testing.assert_allclose(mean, own.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(std, own.std(axis=(0, 1, 2)), rtol=1e-12)


def test_each_pipeline_of_the_validation_data_decodes_its_replicas_share(tmp_path):
    paths = _image_files(str(tmp_path), np.random.default_rng(2), 12)
    files = image_files.ImageFiles(paths, height=4, width=4, channels=3)
    labels = np.arange(12) % 3
    args = (labels, 5, [0.5] * 3, [0.25] * 3)
    whole = list(input_pipeline.eval_dataset(files, *args).as_numpy_iterator())
    shares = [
        list(
            input_pipeline.eval_dataset(
                files, *args, input_context=tf.distribute.InputContext(2, i, 2)
            ).as_numpy_iterator()
        )
        for i in range(2)
    ]
    # Batches of 5 rows, 3 for the first replica and 2 for the second; the last batch's 2 rows
    # are the first's, the second gets an empty batch.
    assert [len(batch[1]) for batch in shares[0]] == [3, 3, 2]
    assert [len(batch[1]) for batch in shares[1]] == [2, 2, 0]
    for batch, first, second in zip(whole, *shares, strict=True):
        for column in range(2):
            np.testing.assert_array_equal(
                np.concatenate([first[column], second[column]]), batch[column]
            )


@pytest.mark.parametrize("num_trusted", [12, 6])  # with the probes' features; without
def test_the_label_issue_pass_is_shared_out_with_one_process_ranking(num_trusted):
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(23, 5)).astype("float32"), rng.integers(0, 3, 23)
    x_trusted, y_trusted = (
        rng.normal(size=(num_trusted, 5)).astype("float32"),
        np.arange(num_trusted) % 3,
    )
    keras.utils.set_random_seed(0)
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(11, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3)(hidden))
    expected = label_issues.find_label_issues(
        model, x, y, batch_size=4, trusted=(x_trusted, y_trusted)
    )

    def shared(share):
        rows, trusted_rows = share.rows(len(y)), share.rows(len(y_trusted))
        return label_issues.find_label_issues(
            model,
            x[rows],
            y,
            batch_size=4,
            trusted=(x_trusted[trusted_rows], y_trusted),
            share=share,
        )

    for issues in _Cluster(2).run(shared):
        for name in ("id", "position", "given_label", "suggested_label", "flagged"):
            np.testing.assert_array_equal(getattr(issues, name), getattr(expected, name))
        # The same rows through the same layers, in batches of other sizes: float32 rounding.
        for name in ("score", "given_probability", "suggested_probability"):
            np.testing.assert_allclose(
                getattr(issues, name), getattr(expected, name), rtol=1e-5, atol=1e-6
            )
        assert (issues.estimate is None) == (expected.estimate is None)


def test_a_tfds_split_stored_in_several_files_streams_and_is_indexed_in_shares(tmp_path):
    builder = prepare_tfds_images(
        tmp_path,
        "sharded_images",
        {"train": random_sized_images(np.random.default_rng(4), 31)},
        num_classes=3,
        num_shards=3,
    )
    assert len(builder.info.splits["train"].file_instructions) == 3
    dataset = datasets.load_dataset("sharded_images", str(tmp_path), image_size=8)
    x = dataset.x_train  # The train split less the test set it holds out.
    assert len(x.files) == 3 and set(x.keys[:, 0].tolist()) == {0, 1, 2}
    examples = list(
        tfds.as_numpy(
            builder.as_dataset(
                split="train", read_config=tfds.ReadConfig(interleave_cycle_length=1)
            )
        )
    )
    every = datasets.HELD_OUT_EVERY
    kept = np.arange(len(examples)) % every != every - 1
    both = np.concatenate([x.keys, dataset.x_test.keys])
    assert len(both) == len(examples) and len({tuple(key) for key in both.tolist()}) == 31
    expected = own_data._convert_arrays(
        [e["image"] for e, keep in zip(examples, kept) if keep], 3, 8
    )
    np.testing.assert_array_equal(np.asarray(x), expected)
    np.testing.assert_array_equal(
        dataset.y_train, [e["label"] for e, keep in zip(examples, kept) if keep]
    )
    # In a cluster each worker indexes its block of the files, and gets every record.
    records, labels = tfds_records.split_records(builder, "train", image_size=8)
    for shared, shared_labels in _Cluster(2).run(
        lambda share: tfds_records.split_records(builder, "train", image_size=8, share=share)
    ):
        np.testing.assert_array_equal(shared.keys, records.keys)
        np.testing.assert_array_equal(shared_labels, labels)
    alone, _ = tfds_records.split_records(builder, "train", image_size=8, share=_alone(1, 2))
    np.testing.assert_array_equal(alone.keys, records.keys[records.keys[:, 0] >= 1])


def test_workers_resume_from_the_newest_epoch_every_one_backed_up():
    # Worker 0 backed up epochs 2 and 3, worker 1 (killed before its backup of epoch 3) 1 and 2.
    committed = {0: [2, 3], 1: [1, 2]}
    for epochs in _Cluster(2).run(
        lambda share: backup.committed_by_all(committed[share.index], 4, share)
    ):
        assert epochs == [2]
    alone = backup.committed_by_all([3, 4, 9], 4, _alone(0, 1))  # 9: not an epoch of this run
    assert alone == [3, 4]
