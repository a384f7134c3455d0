"""The spurious-background generator (tools/synth.py's synth_spurious, used by benchmarks/spurious.py)."""

import json
import os
import sys

import numpy as np
import pytest

import byproducts
from tools import synth


def _counts(meta):
    return {split: (len(rows), sum(r[1] == r[2] for r in rows)) for split, rows in meta["images"].items()}


@pytest.fixture(scope="module")
def spurious_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("spurious"))
    assert synth.main(["--out", out, "--spurious", "0.75", "--classes", "4", "--train", "50",
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
        synth.synth_spurious(out, p=0.9, seed=3, n_classes=3, n_train=4, n_val=2, size=32)
    for split in ("train", "mixed_rand"):
        for w in sorted(os.listdir(os.path.join(a, "imagenet", split))):
            for f in sorted(os.listdir(os.path.join(a, "imagenet", split, w))):
                pa, pb = (os.path.join(r, "imagenet", split, w, f) for r in (a, b))
                assert open(pa, "rb").read() == open(pb, "rb").read()
    assert open(os.path.join(a, "spurious.json")).read() == open(os.path.join(b, "spurious.json")).read()
    c = str(tmp_path / "c")
    synth.synth_spurious(c, p=0.9, seed=4, n_classes=3, n_train=4, n_val=2, size=32)
    assert open(os.path.join(a, "spurious.json")).read() != open(os.path.join(c, "spurious.json")).read()


# ---------------------------------------------------------------------------- the study's statistics (no scipy)

def _study():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "spurious.py")
    spec = importlib.util.spec_from_file_location("spurious_study", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_student_t_two_sided_p_values():
    S = _study()
    # closed forms: df = 1 (Cauchy) p = 1 - 2 atan|t| / pi; df = 2 p = 1 - |t| / sqrt(2 + t^2);
    # df = 4 p = 1 - s (1 - t^2 / (12 (1 + t^2 / 4))) 3 / 4 with s = t / sqrt(1 + t^2 / 4)
    assert S.student_t_sf2(1.0, 1) == pytest.approx(0.5, abs=1e-12)
    assert S.student_t_sf2(-2.0, 2) == pytest.approx(1 - 2 / np.sqrt(6), abs=1e-12)
    t = 3.0
    s = t / np.sqrt(1 + t * t / 4)
    assert S.student_t_sf2(t, 4) == pytest.approx(1 - 0.75 * s * (1 - t * t / (12 * (1 + t * t / 4))), abs=1e-12)
    assert S.student_t_sf2(0.0, 7.5) == 1.0
    assert S.student_t_sf2(2.2281388519649385, 10) == pytest.approx(0.05, abs=1e-10)  # the t table's 97.5% point


def test_welch():
    S = _study()
    # means 2 and 5, variances 1 and 1, n = 3 each: t = -3 / sqrt(2/3), df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    t, df, p = S.welch([1, 2, 3], [4, 5, 6])
    assert t == pytest.approx(-3 / np.sqrt(2 / 3)) and df == pytest.approx(4.0)
    assert p == pytest.approx(S.student_t_sf2(t, 4.0))


def test_point_scores():
    S = _study()
    objects = np.array([[0.5, 0.5, 0.2], [0.3, 0.7, 0.1]])
    points = np.array([[0.65, 0.35], [0.3, 0.5]])  # inside the first box (|d| = 0.15 <= 0.2), 0.2 off the second
    acc, dist = S.point_scores(points, objects)
    assert acc == 50.0 and dist == pytest.approx(100 * (np.hypot(0.15, 0.15) + 0.2) / 2)


def test_a_study_folder_holds_one_setting(tmp_path):
    S = _study()
    args = S.get_args_parser().parse_args(["--out", str(tmp_path)])
    S.check_settings(args)
    S.check_settings(args)  # same settings: fine
    args.epochs = 3
    with pytest.raises(SystemExit, match=r"holds runs made with other settings \(epochs: 12 there, 3 now\)"):
        S.check_settings(args)


def test_the_attentive_pooling_study_runs_each_reading(tmp_path):
    """benchmarks/attentive_pooling.py end to end on a tiny set (1 epoch, 2 seeds): every row trains what it names
    (the run's config says its pooling and attention target) and the summary has each row, the tests against the
    average pool + head and the matched-share comparison of the two readings."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import attentive_pooling as A
    rows = ["average pool + point head", "attentive, centre of mass", "attentive, map, λ 1"]
    argv = ["--seeds", "0", "1", "--epochs", "1", "--train", "8", "--test", "4", "--data", str(tmp_path / "data"),
            "--out", str(tmp_path / "out"), "--rows", *rows]
    summary = A.main(argv)
    assert list(summary["table"]) == rows
    assert "bg_gap attentive, map, λ 1 vs attentive, centre of mass" in summary["welch"]
    for key, want in (("avg-head", ("avg", "centre-of-mass")), ("att-map1", ("attentive", "map"))):
        with open(tmp_path / "out" / f"{key}-seed0" / "config.json") as f:
            meta = json.load(f)["meta"]
        assert (meta["pooling"], meta["attention_target"]) == want
    with pytest.raises(SystemExit, match="--rows: unknown"):
        A.main(argv[:-3] + ["attentive, peak"])
