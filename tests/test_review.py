"""Review and fix: corrections.csv read and applied (gdw_tf.data.corrections), the review page
(gdw_tf.pages.review), and the loop train → review in a real browser → train again."""

import csv
import dataclasses
import html.parser
import json
import os

import numpy as np
import pytest
from conftest import TINY_FASHION_MNIST
from conftest import train_exit_message
from conftest import train_main

from gdw_tf.data import corrections as corrections_lib
from gdw_tf.data import split as split_lib
from gdw_tf.labels import label_issues
from gdw_tf.pages import review
from gdw_tf.runs import run_dir as run_dir_lib

CHROMIUM = "/usr/bin/chromium"


def _write_csv(path, rows, header=("id", "given_label", "reviewed_label")):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


# --------------------------------------------------------------------------------------------
# Reading corrections.csv


def test_read_corrections_merges_files_accepts_names_and_skips_empty_reviews(tmp_path):
    first = _write_csv(tmp_path / "a.csv", [["7", 1, 2], ["a,b.png", 0, "cat"], ["9", 3, ""]])
    second = _write_csv(tmp_path / "b.csv", [["7", 1, "2"], ["11", 2, 0]])
    reviews = corrections_lib.read_corrections(
        f"{first},{second}", num_classes=3, class_names=["dog", "cat", "bird"]
    )
    assert reviews.ids == ("7", "a,b.png", "11")  # "9" was not reviewed; "7" twice, agreeing
    np.testing.assert_array_equal(reviews.reviewed_labels, [2, 1, 0])
    assert reviews.sources == (f"{first}:2", f"{first}:3", f"{second}:3")
    assert reviews.files == (first, second)


@pytest.mark.parametrize(
    "rows, header, message",
    [
        ([["1", 0, 3]], None, r"reviewed_label '3' is not a class: give an integer in \[0, 3\)"),
        ([["1", 0, "cow"]], None, "reviewed_label 'cow' is not a class"),
        ([["1", 0, 2], ["1", 0, 1]], None, r"id '1' is reviewed as 2 \(.*:2\) and as 1 \(.*:3\)"),
        ([["1", 2]], ("id", "label"), "lacks the column"),
    ],
)
def test_bad_corrections_are_one_line_errors(tmp_path, rows, header, message):
    path = _write_csv(tmp_path / "c.csv", rows, header or ("id", "given_label", "reviewed_label"))
    with pytest.raises(ValueError, match=message) as info:
        corrections_lib.read_corrections(path, num_classes=3)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="does not exist"):
        corrections_lib.read_corrections(str(tmp_path / "missing.csv"), num_classes=3)


def test_a_later_file_replaces_an_earlier_review_and_remove_takes_an_example_out(tmp_path):
    """The second look: round 2's corrections.csv, given after round 1's, replaces its review
    of an id (a label or `remove`); within one file, two reviews of an id must agree."""
    first = _write_csv(tmp_path / "a.csv", [["5", 0, 1], ["6", 0, 2], ["8", 1, 1]])
    second = _write_csv(
        tmp_path / "b.csv",
        [["5", 0, 2, ""], ["8", 1, "", "remove"], ["9", 0, "", "skip"]],
        header=("id", "given_label", "reviewed_label", "decision"),
    )
    reviews = corrections_lib.read_corrections([first, second], num_classes=3)
    assert reviews.ids == ("5", "6", "8")  # where each id was first read; "9" not reviewed
    np.testing.assert_array_equal(reviews.reviewed_labels, [2, 2, corrections_lib.REMOVED])
    assert reviews.sources == (f"{second}:2", f"{first}:3", f"{second}:3")
    reviews = corrections_lib.read_corrections([second, first], num_classes=3)
    np.testing.assert_array_equal(reviews.reviewed_labels, [1, 1, 2])  # 5, 8, then 6
    both = _write_csv(
        tmp_path / "c.csv",
        [["5", 0, 1, ""], ["5", 0, "", "remove"]],
        header=("id", "given_label", "reviewed_label", "decision"),
    )
    with pytest.raises(ValueError, match=r"id '5' is reviewed as 1 .*c.csv:2.* as removed"):
        corrections_lib.read_corrections(both, num_classes=3)


# --------------------------------------------------------------------------------------------
# Which reviewed examples join the meta set, and the split they make


def test_meta_additions_take_the_first_min_count_of_each_class():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    joins = corrections_lib.meta_additions(labels, 4)
    smallest = min(int((labels == k).sum()) for k in range(4))
    seen = dict.fromkeys(range(4), 0)
    expected = []
    for label in labels:  # loop: the first `smallest` of each class, in order
        expected.append(seen[int(label)] < smallest)
        seen[int(label)] += 1
    np.testing.assert_array_equal(joins, expected)
    assert joins.sum() == 4 * smallest
    # A class nobody reviewed: nothing joins (the meta set would lose its balance).
    assert not corrections_lib.meta_additions(np.array([0, 0, 1, 2]), 4).any()


