"""Row ids held as one bytes array (`gdw_tf.data.ids`): they behave as the tuple of `str` they
replace, wherever the ids are read (corrections, label_issues.csv, the review page)."""

import os

import numpy as np
import pytest
import tensorflow as tf

from gdw_tf.data import corrections as corrections_lib
from gdw_tf.data import ids as ids_lib
from gdw_tf.data import image_files
from gdw_tf.data import own_data
from gdw_tf.labels import label_issues

NAMES = ("a/1.png", "b/été.png", "=SUM(A1)", "c/" + "x" * 60 + ".jpg", "d/2.png", "7")


def test_ids_behave_as_the_tuple_of_str_they_replace():
    ids = ids_lib.Ids(ids_lib.encode(NAMES))
    assert len(ids) == len(NAMES) and ids == NAMES and ids == list(NAMES)
    assert [ids[i] for i in range(-6, 6)] == [NAMES[i] for i in range(-6, 6)]
    assert all(type(name) is str for name in ids)
    assert tuple(ids) == NAMES and "b/été.png" in ids and ids.index("7") == 5
    assert ids[1:4] == NAMES[1:4] and ids[::-2] == NAMES[::-2]
    assert ids[np.array([5, 0, 2])] == (NAMES[5], NAMES[0], NAMES[2])
    mask = np.array([True, False, True, False, False, True])
    assert ids[mask] == tuple(name for name, keep in zip(NAMES, mask) if keep)
    assert ids != NAMES[:-1] and ids != NAMES[::-1]
    np.testing.assert_array_equal(np.asarray(ids), np.array(NAMES))
    with pytest.raises(IndexError):
        ids[6]
    with pytest.raises(TypeError, match="bytes array"):
        ids_lib.Ids(np.array(NAMES))


def test_a_path_that_is_not_utf8_comes_back_as_it_was():
    name = os.fsdecode(b"caf\xe9/\xff.png")  # Latin-1 bytes: surrogate escapes in a str.
    ids = ids_lib.Ids(ids_lib.encode([name, "plain.png"]))
    assert ids[0] == name and os.fsencode(ids[0]) == b"caf\xe9/\xff.png"


def test_consecutive_rows_are_a_view_and_others_a_copy():
    names = ids_lib.encode(f"{i}.png" for i in range(10))
    ids = ids_lib.Ids(names)
    files = image_files.ImageFiles(names, height=2, width=2, channels=1)
    consecutive, scattered = np.arange(3, 8), np.array([3, 4, 6])
    assert ids_lib.as_slice(consecutive) == slice(3, 8)
    for index in (scattered, np.array([4, 3]), np.array([-2, -1]), np.array([True] * 10)):
        assert ids_lib.as_slice(index) is index
    assert np.shares_memory(ids[consecutive].names, names)
    assert np.shares_memory(files[consecutive].keys, names)
    assert not np.shares_memory(ids[scattered].names, names)
    assert ids[consecutive] == tuple(f"{i}.png" for i in range(3, 8))
    np.testing.assert_array_equal(files[consecutive].keys, names[3:8])
    np.testing.assert_array_equal(files[scattered].keys, names[scattered])


def _write_images(folder, names):
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tf.io.write_file(path, tf.io.encode_png(np.full((4, 4, 1), 9, np.uint8)))


def test_a_folders_ids_are_its_image_keys_and_a_lists_its_names(tmp_path):
    names = ["cat/1.png", "cat/2.png", "dog/3.png", "dog/4.png"]
    _write_images(str(tmp_path / "train"), names)
    _write_images(str(tmp_path / "trusted"), ["cat/t.png", "dog/t.png"])
    dataset = own_data.load_own_data(
        str(tmp_path / "train"), trusted_data=str(tmp_path / "trusted")
    )
    paths = [str(tmp_path / "train" / n) for n in names]
    paths += [str(tmp_path / "trusted" / n) for n in ("cat/t.png", "dog/t.png")]
    assert dataset.train_ids == tuple(paths)
    # The paths are held once: the ids are the training array's own keys.
    assert dataset.train_ids.names is dataset.x_train.keys

    (tmp_path / "train" / "list.txt").write_text("".join(f"{n} {n[:3]}\n" for n in names))
    listed = own_data.load_own_data(
        str(tmp_path / "train" / "list.txt"), trusted_data=str(tmp_path / "trusted")
    )
    assert listed.train_ids == tuple(names) + (paths[4], paths[5])
    assert not np.shares_memory(listed.train_ids.names, listed.x_train.keys)
    # The reviews of a run find their rows by these ids.
    found, _ = corrections_lib.locate_ids([names[2], paths[5]], train_ids=listed.train_ids)
    np.testing.assert_array_equal(found, [2, 5])


def test_label_issues_of_ids_write_the_csv_that_the_tuple_of_str_wrote(tmp_path):
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), len(NAMES))
    given = rng.integers(0, 3, len(NAMES))
    paths = []
    for ids in (NAMES, ids_lib.Ids(ids_lib.encode(NAMES))):
        issues = label_issues.rank_label_issues(probabilities, given, ids=ids)
        assert tuple(issues.id) == tuple(NAMES[i] for i in issues.position)
        paths.append(str(tmp_path / f"{type(ids).__name__}.csv"))
        label_issues.write_label_issues_csv(paths[-1], issues)
    with open(paths[0], "rb") as a, open(paths[1], "rb") as b:
        assert a.read() == b.read()
    with pytest.raises(ValueError, match="ids must have 6 entries"):
        label_issues.rank_label_issues(
            probabilities, given, ids=ids_lib.Ids(ids_lib.encode(NAMES[:5]))
        )
