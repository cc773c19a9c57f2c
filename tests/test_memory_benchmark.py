"""scripts/memory_benchmark.py: the trees of hard links and the list files it runs on."""

import os

import numpy as np
from conftest import load_script

from gdw_tf.data import own_data


def test_a_list_file_names_every_link_of_the_tree_with_its_label(tmp_path):
    benchmark = load_script("memory_benchmark")
    originals = []
    for i in range(7):
        path = tmp_path / "png" / f"{i:05d}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(bytes([i]))
        originals.append(str(path))
    labels = np.array([0, 1, 2, 0, 1, 2, 0])

    # 17 names for 7 files: each file under 2 or 3 names, the k-th copy `c<k>_<name>`.
    folder = benchmark.link_tree(str(tmp_path / "train_17"), originals, labels, 17)
    listed = own_data.read_list(benchmark.write_list(folder))

    expected = sorted(
        (os.path.join(root, name), os.path.basename(root))
        for root, _, names in os.walk(folder)
        for name in names
        if name.endswith(".png")
    )
    assert len(expected) == 17
    assert sorted(zip(listed.files, listed.labels)) == expected
    for path, label in expected:  # each name a hard link to a file of its label
        source = originals[int(os.path.basename(path).split("_")[-1][:5])]
        assert os.path.samefile(path, source)
        assert labels[originals.index(source)] == int(label)
