"""A meta set streamed from files (`gdw_tf.data.meta_stream`, `GDWModel.stream_meta_data`): the
meta batches of the in-memory sampler, the same weights, a resumed fit that draws what an
uninterrupted one does, only the rows drawn ever decoded, an unreadable file stood in for, and a
run on image folders that never loads its trusted set whole."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import model_state
from conftest import read_json
from conftest import train_main
from conftest import write_png

import gdw_tf
from gdw_tf.core import meta_sampling
from gdw_tf.data import image_files
from gdw_tf.data import input_pipeline
from gdw_tf.data import meta_stream

SIZE, CLASSES = 8, 3
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


class CountingFiles(image_files.ImageFiles):
    """Image files that count the images read (in `read`, as the pipeline runs)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.reads = []

    def _like(self, paths):
        return CountingFiles(paths, height=self.height, width=self.width, channels=self.channels)

    def read(self, path):
        def count(path):
            self.reads.append(bytes(path))
            return np.int64(len(self.reads))

        counted = tf.numpy_function(count, [path], tf.int64, stateful=True)
        with tf.control_dependencies([counted]):
            return super().read(path)


def _meta_files(root, n, seed=0):
    """`n` PNG files of random 8x8 images, labels `i % 3`; as `CountingFiles`, and the labels."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        paths.append(os.path.join(root, f"{i:03d}.png"))
        write_png(paths[-1], rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    return CountingFiles(paths, height=SIZE, width=SIZE, channels=3), np.arange(n) % CLASSES


def _model(meta_interval, track=None):
    keras.utils.set_random_seed(1)
    backbone = keras.Sequential(
        [keras.Input((SIZE, SIZE, 3)), keras.layers.Flatten(), keras.layers.Dense(CLASSES)]
    )
    model = gdw_tf.GDWModel(
        backbone,
        CLASSES,
        method="mwnet",
        meta_batch_size=4,
        meta_interval=meta_interval,
        meta_augmentation=meta_sampling.MetaAugmentation(seed=5, padding=2),
        track_examples=track,
        seed=3,
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9))
    return model


@pytest.mark.parametrize(
    "num_meta, batch, interval", [(10, 4, 1), (10, 4, 3), (12, 4, 2), (9, 9, 1)]
)
def test_meta_draws_are_the_rows_the_step_draws(num_meta, batch, interval):
    """`meta_draws` (NumPy, ahead of the steps) against the step's own sampler, step by step,
    over several passes; then from the position the model has reached (a resumed run)."""
    x_meta = np.zeros((num_meta, 8), "float32")
    x_meta[:, 0] = np.arange(num_meta)  # The first feature names the row.
    backbone = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3)])
    model = gdw_tf.GDWModel(
        backbone,
        3,
        meta_data=(x_meta, np.arange(num_meta) % 3),
        meta_batch_size=batch,
        meta_interval=interval,
        seed=7,
    )
    model.compile("sgd")

    def step_draws(steps):
        drawn = []
        for _ in range(steps):
            iterations = int(model.optimizer.iterations.numpy())
            draw = meta_sampling.is_meta_step(iterations, interval)
            x, _ = model._next_meta_batch(draw=draw)
            drawn.append(np.asarray(x)[:, 0].astype(int) if bool(draw) else None)
            model.optimizer.iterations.assign(iterations + 1)
        return drawn

    def check(steps):
        draws = model.meta_draws()  # From the model's position now.
        for got, want in zip(_take(draws, steps), step_draws(steps), strict=True):
            assert (got is None) == (want is None)
            if want is not None:
                np.testing.assert_array_equal(got, want)

    check(20)
    check(7)  # From step 21 on, as a resumed run starts.


def _fit(model, x_meta, y_meta, streamed, steps, images, labels):
    """`steps` steps of `model` on the training images, the meta set in memory or streamed."""
    train = input_pipeline.train_dataset(
        images, labels, 5, seed=2, augment=False, mean=MEAN, std=STD, with_index=True
    ).repeat()
    if streamed:
        model.stream_meta_data(y_meta)
        train = meta_stream.with_meta_batches(
            train, x_meta, y_meta, model.meta_draws, meta_batch_size=4, mean=MEAN, std=STD
        )
    else:
        decoded = input_pipeline.normalize(np.asarray(x_meta), MEAN, STD).numpy()
        model.set_meta_data((decoded, y_meta))
    return model.fit(train, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0).history


@pytest.mark.parametrize("interval", [1, 2])
def test_a_streamed_meta_set_trains_as_the_same_set_in_memory_and_resumes(tmp_path, interval):
    """10 meta images, batches of 4 (two rows left out of each pass), 7 steps: the same weights,
    metrics and meta position to the bit; and a fit stopped after 3 steps, saved, and resumed in
    a new model with a new stream ends as the uninterrupted one."""
    x_meta, y_meta = _meta_files(str(tmp_path), 10)
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (20, SIZE, SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, CLASSES, 20)
    data = (images, labels)

    in_memory = _model(interval, track=20)
    logs = _fit(in_memory, x_meta, y_meta, False, 7, *data)
    streamed = _model(interval, track=20)
    streamed_logs = _fit(streamed, x_meta, y_meta, True, 7, *data)
    expected = model_state(in_memory)
    got = model_state(streamed)
    draws = 7 // interval  # Two batches a pass: the last draw begins pass (draws - 1) // 2.
    assert int(expected["meta/0"]) == (draws - 1) // 2 >= 1
    assert int(expected["meta/1"]) == 4 * ((draws - 1) % 2 + 1)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    assert streamed_logs == logs

    # Killed after step 3 (mid-pass), resumed from its saved state with a new stream.
    first = _model(interval, track=20)
    _fit(first, x_meta, y_meta, True, 3, *data)
    first.save_weights(str(tmp_path / "step3.weights.h5"))
    resumed = _model(interval, track=20)
    resumed.load_weights(str(tmp_path / "step3.weights.h5"))
    _fit(resumed, x_meta, y_meta, True, 4, *data)
    # The training batches restart after the kill; the meta batches continue. So compare with
    # an uninterrupted model fed the same training batches: 3 steps, then 4 from a new stream.
    uninterrupted = _model(interval, track=20)
    _fit(uninterrupted, x_meta, y_meta, False, 3, *data)
    _fit(uninterrupted, x_meta, y_meta, False, 4, *data)
    expected = model_state(uninterrupted)
    got = model_state(resumed)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_only_the_rows_drawn_are_decoded(tmp_path, monkeypatch):
    """With 30 meta images, batches of 4 and a meta step every other step, 6 steps read 12
    images, those of the 3 meta batches in memory's order, and the set is never loaded whole."""

    def refuse(self):
        raise AssertionError(f"{len(self)} images loaded whole")

    monkeypatch.setattr(image_files.StreamedImages, "load", refuse)
    x_meta, y_meta = _meta_files(str(tmp_path), 30)
    model = _model(2)
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (10, SIZE, SIZE, 3), dtype=np.uint8)
    train = input_pipeline.train_dataset(
        images, rng.integers(0, CLASSES, 10), 5, seed=2, augment=False, mean=MEAN, std=STD
    ).repeat()
    model.stream_meta_data(y_meta)
    expected = [rows for rows in _take(model.meta_draws(), 6) if rows is not None]
    train = meta_stream.with_meta_batches(
        train, x_meta, y_meta, model.meta_draws, meta_batch_size=4, mean=MEAN, std=STD
    )
    model.fit(train, steps_per_epoch=6, epochs=1, shuffle=False, verbose=0)
    assert len(expected) == 3 and int(model.meta_cursor.numpy()) == 12
    # Read ahead of the steps at most by the prefetch; the first 12 reads are the 3 batches.
    assert [x_meta.paths.tolist().index(p) for p in x_meta.reads[:12]] == np.concatenate(
        expected
    ).tolist()
    assert len(x_meta.reads) < len(x_meta)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def test_a_streamed_meta_set_is_checked_and_needed_in_the_data():
    model = _model(1)
    with pytest.raises(ValueError, match=r"no example of class\(es\) \[2\]"):
        model.stream_meta_data(np.array([0, 1, 0, 1]))
    model.stream_meta_data(np.array([0, 1, 2, 0, 1, 2]))
    assert model.num_meta == 6
    x = np.zeros((5, SIZE, SIZE, 3), "float32")
    with pytest.raises(ValueError, match="ends with its step's meta batch"):
        model.fit(x, np.zeros(5, int), epochs=1, shuffle=False, verbose=0)