def test_correct_split_moves_a_balanced_share_to_the_meta_set_and_relabels_the_rest(tmp_path):
    labels = np.repeat(np.arange(3), 40)
    split = split_lib.make_split(
        labels, 3, num_meta=15, noise="uniform", ratio=0.6, imbalance=1.0, seed=3
    )
    rng = np.random.default_rng(1)
    reviewed_train = rng.choice(len(split.train_indices), 20, replace=False)
    reviewed_meta = [0, 7]
    ids = [str(i) for i in split.train_indices[reviewed_train]] + [
        str(i) for i in split.meta_indices[reviewed_meta]
    ]
    new_labels = rng.integers(0, 3, len(ids))
    reviews = corrections_lib.Corrections(
        ids=tuple(ids), reviewed_labels=new_labels, sources=("x",) * len(ids), files=("f.csv",)
    )
    corrected, summary = corrections_lib.correct_split(split, reviews)

    train_labels = new_labels[:20]
    per_class = min(int((train_labels == k).sum()) for k in range(3))
    before = (
        split.train_noisy_labels[reviewed_train].tolist()
        + split.meta_labels[reviewed_meta].tolist()
    )
    assert summary == {
        "files": ["f.csv"],
        "reviewed": 22,
        "changed": int(np.sum(np.array(before) != new_labels)),
        "added_to_trusted": 3 * per_class,
        "added_to_trusted_per_class": per_class,
        "relabelled_in_trusted": 2,
        "corrected_in_training": 20 - 3 * per_class,
        "removed_from_trusted": 0,
        "removed_from_training": 0,
        "automatic_replaced": 0,
    }
    assert json.loads(corrected.corrections) == summary
    np.testing.assert_array_equal(corrected.reviewed_indices, np.sort([int(i) for i in ids]))
    # Nothing lost or duplicated; the meta set grew by per_class in every class.
    np.testing.assert_array_equal(
        np.sort(np.concatenate([corrected.meta_indices, corrected.train_indices])),
        np.sort(np.concatenate([split.meta_indices, split.train_indices])),
    )
    old_meta = split.meta_labels.copy()
    old_meta[reviewed_meta] = new_labels[20:]
    np.testing.assert_array_equal(
        np.bincount(corrected.meta_labels, minlength=3),
        np.bincount(old_meta, minlength=3) + per_class,
    )
    # Every example's label: the reviewed one where reviewed, the old one elsewhere.
    label_of = dict(zip(split.train_indices.tolist(), split.train_noisy_labels.tolist()))
    label_of.update(zip(split.meta_indices.tolist(), split.meta_labels.tolist()))
    label_of.update({int(i): int(lab) for i, lab in zip(ids, new_labels)})
    for indices, labels_now in (
        (corrected.meta_indices, corrected.meta_labels),
        (corrected.train_indices, corrected.train_noisy_labels),
    ):
        assert [label_of[i] for i in indices.tolist()] == labels_now.tolist()
    true_of = dict(zip(split.train_indices.tolist(), split.train_true_labels.tolist()))
    np.testing.assert_array_equal(
        corrected.train_corrupted,
        [true_of[i] != label_of[i] for i in corrected.train_indices.tolist()],
    )
    assert corrected.realised_noise_rate == pytest.approx(corrected.train_corrupted.mean())
    # The split saves and loads with its summary and reviewed examples.
    corrected.save(str(tmp_path / "split.npz"))
    loaded = split_lib.Split.load(str(tmp_path / "split.npz"))
    assert json.loads(loaded.corrections) == summary
    np.testing.assert_array_equal(loaded.reviewed_indices, corrected.reviewed_indices)
    with pytest.raises(ValueError, match=r"1 reviewed id\(s\) are not in the training data"):
        corrections_lib.correct_split(
            split,
            corrections_lib.Corrections(("99999",), np.array([0]), ("x",), ("f.csv",)),
        )


def test_reviews_take_the_place_of_an_automatic_trusted_set_class_by_class():
    """An automatic set of 6 per class. Reviewed examples of classes 0, 1, 2: 3, 2 and 1,
    and one automatic example of class 2 relabelled to 1. Each reviewed example takes the
    place of an automatic one of its class; the replaced ones leave the run."""
    labels = np.repeat(np.arange(3), 40)
    split = split_lib.make_split(
        labels, 3, num_meta=3, noise="uniform", ratio=0.0, imbalance=1.0, seed=3
    ).without_meta()
    automatic = np.concatenate([np.flatnonzero(split.train_true_labels == k)[:6] for k in range(3)])
    split = dataclasses.replace(split.move_to_meta(automatic), meta_source="auto")
    assert np.bincount(split.meta_labels).tolist() == [6, 6, 6]
    train_ids = split.train_indices[[0, 1, 2, 3, 4, 5]]
    relabelled = split.meta_indices[np.flatnonzero(split.meta_labels == 2)[0]]
    ids = [str(i) for i in train_ids] + [str(relabelled)]
    reviews = corrections_lib.Corrections(
        ids=tuple(ids),
        reviewed_labels=np.array([0, 0, 0, 1, 1, 2, 1]),
        sources=("x",) * 7,
        files=("f.csv",),
    )
    corrected, summary = corrections_lib.correct_split(split, reviews)
    # Class 0: 3 reviewed + 3 automatic; class 1: 3 reviewed (two and the relabelled one) + 3;
    # class 2: 1 reviewed + 4 (of the 5 automatic left).
    assert np.bincount(corrected.meta_labels, minlength=3).tolist() == [6, 6, 5]
    assert np.isin(train_ids, corrected.meta_indices).all()
    assert relabelled in corrected.meta_indices
    assert summary["automatic_replaced"] == 3 + 3 + 1
    assert summary["added_to_trusted"] == 6 and summary["corrected_in_training"] == 0
    # The replaced automatic examples leave the run; the training set loses the reviewed ones.
    assert len(corrected.train_indices) == len(split.train_indices) - 6
    replaced = np.setdiff1d(split.meta_indices, corrected.meta_indices)
    assert len(replaced) == 7 and not np.isin(replaced, corrected.train_indices).any()
    # Reviews beyond a class's automatic examples grow it.
    more = corrections_lib.Corrections(
        ids=tuple(str(i) for i in split.train_indices[:10]),
        reviewed_labels=np.zeros(10, np.int64),
        sources=("x",) * 10,
        files=("f.csv",),
    )
    corrected, _ = corrections_lib.correct_split(split, more)
    assert np.bincount(corrected.meta_labels, minlength=3).tolist() == [10, 6, 6]


