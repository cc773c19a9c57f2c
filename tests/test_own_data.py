"""Own data through `python -m gdw_tf.train --train_data=...`, and the automatic trusted set.

Loaders against the arrays written, each bad input's one-line error, the automatic meta set's
choice against a NumPy computation, and real handwritten digits (scikit-learn's `load_digits`)
with changed labels, trained end to end through the folder path.
"""

import csv
import dataclasses
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from conftest import make_config
from conftest import train_exit_message
from conftest import train_main
from conftest import write_png

from gdw_tf.data import corrections as corrections_lib
from gdw_tf.data import datasets
from gdw_tf.data import input_pipeline
from gdw_tf.data import own_data
from gdw_tf.data import split as split_lib
from gdw_tf.labels import label_issues
from gdw_tf.labels import neighbours
from gdw_tf.nets import backbones
from gdw_tf.runs import auto_meta
from gdw_tf.runs import config as config_lib
from gdw_tf.runs import run as run_lib
from gdw_tf.runs import run_dir

FLAGS = flags.FLAGS


def _write_folder(root, images, labels):
    """Writes `images[i]` as `root/<labels[i]>/<i>.png`; returns the paths in that order."""
    paths = []
    for i, (image, label) in enumerate(zip(images, labels)):
        paths.append(os.path.join(root, str(label), f"{i:03d}.png"))
        write_png(paths[-1], image)
    return paths


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def _random_images(rng, n, shape):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


# --------------------------------------------------------------------------------------------
# Loaders


def test_folder_tree_loads_the_images_written(tmp_path):
    rng = np.random.default_rng(0)
    images = _random_images(rng, 9, (6, 5, 1))
    labels = np.array(["cat", "dog", "emu"] * 3)
    paths = _write_folder(str(tmp_path / "train"), images, labels)
    trusted_images = _random_images(rng, 3, (6, 5, 1))
    _write_folder(str(tmp_path / "trusted"), trusted_images, ["emu", "cat", "dog"])

    dataset = run_lib.load_own_data(
        make_config(
            train_data=str(tmp_path / "train"),
            trusted_data=str(tmp_path / "trusted"),
            meta_batch_size=3,
        )
    )
    assert dataset.class_names == ("cat", "dog", "emu") and dataset.num_classes == 3
    # Classes in sorted folder order, files sorted within a class; then the trusted set.
    order = sorted(range(9), key=lambda i: (labels[i], paths[i]))
    np.testing.assert_array_equal(dataset.x_train[:9], images[order])
    np.testing.assert_array_equal(
        dataset.y_train[:9], np.searchsorted(["cat", "dog", "emu"], labels[order])
    )
    assert dataset.train_ids[:9] == tuple(paths[i] for i in order)
    np.testing.assert_array_equal(dataset.x_train[9:], trusted_images[[1, 2, 0]])
    np.testing.assert_array_equal(dataset.y_train[9:], [0, 1, 2])
    np.testing.assert_array_equal(dataset.trusted, [False] * 9 + [True] * 3)
    assert dataset.x_train.dtype == np.uint8 and dataset.x_test.shape == (0, 6, 5, 1)


