"""Own image files streamed from disk (`gdw_tf.data.image_files`): the same batches as the
decoded arrays, bad files found before training, OS debris, `.txt` list files, the sampled
normalisation, the meta batch of a small trusted set, and a streamed run end to end: the same
weights as the same images given as arrays, resumed after a kill as if never killed.
"""

import csv
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import backbone_weights
from conftest import history_rows
from conftest import make_config
from conftest import prepare_tfds_images
from conftest import random_sized_images
from conftest import train_killed_in_epoch_3
from conftest import train_main
from conftest import write_png

from gdw_tf.data import datasets
from gdw_tf.data import ids
from gdw_tf.data import image_files
from gdw_tf.data import input_pipeline
from gdw_tf.data import own_data
from gdw_tf.pages import report as report_lib
from gdw_tf.runs import config as config_lib
from gdw_tf.runs import run as run_lib


def _write_folder(root, images, labels):
    """Writes `images[i]` as `root/<labels[i]>/<i>.png`; returns the paths in reading order."""
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        paths.append(os.path.join(root, str(label), f"{i:03d}.png"))
        write_png(paths[-1], image)
    return sorted(paths, key=lambda p: (os.path.basename(os.path.dirname(p)), p))


def _mixed_size_files(root, rng, n=10):
    """Gray, gray+alpha, RGB and RGBA PNGs of different sizes; their paths."""
    paths = []
    for i in range(n):
        channels = (1, 2, 3, 4)[i % 4]
        image = rng.integers(0, 256, (5 + i, 7 + 2 * i, channels), dtype=np.uint8)
        paths.append(os.path.join(root, f"{i}.png"))
        write_png(paths[-1], image)
    return paths


# --------------------------------------------------------------------------------------------
# The pipeline: streamed files give the batches of their decoded arrays


def test_decoding_converts_and_resizes_as_the_array_path_does(tmp_path):
    paths = _mixed_size_files(str(tmp_path), np.random.default_rng(0))
    files = image_files.ImageFiles(paths, height=8, width=8, channels=3)
    expected = own_data._convert_arrays([image_files.read_image(p) for p in paths], 3, 8)
    np.testing.assert_array_equal(np.asarray(files), expected)
    np.testing.assert_array_equal(files[3], expected[3])  # One image, decoded alone.
    subset = files[np.array([7, 2])]
    assert isinstance(subset, image_files.ImageFiles) and subset.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(np.asarray(subset), expected[[7, 2]])


@pytest.mark.parametrize("block,piece", [(2, 3), (3, 1), (image_files.ROW_TABLE_BLOCK, 64)])
def test_a_row_table_gives_the_rows_numpy_indexing_gives(block, piece, monkeypatch):
    # Paths are sliced out of strings of `piece` paths (joined in blocks of `block`): short,
    # empty, longer than a tf.string holds inline, non-ASCII bytes; looked up one at a time,
    # in a batch and in a 2-D block.
    monkeypatch.setattr(image_files, "ROW_TABLE_BLOCK", block)
    monkeypatch.setattr(image_files, "ROW_TABLE_PIECE", piece)
    paths = ids.encode(["a.png", "", "x" * 23, "folder/" * 9 + "é.png", "c/1.jpg"])
    table = image_files.RowTable(paths)
    for positions in ([3], [4, 0, 1, 2, 3, 3], [[2, 1], [0, 4]]):
        positions = np.asarray(positions, np.int64)
        looked_up = table(tf.constant(positions)).numpy()
        assert looked_up.shape == positions.shape
        assert looked_up.tolist() == paths[positions].tolist()
    assert table(tf.constant(1, tf.int64)).numpy() == b""
    assert table(tf.constant(3, tf.int64)).numpy() == paths[3]
    # A view of a longer array (a split's rows) and an empty one.
    assert image_files.RowTable(paths[1:4])(tf.constant([2, 0], tf.int64)).numpy().tolist() == [
        paths[3],
        paths[1],
    ]
    assert image_files.RowTable(paths[::2])(tf.constant([1, 2], tf.int64)).numpy().tolist() == [
        paths[2],
        paths[4],
    ]
    assert image_files.RowTable(paths[:0])(tf.zeros([0], tf.int64)).shape == (0,)
    # Other arrays are gathered: integer keys with a row shape, images.
    records = np.arange(12).reshape(6, 2)
    assert np.array_equal(image_files.RowTable(records)(tf.constant([5, 1])), records[[5, 1]])
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 3, 1), np.uint8)
    assert np.array_equal(image_files.RowTable(images)(tf.constant([2])), images[[2]])