def test_remove_takes_trusted_and_training_examples_out_of_the_split():
    labels = np.repeat(np.arange(3), 40)
    split = split_lib.make_split(
        labels, 3, num_meta=15, noise="uniform", ratio=0.6, imbalance=1.0, seed=3
    )
    removed = corrections_lib.REMOVED
    ids = [split.meta_indices[2], split.train_indices[5], split.train_indices[9]]
    reviews = corrections_lib.Corrections(
        ids=tuple(str(i) for i in ids),
        reviewed_labels=np.array([removed, removed, 1]),
        sources=("x",) * 3,
        files=("f.csv",),
    )
    corrected, summary = corrections_lib.correct_split(split, reviews)
    assert (summary["removed_from_trusted"], summary["removed_from_training"]) == (1, 1)
    assert (summary["added_to_trusted"], summary["corrected_in_training"]) == (0, 1)
    kept = np.concatenate([corrected.meta_indices, corrected.train_indices])
    assert not np.isin(ids[:2], kept).any()
    assert len(kept) == len(split.meta_indices) + len(split.train_indices) - 2
    position = int(np.flatnonzero(corrected.train_indices == ids[2])[0])
    assert corrected.train_noisy_labels[position] == 1
    np.testing.assert_array_equal(corrected.reviewed_indices, [ids[2]])
    true_of = dict(zip(split.train_indices.tolist(), split.train_true_labels.tolist()))
    assert corrected.train_true_labels.tolist() == [
        true_of[i] for i in corrected.train_indices.tolist()
    ]


def test_apply_corrections_for_fit_users(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(30, 4)).astype("float32")
    y = rng.integers(0, 2, 30)
    x_meta, y_meta = rng.normal(size=(4, 4)).astype("float32"), np.array([0, 1, 0, 1])
    rows = [[3, y[3], 1], [8, y[8], 0], [12, y[12], 1], [20, y[20], 1]]
    path = _write_csv(tmp_path / "c.csv", rows)
    fixed = corrections_lib.apply_corrections(x, y, corrections=path, meta_data=(x_meta, y_meta))
    # Classes reviewed: 1 three times, 0 once → one of each joins: ids 3 (first 1) and 8.
    np.testing.assert_array_equal(fixed.meta_data[0], np.r_[x_meta, x[[3, 8]]])
    np.testing.assert_array_equal(fixed.meta_data[1], [0, 1, 0, 1, 1, 0])
    keep = np.setdiff1d(np.arange(30), [3, 8])
    np.testing.assert_array_equal(fixed.ids, keep)
    np.testing.assert_array_equal(fixed.x, x[keep])
    expected_y = y.copy()
    expected_y[[12, 20]] = 1
    np.testing.assert_array_equal(fixed.y, expected_y[keep])
    changed = sum(int(y[i] != lab) for i, _, lab in rows)
    assert fixed.summary["reviewed"] == 4 and fixed.summary["changed"] == changed
    assert fixed.summary["added_to_trusted"] == 2 and fixed.summary["corrected_in_training"] == 2
    # Ids given as file names; an unknown one is refused.
    names = np.array([f"img{i}.png" for i in range(30)])
    with pytest.raises(ValueError, match=r"4 reviewed id\(s\) are not in the training data"):
        corrections_lib.apply_corrections(x, y, corrections=path, ids=names)
    # Paths match however the folder was spelled ("./photos//a.png" is "photos/a.png").
    paths = np.array([f"photos/img{i}.png" for i in range(30)])
    spelled = _write_csv(
        tmp_path / "p.csv", [[f"./photos//img{i}.png", y[i], lab] for i, _, lab in rows]
    )
    by_path = corrections_lib.apply_corrections(x, y, corrections=spelled, ids=paths)
    np.testing.assert_array_equal(by_path.y, fixed.y)
    np.testing.assert_array_equal(by_path.ids, paths[keep])


