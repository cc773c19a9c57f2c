"""CSV files as spreadsheets open and save them (gdw_tf.data.csv_cells): no live formula in
`label_issues.csv` or the review page's `corrections.csv`, and what a spreadsheet saves back
(BOM, `;` or tab, CRLF, quoted and `'`-escaped cells) read to the same ids and classes."""

import csv
import json
import os

import numpy as np
import pytest
from conftest import require_debian_package
from conftest import train_main
from conftest import write_png

from gdw_tf.data import corrections as corrections_lib
from gdw_tf.data import csv_cells
from gdw_tf.data import own_data
from gdw_tf.data import split as split_lib
from gdw_tf.labels import label_issues
from gdw_tf.runs import run_dir as run_dir_lib

CHROMIUM = "/usr/bin/chromium"
FORMULA_NAMES = ["=1+1", "@SUM(A1)", "+x", "-y", '=HYPERLINK("x")']
TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def _is_number(cell):
    try:
        return np.isfinite(float(cell))
    except ValueError:
        return False


def _live_formulas(path):
    """The cells of a CSV file that a spreadsheet would evaluate: text (not a finite number)
    starting with = + - @ tab or CR."""
    with open(path, newline="", encoding="utf-8") as file:
        return [
            cell
            for row in csv.reader(file)
            for cell in row
            if cell.startswith(TRIGGERS) and not _is_number(cell)
        ]