def test_streamed_batches_equal_those_of_the_decoded_array(tmp_path):
    rng = np.random.default_rng(1)
    paths = _mixed_size_files(str(tmp_path), rng, n=23)
    files = image_files.ImageFiles(paths, height=9, width=9, channels=3)
    array = np.asarray(files)
    labels = rng.integers(0, 3, 23)
    mean, std = input_pipeline.normalization_stats("own_data", array)
    args = dict(batch_size=5, seed=3, augment=True, mean=mean, std=std, with_index=True)
    streamed = input_pipeline.train_dataset(files, labels, **args)
    in_memory = input_pipeline.train_dataset(array, labels, **args)
    for _ in range(2):  # Two epochs: each reshuffles and draws new crops, identically.
        batches = zip(streamed.as_numpy_iterator(), in_memory.as_numpy_iterator(), strict=True)
        for got, expected in batches:
            for a, b in zip(got, expected, strict=True):
                np.testing.assert_array_equal(a, b)
    got = list(input_pipeline.eval_dataset(files, labels, 4, mean, std).as_numpy_iterator())
    expected = list(input_pipeline.eval_dataset(array, labels, 4, mean, std).as_numpy_iterator())
    for (a_x, a_y), (b_x, b_y) in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a_x, b_x)
        np.testing.assert_array_equal(a_y, b_y)


class _RecordingFiles(image_files.ImageFiles):
    """`ImageFiles` that note, in `log`, each path they decode."""

    def __init__(self, paths, *, log, **shape):
        super().__init__(paths, **shape)
        self.log = log

    def read(self, path):
        def note(value):
            self.log.append(value.numpy().decode())
            return value

        noted = tf.py_function(note, [path], tf.string)
        noted.set_shape([])
        return super().read(noted)