# --------------------------------------------------------------------------------------------
# The page's data and its escaping


def _in_rounds(suggested):
    """Positions of `suggested` (labels of examples ranked most suspicious first) in review
    order, by queues: each round takes the next example of every class, rank order within."""
    queues = {}
    for position, label in enumerate(suggested):
        queues.setdefault(int(label), []).append(position)
    order = []
    for r in range(max((len(q) for q in queues.values()), default=0)):
        order += sorted(q[r] for q in queues.values() if len(q) > r)
    return order


def _issues(num=40, classes=4, names=None, seed=0):
    rng = np.random.default_rng(seed)
    probabilities = rng.dirichlet(np.ones(classes), num)
    given = rng.integers(0, classes, num)
    return (
        probabilities,
        given,
        label_issues.rank_label_issues(
            probabilities, given, ids=np.array([f"f{i}.png" for i in range(num)]), class_names=names
        ),
    )


def test_review_data_lists_the_examples_in_review_order_with_their_top_classes():
    probabilities, given, issues = _issues()
    images = np.random.default_rng(1).integers(0, 256, (40, 12, 12, 1), dtype=np.uint8)
    data = review.review_data(issues, images=images, run_name="r", limit=1000)
    # No trusted set, nothing reviewed: the sample of every training example, in rounds over
    # the suggested classes (label_issues.review_order, tested there).
    _, positions = label_issues.review_order(issues)
    assert [item["id"] for item in data["items"]] == [issues.id[p] for p in positions]
    assert sorted(item["id"] for item in data["items"]) == sorted(f"f{i}.png" for i in range(40))
    classes = {item["suggested"] for item in data["items"]}
    first_round = [item["suggested"] for item in data["items"][: len(classes)]]
    assert len(set(first_round)) == len(first_round)
    flagged = [i for i in range(40) if probabilities[i].argmax() != given[i]]
    assert data["num_flagged"] == len(flagged) and data["num_examples"] == 40
    for item in data["items"]:
        i = int(item["id"][1:-4])
        assert item["set"] == "training" and item["reviewed"] is False
        order = np.argsort(-probabilities[i])
        assert [k for k, _ in item["top"]] == order.tolist()  # C = 4 ≤ TOP_K: every class
        np.testing.assert_allclose([p for _, p in item["top"]], probabilities[i][order], atol=1e-4)
        assert item["given"] == given[i]
        assert item["suggested"] == (order[0] if order[0] != given[i] or i not in flagged else 0)
        assert item["image"].startswith("data:image/png;base64,")
        np.testing.assert_array_equal(images[i][..., 0].shape, (12, 12))
    assert len(review.review_data(issues, images=images, limit=3)["items"]) == 3
    # Another run (other scores) stores its decisions under another key.
    other = review.review_data(_issues(seed=5)[2], images=images, run_name="r")
    assert other["key"] != data["key"] and data["key"].startswith("gdw_tf.review/r/")


def test_label_issues_csv_review_rank_is_the_pages_order(tmp_path):
    """A reviewer who sorts label_issues.csv by review_rank meets the page's examples in the
    page's order, trusted ones included."""
    probabilities, given, issues = _issues(num=60)
    trusted_labels = np.arange(12) % 4
    trusted = np.full((12, 4), 0.1)
    trusted[np.arange(12), trusted_labels] = 0.7
    trusted[[2, 9]] = [0.7, 0.1, 0.1, 0.1]  # the model contradicts two trusted labels
    issues = label_issues.rank_label_issues(
        probabilities,
        given,
        ids=np.array([f"f{i}.png" for i in range(60)]),
        trusted_probabilities=trusted,
        trusted_labels=trusted_labels,
        trusted_ids=np.array([f"t{i}.png" for i in range(12)]),
    )
    path = str(tmp_path / "label_issues.csv")
    label_issues.write_label_issues_csv(path, issues)
    table = label_issues.read_label_issues_csv(path)
    ranked = sorted(
        (int(rank), example_id, kind)
        for rank, example_id, kind in zip(table["review_rank"], table["id"], table["set"])
        if rank
    )
    page = [(item["id"], item["set"]) for item in review.review_data(issues, limit=1000)["items"]]
    assert [(example_id, kind) for _, example_id, kind in ranked] == page
    assert [rank for rank, _, _ in ranked] == list(range(1, len(page) + 1))
    assert page[:2] == [("t9.png", "trusted"), ("t2.png", "trusted")] or page[:2] == [
        ("t2.png", "trusted"),
        ("t9.png", "trusted"),
    ]
    assert len(page) == 2 + 60  # the contradicted trusted examples, then every training one


class _ScriptData(html.parser.HTMLParser):
    """The page's `<script>` elements: [id, text] each."""

    def __init__(self):
        super().__init__()
        self.scripts, self._inside = [], False

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append([dict(attrs).get("id"), ""])
            self._inside = True

    def handle_endtag(self, tag):
        self._inside = False

    def handle_data(self, data):
        if self._inside:
            self.scripts[-1][1] += data


