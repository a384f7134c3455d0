"""benchmarks/coco_context.py's own pieces: the planted data, the readings' arithmetic, the head's log summary."""
import json
import os
import sys

import numpy as np
import pytest

import byproducts
from tools.coco_masks import annotation_mask

sys.path.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import coco_context as cc  # noqa: E402

A_ID, B_ID = byproducts.COCO_NAME_TO_ID[cc.A], byproducts.COCO_NAME_TO_ID[cc.B]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ctx") / "data")
    comp = cc.write_data(root, n_train=60, n_val=3, p_a=0.4, p_b=0.5, cooccur=0.95, size=32, seed=0)
    return root, comp


def _kinds(root, split):
    """Per image of a written split: (holds A, holds B), read back from the instances file."""
    with open(os.path.join(root, "annotations", f"instances_{split}2014.json")) as f:
        inst = json.load(f)
    cats = {im["id"]: set() for im in inst["images"]}
    for a in inst["annotations"]:
        cats[a["image_id"]].add(a["category_id"])
    return [(A_ID in c, B_ID in c) for c in cats.values()]


def test_composition_counts():
    assert cc.composition(320, 0.4, 0.5, 0.95) == {"together": 122, "a_alone": 6, "b_alone": 38, "neither": 154}
    assert cc.composition(320, 0.4, 0.5) == {"together": 64, "a_alone": 64, "b_alone": 96, "neither": 96}
    with pytest.raises(SystemExit, match="do not fit"):
        cc.composition(10, 0.8, 0.3, 0.9)  # 7 images with A and B, but only 3 with B


def test_planted_and_control_rates_as_written(data):
    root, comp = data
    planted, control = _kinds(os.path.join(root, "planted"), "train"), _kinds(os.path.join(root, "control"), "train")
    assert len(planted) == len(control) == 60
    for rows in (planted, control):  # the same marginals of A and B in both sets
        assert sum(a for a, _ in rows) == 24 and sum(b for _, b in rows) == 30
    # planted: 23 of A's 24 images hold B (round(0.95 x 24)); B also alone (7 images)
    assert sum(a and b for a, b in planted) == 23 and sum(b and not a for a, b in planted) == 7
    # control: independent, #together = 24 x 30 / 60 = 12, so P(B | A) = P(B) = 0.5
    assert sum(a and b for a, b in control) == 12
    assert comp["planted"]["b_given_a"] == pytest.approx(23 / 24) and comp["control"]["b_given_a"] == 0.5
    # the val set is shared and holds each kind --val times
    val = _kinds(os.path.join(root, "planted"), "val")
    assert val == _kinds(os.path.join(root, "control"), "val")
    assert [val.count(k) for k in ((True, True), (True, False), (False, True), (False, False))] == [3, 3, 3, 3]


def test_written_sets_read_as_coco_with_masks_and_icons(data):
    root, _ = data
    coco = os.path.join(root, "planted")
    ds = byproducts.CocoAB(os.path.join(coco, "train2014"),
                           os.path.join(coco, "annotations", "instances_train2014.json"),
                           os.path.join(coco, "coco_ab_v1_0.json"), point_source="clicks", strict=False)
    a = ds.instances.cat_index[A_ID]
    has_a = ds.targets[:, a] > 0
    assert int(has_a.sum()) == 24
    assert float(ds.point_mask[has_a, a].mean()) > 0.8  # most present classes have an icon (some missed, as released)
    inst = ds.instances
    for iid in inst.image_ids[:10]:  # every annotation's polygon gives a non-empty mask at its box
        for ann in inst.anns[iid]:
            m = annotation_mask(ann["segmentation"], 32, 32)
            x, y, w, h = ann["bbox"]
            assert m.sum() == ann["area"] > 0 and m[int(y):int(y + h), int(x):int(x + w)].sum() == m.sum()


def test_readings_arithmetic_on_a_toy_case():
    ctx = np.full((2, 3, 4), np.nan)
    ctx[0, 0] = [0.9, 0.8, 0.3, 0.1]  # clean, o random erased, o worst erased, c erased
    ctx[1, 0] = [0.7, 0.7, 0.4, 0.2]
    ctx[1, 2] = [0.6, 0.6, 0.6, 0.5]
    r = cc.readings(ctx, 0.5, classes=[0])
    assert r["pairs"] == 2
    assert r["diff_random"] == pytest.approx(100 * np.mean([0.8 - 0.1, 0.7 - 0.2]))
    assert r["drop_random"] == pytest.approx(100 * np.mean([0.1, 0.0]))
    assert r["drop_worst"] == pytest.approx(100 * np.mean([0.6, 0.3]))
    assert r["diff_worst"] == pytest.approx(100 * np.mean([0.2, 0.2]))
    assert (r["flip_random"], r["flip_worst"]) == (0.0, 100.0)
    assert cc.readings(ctx, 0.5)["pairs"] == 3


def test_apart_ap_leaves_out_images_with_both():
    logits = np.array([[3.0], [2.0], [1.0], [0.0]])
    targets = np.array([[1], [0], [1], [0]])
    kinds = ["together", "b_alone", "a_alone", "neither"]
    # without the 'together' image: positives at rank 2 of 3 -> AP 1/2
    assert cc.apart_ap(logits, targets, kinds, 0) == pytest.approx(50.0)


def test_head_log_summary():
    log = [{"epoch": e, "train_point_vs_centre": v, "point_grad_share": s}
           for e, (v, s) in enumerate([(1.0, 4.0), (0.95, 2.0), (0.5, 1.0)])]
    h = cc.head_log(log)
    assert h["head_beats_centre_epoch"] == 2 and h["grad_share_last"] == 1.0
    assert h["grad_share_mean"] == pytest.approx(7 / 3) and h["point_vs_centre_last"] == 0.5
    assert cc.head_log([{"epoch": 0, "train_loss": 1.0}]) == {}  # a plain run
    never = cc.head_log([{"epoch": e, "train_point_vs_centre": 1.0} for e in range(4)])
    assert never["head_beats_centre_epoch"] == 4 and "grad_share_mean" not in never