@pytest.mark.parametrize(
    "pipelines, replicas, drop_remainder",
    [(2, 2, False), (1, 2, False), (2, 4, False), (2, 2, True)],
)
def test_each_input_pipeline_decodes_only_its_replicas_share_of_each_batch(
    tmp_path, pipelines, replicas, drop_remainder
):
    # 23 images in batches of 5: the last batch (3 rows) leaves some replicas no rows (or is
    # dropped, with all its images).
    rng = np.random.default_rng(4)
    paths = _mixed_size_files(str(tmp_path), rng, n=23)
    labels = rng.integers(0, 3, 23)
    shape = dict(height=7, width=7, channels=3)
    mean, std = [0.5] * 3, [0.25] * 3
    args = dict(batch_size=5, seed=5, augment=True, mean=mean, std=std, with_index=True)
    args["drop_remainder"] = drop_remainder
    whole = list(
        input_pipeline.train_dataset(
            image_files.ImageFiles(paths, **shape), labels, **args
        ).as_numpy_iterator()
    )
    offsets = input_pipeline.replica_shares(5, replicas)
    local = replicas // pipelines
    shares, decoded = {}, []
    for pipeline in range(pipelines):
        log = []
        context = tf.distribute.InputContext(pipelines, pipeline, replicas)
        files = _RecordingFiles(paths, log=log, **shape)
        batches = list(
            input_pipeline.train_dataset(
                files, labels, **args, input_context=context
            ).as_numpy_iterator()
        )
        assert len(batches) == local * len(whole)  # Its replicas' shares of every batch.
        for b, batch in enumerate(batches):
            shares[b // local, pipeline * local + b % local] = batch
        decoded.append(log)
        # It decoded exactly the rows it yields: each once.
        yielded = [paths[i] for batch in batches for i in batch[2]]
        assert sorted(log) == sorted(yielded)
    # Together the pipelines decoded every image trained on once: disjoint shares of the epoch.
    trained = [paths[i] for batch in whole for i in batch[2]]
    assert len(trained) == (20 if drop_remainder else 23)
    assert sorted(path for log in decoded for path in log) == sorted(trained)
    for step, batch in enumerate(whole):
        for replica in range(replicas):  # Replica r: rows [offsets[r], offsets[r + 1]).
            rows = slice(min(offsets[replica], len(batch[1])), offsets[replica + 1])
            for got, expected in zip(shares[step, replica], batch, strict=True):
                np.testing.assert_array_equal(got, expected[rows])
    if not drop_remainder:  # An empty share was met.
        assert any(len(share[1]) == 0 for share in shares.values())


def test_images_in_memory_are_not_shared_out_by_the_pipeline():
    with pytest.raises(ValueError, match="shares out streamed images only"):
        input_pipeline.train_dataset(
            np.zeros((4, 2, 2, 1), np.uint8),
            np.zeros(4, np.int64),
            2,
            seed=0,
            augment=False,
            mean=[0.5],
            std=[0.5],
            input_context=tf.distribute.InputContext(2, 0, 2),
        )


def test_normalisation_of_a_stream_is_exact_on_a_bounded_sample(tmp_path, monkeypatch):
    paths = _mixed_size_files(str(tmp_path), np.random.default_rng(2), n=12)
    files = image_files.ImageFiles(paths, height=6, width=6, channels=3)
    array = np.asarray(files)

    def exact(images):
        scaled = images.astype(np.float64) / 255.0
        return scaled.mean(axis=(0, 1, 2)), scaled.std(axis=(0, 1, 2))

    for got, expected in zip(input_pipeline.normalization_stats("own_data", files), exact(array)):
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    monkeypatch.setattr(input_pipeline, "NORMALIZATION_SAMPLE", 5)
    sample = input_pipeline.normalization_sample(12)
    assert len(sample) == 5 and len(set(sample.tolist())) == 5 and np.all(np.diff(sample) > 0)
    for got, expected in zip(
        input_pipeline.normalization_stats("own_data", files), exact(array[sample])
    ):
        np.testing.assert_allclose(got, expected, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Before training: bad files, OS debris, the trusted set, list files


def test_unreadable_files_are_skipped_listed_and_the_scan_is_not_repeated(tmp_path, caplog):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    root = str(tmp_path / "train")
    paths = _write_folder(root, images, [0, 1, 2] * 2)
    broken = os.path.join(root, "1", "broken.jpg")
    with open(broken, "wb") as file:
        file.write(b"\xff\xd8\xff not a jpeg")
    empty = os.path.join(root, "2", "empty.png")
    open(empty, "wb").close()
    work_dir = str(tmp_path / "run")
    os.makedirs(work_dir)

    dataset = run_lib.load_own_data(make_config(train_data=root, method="ce"), work_dir=work_dir)
    assert dataset.train_ids == tuple(paths)
    np.testing.assert_array_equal(np.asarray(dataset.x_train), images[[0, 3, 1, 4, 2, 5]])
    with open(os.path.join(work_dir, own_data.SKIPPED_FILE)) as file:
        listed = file.read().splitlines()
    assert [line.split(": ")[0] for line in listed] == [broken, empty]
    assert all("not a readable image" in line for line in listed)
    warnings = [r.getMessage() for r in caplog.records if "Skipped" in r.getMessage()]
    assert len(warnings) == 1 and "Skipped 2 unreadable image file(s) of 8" in warnings[0]

    # Resuming reads the cached scan: a file broken since is still taken as readable...
    with open(paths[0], "wb") as file:
        file.write(b"broken since")
    again = run_lib.load_own_data(make_config(train_data=root, method="ce"), work_dir=work_dir)
    assert again.train_ids == tuple(paths)
    # ...while another list of files is scanned anew.
    os.remove(empty)
    anew = run_lib.load_own_data(make_config(train_data=root, method="ce"), work_dir=work_dir)
    assert anew.train_ids == tuple(paths[1:])


def test_what_operating_systems_leave_beside_images_is_ignored(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (4, 4, 4, 3), dtype=np.uint8)
    root = str(tmp_path / "unzipped")
    paths = _write_folder(root, images, ["cat", "dog"] * 2)
    for junk in (
        "__MACOSX/cat/._000.png",
        "__MACOSX/._cat",
        "cat/._000.png",
        "cat/.DS_Store",
        ".DS_Store",
        "dog/Thumbs.db",
        "dog/.hidden/x.png",
    ):
        os.makedirs(os.path.dirname(os.path.join(root, junk)), exist_ok=True)
        with open(os.path.join(root, junk), "wb") as file:
            file.write(b"\x00\x05\x16\x07 AppleDouble")
    dataset = run_lib.load_own_data(make_config(train_data=root, method="ce"))
    assert dataset.class_names == ("cat", "dog") and dataset.train_ids == tuple(paths)


def test_a_list_file_reads_paths_relative_to_its_folder_or_the_image_root(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        write_png(str(tmp_path / "images" / f"dir {i % 2}" / f"{i}.png"), image)
    lines = [f"images/dir {i % 2}/{i}.png {label}" for i, label in enumerate([3, 0, 12, 3])]
    listed = tmp_path / "noisy_label_kv.txt"
    listed.write_text("# Clothing1M style\n" + "\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]))

    dataset = run_lib.load_own_data(make_config(train_data=str(listed), method="ce"))
    assert dataset.class_names == ("0", "3", "12")  # integer labels sort numerically
    np.testing.assert_array_equal(dataset.y_train, [1, 0, 2, 1])
    assert dataset.train_ids == tuple(line.rsplit(" ", 1)[0] for line in lines)
    np.testing.assert_array_equal(np.asarray(dataset.x_train), images)

    elsewhere = tmp_path / "lists"
    elsewhere.mkdir()
    moved = elsewhere / "train.txt"
    moved.write_text("\n".join(lines))
    config = make_config(train_data=str(moved), image_root=str(tmp_path), method="ce")
    np.testing.assert_array_equal(np.asarray(run_lib.load_own_data(config).x_train), images)

    bad = tmp_path / "bad.txt"
    bad.write_text(lines[0] + "\nonly_a_path.jpg\n")
    with pytest.raises(ValueError, match=r"bad.txt:2: 'only_a_path.jpg' is not 'relative/path"):
        run_lib.load_own_data(make_config(train_data=str(bad), method="ce"))
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flag_values(["prog", f"--train_data={listed}", "--output_dir=out"])  # .txt passes the flag.


def test_a_small_trusted_set_gets_a_smaller_default_meta_batch(tmp_path):
    assert config_lib.resolve_meta_batch_size(100, 30) == 30  # The default: cut to the set.
    assert config_lib.resolve_meta_batch_size(100, 300) == 100
    assert config_lib.resolve_meta_batch_size(50, 30) == 50  # Asked for: kept (refused later).
    assert config_lib.resolve_meta_batch_size(100, 15, replicas=2) == 14  # An equal share each.
    rng = np.random.default_rng(6)
    images = rng.integers(0, 256, (9, 4, 4, 3), dtype=np.uint8)
    _write_folder(str(tmp_path / "train"), images[:6], [0, 1, 2] * 2)
    _write_folder(str(tmp_path / "trusted"), images[6:], [0, 1, 2])
    dataset = run_lib.load_own_data(
        make_config(train_data=str(tmp_path / "train"), trusted_data=str(tmp_path / "trusted"))
    )
    assert dataset.trusted.sum() == 3


def test_an_absurd_image_size_is_refused_when_the_flags_are_parsed():
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    with pytest.raises(flags.IllegalFlagValueError, match="--image_size must be ≥ 0 and ≤ 4096"):
        flag_values(["prog", "--image_size=100000", "--output_dir=out"])


# --------------------------------------------------------------------------------------------
# A streamed run end to end


def _digit_like_tree(root, rng, per_class=12):
    """Three classes of 12x12 RGB images with a class-dependent mean (learnable), a trusted
    and a test folder; returns the training images and labels in reading order."""
    train_images, train_labels = [], []
    for part, count in (("train", per_class), ("trusted", 4), ("test", 4)):
        for k in range(3):
            for i in range(count):
                image = np.clip(rng.normal(60 + 70 * k, 40, (12, 12, 3)), 0, 255).astype(np.uint8)
                write_png(os.path.join(root, part, f"c{k}", f"{i:03d}.png"), image)
                if part == "train":
                    train_images.append(image)
                    train_labels.append(k)
    return np.array(train_images), np.array(train_labels)


@pytest.mark.slow
def test_a_streamed_run_equals_the_run_on_the_same_arrays_and_resumes(tmp_path, monkeypatch):
    root = str(tmp_path / "data")
    images, labels = _digit_like_tree(root, np.random.default_rng(7))
    trusted = np.asarray(
        image_files.ImageFiles(
            [
                os.path.join(root, "trusted", f"c{k}", f"{i:03d}.png")
                for k in range(3)
                for i in range(4)
            ],
            height=12,
            width=12,
            channels=3,
        )
    )
    np.savez(tmp_path / "train.npz", x=images, y=np.array([f"c{k}" for k in labels]))
    np.savez(tmp_path / "trusted.npz", x=trusted, y=np.repeat(["c0", "c1", "c2"], 4))
    common = ["--epochs=3", "--batch_size=8", "--lr=0.05", "--augment=true", "--verbose=0"]
    streamed = str(tmp_path / "streamed")
    folders = [f"--train_data={root}/train", f"--trusted_data={root}/trusted"]
    train_main(*folders, f"--test_data={root}/test", *common, f"--output_dir={streamed}")
    arrays = str(tmp_path / "arrays")
    train_main(
        f"--train_data={tmp_path}/train.npz",
        f"--trusted_data={tmp_path}/trusted.npz",
        *common,
        f"--output_dir={arrays}",
    )
    # The same images, labels and order: the same training, to the bit.
    with (
        np.load(os.path.join(streamed, "example_weights.npz")) as a,
        np.load(os.path.join(arrays, "example_weights.npz")) as b,
    ):
        np.testing.assert_array_equal(a["instance_weight"], b["instance_weight"])
        np.testing.assert_array_equal(a["given_label"], b["given_label"])
        ids = a["id"]
    config = json.load(open(os.path.join(streamed, "config.json")))
    assert config["normalization"]["images_sampled"] == 48  # all 36 + 12 images
    assert config["meta_batch_size"] == 12  # the default 100 cut to the trusted set's 12
    with open(os.path.join(streamed, "label_issues.csv"), newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["set"] == "training"]
    assert len(rows) == 36 and {row["id"] for row in rows} == set(ids.tolist())
    report = open(os.path.join(streamed, "report.html")).read()
    assert report.count("<img src='data:image/png;base64,") == min(report_lib.GALLERY_SIZE, 36)
    results = json.load(open(os.path.join(streamed, "results.json")))
    assert results["test_accuracy"]["last"] > 0.6  # three well separated classes

    # Killed in epoch 3, resumed in the same directory: it ends as the uninterrupted run.
    resumed = str(tmp_path / "resumed")
    args = (*folders, f"--test_data={root}/test", *common, f"--output_dir={resumed}")
    train_killed_in_epoch_3(monkeypatch, train_main, *args)
    assert os.path.exists(os.path.join(resumed, own_data.SCAN_FILE))
    train_main(*args)
    with (
        np.load(os.path.join(streamed, "example_weights.npz")) as a,
        np.load(os.path.join(resumed, "example_weights.npz")) as b,
    ):
        np.testing.assert_array_equal(a["instance_weight"], b["instance_weight"])


@pytest.mark.slow
def test_a_streamed_tfds_run_equals_the_run_on_its_images_in_memory_and_resumes(
    tmp_path, monkeypatch
):
    # A prepared TFDS dataset of varying image sizes with a train split only: streamed from
    # its files, the held-out tenth (7 images) as the test set.
    prepare_tfds_images(
        tmp_path / "tfds",
        "varsize_run",
        {"train": random_sized_images(np.random.default_rng(10), 70)},
        num_classes=3,
    )
    common = [
        "--dataset=varsize_run",
        f"--data_dir={tmp_path / 'tfds'}",
        "--image_size=12",
        "--model=mlp",
        "--num_meta=9",
        "--meta_batch_size=9",
        "--batch_size=9",
        "--epochs=3",
        "--lr=0.05",
        "--augment=true",
        "--verbose=0",
    ]
    streamed = str(tmp_path / "streamed")
    train_main(*common, f"--output_dir={streamed}")

    # The same run on the same images decoded into memory first.
    load_dataset = datasets.load_dataset

    def in_memory(*args, **kwargs):
        dataset = load_dataset(*args, **kwargs)
        assert image_files.is_streamed(dataset.x_train) and image_files.is_streamed(dataset.x_test)
        return dataset._replace(
            x_train=np.asarray(dataset.x_train), x_test=np.asarray(dataset.x_test)
        )

    arrays = str(tmp_path / "arrays")
    with monkeypatch.context() as patch:
        patch.setattr(datasets, "load_dataset", in_memory)
        train_main(*common, f"--output_dir={arrays}")
    with (
        np.load(os.path.join(streamed, "example_weights.npz")) as a,
        np.load(os.path.join(arrays, "example_weights.npz")) as b,
    ):
        assert len(a["instance_weight"]) == 63 - 9  # train minus the held-out and meta sets
        for name in b.files:
            np.testing.assert_array_equal(a[name], b[name])
        indices = set(a["index"].tolist())
    for expected, got in zip(backbone_weights(arrays), backbone_weights(streamed), strict=True):
        np.testing.assert_array_equal(got, expected)
    history = [history_rows(run) for run in (streamed, arrays)]
    assert [row["test/accuracy"] for row in history[0]] == [
        row["test/accuracy"] for row in history[1]
    ]
    config = json.load(open(os.path.join(streamed, "config.json")))
    assert config["normalization"]["images_sampled"] == 63 and config["input_shape"] == [12, 12, 3]
    with open(os.path.join(streamed, "label_issues.csv"), newline="") as file:
        rows = [row for row in csv.DictReader(file) if row["set"] == "training"]
    assert len(rows) == 54 and {int(row["id"]) for row in rows} == indices
    report = open(os.path.join(streamed, "report.html")).read()
    assert report.count("<img src='data:image/png;base64,") == min(report_lib.GALLERY_SIZE, 54)

    # Killed in epoch 3, resumed: it ends as the uninterrupted run.
    resumed = str(tmp_path / "resumed")
    train_killed_in_epoch_3(monkeypatch, train_main, *common, f"--output_dir={resumed}")
    train_main(*common, f"--output_dir={resumed}")
    for expected, got in zip(backbone_weights(streamed), backbone_weights(resumed), strict=True):
        np.testing.assert_array_equal(got, expected)