def test_user_text_cannot_break_out_of_the_page(tmp_path):
    hostile = ["</script><script>alert(1)</script>", "a & b <i>", '"quoted", comma', "{data}"]
    _, _, issues = _issues(names=hostile)
    issues.id[:] = "</script><img src=x onerror=alert(2)>"
    run_dir = tmp_path / "{title}<run>"
    run_dir.mkdir()
    path = run_dir_lib.write_review(str(run_dir), issues, images=np.zeros((40, 3)))
    with open(path, encoding="utf-8") as file:
        page = file.read()
    assert "<script>alert" not in page and "<img src=x" not in page
    parser = _ScriptData()
    parser.feed(page)
    assert [name for name, _ in parser.scripts] == ["review-data", None]  # no script injected
    data = json.loads(parser.scripts[0][1])
    assert data["classes"] == hostile
    assert data == review.review_data(issues, images=np.zeros((40, 3)), run_name="{title}<run>")
    assert "<title>gdw_tf review: {title}&lt;run&gt;</title>" in page


# --------------------------------------------------------------------------------------------
# The run's split: base split, reviews, automatic trusted set


def _base_split():
    """The base split of `_auto_run`'s run, and the probabilities its warm-up gives."""
    base = split_lib.make_split(
        np.arange(150) % 3, 3, num_meta=15, noise="uniform", ratio=0.5, imbalance=1.0, seed=0
    )
    return base, np.random.default_rng(3).dirichlet(np.ones(3), len(base.train_indices))


def _auto_run(tmp_path, monkeypatch, rows):
    """A benchmark-like dataset and the config of an automatic trusted set with the reviews
    `rows` (`[id, given, reviewed]`); the warm-up gives `_base_split`'s probabilities and records
    its arguments in the list returned third."""
    from conftest import make_config

    from gdw_tf.data import datasets
    from gdw_tf.runs import auto_meta

    labels = np.arange(150) % 3
    dataset = datasets.Dataset(
        np.zeros((150, 2), np.float32), labels, np.zeros((0, 2), np.float32), labels[:0], 3
    )
    config = make_config(
        model="mlp",
        num_meta=15,
        noise="uniform",
        ratio=0.5,
        trusted_data="auto",
        auto_meta_per_class=4,
        meta_batch_size=12,
        corrections=_write_csv(tmp_path / "c.csv", rows),
    )
    warm_ups = []

    def warm_up(*args, **kwargs):
        warm_ups.append(args)
        return _base_split()[1], None

    monkeypatch.setattr(auto_meta, "warm_up", warm_up)
    return dataset, config, warm_ups


def test_the_automatic_set_is_chosen_without_the_reviews_which_then_apply(tmp_path, monkeypatch):
    from gdw_tf.runs import auto_meta
    from gdw_tf.runs import run as run_lib

    base, probabilities = _base_split()
    chosen = base.train_indices[
        auto_meta.select_confident(probabilities, base.train_noisy_labels, 3, 4)
    ].tolist()
    # One review of a chosen example, three of examples left in training, one per class: they
    # join the meta set, each taking the place of an automatic example of its class.
    left = [i for i in base.train_indices.tolist() if i not in chosen][:3]
    given = dict(zip(base.train_indices.tolist(), base.train_noisy_labels.tolist()))
    relabel = {chosen[0]: (given[chosen[0]] + 1) % 3, left[0]: 0, left[1]: 1, left[2]: 2}
    rows = [[i, given[i], label] for i, label in relabel.items()]
    dataset, config, warm_ups = _auto_run(tmp_path, monkeypatch, rows)

    split = run_lib.build_split(config, dataset)
    assert len(warm_ups) == 1
    # The warm-up saw the base training set with its given labels, not the reviewed ones.
    np.testing.assert_array_equal(warm_ups[0][3], base.train_noisy_labels)
    meta = dict(zip(split.meta_indices.tolist(), split.meta_labels.tolist()))
    assert set(relabel) <= set(meta) <= set(chosen + left)
    assert [meta[i] for i in relabel] == list(relabel.values())
    assert split.meta_source == "auto"
    summary = json.loads(split.corrections)
    assert summary["relabelled_in_trusted"] == 1 and summary["added_to_trusted"] == 3
    # Four reviewed examples in the meta set (one per class, and the relabelled one): four
    # automatic ones of their classes leave; the meta set keeps its 12, less the relabelled
    # example's old class's one.
    assert summary["automatic_replaced"] == 4 and len(meta) == 12 + 3 - 4
    assert np.bincount(list(meta.values()), minlength=3).tolist() == [
        4 - (k == given[chosen[0]]) for k in range(3)
    ]


@pytest.mark.parametrize("where", ["nowhere", "held-out meta set", "bad label"])
def test_bad_reviews_are_refused_before_the_warm_up(tmp_path, monkeypatch, where):
    from gdw_tf.runs import run as run_lib

    base = _base_split()[0]
    rows = {
        "nowhere": [["99999", 0, 1]],
        # The automatic set replaces the clean held-out meta set: its examples leave the run.
        "held-out meta set": [[int(base.meta_indices[0]), 0, 1]],
        "bad label": [[int(base.train_indices[0]), 0, "cow"]],
    }[where]
    dataset, config, warm_ups = _auto_run(tmp_path, monkeypatch, rows)
    message = "not a class" if where == "bad label" else r"1 reviewed id\(s\) are not in the"
    with pytest.raises(ValueError, match=message):
        run_lib.build_split(config, dataset)
    assert not warm_ups