def _write_bytes(path, text, *, bom=False):
    with open(path, "wb") as file:
        file.write((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return str(path)


# --------------------------------------------------------------------------------------------
# One escape, one unescape


def test_escape_leaves_no_formula_keeps_numbers_and_round_trips():
    texts = [
        *FORMULA_NAMES,
        "\tx",
        "\rx",
        "=",
        "-",
        "'=x",  # already quoted once: quoted again, so reading gives it back
        "''@x",
        "'x",  # a quote before harmless text: left as it is
        "'",
        "",
        "photos/a.png",
        "a=b",
        "-0.53",
        "+7",
        "1e-05",
        "-.5E+3",
        "-inf",  # not a decimal number: text
        "-1-2",
        "--1",
    ]
    for text in texts:
        escaped = csv_cells.escape_cell(text)
        assert csv_cells.unescape_cell(escaped) == text
        if escaped.startswith(TRIGGERS):  # only numbers may start so
            assert _is_number(escaped) and escaped == text, text
        assert escaped in (text, "'" + text)
    assert [csv_cells.escape_cell(t) for t in ("=1+1", "'=x", "'x", "-0.53", "-inf")] == [
        "'=1+1",
        "''=x",
        "'x",
        "-0.53",
        "'-inf",
    ]
    assert csv_cells.escape_cell(-0.53) == "-0.53" and csv_cells.escape_cell(np.int64(-3)) == "-3"


def test_normalize_id_is_one_spelling_per_path():
    ids = ["photos/a.png", "./photos/a.png", "photos//a.png", "photos/x/../a.png"]
    assert {csv_cells.normalize_id(i) for i in ids} == {"photos/a.png"}
    assert csv_cells.normalize_id(np.int64(12)) == "12"
    assert csv_cells.normalize_id(np.str_("data.csv:3")) == "data.csv:3"


# --------------------------------------------------------------------------------------------
# label_issues.csv of a tree with formula-like names


def _formula_issues(num=60):
    rng = np.random.default_rng(3)
    classes = len(FORMULA_NAMES)
    # Paths in class folders, and file names that start with each trigger (tab and CR too).
    ids = np.array(
        [
            f"{FORMULA_NAMES[i % classes]}/{i}.png" if i % 2 else f"{TRIGGERS[i // 2 % 6]}{i}.png"
            for i in range(num)
        ]
    )
    return label_issues.rank_label_issues(
        rng.dirichlet(np.ones(classes), num),
        rng.integers(0, classes, num),
        ids=ids,
        class_names=FORMULA_NAMES,
    ), ids


def test_label_issues_csv_has_no_live_formula_and_reads_back_its_ids(tmp_path):
    issues, ids = _formula_issues()
    path = str(tmp_path / "label_issues.csv")
    label_issues.write_label_issues_csv(path, issues)
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    assert _live_formulas(path) == []
    # Escaped: every formula-like id and class name; negative scores stay numbers.
    assert all(row["id"].startswith("'") for row in rows)
    assert {row["given_class"] for row in rows} == {"'" + name for name in FORMULA_NAMES}
    assert any(float(row["score"]) < 0 and row["score"].startswith("-") for row in rows)
    table = label_issues.read_label_issues_csv(path)
    assert table["id"] == [str(i) for i in issues.id]
    assert sorted(table["id"]) == sorted(ids.tolist())
    assert table["given_class"] == [FORMULA_NAMES[k] for k in issues.given_label]
    np.testing.assert_allclose(np.array(table["score"], float), issues.score, atol=1e-6)


# --------------------------------------------------------------------------------------------
# corrections.csv as spreadsheets save it


@pytest.mark.parametrize("bom", [False, True])
@pytest.mark.parametrize("separator", [",", ";", "\t"])
@pytest.mark.parametrize("line_end", ["\n", "\r\n"])
def test_corrections_as_a_spreadsheet_saves_them(tmp_path, bom, separator, line_end):
    names = ["cat", "dog", "=1+1"]
    lines = [
        ["id", "given_label", "reviewed_label", "reviewed_class"],
        ["'=1+1/a.png", "0", "2", "'=1+1"],  # escaped id and class, as written
        ['"semi;colon,comma.png"', "1", "cat", ""],  # quoted: holds every separator
        ['"say ""hi"".png"', "0", "", ""],  # not reviewed
        ["./photos//b.png", "2", "1", "dog"],
        ["", "", "", ""],  # an empty row, as spreadsheets leave at the end
    ]
    text = line_end.join(separator.join(cells) for cells in lines) + line_end
    path = _write_bytes(tmp_path / "corrections.csv", text, bom=bom)
    reviews = corrections_lib.read_corrections(path, num_classes=3, class_names=names)
    assert reviews.ids == ("=1+1/a.png", "semi;colon,comma.png", "photos/b.png")
    np.testing.assert_array_equal(reviews.reviewed_labels, [2, 0, 1])
    assert reviews.sources == (f"{path}:2", f"{path}:3", f"{path}:5")
    # The same file as label_issues.csv: its ids and classes read back unescaped.
    table = label_issues.read_label_issues_csv(path)
    assert table["id"][:2] == ["=1+1/a.png", "semi;colon,comma.png"]
    assert table["reviewed_class"][0] == "=1+1"


@pytest.mark.parametrize(
    "text, message",
    [
        ("id|reviewed_label\n1|2\n", r"cannot tell the separator from the header line 'id\|"),
        ("given;label\n1;2\n", "cannot tell the separator"),
        ("id;given_label\n1;2\n", r"lacks the column\(s\) reviewed_label"),
        ("id;given_label;reviewed_label\r\n1;0;2\r\n7;1\r\n", r"c.csv line 3 has 2 cells but"),
        ("id,reviewed_label\n1,2,3\n", r"c.csv line 2 has 3 cells but the header has 2"),
        ("id,reviewed_label\n1,2\n,1\n", r"c.csv:3: the id is empty"),
        ('id,reviewed_label\n"a\nb.png",2\n5\n', r"c.csv line 4 has 1 cells"),
    ],
)
def test_unreadable_corrections_are_one_line_errors_naming_file_and_line(tmp_path, text, message):
    path = _write_bytes(tmp_path / "c.csv", text)
    with pytest.raises(ValueError, match=message) as info:
        corrections_lib.read_corrections(path, num_classes=3)
    assert "\n" not in str(info.value)


def test_a_file_not_in_utf8_is_refused(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("id;reviewed_label\nsoupçon.png;1\n".encode("cp1252"))
    with pytest.raises(ValueError, match="is not UTF-8 text; save it .* as CSV UTF-8"):
        corrections_lib.read_corrections(str(path), num_classes=3)


def test_a_row_with_a_missing_cell_in_label_issues_csv_is_refused(tmp_path):
    path = _write_bytes(tmp_path / "label_issues.csv", "rank,id,score\n1,a.png,-0.5\n2,b.png\n")
    with pytest.raises(ValueError, match="label_issues.csv line 3 has 2 cells but the header"):
        label_issues.read_label_issues_csv(path)


def test_one_example_spelled_two_ways_is_one_id(tmp_path):
    header = "id,given_label,reviewed_label\n"
    contradicting = _write_bytes(
        tmp_path / "a.csv", header + "photos/a.png,0,1\n./photos/a.png,0,2\n"
    )
    with pytest.raises(ValueError, match=r"id 'photos/a.png' is reviewed as 1 .*a.csv:2.* as 2"):
        corrections_lib.read_corrections(contradicting, num_classes=3)
    contradicting = _write_bytes(tmp_path / "a.csv", header + "photos/a.png,0,1\n")
    spelled = _write_bytes(tmp_path / "b.csv", header + "./photos/a.png,0,2\n")
    later = corrections_lib.read_corrections([contradicting, spelled], num_classes=3)
    assert later.ids == ("photos/a.png",)  # one id: the later file's review replaces the first
    np.testing.assert_array_equal(later.reviewed_labels, [2])
    agreeing = _write_bytes(tmp_path / "c.csv", header + "./photos/a.png,0,1\nphotos/b.png,1,0\n")
    reviews = corrections_lib.read_corrections([contradicting, agreeing], num_classes=3)
    assert reviews.ids == ("photos/a.png", "photos/b.png")
    # The example joins the trusted set once.
    ids = [f"photos/{name}.png" for name in "abcdef"]
    split = own_data.own_split(np.array([0, 1, 0, 1, 0, 1]), np.zeros(6, bool), 2, 0)
    corrected, summary = corrections_lib.correct_split(split, reviews, ids=ids)
    np.testing.assert_array_equal(np.sort(corrected.meta_indices), [0, 1])
    assert summary["reviewed"] == 2 and summary["added_to_trusted"] == 2
    assert len(corrected.meta_indices) + len(corrected.train_indices) == 6


# --------------------------------------------------------------------------------------------
# Classes named by integers: folders 1..10


def _tree_of_number_folders(root):
    for name in range(1, 11):
        for i in range(2):
            write_png(os.path.join(root, str(name), f"{i}.png"), np.full((4, 4, 1), name, np.uint8))
    source = own_data.read_folder(root)
    return own_data.class_order(source.labels), source


@pytest.mark.parametrize(
    "label, reviewed_class, folder",
    [
        ("10", "", "10"),  # a name, and no index (C = 10): the folder 10
        ("0", "", "1"),  # no folder is named 0: the index 0, which is the folder 1
        ("3", "3", "3"),  # the folder 3, or the index 3; reviewed_class decides
        ("3", "4", "4"),
        ("9", "10", "10"),  # the review page writes the index and the name
    ],
)
def test_class_folders_named_by_numbers_resolve_one_way(tmp_path, label, reviewed_class, folder):
    names, _ = _tree_of_number_folders(str(tmp_path / "tree"))
    assert names == [str(k) for k in range(1, 11)]
    path = _write_bytes(
        tmp_path / "c.csv",
        f"id;reviewed_label;reviewed_class\r\n1/0.png;{label};{reviewed_class}\r\n",
    )
    reviews = corrections_lib.read_corrections(path, num_classes=10, class_names=names)
    assert names[reviews.reviewed_labels[0]] == folder


@pytest.mark.parametrize(
    "label, reviewed_class, message",
    [
        (
            "3",
            "",
            r"c.csv:2: reviewed_label '3' is ambiguous: the class named '3' \(index 2\) or "
            r"the class of index 3 \(named '4'\); name the class in reviewed_class too",
        ),
        ("3", "7", "is ambiguous"),
        ("10", "9", r"reviewed_label '10' is the class '10' but reviewed_class is '9'"),
        ("11", "", r"reviewed_label '11' is not a class"),
    ],
)
def test_ambiguous_or_disagreeing_class_numbers_are_refused(
    tmp_path, label, reviewed_class, message
):
    names, _ = _tree_of_number_folders(str(tmp_path / "tree"))
    path = _write_bytes(
        tmp_path / "c.csv", f"id,reviewed_label,reviewed_class\n1/0.png,{label},{reviewed_class}\n"
    )
    with pytest.raises(ValueError, match=message) as info:
        corrections_lib.read_corrections(path, num_classes=10, class_names=names)
    assert "\n" not in str(info.value)


def test_class_names_that_are_their_own_indices_are_not_ambiguous(tmp_path):
    path = _write_bytes(tmp_path / "c.csv", "id,reviewed_label\na,3\nb,0\n")
    names = [str(k) for k in range(10)]
    reviews = corrections_lib.read_corrections(path, num_classes=10, class_names=names)
    np.testing.assert_array_equal(reviews.reviewed_labels, [3, 0])


# --------------------------------------------------------------------------------------------
# The review page's csvCell, in Chromium


def _browser(playwright):
    require_debian_package("chromium")
    return playwright.chromium.launch(
        executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--no-first-run"]
    )


def _review_and_download(page_path, keys, download_path):
    """Opens a review page in Chromium, presses `keys`, downloads corrections.csv; returns
    the page's `csvCell` of some tricky values."""
    sync_api = pytest.importorskip("playwright.sync_api")
    values = [*FORMULA_NAMES, "\tx", "'=x", "'x", "a=b", "-0.53", "+7", "1e-05", "-inf", ""]
    with sync_api.sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_page(accept_downloads=True)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto("file://" + page_path)
        cells = page.evaluate("(values) => values.map(csvCell)", values)
        numbers = page.evaluate("() => [-0.53, 7, 1e-7].map(csvCell)")
        for key in keys:
            page.keyboard.press(key)
        with page.expect_download() as download_info:
            page.keyboard.press("d")
        download_info.value.save_as(download_path)
        browser.close()
    assert errors == []
    # The page's csvCell is escape_cell (then CSV quoting).
    assert [(next(csv.reader([cell])) or [""])[0] for cell in cells] == [
        csv_cells.escape_cell(v) for v in values
    ]
    assert numbers == ["-0.53", "7", "1e-7"]


@pytest.mark.slow
def test_review_page_of_number_folders_downloads_what_reads_back(tmp_path):
    names = [str(k) for k in range(1, 11)]
    rng = np.random.default_rng(0)
    issues = label_issues.rank_label_issues(
        rng.dirichlet(np.ones(10), 80),
        rng.integers(0, 10, 80),
        ids=np.array([f"-{i}.png" for i in range(80)]),
        class_names=names,
    )
    path = run_dir_lib.write_review(str(tmp_path), issues, images=np.zeros((80, 2)))
    corrections = str(tmp_path / "corrections.csv")
    _review_and_download(path, ["3", "0", "9", "a"], corrections)
    assert _live_formulas(corrections) == []
    with open(corrections, newline="") as file:
        rows = list(csv.DictReader(file))
    assert [r["id"][:2] for r in rows] == ["'-"] * 4
    reviews = corrections_lib.read_corrections(corrections, num_classes=10, class_names=names)
    items = [int(r["rank"]) - 1 for r in rows]
    assert reviews.ids == tuple(str(issues.id[i]) for i in items)
    # Keys are indices: 3 is the folder 4, 0 the folder 1; "a" takes the suggestion.
    expected = [3, 0, 9, int(issues.suggested_label[items[3]])]
    np.testing.assert_array_equal(reviews.reviewed_labels, expected)
    assert [r["reviewed_class"] for r in rows] == [names[k] for k in expected]


# --------------------------------------------------------------------------------------------
# The whole loop on a tree with formula-like names: run, review in Chromium, run again


def _formula_tree(root, per_class, seed):
    rng = np.random.default_rng(seed)
    for name in FORMULA_NAMES:
        for i in range(per_class):
            image = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)  # noise: many flags
            write_png(os.path.join(root, name, f"{TRIGGERS[i % 6]}{i}.png"), image)


@pytest.mark.slow
def test_formula_named_tree_goes_round_the_loop_without_a_live_formula(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Relative paths, so the ids themselves start with "=" (the root folder's name).
    _formula_tree("=HYPERLINK(1)/train", 20, seed=0)
    _formula_tree("=HYPERLINK(1)/trusted", 4, seed=1)
    args = [
        "--train_data==HYPERLINK(1)/train",
        "--trusted_data==HYPERLINK(1)/trusted",
        "--model=mlp",
        "--epochs=1",
        "--batch_size=20",
        "--meta_batch_size=10",
        "--verbose=0",
    ]
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    train_main(*args, f"--output_dir={first}")
    issues_csv = os.path.join(first, "label_issues.csv")
    assert _live_formulas(issues_csv) == []
    table = label_issues.read_label_issues_csv(issues_csv)
    assert {
        os.path.join("=HYPERLINK(1)/train", name, file)
        for name in FORMULA_NAMES
        for file in os.listdir(os.path.join("=HYPERLINK(1)/train", name))
    } <= set(table["id"])
    assert set(table["given_class"]) == set(FORMULA_NAMES)

    corrections = str(tmp_path / "corrections.csv")
    _review_and_download(
        os.path.join(first, "review.html"), ["0", "1", "2", "3", "4", "a"], corrections
    )
    assert _live_formulas(corrections) == []
    with open(corrections, newline="") as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == 6 and all(r["id"].startswith("'=HYPERLINK(1)/") for r in rows)
    names = own_data.class_order(FORMULA_NAMES)
    reviews = corrections_lib.read_corrections(corrections, num_classes=5, class_names=names)
    assert reviews.ids == tuple(r["id"][1:] for r in rows)
    assert reviews.reviewed_labels[:5].tolist() == [0, 1, 2, 3, 4]

    train_main(*args, f"--corrections={corrections}", f"--output_dir={second}")
    with open(os.path.join(second, "results.json")) as file:
        summary = json.load(file)["corrections"]
    assert summary["reviewed"] == 6
    split = split_lib.Split.load(os.path.join(second, "split.npz"))
    assert len(split.meta_indices) == 20 + summary["added_to_trusted"]
    # The reviewed training rows join the trusted set, balanced: the keys 0..4 gave one each.
    in_train = [label for i, label in zip(reviews.ids, reviews.reviewed_labels) if "/train/" in i]
    assert summary["added_to_trusted"] == 5 * np.bincount(in_train, minlength=5).min()
    assert _live_formulas(os.path.join(second, "label_issues.csv")) == []