def test_a_run_on_image_folders_streams_its_trusted_set(tmp_path, monkeypatch):
    """`python -m gdw_tf.train` on folders: the trusted images are decoded only as meta batches
    and by the label-issue pass, never loaded whole; the run finishes with its outputs."""
    rng = np.random.default_rng(3)
    for part, count in (("train", 8), ("trusted", 4)):
        for k in range(CLASSES):
            for i in range(count):
                image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
                write_png(str(tmp_path / part / f"c{k}" / f"{i}.png"), image)
    load = image_files.StreamedImages.load

    def load_no_trusted_set(self):
        trusted = [p for p in self.keys.tolist() if b"trusted" in p]
        assert len(trusted) < 4, f"{len(trusted)} trusted images loaded whole"
        return load(self)

    monkeypatch.setattr(image_files.StreamedImages, "load", load_no_trusted_set)
    output_dir = tmp_path / "run"
    train_main(
        f"--train_data={tmp_path / 'train'}",
        f"--trusted_data={tmp_path / 'trusted'}",
        "--model=mlp",
        "--epochs=2",
        "--batch_size=8",
        "--meta_batch_size=6",
        "--verbose=0",
        f"--output_dir={output_dir}",
    )
    results = read_json(str(output_dir / "results.json"))
    assert results["config"]["num_meta"] == 12
    with np.load(output_dir / "example_weights.npz") as weights:
        assert len(weights["instance_weight"]) == 24


def test_a_meta_image_that_cannot_be_read_is_stood_in_for_by_the_others(tmp_path):
    """A meta file deleted during the run: its batch keeps its 4 rows, the 3 read and the first
    of them again, and the file is recorded as unreadable."""
    x_meta, y_meta = _meta_files(str(tmp_path), 6)
    expected = input_pipeline.normalize(np.asarray(x_meta), MEAN, STD).numpy()
    os.remove(x_meta.paths[2])
    rows = [np.array([5, 2, 0, 3]), None, np.array([1, 4, 0, 5])]
    data = tf.data.Dataset.from_tensors((np.zeros(1), np.zeros(1))).repeat()
    stream = meta_stream.with_meta_batches(
        data, x_meta, y_meta, lambda: iter(rows), meta_batch_size=4, mean=MEAN, std=STD
    )
    assert stream.element_spec[2].shape == (4, SIZE, SIZE, 3)  # Static, as in memory.
    batches = [element[2:] for element in stream.take(3).as_numpy_iterator()]
    np.testing.assert_array_equal(batches[0][0], expected[[5, 0, 3, 5]])
    np.testing.assert_array_equal(batches[0][1], y_meta[[5, 0, 3, 5]])
    np.testing.assert_array_equal(batches[1][0], np.zeros((4, SIZE, SIZE, 3)))  # Not drawn.
    np.testing.assert_array_equal(batches[2][0], expected[[1, 4, 0, 5]])
    assert [os.fsdecode(key) for key in x_meta.unreadable] == [x_meta.paths[2].decode()]