# --------------------------------------------------------------------------------------------
# The command line


@pytest.mark.slow
def test_corrections_with_an_unknown_id_stop_the_run_before_training(tmp_path, capsys):
    path = _write_csv(tmp_path / "c.csv", [["123456", 0, 1]])
    status, err = train_exit_message(
        capsys, *TINY_FASHION_MNIST, f"--corrections={path}", f"--output_dir={tmp_path / 'run'}"
    )
    assert status == 2
    assert err.strip().splitlines() == [
        "error: 1 reviewed id(s) are not in the training data ('123456'); the corrections "
        "belong to other data (another --dataset, --train_data or --max_train_examples)."
    ]
    assert not os.path.exists(tmp_path / "run" / "history.csv")


# --------------------------------------------------------------------------------------------
# The loop in a real browser: train, review by keyboard, reload, download, train again


def _browser(playwright):
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
    )


def _collect_errors(page):
    """A list that fills with the page's uncaught exceptions and console errors."""
    errors = []
    page.on("pageerror", lambda error: errors.append(f"page error: {error}"))
    page.on(
        "console",
        lambda message: (
            errors.append(f"console: {message.text}") if message.type == "error" else None
        ),
    )
    return errors


@pytest.mark.slow
def test_report_and_review_pages_load_in_chromium_without_errors(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    rng = np.random.default_rng(7)
    num, classes = 300, 4
    true = rng.integers(0, classes, num)
    given = np.where(rng.random(num) < 0.3, rng.integers(0, classes, num), true)
    logits = 3 * np.eye(classes)[true] + rng.normal(size=(num, classes))
    trusted = np.repeat(np.arange(classes), 15)
    trusted_logits = 3 * np.eye(classes)[trusted] + rng.normal(size=(len(trusted), classes))
    issues = label_issues.rank_label_issues(
        np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True),
        given,
        instance_weights=rng.random(num),
        label_weights=rng.random(num),
        trusted_probabilities=np.exp(trusted_logits)
        / np.exp(trusted_logits).sum(axis=1, keepdims=True),
        trusted_labels=trusted,
    )
    images = rng.integers(0, 256, (num, 10, 10, 3), dtype=np.uint8)
    with open(tmp_path / "history.csv", "w") as file:
        file.write("epoch,train/accuracy,test/accuracy\n0,0.5,0.6\n1,0.6,0.7\n")
    trusted_images = rng.integers(0, 256, (len(trusted), 8, 8, 3), dtype=np.uint8)
    run_dir_lib.write_label_issues_and_report(
        str(tmp_path), issues, images=images, trusted_images=trusted_images
    )
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page()
        errors = _collect_errors(page)
        page.goto("file://" + str(tmp_path / "report.html"))
        assert page.locator("svg").count() == 4  # accuracy, noise, the two weight panels
        assert page.locator(".card img").count() == min(60, num)
        assert page.locator("img").evaluate_all("imgs => imgs.every(i => i.naturalWidth > 0)")
        page.click("a[href='review.html']")
        assert page.url.endswith("/review.html")
        text = page.inner_text("#progress-text")
        to_review = issues.trusted.num_flagged + num  # contradicted trusted, then every one
        assert text.startswith(f"example 1 of {to_review} ·"), text
        assert f"{issues.num_flagged} flagged of {num}" in text
        # The first examples are the trusted ones the model contradicts, marked as such.
        assert issues.trusted.num_flagged > 0
        assert page.inner_text("#set").startswith("TRUSTED example")
        assert page.evaluate("document.querySelector('#view img').naturalWidth") == 8
        for _ in range(issues.trusted.num_flagged):
            page.keyboard.press("s")
        assert page.inner_text("#set") == "training example"
        assert page.evaluate("document.querySelector('#view img').naturalWidth") == 10
        assert page.locator("#classes button").count() == classes
        browser.close()
    assert errors == []


TINY_LOOP = [
    "--dataset=fashion_mnist",
    "--max_train_examples=600",
    "--max_test_examples=100",
    "--num_meta=50",
    "--batch_size=50",
    "--meta_batch_size=50",
    "--model=mlp",
    "--epochs=2",
    "--noise=flip",
    "--ratio=0.4",
    "--verbose=0",
]