def test_csv_of_features_with_a_trusted_column(tmp_path):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(8, 3)).astype(np.float32)
    labels = ["b", "a", "b", "a", "b", "a", "a", "b"]
    trusted = ["", "yes", "0", "1", "true", "no", "false", "n"]
    path = str(tmp_path / "train.csv")
    _write_csv(
        path,
        ["f1", "kind", "f2", "ok", "f3"],
        [
            [repr(float(f[0])), y, repr(float(f[1])), t, repr(float(f[2]))]
            for f, y, t in zip(features, labels, trusted)
        ],
    )
    test_path = str(tmp_path / "test.csv")  # Columns in another order are matched by name.
    _write_csv(
        test_path,
        ["f3", "f2", "f1", "kind"],
        [
            [repr(float(f[2])), repr(float(f[1])), repr(float(f[0])), y]
            for f, y in zip(features[:2], labels[:2])
        ],
    )

    dataset = run_lib.load_own_data(
        make_config(
            train_data=path,
            test_data=test_path,
            label_column="kind",
            trusted_column="ok",
            meta_batch_size=2,
        )
    )
    np.testing.assert_array_equal(dataset.x_train, features)
    assert dataset.x_train.dtype == np.float32
    np.testing.assert_array_equal(dataset.y_train, [1, 0, 1, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(dataset.trusted, [0, 1, 0, 1, 1, 0, 0, 0])
    assert dataset.train_ids == tuple(f"{path}:{line}" for line in range(2, 10))
    np.testing.assert_array_equal(dataset.x_test, features[:2])
    np.testing.assert_array_equal(dataset.y_test, [1, 0])


def test_csv_of_image_paths_unifies_channels_and_resizes(tmp_path):
    rng = np.random.default_rng(2)
    gray, rgb = _random_images(rng, 1, (4, 4, 1))[0], _random_images(rng, 1, (6, 6, 3))[0]
    write_png(str(tmp_path / "img" / "g.png"), gray)
    write_png(str(tmp_path / "img" / "c.png"), rgb)
    path = str(tmp_path / "train.csv")
    _write_csv(path, ["image", "label"], [["img/g.png", "0"], ["img/c.png", "1"]])

    dataset = run_lib.load_own_data(make_config(train_data=path, image_size=4, method="ce"))
    assert dataset.x_train.shape == (2, 4, 4, 3) and dataset.train_ids == ("img/g.png", "img/c.png")
    np.testing.assert_array_equal(dataset.x_train[0], np.repeat(gray, 3, axis=-1))
    resized = tf.image.resize(rgb, (4, 4), method="bilinear").numpy()
    np.testing.assert_array_equal(
        dataset.x_train[1], np.clip(np.round(resized), 0, 255).astype(np.uint8)
    )


def test_npz_of_images_and_of_features(tmp_path):
    rng = np.random.default_rng(3)
    images = _random_images(rng, 6, (5, 5))
    np.savez(tmp_path / "images.npz", x=images, y=np.array(["10", "2", "10", "3", "2", "3"]))
    dataset = run_lib.load_own_data(
        make_config(train_data=str(tmp_path / "images.npz"), method="ce")
    )
    assert dataset.class_names == ("2", "3", "10")  # integer names sort numerically
    np.testing.assert_array_equal(dataset.x_train, images[..., None])
    np.testing.assert_array_equal(dataset.y_train, [2, 0, 2, 1, 0, 1])
    assert dataset.train_ids == tuple(str(i) for i in range(6))

    features = rng.normal(size=(6, 4))
    np.savez(tmp_path / "features.npz", x=features, y=np.array([0, 1, 0, 1, 0, 1]))
    dataset = run_lib.load_own_data(
        make_config(train_data=str(tmp_path / "features.npz"), method="ce")
    )
    np.testing.assert_array_equal(dataset.x_train, features.astype(np.float32))
    mean, std = input_pipeline.normalization_stats("own_data", dataset.x_train)
    np.testing.assert_allclose(
        input_pipeline.normalize(dataset.x_train, mean, std).numpy(),
        (features - features.mean(0)) / features.std(0),
        atol=1e-5,
    )


def test_the_data_floor_reads_own_data_from_python_without_a_config(tmp_path):
    rng = np.random.default_rng(8)
    images = _random_images(rng, 8, (4, 4, 3))
    names = [f"img/{i}.png" for i in range(8)]
    for name, image in zip(names, images):
        write_png(str(tmp_path / name), image)
    kinds = ["cat", "dog"] * 4
    checked = ["1", "", "", "yes", "", "", "", ""]
    path = str(tmp_path / "train.csv")
    _write_csv(path, ["file", "kind", "checked"], [list(row) for row in zip(names, kinds, checked)])
    test_images = _random_images(rng, 2, (4, 4, 3))
    _write_folder(str(tmp_path / "test"), test_images, ["dog", "cat"])
    options = own_data.OwnDataOptions(
        label_column="kind", image_column="file", trusted_column="checked"
    )

    dataset = own_data.load_own_data(path, test_data=str(tmp_path / "test"), options=options)
    assert dataset.class_names == ("cat", "dog") and dataset.train_ids == tuple(names)
    np.testing.assert_array_equal(np.asarray(dataset.x_train), images)
    np.testing.assert_array_equal(dataset.y_train, [0, 1] * 4)
    np.testing.assert_array_equal(dataset.trusted, [c != "" for c in checked])
    np.testing.assert_array_equal(np.asarray(dataset.x_test), test_images[[1, 0]])
    # The split, and reviews applied to it: the trusted rows are the meta set; one review per
    # class joins it, the third stays in training with its reviewed label.
    split = own_data.own_split(dataset.y_train, dataset.trusted, dataset.num_classes, seed=0)
    np.testing.assert_array_equal(split.meta_indices, [0, 3])
    reviews_path = str(tmp_path / "corrections.csv")
    _write_csv(
        reviews_path,
        ["id", "reviewed_label"],
        [[names[2], "dog"], [names[5], "cat"], [names[6], "dog"]],
    )
    reviews = corrections_lib.read_corrections(
        reviews_path, num_classes=2, class_names=dataset.class_names
    )
    corrected, summary = corrections_lib.correct_split(split, reviews, ids=dataset.train_ids)
    np.testing.assert_array_equal(corrected.meta_indices, [0, 2, 3, 5])
    np.testing.assert_array_equal(corrected.meta_labels, [0, 1, 1, 0])
    np.testing.assert_array_equal(corrected.train_indices, [1, 4, 6, 7])
    np.testing.assert_array_equal(corrected.train_noisy_labels, [1, 0, 1, 1])
    assert summary["changed"] == 3 and summary["corrected_in_training"] == 1

    # A run reads the same, from its flags.
    config = make_config(
        train_data=path,
        test_data=str(tmp_path / "test"),
        label_column="kind",
        image_column="file",
        trusted_column="checked",
        meta_batch_size=2,
    )
    assert run_lib.own_data_options(config) == options
    from_run = run_lib.load_own_data(config)
    np.testing.assert_array_equal(np.asarray(from_run.x_train), np.asarray(dataset.x_train))
    np.testing.assert_array_equal(from_run.trusted, dataset.trusted)
    assert from_run.train_ids == dataset.train_ids


@pytest.mark.slow
def test_the_example_of_docs_data_md_runs(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    for folder, per_class in (("photos", 12), ("trusted", 2), ("test", 4)):
        for k, name in enumerate(("cat", "dog", "emu")):
            for i in range(per_class):
                image = np.clip(rng.normal(60 + 60 * k, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                write_png(str(tmp_path / folder / name / f"{i}.png"), image)
    _write_csv(
        str(tmp_path / "corrections.csv"),
        ["id", "reviewed_label"],
        [["photos/cat/3.png", "dog"], ["photos/dog/0.png", "cat"], ["photos/emu/5.png", "emu"]],
    )
    docs = os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "DATA.md")
    with open(docs) as file:
        example = file.read().split("```python\n")[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(example, "docs/DATA.md", "exec"), {})
    # One review per class: all three join the meta set (the figure docs/DATA.md quotes).
    assert capsys.readouterr().out.splitlines()[0] == "33 9 3"


def test_the_flags_of_own_data_default_to_the_data_floors_options():
    # Config stays free of TensorFlow (the benchmark imports it on JAX), so it cannot take
    # these defaults from own_data: they are checked to agree.
    for field in dataclasses.fields(own_data.OwnDataOptions):
        assert config_lib.Config.field(field.name).default == field.default, field.name
    assert run_lib.own_data_options(make_config()) == own_data.OwnDataOptions()


def test_the_run_refuses_features_with_an_export_dir(tmp_path):
    path = str(tmp_path / "features.npz")
    np.savez(path, x=np.zeros((4, 3)), y=np.arange(4) % 2)
    assert own_data.load_own_data(path).x_train.shape == (4, 3)  # The data floor reads them.
    with pytest.raises(ValueError, match="holds features: drop --export_dir"):
        run_lib.load_own_data(
            make_config(train_data=path, method="ce", export_dir=str(tmp_path / "export"))
        )


# --------------------------------------------------------------------------------------------
# Bad input: one line, before training


def _bad_inputs(root):
    """(config overrides, message) pairs, each with its files written under `root`."""
    rng = np.random.default_rng(4)
    images = _random_images(rng, 6, (4, 4, 1))
    good = os.path.join(root, "good")
    _write_folder(good, images, [0, 1, 2] * 2)
    cases = []

    mostly_unreadable = os.path.join(root, "mostly_unreadable")
    _write_folder(mostly_unreadable, images[:2], [0, 1])
    for name in ("a", "b", "c"):
        with open(os.path.join(mostly_unreadable, "1", f"{name}.png"), "wb") as file:
            file.write(b"not a png")
    cases.append(
        (
            {"train_data": mostly_unreadable, "method": "ce"},
            f"{mostly_unreadable}: 3 of its 5 image files are missing or unreadable, e.g. "
            f"{os.path.join(mostly_unreadable, '1', 'a.png')}: not a readable image",
        )
    )

    empty = os.path.join(root, "empty")
    _write_folder(empty, images, [0, 1] * 3)
    os.makedirs(os.path.join(empty, "2"))
    cases.append(({"train_data": empty, "method": "ce"}, "empty class folder"))

    os.makedirs(os.path.join(root, "flat"))
    cases.append(({"train_data": os.path.join(root, "flat")}, "no class sub-folders"))

    unknown = os.path.join(root, "unknown")
    _write_folder(unknown, images[:4], [0, 1, 2, 7])
    cases.append(
        (
            {"train_data": good, "trusted_data": unknown, "meta_batch_size": 2},
            f"{unknown}: label '7' is not a class of the training data (0, 1, 2)",
        )
    )

    three = os.path.join(root, "three")
    _write_folder(three, images[:3], [0, 1, 2])
    missing = os.path.join(root, "missing")
    _write_folder(missing, images[:4], [0, 1, 0, 1])
    cases.append(
        (
            {"train_data": good, "trusted_data": missing, "meta_batch_size": 2},
            "has no example of class 2",
        )
    )

    cases.append(
        (
            {"train_data": good, "trusted_data": three, "meta_batch_size": 150},
            "--meta_batch_size=150 exceeds the",
        )
    )
    cases.append(
        (
            {"train_data": good, "trusted_data": missing + "/../good", "meta_batch_size": 2},
            f"--trusted_data={missing}/../good is the training set itself",
        )
    )
    copy = os.path.join(root, "copy_of_good")
    os.symlink(good, copy)
    cases.append(
        (
            {"train_data": good, "trusted_data": copy, "meta_batch_size": 2},
            "is the training set itself",
        )
    )
    cases.append(({"train_data": good}, "--method=gdw needs a trusted set"))

    sizes = os.path.join(root, "sizes")
    _write_folder(sizes, images, [0, 1, 2] * 2)
    write_png(os.path.join(sizes, "0", "big.png"), images[0].repeat(2, axis=0))
    cases.append(({"train_data": sizes, "method": "ce"}, "pass --image_size=N"))

    csv_path = os.path.join(root, "no_label.csv")
    _write_csv(csv_path, ["a", "b"], [["1", "2"]])
    cases.append(({"train_data": csv_path}, "no label column 'label'"))

    csv_path = os.path.join(root, "text.csv")
    _write_csv(csv_path, ["a", "label"], [["1", "x"], ["oops", "y"]])
    cases.append(
        (
            {"train_data": csv_path, "method": "ce"},
            f"{csv_path}:3: column 'a' holds 'oops', not a number",
        )
    )

    csv_path = os.path.join(root, "ragged.csv")
    _write_csv(csv_path, ["a", "label"], [["1", "x"], ["2", "y", "3"]])
    cases.append(({"train_data": csv_path, "method": "ce"}, f"{csv_path}:3: 3 fields"))

    csv_path = os.path.join(root, "flag.csv")
    _write_csv(csv_path, ["a", "label", "t"], [["1", "x", "1"], ["2", "y", "maybe"]])
    cases.append(
        ({"train_data": csv_path, "trusted_column": "t"}, f"{csv_path}:3: column 't' holds 'maybe'")
    )

    csv_path = os.path.join(root, "missing_image.csv")
    _write_csv(csv_path, ["image", "label"], [["nowhere.png", "x"]])
    cases.append(({"train_data": csv_path, "method": "ce"}, "nowhere.png: no such image file"))

    csv_path = os.path.join(root, "none_trusted.csv")
    _write_csv(csv_path, ["a", "label", "t"], [["1", "x", "0"], ["2", "y", "no"]])
    cases.append(
        ({"train_data": csv_path, "trusted_column": "t"}, "no row is marked trusted in column 't'")
    )

    features_path = os.path.join(root, "features.npz")
    np.savez(features_path, x=np.zeros((4, 3)), y=np.arange(4) % 2)
    cases.append(
        (
            {"train_data": good, "test_data": features_path, "method": "ce"},
            f"{features_path} holds features but {good} images",
        )
    )

    npz_path = os.path.join(root, "no_y.npz")
    np.savez(npz_path, x=images)
    cases.append(({"train_data": npz_path}, "needs arrays 'x' and 'y'"))

    npz_path = os.path.join(root, "float_images.npz")
    np.savez(npz_path, x=images.astype(np.float32), y=np.arange(6))
    cases.append(({"train_data": npz_path}, "'x' must be uint8 images"))

    npz_path = os.path.join(root, "one_class.npz")
    np.savez(npz_path, x=images, y=np.zeros(6, int))
    cases.append(({"train_data": npz_path}, "needs at least 2 classes"))
    return cases


def test_each_bad_input_is_one_line_error(tmp_path):
    for overrides, message in _bad_inputs(str(tmp_path)):
        with pytest.raises(ValueError) as error:
            run_lib.load_own_data(make_config(**overrides))
        assert message in str(error.value), (overrides, str(error.value))
        assert "\n" not in str(error.value)


def test_the_cli_prints_one_error_line_and_trains_nothing(tmp_path, capsys):
    root = str(tmp_path)
    cases = _bad_inputs(root)
    for overrides, message in (cases[0], cases[3], cases[4]):
        run_dir = os.path.join(root, "run")
        args = [f"--{name}={value}" for name, value in overrides.items()]
        status, err = train_exit_message(capsys, *args, f"--output_dir={run_dir}", "--verbose=0")
        assert status == 2
        assert err.startswith("error: ") and err.count("\n") == 1 and message in err
        assert not os.path.exists(os.path.join(run_dir, "history.csv"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--trusted_data=/tmp"], "need --train_data"),
        (["--test_data=/tmp"], "need --train_data"),
        (["--train_data=/no/such/folder"], "--train_data must be an existing folder"),
        (
            ["--train_data=/tmp", "--trusted_data=auto", "--trusted_column=t"],
            "--trusted_data or --trusted_column, not both",
        ),
        (["--image_size=-1"], "--image_size must be ≥ 0"),
        (["--auto_meta_warmup_epochs=0"], "--auto_meta_warmup_epochs must be a positive"),
        (["--model_weights=/no/such.weights.h5"], "--model_weights is not an existing file"),
        (["--model=ResNet18"], "value should be one of"),
    ],
)
def test_own_data_flags_are_checked_at_parse_time(args, message):
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        flag_values(["prog", *args, "--output_dir=out"])


def test_keras_applications_and_weights_files_as_backbones(tmp_path):
    flag_values = flags.FlagValues()
    config_lib.define_flags(flag_values)
    flag_values(["prog", "--model=MobileNetV2", "--output_dir=out"])
    backbone = backbones.build_model("MobileNetV2", (32, 32, 3), 4)
    assert backbone.output_shape == (None, 4)
    mlp = backbones.build_model("mlp", (5,), 3)
    path = str(tmp_path / "mlp.weights.h5")
    mlp.save_weights(path)
    reloaded = backbones.build_model("mlp", (5,), 3, weights=path)
    for a, b in zip(mlp.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# The automatic trusted set


def test_select_confident_matches_a_numpy_ranking():
    rng = np.random.default_rng(5)
    num_classes, per_class = 4, 3
    given = rng.integers(0, num_classes, 40)
    probabilities = rng.dirichlet(np.ones(num_classes), 40)
    probabilities[[3, 7]] = probabilities[[7, 3]]
    probabilities[11] = probabilities[2]  # a possible tie
    chosen = auto_meta.select_confident(probabilities, given, num_classes, per_class)

    expected = []
    for k in range(num_classes):
        members = [i for i in range(40) if given[i] == k]
        members.sort(key=lambda i: (-probabilities[i, k], i))
        expected += members[:per_class]
    np.testing.assert_array_equal(chosen, sorted(expected))
    assert np.bincount(given[chosen], minlength=num_classes).tolist() == [per_class] * 4
    with pytest.raises(ValueError, match="lower --auto_meta_per_class"):
        auto_meta.select_confident(probabilities, given, num_classes, 40)


def test_neighbour_votes_match_a_brute_force_count(monkeypatch):
    rng = np.random.default_rng(7)
    features = rng.normal(size=(300, 6)).astype(np.float32)
    labels = rng.integers(0, 4, 300)
    rows = np.array([3, 40, 299])

    def brute(voters, k):
        unit = features / np.linalg.norm(features, axis=1, keepdims=True)
        shares = []
        for row in rows:
            nearest = voters[np.argsort(-(unit[voters] @ unit[row]), kind="stable")[:k]]
            shares.append(np.bincount(labels[nearest], minlength=4) / k)
        return np.array(shares)

    votes = neighbours.neighbour_votes(features, labels, features[rows], 4, neighbours=25)
    np.testing.assert_allclose(votes, brute(np.arange(300), 25))
    # More examples than VOTERS: the nearest of a seeded sample vote, as many in proportion.
    monkeypatch.setattr(neighbours, "VOTERS", 150)
    voters = np.sort(np.random.default_rng(0).choice(300, 150, replace=False))
    votes = neighbours.neighbour_votes(features, labels, features[rows], 4, neighbours=40)
    np.testing.assert_allclose(votes, brute(voters, 20))
    # The similarities of one query at a time (chunks bound the memory) give the same votes.
    monkeypatch.setattr(neighbours, "_SIMILARITIES_AT_ONCE", 150)
    one_at_a_time = neighbours.neighbour_votes(features, labels, features[rows], 4, neighbours=40)
    np.testing.assert_array_equal(one_at_a_time, votes)


def test_select_representatives_spreads_over_each_class_and_passes_over_outvoted_labels(
    monkeypatch,
):
    """Each class has two regions (0: A1, A2; 1: B1, B2). Flip noise gives 40 of class 1's
    examples the label 0, and the warm-up model is most confident about exactly those: the most
    confident choice takes them; the neighbours' vote (most of B is labelled 1) does not, and
    the choice takes one typical example of each region: the backed member nearest its
    region's mean."""
    rng = np.random.default_rng(8)
    centres = np.array([[5.0, 0, 0], [0, 0, 5.0], [0, 5.0, 0], [0, -5.0, 0]])
    region = np.repeat([0, 1, 2, 3], 100)
    true = region // 2
    features = (centres[region] + rng.normal(size=(400, 3))).astype(np.float32)
    given = true.copy()
    flipped = rng.choice(np.arange(200, 400), 40, replace=False)
    given[flipped] = 0
    probabilities = np.zeros((400, 2))
    probabilities[:, 0] = np.where(given == 0, rng.uniform(0.6, 0.8, 400), 0.3)
    probabilities[flipped, 0] = 0.9  # the wrong labels look the surest
    probabilities[:, 1] = 1 - probabilities[:, 0]
    monkeypatch.setattr(neighbours, "NEIGHBOURS", 30)
    monkeypatch.setattr(auto_meta, "BACKED_SHARE", 0.25)
    per_class = 2

    confident = auto_meta.select_confident(probabilities, given, 2, per_class)
    assert np.isin(confident[given[confident] == 0], flipped).all()
    chosen = auto_meta.select_representatives(probabilities, features, given, 2, per_class)
    assert not np.isin(chosen, flipped).any()
    np.testing.assert_array_equal(np.sort(region[chosen]), [0, 1, 2, 3])
    # The rule, recomputed by brute force: the margin of the given label among the 30 nearest
    # (cosine) over the other label, ties to the more confident; the first quarter of each
    # class; in each region among them, the member nearest the region's mean (unit features).
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    nearest = np.argsort(-(unit @ unit.T), axis=1, kind="stable")[:, :30]
    own = (given[nearest] == given[:, None]).mean(axis=1)
    margin = own - (1 - own)
    expected = []
    for k in range(2):
        members = np.flatnonzero(given == k)
        order = sorted(members, key=lambda i: (-margin[i], -probabilities[i, k], i))
        backed = np.array(order[: len(members) // 4])
        for r in (2 * k, 2 * k + 1):
            inside = backed[region[backed] == r]
            mean = unit[inside].mean(axis=0)
            expected.append(inside[np.argmin(((unit[inside] - mean) ** 2).sum(axis=1))])
    np.testing.assert_array_equal(chosen, np.sort(expected))
    # Beyond CANDIDATES examples, the labels of a sample of each class in proportion are
    # scored (at least per_class of a class: a class of 6 keeps its 6).
    monkeypatch.setattr(auto_meta, "CANDIDATES", 100)
    rare = np.concatenate([given[:394], [2] * 6])
    probabilities3 = np.concatenate([probabilities, np.zeros((400, 1))], axis=1)
    scored = []
    votes = neighbours.neighbour_votes
    monkeypatch.setattr(
        neighbours,
        "neighbour_votes",
        lambda f, labels, queries, c: scored.append(queries) or votes(f, labels, queries, c),
    )
    sampled = auto_meta.select_representatives(probabilities3, features, rare, 3, 6, seed=3)
    # Classes 0 and 1 hold 238 and 156 of the 400: 100 * 238 // 400 = 59 and 39 scored.
    np.testing.assert_array_equal(np.bincount(rare), [238, 156, 6])
    assert len(scored[0]) == 59 + 39 + 6
    np.testing.assert_array_equal(np.bincount(rare[sampled]), [6, 6, 6])
    np.testing.assert_array_equal(sampled[rare[sampled] == 2], np.arange(394, 400))
    with pytest.raises(ValueError, match="lower --auto_meta_per_class"):
        auto_meta.select_representatives(probabilities, features, given, 2, 250)


def test_select_representatives_fills_the_places_of_empty_clusters(monkeypatch):
    """Fewer distinct backed examples than clusters: k-means leaves clusters empty, and the most
    backed examples not yet chosen take their places (each chosen once)."""
    features = np.repeat(np.eye(3, dtype=np.float32), 20, axis=0)  # three distinct points
    given = np.zeros(60, np.int64)
    given[::2] = 1
    probabilities = np.stack([1 - given * 0.5 - 0.2, given * 0.5 + 0.2], axis=1)
    monkeypatch.setattr(neighbours, "NEIGHBOURS", 10)
    monkeypatch.setattr(auto_meta, "BACKED_SHARE", 1.0)
    chosen = auto_meta.select_representatives(probabilities, features, given, 2, 8)
    assert len(np.unique(chosen)) == 16
    np.testing.assert_array_equal(np.bincount(given[chosen]), [8, 8])
    for k in range(2):  # The three clusters that hold members each give one: all three points.
        np.testing.assert_array_equal(np.unique(chosen[given[chosen] == k] // 20), [0, 1, 2])


def test_auto_split_moves_the_chosen_examples_to_the_meta_set(monkeypatch):
    labels = np.arange(60) % 3
    split = split_lib.make_split(
        labels, 3, num_meta=6, noise="uniform", ratio=0.5, imbalance=1.0, seed=0
    )
    rng = np.random.default_rng(6)
    probabilities = rng.dirichlet(np.ones(3), len(split.train_indices))
    # No features (a backbone without a layer graph): the most confident are chosen.
    monkeypatch.setattr(auto_meta, "warm_up", lambda *args, **kwargs: (probabilities, None))
    config = make_config(trusted_data="auto", auto_meta_per_class=4, meta_batch_size=12)
    auto = auto_meta.auto_split(
        split, config, "mlp", np.zeros((60, 2), np.float32), mean=0, std=1, augment=False
    )

    chosen = auto_meta.select_confident(probabilities, split.train_noisy_labels, 3, 4)
    assert auto.meta_source == "auto" and len(auto.meta_indices) == 12
    np.testing.assert_array_equal(auto.meta_indices, split.train_indices[chosen])
    np.testing.assert_array_equal(auto.meta_labels, split.train_noisy_labels[chosen])
    assert not np.intersect1d(auto.meta_indices, auto.train_indices).size
    assert not np.intersect1d(auto.meta_indices, split.meta_indices).size
    np.testing.assert_array_equal(
        np.sort(np.r_[auto.meta_indices, auto.train_indices]), split.train_indices
    )
    np.testing.assert_array_equal(auto.train_true_labels, labels[auto.train_indices])
    np.testing.assert_array_equal(
        auto.train_corrupted, auto.train_true_labels != auto.train_noisy_labels
    )
    assert auto.realised_noise_rate == pytest.approx(auto.train_corrupted.mean())
    summary = auto_meta.summary(auto, config, true_labels=labels)
    assert summary["purity"] == pytest.approx(
        np.mean(labels[auto.meta_indices] == auto.meta_labels)
    )


def test_a_saved_config_without_a_newer_flag_resumes_with_its_default():
    saved = make_config().to_dict()
    for key in ("weight_net_hidden", "auto_meta_per_class"):
        del saved[key]  # written before these flags existed: they ran with their defaults
    assert run_dir.config_differences(saved, make_config()) == []
    assert run_dir.config_differences(saved, make_config(weight_net_hidden=50)) == [
        "weight_net_hidden: saved 100, now 50"
    ]
    assert run_dir.config_differences(saved, make_config(model="small_cnn")) == [
        "model: saved 'auto', now 'small_cnn'"
    ]


def test_split_files_without_the_new_fields_still_load(tmp_path):
    split = split_lib.make_split(
        np.arange(30) % 3, 3, num_meta=3, noise="flip", ratio=0.2, imbalance=1.0, seed=0
    )
    fields = dataclasses.asdict(split)
    del fields["truth_known"], fields["meta_source"]
    np.savez(tmp_path / "old.npz", **fields)
    loaded = split_lib.Split.load(str(tmp_path / "old.npz"))
    assert loaded.truth_known and loaded.meta_source == "clean"
    np.testing.assert_array_equal(loaded.train_noisy_labels, split.train_noisy_labels)


# --------------------------------------------------------------------------------------------
# End to end


@pytest.mark.slow
def test_features_csv_run_reports_no_made_up_truth_and_resumes(tmp_path):
    rng = np.random.default_rng(7)
    centres = rng.normal(scale=3, size=(3, 4))
    y = np.arange(150) % 3
    x = centres[y] + rng.normal(size=(150, 4))
    path = str(tmp_path / "data.csv")
    _write_csv(
        path,
        ["a", "b", "c", "d", "label", "trusted"],
        [
            [*map(repr, row), f"class{k}", int(i < 30)]
            for i, (row, k) in enumerate(zip(x.tolist(), y))
        ],
    )
    run_dir = str(tmp_path / "run")
    args = [
        f"--train_data={path}",
        "--trusted_column=trusted",
        "--meta_batch_size=30",
        "--batch_size=40",
        "--epochs=2",
        "--lr=0.05",
        "--verbose=0",
        f"--output_dir={run_dir}",
    ]
    train_main(*args)

    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert results["config"]["model"] == "mlp" and results["config"]["dataset"] == "own_data"
    assert results["config"]["class_names"] == ["class0", "class1", "class2"]
    assert results["test_accuracy"] is None  # no --test_data
    assert results["detection_auroc"] is None
    assert set(results["noise"].values()) == {None}
    assert set(results["example_weights"].values()) == {None}
    split = split_lib.Split.load(os.path.join(run_dir, "split.npz"))
    assert not split.truth_known and split.meta_source == "trusted"
    np.testing.assert_array_equal(split.meta_indices, np.arange(30))
    with np.load(os.path.join(run_dir, "example_weights.npz")) as weights:
        assert set(weights.files) == {
            "index",
            "given_label",
            "instance_weight",
            "labelled_class_weight",
            "id",
        }
        np.testing.assert_array_equal(weights["id"], [f"{path}:{i + 2}" for i in range(30, 150)])
        np.testing.assert_array_equal(weights["given_label"], y[30:])

    # An unfinished run (no results.json) resumes from its split; another config is refused.
    os.remove(os.path.join(run_dir, "results.json"))
    train_main(*args, "--epochs=2")
    assert json.load(open(os.path.join(run_dir, "results.json")))["test_accuracy"] is None
    os.remove(os.path.join(run_dir, "results.json"))
    with pytest.raises(SystemExit):
        train_main(*args[:-1], "--label_column=a", f"--output_dir={run_dir}")


def _write_digits(root, changed_fraction=0.25, seed=0):
    """scikit-learn's 1,797 8x8 digits as folder trees train/trusted/test; some training
    labels changed. Returns the file names (`<index>.png`) of the changed examples."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    test, trusted, train_part = order[:300], order[300:400], order[400:]
    given = digits.target.copy()
    change = train_part[rng.random(len(train_part)) < changed_fraction]
    given[change] = (given[change] + rng.integers(1, 10, len(change))) % 10
    for part, indices in (("train", train_part), ("trusted", trusted), ("test", test)):
        for i in indices:
            write_png(os.path.join(root, part, str(given[i]), f"{i:04d}.png"), images[i])
    return {f"{i:04d}.png" for i in change}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits folder trees (written once for this module) and the changed file names."""
    root = str(tmp_path_factory.mktemp("digits"))
    return root, _write_digits(root)


def _changed_mask(ids, changed):
    return np.array([os.path.basename(str(path)) in changed for path in ids])


@pytest.mark.slow
def test_real_digits_folder_tree_end_to_end_low_weights_on_changed_labels(tmp_path, digits):
    from sklearn.metrics import roc_auc_score

    root, changed = digits
    run_dir = str(tmp_path / "run")
    train_main(
        f"--train_data={root}/train",
        f"--trusted_data={root}/trusted",
        f"--test_data={root}/test",
        "--epochs=20",
        "--lr=0.05",
        "--verbose=0",
        f"--output_dir={run_dir}",
    )

    results = json.load(open(os.path.join(run_dir, "results.json")))
    assert results["config"]["model"] == "small_cnn"
    assert results["test_accuracy"]["last"] > 0.85  # 10 classes; chance is 0.1
    with np.load(os.path.join(run_dir, "example_weights.npz")) as weights:
        is_changed = _changed_mask(weights["id"], changed)
        weight = weights["instance_weight"]
    assert 0.2 < is_changed.mean() < 0.3 and len(weight) == 1397
    # Most changed labels get low weights: below the median, and ranked low overall.
    assert np.mean(weight[is_changed] < np.median(weight)) > 0.9
    assert roc_auc_score(is_changed, -weight) > 0.9
    issues = os.path.join(run_dir, "label_issues.csv")
    if os.path.exists(issues):  # Written by the label-issues output, where present.
        with open(issues, newline="") as file:
            rows = [row for row in csv.DictReader(file) if row["set"] == "training"]
        assert len(rows) == len(weight)


@pytest.mark.slow
def test_automatic_trusted_set_on_real_digits_is_pure(tmp_path, digits):
    root, changed = digits
    run_dir = str(tmp_path / "run")
    train_main(
        f"--train_data={root}/train",
        "--trusted_data=auto",
        "--auto_meta_per_class=10",
        "--auto_meta_warmup_epochs=3",
        "--epochs=1",
        "--lr=0.05",
        "--verbose=0",
        f"--output_dir={run_dir}",
    )

    results = json.load(open(os.path.join(run_dir, "results.json")))
    chosen = results["auto_meta"]
    assert chosen["purity"] is None  # the truth is unknown to the run
    assert len(chosen["ids"]) == 100 and chosen["per_class"] == 10
    # The chosen examples' labels were almost never the changed ones (25% of the pool).
    assert _changed_mask(chosen["ids"], changed).mean() <= 0.05
    split = split_lib.Split.load(os.path.join(run_dir, "split.npz"))
    assert split.meta_source == "auto" and not split.truth_known
    np.testing.assert_array_equal(np.bincount(split.meta_labels, minlength=10), [10] * 10)
    with np.load(os.path.join(run_dir, "example_weights.npz")) as weights:
        assert not set(weights["id"]) & set(chosen["ids"])
        assert len(weights["id"]) == 1397 - 100
    # The trusted set's estimate is reported with what it rests on, but the flags stay
    # score < 0: an automatic trusted set holds clear examples and undercounts.
    estimate = results["wrong_labels"]["estimate"]
    assert estimate["trusted_source"] == "auto" and not estimate["flags_cut_at_estimate"]
    assert "automatic trusted set" in estimate["rests_on"]
    table = label_issues.read_label_issues_csv(os.path.join(run_dir, "label_issues.csv"))
    np.testing.assert_array_equal(
        np.array(table["flagged"]) == "1", np.array(table["score"], float) < 0
    )
    assert results["wrong_labels"]["flagged"] == int((np.array(table["score"], float) < 0).sum())


@pytest.mark.slow
@pytest.mark.needs_debian("dataset-fashion-mnist")
def test_automatic_trusted_set_on_the_benchmark_reports_its_purity(tmp_path):
    run_dir = str(tmp_path / "run")
    train_main(
        "--dataset=fashion_mnist",
        "--max_train_examples=600",
        "--max_test_examples=100",
        "--noise=uniform",
        "--ratio=0.6",
        "--num_meta=50",
        "--trusted_data=auto",
        "--auto_meta_per_class=5",
        "--auto_meta_warmup_epochs=2",
        "--batch_size=50",
        "--meta_batch_size=50",
        "--model=mlp",
        "--lr=0.02",
        "--epochs=1",
        "--verbose=0",
        f"--output_dir={run_dir}",
    )

    results = json.load(open(os.path.join(run_dir, "results.json")))
    split = split_lib.Split.load(os.path.join(run_dir, "split.npz"))
    labels = datasets.load_dataset("fashion_mnist").y_train[:600]
    assert split.meta_source == "auto" and split.truth_known and len(split.meta_indices) == 50
    # The noisy pool is the clean-meta protocol's training set: the same indices, less the 50.
    base = split_lib.make_split(
        labels, 10, num_meta=50, noise="uniform", ratio=0.6, imbalance=1.0, seed=0
    )
    np.testing.assert_array_equal(
        np.sort(np.r_[split.meta_indices, split.train_indices]), base.train_indices
    )
    purity = np.mean(labels[split.meta_indices] == split.meta_labels)
    assert results["auto_meta"]["purity"] == pytest.approx(purity)
    assert results["noise"]["realised_rate"] == pytest.approx(split.train_corrupted.mean())
    assert results["detection_auroc"] is not None
