"""The spurious-background generator of issue 9 (byproducts.synth_spurious, benchmarks/spurious.py)."""

import json
import os

import numpy as np
import pytest

import byproducts


def _counts(meta):
    return {split: (len(rows), sum(r[1] == r[2] for r in rows)) for split, rows in meta["images"].items()}


@pytest.fixture(scope="module")
def spurious_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("spurious"))
    assert byproducts.main(["synth", "--out", out, "--spurious", "0.75", "--classes", "4", "--train", "50",
                            "--val", "6"]) == 0
    return out


def test_layout_and_correlation(spurious_dir):
    with open(os.path.join(spurious_dir, "spurious.json")) as f:
        meta = json.load(f)
    wnids = meta["classes"]
    assert meta["p"] == 0.75 and len(wnids) == 4
    for split, n in (("train", 50), ("val", 6), ("mixed_same", 6), ("mixed_rand", 6)):
        for w in wnids:
            files = os.listdir(os.path.join(spurious_dir, "imagenet", split, w))
            assert len(files) == n and all(f.endswith(".JPEG") for f in files)
    c = _counts(meta)
    assert c["mixed_same"] == (24, 24)  # always the true class's background
    assert c["mixed_rand"] == (24, 0)  # always another class's
    n, agree = c["train"]
    assert n == 200 and abs(agree / n - 0.75) < 0.08  # binomial sd ~0.03
    # the two mixed splits show the same object on different backgrounds
    same, rand = meta["images"]["mixed_same"], meta["images"]["mixed_rand"]
    assert [r[1:2] + r[3:] for r in same] == [r[1:2] + r[3:] for r in rand]
    # every image's recorded background class exists, objects stay inside the image
    rows = [r for split in meta["images"].values() for r in split]
    assert all(0 <= r[2] < 4 and r[5] < r[3] < 1 - r[5] and r[5] < r[4] < 1 - r[5] for r in rows)


def test_clicks_are_readable_and_near_the_object(spurious_dir):
    with open(os.path.join(spurious_dir, "spurious.json")) as f:
        meta = json.load(f)
    idx, problems, _ = byproducts.ClickIndex.from_xml(os.path.join(spurious_dir, "imagenet_ab", "train_xml"),
                                                      workers=1)
    assert problems == []
    rows = {r[0]: r for r in meta["images"]["train"]}
    assert 0.85 * len(rows) <= len(idx) <= len(rows)
    d = [np.hypot(x - rows[k][3], y - rows[k][4]) / rows[k][5] for k, (x, y) in idx.items()]
    assert np.median(d) < 0.6  # within the object's radius for most clicks (noise + top-right bias)


def test_deterministic_for_a_seed(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    for out in (a, b):
        byproducts.synth_spurious(out, p=0.9, seed=3, n_classes=3, n_train=4, n_val=2, size=32)
    for split in ("train", "mixed_rand"):
        for w in sorted(os.listdir(os.path.join(a, "imagenet", split))):
            for f in sorted(os.listdir(os.path.join(a, "imagenet", split, w))):
                pa, pb = (os.path.join(r, "imagenet", split, w, f) for r in (a, b))
                assert open(pa, "rb").read() == open(pb, "rb").read()
    assert open(os.path.join(a, "spurious.json")).read() == open(os.path.join(b, "spurious.json")).read()
    c = str(tmp_path / "c")
    byproducts.synth_spurious(c, p=0.9, seed=4, n_classes=3, n_train=4, n_val=2, size=32)
    assert open(os.path.join(a, "spurious.json")).read() != open(os.path.join(c, "spurious.json")).read()
