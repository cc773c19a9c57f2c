"""scripts/trusted_set_study.py: the corrections file of each variant, from round 1's files."""

import csv
import os

import numpy as np
import pytest
from conftest import load_script

study = load_script("trusted_set_study")

NUM_CLASSES = 10  # the study's data: Fashion-MNIST


def _write(path, columns, rows):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, columns)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture
def base(tmp_path):
    """Round 1's label_issues.csv (8 training rows per class, rows 0-2 of each flagged, a
    trusted row) and a review of two ids; returns (folder, true labels by id)."""
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
    return str(tmp_path), true_labels


def test_prune_removes_every_flagged_training_row_the_review_left(base):
    folder, true_labels = base
    rows = study.variant_rows("prune", folder, true_labels)
    assert rows[:2] == [
        {"id": "100", "reviewed_label": "4", "decision": "relabel"},
        {"id": "105", "reviewed_label": "0", "decision": "keep"},
    ]
    removed = {r["id"] for r in rows[2:]}
    assert all(r["decision"] == "remove" for r in rows[2:])
    flagged = {str(100 + 8 * k + j) for k in range(NUM_CLASSES) for j in range(3)}
    assert removed == flagged - {"100"}  # the trusted row and the reviewed one stay


@pytest.mark.parametrize("name", ["sample", "true", "review_sample"])
def test_the_sample_is_unflagged_per_class_and_labelled_as_its_variant_says(base, name):
    folder, true_labels = base
    rows = study.variant_rows(f"{name}_3", folder, true_labels)
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
    # The same seed, the same sample: the variants of one size share it.
    again = study.variant_rows(f"{name}_3", folder, true_labels)[len(review) :]
    assert again == sample
