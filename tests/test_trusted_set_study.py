"""scripts/trusted_set_study.py: the corrections file of each variant, from round 1's files."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

NUM_CLASSES = 10  # the study's data: Fashion-MNIST
VARIANTS = ["prune", "sample_3", "true_3", "review_sample_3"]


def _variant_rows(folder, true_labels):
    """`variant_rows` of each of VARIANTS, run in a fresh process: the script's absl flags
    (those of review_loop_benchmark, which it imports) share names with other scripts' that
    tests load into this one."""
    code = (
        "import json, sys; import numpy as np; import trusted_set_study as s; "
        "folder, variants, labels = json.loads(sys.stdin.read()); "
        "print(json.dumps({v: s.variant_rows(v, folder, np.array(labels)) for v in variants}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([folder, VARIANTS, true_labels.tolist()]),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.path.join(REPO, "scripts")},
    )
    return json.loads(done.stdout)


def _write(path, columns, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    """Round 1's label_issues.csv (8 training rows per class, rows 0-2 of each flagged, a
    trusted row) and a review of two ids; returns (each variant's rows, true labels by id)."""
    tmp_path = tmp_path_factory.mktemp("round1")
    rows = []
    for k in range(NUM_CLASSES):
        for j in range(8):
            rows.append(
                {
                    "id": str(100 + 8 * k + j),
                    "set": "training",
                    "given_label": str(k),
                    "flagged": str(int(j < 3)),
                }
            )
    rows.append({"id": "7", "set": "trusted", "given_label": "0", "flagged": "1"})
    _write(str(tmp_path / "auto" / "label_issues.csv"), list(rows[0]), rows)
    review = [
        {"id": "100", "reviewed_label": "4", "decision": "relabel"},  # flagged, class 0
        {"id": "105", "reviewed_label": "0", "decision": "keep"},  # unflagged, class 0
    ]
    _write(str(tmp_path / "oracle_500" / "corrections.csv"), list(review[0]), review)
    true_labels = (np.arange(200) + 1) % NUM_CLASSES  # any labels: read back by id
    return _variant_rows(str(tmp_path), true_labels), true_labels


def test_prune_removes_every_flagged_training_row_the_review_left(rows):
    rows = rows[0]["prune"]
    assert rows[:2] == [
        {"id": "100", "reviewed_label": "4", "decision": "relabel"},
        {"id": "105", "reviewed_label": "0", "decision": "keep"},
    ]
    removed = {r["id"] for r in rows[2:]}
    assert all(r["decision"] == "remove" for r in rows[2:])
    flagged = {str(100 + 8 * k + j) for k in range(NUM_CLASSES) for j in range(3)}
    assert removed == flagged - {"100"}  # the trusted row and the reviewed one stay


@pytest.mark.parametrize("name", ["sample", "true", "review_sample"])
def test_the_sample_is_unflagged_per_class_and_labelled_as_its_variant_says(rows, name):
    by_variant, true_labels = rows
    rows = by_variant[f"{name}_3"]
    review = rows[:2] if name == "review_sample" else []
    sample = rows[len(review) :]
    ids = [int(r["id"]) for r in sample]
    assert len(ids) == 3 * NUM_CLASSES == len(set(ids))
    given = (np.array(ids) - 100) // 8
    assert np.all((np.array(ids) - 100) % 8 >= 3)  # unflagged only
    np.testing.assert_array_equal(np.bincount(given, minlength=NUM_CLASSES), 3)
    if review:
        assert [r["id"] for r in review] == ["100", "105"] and 105 not in ids
    expected = true_labels[ids] if name == "true" else given
    np.testing.assert_array_equal([int(r["reviewed_label"]) for r in sample], expected)
    if name == "true":  # the same seeded sample as `sample_3`, with other labels
        assert [r["id"] for r in sample] == [r["id"] for r in by_variant["sample_3"]]
