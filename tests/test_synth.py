"""Tests for tools/synth.py: the synthetic data is deterministic, in the released layouts, and learnable."""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image

import byproducts as bp
from tools.synth import SYNTH_WNIDS, synth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tree_hash(root):
    h = hashlib.sha256()
    for d, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for f in sorted(files):
            h.update(os.path.relpath(os.path.join(d, f), root).encode())
            h.update(open(os.path.join(d, f), "rb").read())
    return h.hexdigest()


def test_synth_deterministic_and_layout(tmp_path):
    kw = dict(n_classes=2, n_train=6, n_val=1, coco_train=5, coco_val=2)
    s1 = synth(str(tmp_path / "a"), seed=3, **kw)
    synth(str(tmp_path / "b"), seed=3, **kw)
    synth(str(tmp_path / "c"), seed=4, **kw)
    assert _tree_hash(tmp_path / "a") == _tree_hash(tmp_path / "b") != _tree_hash(tmp_path / "c")
    a = tmp_path / "a"
    w = SYNTH_WNIDS[0]
    assert (a / "imagenet/train" / w / f"{w}_0.JPEG").exists() and (a / "imagenet/val" / w / f"{w}_val_0.JPEG").exists()
    assert not (a / "imagenet_ab/train_xml" / w / f"{w}_1.xml").exists()  # an image without XML
    assert (a / "imagenet_ab/train_xml" / w / f"._{w}_0.xml").exists()
    assert (a / "imagenet/boxes/val" / w / f"{w}_val_0.xml").exists()
    assert (a / "coco/train2014").is_dir() and (a / "coco/annotations/instances_val2014.json").exists()
    sizes = {Image.open(p).size for p in (a / "imagenet/train" / w).iterdir()}
    assert any(x != y for x, y in sizes) and all(64 <= v <= 160 for s in sizes for v in s)
    recs = json.loads((a / "coco/coco_ab_v1_0.json").read_text())
    assert len({r["image_id"] for r in recs}) == len(recs) == 4  # one record per image but the last, no duplicate
    ids = {split: {im["id"] for im in json.loads((a / f"coco/annotations/instances_{split}2014.json").read_text())
                   ["images"]} for split in ("train", "val")}
    assert len(ids["train"]) == 5 and len(ids["val"]) == 2 and not ids["train"] & ids["val"]
    kinds = {tuple(x["actionType"] for x in r["actionHistories"]) for r in recs}
    assert any("move" in k for k in kinds) and any("remove" in k for k in kinds)
    assert s1["ab_multi_entry"] >= 2 and s1["ab_missing"] >= 2


def test_synth_clicks_point_at_the_object(synth_dir):
    # the point task is learnable: clicks land in the object's box far more often than uniform points would
    idx, _, _ = bp.ClickIndex.from_xml(os.path.join(synth_dir, "imagenet_ab"))
    boxes = bp.load_boxes(os.path.join(synth_dir, "imagenet", "boxes", "train"))
    hit = rand = n = 0
    rng = np.random.default_rng(0)
    for key, b in boxes.items():
        if key in idx:
            W, H = b["size"]
            (x0, y0, x1, y1), = b["boxes"]
            for (x, y), counter in ((idx[key], "hit"), (tuple(rng.random(2)), "rand")):
                inside = x0 - 1 <= x * W <= x1 + 1 and y0 - 1 <= y * H <= y1 + 1
                hit, rand = hit + (inside and counter == "hit"), rand + (inside and counter == "rand")
            n += 1
    assert n >= 5 and hit / n > 0.7 and hit / n > rand / n + 0.3


def test_synth_cli_runs(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "synth.py"), "--out", str(tmp_path / "s"),
                        "--classes", "2", "--train", "3", "--val", "1", "--coco-train", "2", "--coco-val", "1"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "synth ->" in r.stdout and (tmp_path / "s/coco/coco_ab_v1_0.json").exists()