@pytest.mark.slow
@pytest.mark.needs_debian("chromium")
def test_review_in_chromium_then_train_with_the_corrections(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    train_main(*TINY_LOOP, f"--output_dir={first}")
    table = label_issues.read_label_issues_csv(os.path.join(first, "label_issues.csv"))
    order = sorted(
        (int(rank), i) for i, rank in enumerate(table["review_rank"]) if rank
    )  # the page's order
    items = [
        {name: table[name][i] for name in ("id", "set", "given_label", "suggested_label")}
        for _, i in order[:24]
    ]
    kinds = [item["set"] for item in items]
    # The trusted examples the data contradicts come first, then the training sample.
    assert "trusted" in kinds and kinds == sorted(kinds, key=lambda kind: kind != "trusted")
    given = [int(item["given_label"]) for item in items]
    suggested = [int(item["suggested_label"]) for item in items]
    other = next(k for k in range(10) if k not in (given[2], suggested[2]))
    # Item 1: take the suggestion; 2: keep; 3: another class by digit; 4: skip, back, take the
    # suggestion; items 5-24: the class i % 10, but the first trusted one among them removed.
    expected = {0: suggested[0], 1: given[1], 2: other, 3: suggested[3]}
    expected.update({i: i % 10 for i in range(4, 24)})
    removed = next((i for i in range(4, 24) if kinds[i] == "trusted"), None)
    if removed is not None:
        expected[removed] = "remove"

    url = "file://" + os.path.join(first, "review.html")
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(accept_downloads=True)
        errors = _collect_errors(page)
        page.goto(url)
        assert f"· id {items[0]['id']} ·" in page.inner_text("#meta")
        assert page.inner_text("#set").startswith("TRUSTED example")
        for key in ["a", "k", str(other), "s", "b", "a"]:
            page.keyboard.press(key)
        assert page.inner_text("#progress-text").startswith("example 5 of ")
        page.reload()
        # The decisions and the position survived the reload.
        assert page.inner_text("#progress-text").startswith("example 5 of ")
        assert " 4 reviewed (" in page.inner_text("#progress-text")
        page.keyboard.press("b")
        assert f"· id {items[3]['id']} ·" in page.inner_text("#meta")
        assert "took the suggestion" in page.inner_text("#decision")
        page.keyboard.press("ArrowRight")  # skip item 4... and undo that by reviewing it again:
        page.keyboard.press("b")
        page.keyboard.press("a")
        for i in range(4, 24):
            page.keyboard.press("r" if expected[i] == "remove" else str(i % 10))
        with page.expect_download() as download_info:
            page.keyboard.press("d")
        corrections = str(tmp_path / "corrections.csv")
        download_info.value.save_as(corrections)
        browser.close()
    assert errors == []

    with open(corrections, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["id"] for r in rows] == [item["id"] for item in items]
    assert [r["set"] for r in rows] == kinds
    assert ["remove" if r["decision"] == "remove" else int(r["reviewed_label"]) for r in rows] == [
        expected[i] for i in range(24)
    ]
    assert [int(r["given_label"]) for r in rows] == given
    assert rows[0]["decision"] == "suggested" and rows[1]["decision"] == "keep"

    # A removed trusted example leaves 49 of the 50: meta batches of 40.
    train_main(
        *TINY_LOOP, "--meta_batch_size=40", f"--corrections={corrections}", f"--output_dir={second}"
    )
    with open(os.path.join(second, "results.json")) as file:
        summary = json.load(file)["corrections"]
    in_training = [expected[i] for i in range(24) if kinds[i] == "training"]
    relabelled = [i for i in range(24) if kinds[i] == "trusted" and expected[i] != "remove"]
    per_class = min(in_training.count(k) for k in range(10))
    assert summary["reviewed"] == 24
    assert summary["relabelled_in_trusted"] == len(relabelled)
    assert summary["removed_from_trusted"] == (removed is not None)
    assert summary["added_to_trusted"] == 10 * per_class
    assert summary["corrected_in_training"] == len(in_training) - 10 * per_class
    split = split_lib.Split.load(os.path.join(second, "split.npz"))
    assert len(split.meta_indices) == 50 - (removed is not None) + 10 * per_class
    label_of = dict(zip(split.train_indices.tolist(), split.train_noisy_labels.tolist()))
    label_of.update(zip(split.meta_indices.tolist(), split.meta_labels.tolist()))
    for i, item in enumerate(items):
        if expected[i] == "remove":
            assert int(item["id"]) not in label_of  # out of the run
        else:
            assert label_of[int(item["id"])] == expected[i]
    # The next run marks the reviewed examples, in both sets.
    table = label_issues.read_label_issues_csv(os.path.join(second, "label_issues.csv"))
    marked = {table["id"][i] for i, flag in enumerate(table["reviewed"]) if flag == "1"}
    assert marked == {item["id"] for i, item in enumerate(items) if expected[i] != "remove"}


@pytest.mark.slow
@pytest.mark.needs_debian("chromium")
def test_twelve_classes_by_number_and_hostile_names_shown_as_text_in_chromium(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    names = [f"<b>c{k}</b> & co" for k in range(12)]
    _, _, issues = _issues(num=60, classes=12, names=names, seed=4)
    rows = np.arange(60 * 3, dtype=float).reshape(60, 3)
    path = run_dir_lib.write_review(str(tmp_path), issues, images=rows)
    items = review.review_data(issues, images=rows, run_name=tmp_path.name)["items"]
    assert len(items) >= 4
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(accept_downloads=True)
        errors = _collect_errors(page)
        page.goto("file://" + path)
        assert page.inner_text("#given-name") == f"{items[0]['given']} {names[items[0]['given']]}"
        assert page.locator("#view b").count() == 0  # names are text, not markup
        first = int(issues.position[label_issues.review_order(issues)[1][0]])
        assert page.inner_text("#view td >> nth=1") == f"{rows[first][0]:g}"
        # "1" could start 10 or 11: wait; "1" again → 11. "1", Enter → 1. "7" → 7 at once.
        for keys in (["1", "1"], ["1", "Enter"], ["7"]):
            for key in keys:
                page.keyboard.press(key)
        assert page.inner_text("#progress-text").startswith("example 4 of ")
        with page.expect_download() as download_info:
            page.click("#download")
        download_info.value.save_as(str(tmp_path / "corrections.csv"))
        browser.close()
    assert errors == []
    reviews = corrections_lib.read_corrections(
        str(tmp_path / "corrections.csv"), num_classes=12, class_names=names
    )
    assert reviews.ids == tuple(item["id"] for item in items[:3])
    np.testing.assert_array_equal(reviews.reviewed_labels, [11, 1, 7])
    with open(tmp_path / "corrections.csv", newline="") as file:
        assert [r["reviewed_class"] for r in csv.DictReader(file)] == [
            names[11],
            names[1],
            names[7],
        ]


def test_correct_split_of_own_data_without_a_trusted_set():
    from gdw_tf.data import own_data

    labels = np.repeat(np.arange(2), 10)
    split = own_data.own_split(labels, np.zeros(20, bool), 2, 0)
    assert len(split.meta_indices) == 0
    ids = [f"d/{i}.png" for i in range(20)]
    reviews = corrections_lib.Corrections(
        ("d/3.png", "./d/15.png", "d/4.png"), np.array([1, 0, 0]), ("x",) * 3, ("f.csv",)
    )
    corrected, summary = corrections_lib.correct_split(split, reviews, ids=ids)
    # One review per class joins (3 → class 1, 15 → class 0); 4 keeps label 0 in training.
    np.testing.assert_array_equal(corrected.meta_indices, [3, 15])
    np.testing.assert_array_equal(corrected.meta_labels, [1, 0])
    assert 3 not in corrected.train_indices and 4 in corrected.train_indices
    assert summary["changed"] == 2 and summary["added_to_trusted"] == 2
    assert summary["corrected_in_training"] == 1


@pytest.mark.slow
@pytest.mark.needs_debian("chromium")
def test_review_loop_benchmark_script_tiny(tmp_path):
    pytest.importorskip("playwright.sync_api")
    import subprocess
    import sys

    from gdw_tf.data import datasets

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    args = [
        sys.executable,
        os.path.join(repo, "scripts", "review_loop_benchmark.py"),
        f"--runs_dir={tmp_path}",
        "--settings=flip_40",
        "--seeds=0",
        "--reviewers=erring",
        "--error_rate=0.3",
        "--review_size=20",
        "--rounds=10,10",
        "--train_flag=--epochs=1",
        "--train_flag=--max_train_examples=1200",
        "--train_flag=--max_test_examples=200",
        "--train_flag=--num_meta=200",
    ]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    done = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    base = tmp_path / "flip_40_seed0"
    with open(base / "metrics.json") as file:
        metrics = json.load(file)
    truth = datasets.load_dataset("fashion_mnist").y_train
    with open(base / "erring_20" / "corrections.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    # The reviewer took the page's first 20 (review_rank 1..20 of the auto run) and answered
    # with the true label but for its wrong answers, which are never the true label.
    table = label_issues.read_label_issues_csv(str(base / "auto" / "label_issues.csv"))
    first = sorted((int(r), i) for i, r in enumerate(table["review_rank"]) if r)[:20]
    assert [r["id"] for r in rows] == [table["id"][i] for _, i in first]
    wrong = sum(int(r["reviewed_label"]) != truth[int(r["id"])] for r in rows)
    review = metrics["erring"]["review"]
    assert review["reviewed"] == 20 and review["answered_wrong"] == wrong
    assert review["truly_wrong"] == sum(int(r["given_label"]) != truth[int(r["id"])] for r in rows)
    assert review["trusted"] == sum(r["set"] == "trusted" for r in rows)
    corrections = metrics["erring"]["corrections"]
    assert corrections["reviewed"] == 20
    # Rounds: 10 reviews, then 10 more on the next run's page, the files given together.
    rounds = metrics["erring_rounds"]
    assert [r["reviews"] for r in rounds] == [10, 20]
    assert rounds[1]["corrections"]["files"] == [
        str(base / "erring_rounds" / "review1" / "corrections.csv"),
        str(base / "erring_rounds" / "review2" / "corrections.csv"),
    ]
    # The trusted set's wrong labels, counted against the truth.
    split = split_lib.Split.load(str(base / "erring_20" / "round2" / "split.npz"))
    assert metrics["erring"]["meta_wrong"] == int(
        (truth[split.meta_indices] != split.meta_labels).sum()
    )
    assert metrics["clean"]["num_meta"] == 200
    assert "| flip_40 | 0 | erring | 20 |" in done.stdout
