"""Tests for byproducts.py (readers, point-aware transforms, datasets, Mixup / CutMix) and the index and mask code
it hands to tools/prepare.py and tools/coco_masks.py, on fixture files written in the released layouts.

Fixtures reproduce published example records (a real ImageNet-AB XML, cited in docs/formats.md §1, and the COCO-AB
record of docs/formats.md §2) byte for byte; hand-computed numbers are worked out in the comments.
"""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

import byproducts as bp
from tools import analyses, prepare
from tools import coco_masks as cm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# formats.md §1, a real record (2 of 6 mouseTracking entries), whitespace removed.
REAL_XML = (
    "<annotation><folder>n01440764</folder><filename>n01440764_105</filename>"
    "<source><database>ILSVRC_2012</database></source><size><width>500</width><height>375</height><depth>3</depth>"
    "</size><segmented>0</segmented><object><name>n01440764</name><pose>Unspecified</pose><truncated>0</truncated>"
    "<difficult>0</difficult><bndbox><xmin>43</xmin><ymin>88</ymin><xmax>499</xmax><ymax>295</ymax></bndbox>"
    "</object><metadata><assignment_id>36DSNE9QZFQKOCZGAHS6R63J6E1OJL</assignment_id><estimateTime>341"
    "</estimateTime><hit_id>3URJ6VVYVYFSZAI1H701XKID4JA4OF</hit_id><hit_submit_time>1641426644</hit_submit_time>"
    "<hoveredCount>1</hoveredCount><hoveredRecord><action>enter</action><time>1641425051975</time></hoveredRecord>"
    "<hoveredRecord><action>leave</action><time>1641425052740</time></hoveredRecord><imageHeight>243</imageHeight>"
    "<imageID>n01440764/n01440764_105</imageID><imagePosition><x>857</x><y>1976</y></imagePosition>"
    "<imageWidth>243</imageWidth><image_idx>17</image_idx><imagenet_hit_id>5cd81d284fee460b887cb67e1612b0a0"
    "</imagenet_hit_id><mouseTracking><time>1641425051975</time><x>0.0030864197530864196</x>"
    "<y>0.6296296296296297</y></mouseTracking><mouseTracking><time>1641425052151</time><x>0.5277777777777778</x>"
    "<y>0.49382716049382713</y></mouseTracking><originalImageHeight>375</originalImageHeight>"
    "<originalImageWidth>500</originalImageWidth><page_idx>9</page_idx><selected>True</selected>"
    "<selectedCount>1</selectedCount><selectedRecord><time>1641425052319</time><x>0.5401234567901234</x>"
    "<y>0.4732510288065844</y></selectedRecord><worker_id>47DBDD543E</worker_id></metadata></annotation>"
)

# formats.md §2: the real first row of the HF viewer (rounded) with the constructed remove and mouse point.
REAL_COCO_AB = [{
    "image_id": 296169, "originalImageWidth": 480, "originalImageHeight": 360, "imageWidth": 450,
    "imageHeight": 450, "page_id": 7, "hit_id": "94c49a4ea144419c87bc7c201600aff9", "worker_id": "00AA3B5E80",
    "timeSpent": 168291,
    "actionHistories": [
        {"actionType": "add", "iconType": "cake", "pointTo": {"x": 0.78833, "y": 0.83778}, "timeAt": 155755},
        {"actionType": "move", "iconType": "cake", "pointFrom": {"x": 0.78833, "y": 0.83778},
         "pointTo": {"x": 0.70167, "y": 0.54444}, "timeAt": 158789},
        {"actionType": "remove", "iconType": "cake", "pointFrom": {"x": 0.70167, "y": 0.54444}, "timeAt": 160000}],
    "categoryHistories": [{"categoryIndex": 1, "categoryName": "Animal", "timeAt": 144081, "usingKeyboard": False}],
    "mouseTracking": [{"x": 0.679, "y": 0.862, "timeAt": 15725}],
}]


def meta(selected=True, clicks=((0.5, 0.5),), image_w=243, image_h=243, orig=(500, 375), wnid="n01440764",
         stem="n01440764_1"):
    """One <metadata> block in the released layout (children in alphabetical order)."""
    recs = "".join(f"<selectedRecord><time>{1641425052319 + i}</time><x>{x}</x><y>{y}</y></selectedRecord>"
                   for i, (x, y) in enumerate(clicks))
    return (f"<metadata><assignment_id>A</assignment_id><estimateTime>10</estimateTime><imageHeight>{image_h}"
            f"</imageHeight><imageID>{wnid}/{stem}</imageID><imageWidth>{image_w}</imageWidth>"
            f"<originalImageHeight>{orig[1]}</originalImageHeight><originalImageWidth>{orig[0]}"
            f"</originalImageWidth><selected>{selected}</selected><selectedCount>{len(clicks)}</selectedCount>"
            f"{recs}<worker_id>47DBDD543E</worker_id></metadata>")


def ab_file(path, *metas):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("<annotation><folder>x</folder>" + "".join(metas) + "</annotation>")
    return str(path)


def jpeg(path, size=(40, 30), colour=(120, 60, 30)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=90)


# ----------------------------------------------------------------------------------------------------------------
# ImageNet-AB reader

def test_real_record_fields_are_typed(tmp_path):
    p = tmp_path / "imagenet_ab_v1_0" / "train_xml" / "n01440764" / "n01440764_105.xml"
    p.parent.mkdir(parents=True)
    p.write_text(REAL_XML)
    entries, voc = bp.read_imagenet_ab_xml(str(p), with_voc=True)
    assert len(entries) == 1
    e = entries[0]
    assert e["selected"] is True and e["selectedCount"] == 1 and e["estimateTime"] == 341
    assert e["hit_submit_time"] == 1641426644 and e["image_idx"] == 17 and e["page_idx"] == 9
    assert e["imageWidth"] == 243 and e["originalImageWidth"] == 500 and e["originalImageHeight"] == 375
    assert e["imagePosition"] == {"x": 857, "y": 1976}
    assert e["hoveredRecord"] == [{"action": "enter", "time": 1641425051975},
                                  {"action": "leave", "time": 1641425052740}]
    assert [m["time"] for m in e["mouseTracking"]] == [1641425051975, 1641425052151]
    assert e["selectedRecord"] == [{"time": 1641425052319, "x": 0.5401234567901234, "y": 0.4732510288065844}]
    assert e["worker_id"] == "47DBDD543E" and e["imageID"] == "n01440764/n01440764_105"
    assert e["assignment_id"] == "36DSNE9QZFQKOCZGAHS6R63J6E1OJL"
    assert voc["size"] == (500, 375) and voc["names"] == ["n01440764"]
    np.testing.assert_array_equal(voc["boxes"], [[43, 88, 499, 295]])
    x, y = bp.imagenet_click(entries)
    # formats.md: x * 324 = 175.0 and y * 243 = 115.0, i.e. the true display was 324 x 243, not imageWidth=243.
    assert x * 324 == pytest.approx(175.0) and y * 243 == pytest.approx(115.0)
    assert (x, y) == (0.5401234567901234, 0.4732510288065844)


def test_last_click_not_first(tmp_path):
    p = ab_file(tmp_path / "n1" / "a.xml", meta(clicks=((0.1, 0.2), (0.3, 0.4), (0.7, 0.6))))
    assert bp.imagenet_click(bp.read_imagenet_ab_xml(p)) == (0.7, 0.6)


def test_selected_entries_are_averaged(tmp_path):
    both = ab_file(tmp_path / "n1" / "a.xml", meta(clicks=((0.2, 0.4),)), meta(clicks=((0.1, 0.9), (0.6, 0.8))))
    x, y = bp.imagenet_click(bp.read_imagenet_ab_xml(both))
    assert (x, y) == pytest.approx(((0.2 + 0.6) / 2, (0.4 + 0.8) / 2))  # last click of each, then the mean
    one = ab_file(tmp_path / "n1" / "b.xml", meta(selected="False", clicks=((0.9, 0.9),)), meta(clicks=((0.3, 0.1),)))
    assert bp.imagenet_click(bp.read_imagenet_ab_xml(one)) == (0.3, 0.1)


def test_bools_are_python_style_strings(tmp_path):
    # "False" must be False (bool("False") is True); a deselected image keeps its select click in the log.
    p = ab_file(tmp_path / "n1" / "a.xml", meta(selected="False", clicks=((0.5, 0.5),)))
    entries = bp.read_imagenet_ab_xml(p)
    assert entries[0]["selected"] is False and bp.imagenet_click(entries) is None
    assert bp.imagenet_click([{"selected": True, "selectedRecord": []}]) is None  # selected, no click logged
    assert bp.imagenet_click([]) is None


def test_image_width_is_never_used(tmp_path):
    a = ab_file(tmp_path / "n1" / "a.xml", meta(clicks=((0.25, 0.75),)))
    b = ab_file(tmp_path / "n1" / "b.xml", meta(clicks=((0.25, 0.75),), image_w=0, image_h=99999))
    assert bp.imagenet_click(bp.read_imagenet_ab_xml(a)) == bp.imagenet_click(bp.read_imagenet_ab_xml(b))
    idx, probs, _ = bp.ClickIndex.from_xml(str(tmp_path))
    assert not probs and idx["n1/a"] == idx["n1/b"] == pytest.approx((0.25, 0.75))


def test_appledouble_skipped_and_prefix_accepted(tmp_path):
    root = tmp_path / "imagenet_ab_v1_0" / "train_xml" / "n01440764"
    ab_file(root / "n01440764_1.xml", meta(clicks=((0.4, 0.6),)))
    (root / "._n01440764_1.xml").write_bytes(b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02")
    assert bp.read_imagenet_ab_xml(str(root / "._n01440764_1.xml")) == []
    st = prepare.build_imagenet_index(str(tmp_path), str(tmp_path / "idx.npz"), workers=1, progress=False)
    assert st["files"] == 1 and st["appledouble_skipped"] == 1 and st["bad"] == 0 and st["problems"] is None
    idx = bp.load_imagenet_index(str(tmp_path / "idx.npz"))
    assert list(idx) == ["n01440764/n01440764_1"] and idx["n01440764/n01440764_1"] == pytest.approx((0.4, 0.6))


# ----------------------------------------------------------------------------------------------------------------
# bad input: counted, named, strict raises

@pytest.mark.parametrize("x,kind", [("nan", "bad-coordinate"), ("abc", "bad-coordinate"), ("1.5", "bad-coordinate"),
                                    ("-0.2", "bad-coordinate")])
def test_bad_coordinates(tmp_path, x, kind):
    p = ab_file(tmp_path / "n1" / "bad.xml", meta(clicks=((x, 0.5),)))
    with pytest.raises(bp.BadInput) as e:
        bp.imagenet_click(bp.read_imagenet_ab_xml(p))
    assert e.value.kind == kind
    ab_file(tmp_path / "n1" / "good.xml", meta(clicks=((0.5, 0.5),)))
    st = prepare.build_imagenet_index(str(tmp_path), str(tmp_path / "i.npz"), workers=1, progress=False)
    assert st["bad"] == 1 and st["with_click"] == 1 and kind in st["problems"] and "bad.xml" in st["problems"]
    idx = bp.load_imagenet_index(str(tmp_path / "i.npz"))
    assert "n1/bad" not in idx and idx.get("n1/bad") is None  # weight 0 downstream
    with pytest.raises(bp.BadInput, match="bad.xml"):
        prepare.build_imagenet_index(str(tmp_path), str(tmp_path / "j.npz"), workers=1, strict=True, progress=False)
    assert not os.path.exists(tmp_path / "j.npz")


def test_corrupt_and_truncated_xml(tmp_path):
    full = ab_file(tmp_path / "n1" / "ok.xml", meta())
    (tmp_path / "n1" / "trunc.xml").write_text(open(full).read()[:-30])
    (tmp_path / "n1" / "junk.xml").write_bytes(os.urandom(64) + b"\x00")
    with pytest.raises(bp.BadInput, match="corrupt-xml"):
        bp.read_imagenet_ab_xml(str(tmp_path / "n1" / "trunc.xml"))
    # both paths of the index (inline and a 2-process pool) count and name every bad file; no worker dies
    for workers in (1, 2):
        st = prepare.build_imagenet_index(str(tmp_path), str(tmp_path / "i.npz"), workers=workers, progress=False)
        assert (st["files"], st["bad"], st["with_click"]) == (3, 2, 1)
        assert "corrupt-xml x2" in st["problems"] and "trunc.xml" in st["problems"] and "junk.xml" in st["problems"]


def test_entity_declarations_refused(tmp_path):
    lol = ('<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;">]>'
           '<annotation><metadata><selected>True</selected><worker_id>&lol2;</worker_id></metadata></annotation>')
    (tmp_path / "n1").mkdir()
    (tmp_path / "n1" / "lol.xml").write_text(lol)
    with pytest.raises(bp.BadInput) as e:
        bp.read_imagenet_ab_xml(str(tmp_path / "n1" / "lol.xml"))
    assert e.value.kind == "entity-declaration"
    # the same DTD hidden from a byte search by UTF-16 is refused too
    (tmp_path / "n1" / "lol16.xml").write_bytes(lol.replace('"1.0"', '"1.0" encoding="UTF-16"').encode("utf-16"))
    with pytest.raises(bp.BadInput):
        bp.read_imagenet_ab_xml(str(tmp_path / "n1" / "lol16.xml"))
    st = prepare.build_imagenet_index(str(tmp_path), str(tmp_path / "i.npz"), workers=1, progress=False)
    assert st["bad"] == 2 and "entity-declaration" in st["problems"]


def test_xml_without_image_is_reported(tmp_path):
    jpeg(str(tmp_path / "img" / "n1" / "n1_0.JPEG"))
    clicks = {"n1/n1_0": (0.5, 0.5), "n1/n1_missing": (0.2, 0.2), "n9/other_class": (0.1, 0.1)}
    with pytest.warns(bp.BadInputWarning, match=r"xml-without-image x1: n1/n1_missing"):
        ds = bp.ImageNetAB(str(tmp_path / "img"), clicks=clicks)
    assert len(ds) == 1 and ds[0][3].tolist() == [1.0]  # n9 is not one of our classes: not reported
    with pytest.raises(bp.BadInput, match="n1_missing"):
        bp.ImageNetAB(str(tmp_path / "img"), clicks=clicks, strict=True)


def test_dataset_reports_xml_problems_from_a_scan_or_an_index_file(tmp_path):
    jpeg(str(tmp_path / "img" / "n1" / "n1_0.JPEG"))
    jpeg(str(tmp_path / "img" / "n1" / "n1_1.JPEG"))
    ab_file(tmp_path / "xml" / "n1" / "n1_0.xml", meta(clicks=((0.5, 0.25),), orig=(40, 30)))  # jpeg()'s size
    ab_file(tmp_path / "xml" / "n1" / "n1_gone.xml", meta())
    (tmp_path / "xml" / "n1" / "n1_1.xml").write_text("<annotation><metadata><selected>True")
    with pytest.warns(bp.BadInputWarning) as rec:
        ds = bp.ImageNetAB(str(tmp_path / "img"), clicks=str(tmp_path / "xml"))  # an XML root: scanned here
    line = str(rec[0].message)
    assert "corrupt-xml x1" in line and "n1_1.xml" in line and "xml-without-image x1: n1/n1_gone" in line
    assert [ds[i][3].item() for i in range(2)] == [1.0, 0.0]
    prepare.build_imagenet_index(str(tmp_path / "xml"), str(tmp_path / "i.npz"), workers=1, progress=False)
    with pytest.warns(bp.BadInputWarning, match=r"bad-xml x1: n1/n1_1 .*xml-without-image x1: n1/n1_gone"):
        ds = bp.ImageNetAB(str(tmp_path / "img"), clicks=str(tmp_path / "i.npz"))  # an index file
    assert [ds[i][3].item() for i in range(2)] == [1.0, 0.0] and ds[0][2].tolist() == [[0.5, 0.25]]
    with pytest.raises(bp.BadInput):
        bp.ImageNetAB(str(tmp_path / "img"), clicks=str(tmp_path / "i.npz"), strict=True)


def test_bad_click_values_in_a_dict_give_weight_zero(tmp_path):
    for n in range(3):
        jpeg(str(tmp_path / "n1" / f"n1_{n}.JPEG"))
    clicks = {"n1/n1_0": (0.5, 0.25), "n1/n1_1": (float("nan"), 0.5), "n1/n1_2": (1.5, 0.5)}
    with pytest.warns(bp.BadInputWarning, match="bad-coordinate x2"):
        ds = bp.ImageNetAB(str(tmp_path), clicks=clicks)
    assert [ds[i][3].item() for i in range(3)] == [1.0, 0.0, 0.0]
    assert ds[0][2].tolist() == [[0.5, 0.25]]


def test_unreadable_jpeg_mean_pixel_image_label_kept(tmp_path):
    jpeg(str(tmp_path / "n1" / "n1_0.JPEG"))
    jpeg(str(tmp_path / "n2" / "n2_0.JPEG"))
    good = open(tmp_path / "n2" / "n2_0.JPEG", "rb").read()
    (tmp_path / "n2" / "n2_1.JPEG").write_bytes(good[: len(good) // 2])  # truncated
    (tmp_path / "n2" / "n2_2.JPEG").write_bytes(b"not a jpeg at all")
    clicks = {"n1/n1_0": (0.5, 0.5), "n2/n2_1": (0.5, 0.5), "n2/n2_2": (0.5, 0.5)}
    ds = bp.ImageNetAB(str(tmp_path), clicks=clicks, transform=bp.EvalTransform(size=16, resize=16))
    with pytest.warns(bp.BadInputWarning, match="n2_2.JPEG"):
        img, label, pts, w = ds[3]
    assert label == 1 and w.item() == 0.0 and img.shape == (3, 16, 16)
    # the mean pixel (124, 116, 104) normalises to (124/255 - 0.485) / 0.229 = 0.0073, -0.0051, 0.0015
    mean = (torch.tensor(bp.MEAN_RGB) / 255 - torch.tensor(bp.IMAGENET_MEAN)) / torch.tensor(bp.IMAGENET_STD)
    assert torch.allclose(img, mean[:, None, None].expand(3, 16, 16), atol=1e-6)
    with pytest.warns(bp.BadInputWarning, match="n2_1.JPEG"):
        _, label, _, w = ds[2]
    assert w.item() == 0.0 and label == 1
    assert ds.problem_counts() == {"broken_images": 2, "bad_records": 0}
    # no worker crash: a 2-worker DataLoader goes through the whole set
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    assert torch.cat([b[3] for b in batches]).flatten().tolist() == [1.0, 0.0, 0.0, 0.0]
    strict = bp.ImageNetAB(str(tmp_path), clicks=clicks, strict=True)
    with pytest.raises(bp.BadInput, match="n2_2.JPEG"):
        strict[3]


def test_corrupt_json_and_strict(tmp_path):
    p = tmp_path / "coco_ab_v1_0.json"
    p.write_text(json.dumps(REAL_COCO_AB)[:-20])  # truncated
    with pytest.warns(bp.BadInputWarning, match=r"corrupt-json x1: .*coco_ab_v1_0.json"):
        assert bp.read_coco_ab(str(p)) == {}
    with pytest.raises(bp.BadInput, match="corrupt-json"):
        bp.read_coco_ab(str(p), strict=True)
    (tmp_path / "inst.json").write_text('{"images": [')
    with pytest.raises(bp.BadInput, match="inst.json"):
        bp.read_coco_instances(str(tmp_path / "inst.json"))


# ----------------------------------------------------------------------------------------------------------------
# COCO-AB

def test_coco_points_modes_on_the_real_record(tmp_path):
    p = tmp_path / "coco_ab_v1_0.json"
    p.write_text(json.dumps(REAL_COCO_AB))
    recs = bp.read_coco_ab(str(p))
    r = recs[296169]
    assert r["timeSpent"] == 168291 and r["mouseTracking"][0]["x"] == 0.679  # raw fields kept
    # final-add (the paper's rule): the last add, although the icon was moved and then removed
    assert bp.coco_points(r, "final-add") == {61: (0.78833, 0.83778)}  # (x, y), not the notebook's (y, x)
    assert bp.coco_points(r, "final-position") == {}  # replayed: removed in the end
    moved = dict(r, actionHistories=r["actionHistories"][:2])
    assert bp.coco_points(moved, "final-position") == {61: (0.70167, 0.54444)}
    assert bp.coco_points(moved, "final-add") == {61: (0.78833, 0.83778)}


def test_coco_points_replay_and_missing_keys():
    acts = [
        {"actionType": "add", "iconType": "dog", "pointTo": {"x": 0.1, "y": 0.9}, "timeAt": 1},
        {"actionType": "remove", "iconType": "dog", "pointFrom": {"x": 0.1, "y": 0.9}, "timeAt": 2},  # no pointTo
        {"actionType": "add", "iconType": "dog", "pointTo": {"x": 0.3, "y": 0.2}, "timeAt": 3},  # no pointFrom
        {"actionType": "add", "iconType": "teddy bear", "pointTo": {"x": 0.6, "y": 0.7}, "timeAt": 4},
        {"actionType": "move", "iconType": "teddy bear", "timeAt": 5},  # pointTo missing: counted, ignored
        {"actionType": "add", "iconType": "hat", "pointTo": {"x": 0.5, "y": 0.5}, "timeAt": 6},  # unused slot
        {"actionType": "add", "iconType": "unicorn", "pointTo": {"x": 0.5, "y": 0.5}, "timeAt": 7},
        {"actionType": "add", "iconType": "cup", "pointTo": {"x": float("nan"), "y": 0.5}, "timeAt": 8},
    ]
    rec = {"image_id": 1, "originalImageWidth": 0, "originalImageHeight": 0, "actionHistories": acts}
    probs = bp.Problems("t")
    assert bp.coco_points(rec, "final-position", probs) == {18: (0.3, 0.2), 88: (0.6, 0.7)}
    assert probs.counts == {"unknown-icon": 2, "bad-coordinate": 2}
    assert "'unicorn'" in probs.summary() and "image_id=1" in probs.summary()
    assert bp.coco_points(rec, "final-add") == {18: (0.3, 0.2), 88: (0.6, 0.7)}
    assert bp.coco_points({"image_id": 2}) == {}  # no actionHistories key at all


def test_duplicate_image_ids_last_wins(tmp_path):
    a = dict(REAL_COCO_AB[0], actionHistories=[])
    b = REAL_COCO_AB[0]
    p = tmp_path / "ab.json"
    p.write_text(json.dumps([a, {"image_id": "x"}, b]))
    probs = bp.Problems("t")
    recs = bp.read_coco_ab(str(p), probs)
    assert recs[296169] is not None and len(recs[296169]["actionHistories"]) == 3
    assert probs.counts == {"duplicate-image-id": 1, "malformed-record": 1}
    p.write_text(json.dumps([a, b]))
    with pytest.warns(bp.BadInputWarning, match="duplicate-image-id"):
        assert len(bp.read_coco_ab(str(p), strict=True)) == 1  # a documented quirk: a note, not an error


def test_coco_instances_targets_boxes_masks(synth_dir):
    inst = bp.read_coco_instances(os.path.join(synth_dir, "coco/annotations/instances_train2014.json"))
    assert inst.num_classes == 80 and inst.cat_ids == bp.COCO_CATEGORY_IDS
    assert inst.cat_index[1] == 0 and inst.cat_index[90] == 79 and inst.cat_index[13] == 11  # 12 is unused
    crowd = [a for anns in inst.anns.values() for a in anns if a["iscrowd"]]
    assert crowd and all(isinstance(a["segmentation"]["counts"], list) for a in crowd)
    a = crowd[0]
    t = inst.target(a["image_id"])
    assert t.dtype == np.float32 and t.shape == (80,) and t[inst.cat_index[a["category_id"]]] == 1  # crowd counts
    for anns in list(inst.anns.values())[:5]:
        for a in anns:
            im = inst.images[a["image_id"]]
            m = cm.annotation_mask(a["segmentation"], im["height"], im["width"])
            ys, xs = np.nonzero(m)
            assert m.sum() == a["area"] and [xs.min(), ys.min()] == a["bbox"][:2]
    boxes, labels = inst.boxes(a["image_id"])
    assert boxes.shape[1] == 4 and (boxes[:, 2:] > boxes[:, :2]).all() and labels.dtype == np.int64


def test_rle_and_polygon_masks_against_hand_made_masks(tmp_path):
    # uncompressed RLE, size [h=2, w=3], counts [1, 2, 3] over column-major pixels: 0 | 1 1 | 0 0 0
    toy = np.array([[0, 1, 0],
                    [1, 0, 0]], np.uint8)
    np.testing.assert_array_equal(cm.rle_decode({"size": [2, 3], "counts": [1, 2, 3]}), toy)
    assert cm.rle_encode(toy) == {"size": [2, 3], "counts": [1, 2, 3]}
    # compressed string, worked by hand: counts [0, 20, 10, 6] <- "0", "d0" (20 needs 2 chars), ":",
    # "B" (6 is stored as 6 - 20 = -14: low 5 bits 18 with the sign bit, + 48 = "B")
    assert cm.rle_from_string("0d0:B") == [0, 20, 10, 6]
    six = np.zeros((6, 6), np.uint8)
    six[:, 0:3] = 1      # 18 ones down columns 0-2 ...
    six[0:2, 3] = 1      # ... 2 more in column 3, then 10 zeros ...
    six[:, 5] = 1        # ... and the last 6 pixels (column 5)
    np.testing.assert_array_equal(cm.rle_decode({"size": [6, 6], "counts": "0d0:B"}), six)
    # polygons as cocoapi's rleFrPoly: a box polygon covers exactly its w x h pixels (PIL's fill would add the
    # outline); a triangle keeps the pixels whose centre is strictly inside
    np.testing.assert_array_equal(cm.annotation_mask([[0, 0, 3, 0, 3, 2, 0, 2]], 2, 3), np.ones((2, 3), bool))
    box = np.zeros((5, 6), bool)
    box[1:3, 1:4] = True
    np.testing.assert_array_equal(cm.annotation_mask([[1, 1, 4, 1, 4, 3, 1, 3]], 5, 6), box)
    r, c = np.mgrid[0:6, 0:6]
    np.testing.assert_array_equal(cm.annotation_mask([[0, 0, 6, 0, 0, 6]], 6, 6), (c + 0.5) + (r + 0.5) < 6)
    # two polygons: their union
    two = cm.annotation_mask([[0, 0, 1, 0, 1, 1, 0, 1], [2, 1, 3, 1, 3, 2, 2, 2]], 2, 3)
    np.testing.assert_array_equal(two, [[1, 0, 0], [0, 0, 1]])
    # compressed-string RLE inside an instances file (results files use them)
    inst_p = tmp_path / "inst.json"
    inst_p.write_text(json.dumps({
        "images": [{"id": 5, "width": 6, "height": 6, "file_name": "COCO_train2014_000000000005.jpg"}],
        "annotations": [{"id": 1, "image_id": 5, "category_id": 18, "iscrowd": 1, "bbox": [0, 0, 6, 6],
                         "area": 26, "segmentation": {"size": [6, 6], "counts": "0d0:B"}}],
        "categories": [{"id": c, "name": n} for n, c in bp.COCO_NAME_TO_ID.items()]}))
    inst = bp.read_coco_instances(str(inst_p))
    np.testing.assert_array_equal(analyses.class_mask(inst, 5, 18), six.astype(bool))
    with pytest.raises(bp.BadInput, match="bad-rle"):
        cm.rle_decode({"size": [2, 3], "counts": [1, 2]})


def _coco_fixture(tmp_path, records):
    d = tmp_path / "coco"
    jpeg(str(d / "train2014" / "COCO_train2014_000000296169.jpg"), size=(200, 100))
    jpeg(str(d / "train2014" / "COCO_train2014_000000000009.jpg"), size=(60, 60))
    inst = {"images": [{"id": 296169, "width": 200, "height": 100, "file_name": "COCO_train2014_000000296169.jpg"},
                       {"id": 9, "width": 60, "height": 60, "file_name": "COCO_train2014_000000000009.jpg"}],
            "annotations": [
                {"id": 1, "image_id": 296169, "category_id": 61, "iscrowd": 0, "bbox": [0, 0, 10, 10], "area": 100,
                 "segmentation": [[0, 0, 10, 0, 10, 10, 0, 10]]},
                {"id": 2, "image_id": 296169, "category_id": 18, "iscrowd": 0, "bbox": [90, 40, 20, 20],
                 "area": 400, "segmentation": [[90, 40, 110, 40, 110, 60, 90, 60]]},
                {"id": 3, "image_id": 296169, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 5, 5], "area": 25,
                 "segmentation": [[0, 0, 5, 0, 5, 5, 0, 5]]}],
            "categories": [{"id": c, "name": n} for n, c in bp.COCO_NAME_TO_ID.items()]}
    (d / "inst.json").write_text(json.dumps(inst))
    (d / "ab.json").write_text(json.dumps(records))
    return str(d / "train2014"), str(d / "inst.json"), str(d / "ab.json")


def test_coco_dataset_keeps_labels_when_point_leaves_crop(tmp_path):
    rec = {"image_id": 296169, "originalImageWidth": 0, "originalImageHeight": 0, "imageWidth": 450,
           "actionHistories": [
               {"actionType": "add", "iconType": "cake", "pointTo": {"x": 0.05, "y": 0.5}, "timeAt": 1},
               {"actionType": "add", "iconType": "dog", "pointTo": {"x": 0.5, "y": 0.25}, "timeAt": 2},
               {"actionType": "add", "iconType": "bicycle", "pointTo": {"x": 0.5, "y": 0.5}, "timeAt": 3}]}
    img_dir, inst, ab = _coco_fixture(tmp_path, [rec, {"image_id": 123, "actionHistories": []}])
    with pytest.warns(bp.BadInputWarning, match=r"unknown-image-id x1: ab.json \(image_id=123\)"):
        ds = bp.CocoAB(img_dir, inst, ab, transform=bp.EvalTransform(size=100, resize=100))
    assert ds.image_ids == [9, 296169]
    img, target, pts, w = ds[1]
    cake, dog, person, bike = (bp.COCO_CATEGORY_IDS.index(c) for c in (61, 18, 1, 2))
    assert img.shape == (3, 100, 100) and target.shape == (80,) and pts.shape == (80, 2) and w.shape == (80,)
    assert target[[cake, dog, person]].tolist() == [1, 1, 1] and target.sum() == 3
    # 200 x 100 -> centre crop 100 x 100 at left = 50: cake x = 0.05 -> (10 - 50) / 100 = -0.4, outside: weight 0,
    # label kept, coordinate not clamped; dog (0.5, 0.25) -> (100 - 50) / 100 = 0.5, y unchanged
    assert w[cake] == 0 and pts[cake, 0].item() == pytest.approx(-0.4)
    assert w[dog] == 1 and pts[dog].tolist() == pytest.approx([0.5, 0.25])
    assert w[person] == 0  # a GT class without an icon: label 1, no point
    assert w[bike] == 0 and target[bike] == 0  # an icon for a class the ground truth lacks: no supervision
    assert ds[0][3].sum() == 0  # image 9 has no COCO-AB record
    with open(os.path.join(img_dir, "COCO_train2014_000000296169.jpg"), "r+b") as f:
        f.truncate(100)  # now unreadable: mean-pixel image, targets kept, every weight 0, named in a warning
    with pytest.warns(bp.BadInputWarning, match="COCO_train2014_000000296169.jpg"):
        img, target2, _, w = ds[1]
    assert torch.equal(target2, target) and w.sum() == 0 and img.shape == (3, 100, 100)
    with pytest.raises(bp.BadInput, match="image_id=123"):
        bp.CocoAB(img_dir, inst, ab, strict=True)


def test_coco_dataset_modes_and_loader(synth_dir):
    c = os.path.join(synth_dir, "coco")
    args = (os.path.join(c, "train2014"), os.path.join(c, "annotations/instances_train2014.json"),
            os.path.join(c, "coco_ab_v1_0.json"))
    tt = bp.TrainTransform(size=32)
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.BadInputWarning)  # synth's COCO-AB has no duplicate image id
        add = bp.CocoAB(*args, transform=tt)
    pos = bp.CocoAB(*args, icon_rule="final-position", transform=tt)
    assert (add.point_mask.sum() > pos.point_mask.sum())  # synth has icons removed for good: final-add keeps them
    assert (add.point_mask <= add.targets).all() and (pos.point_mask <= pos.targets).all()
    rnd = bp.CocoAB(*args, point_source="random", seed=3)
    assert torch.equal(rnd.point_mask, rnd.targets)
    assert torch.equal(rnd.points, bp.CocoAB(*args, point_source="random", seed=3).points)
    assert bp.CocoAB(*args, point_source="none").point_mask.sum() == 0
    clicked = bp.random_points_where_clicked(bp.CocoAB(*args, seed=3), seed=3)  # the control on LUAB's pairs only
    assert torch.equal(clicked.point_mask, add.point_mask) and torch.equal(clicked.points, rnd.points)
    img, t, p, w = next(iter(DataLoader(add, batch_size=4, num_workers=2)))
    assert img.shape == (4, 3, 32, 32) and img.dtype == torch.float32
    assert t.shape == (4, 80) and p.shape == (4, 80, 2) and w.shape == (4, 80) and p.dtype == torch.float32
    half = bp.CocoAB(*args, data_fraction=0.5, seed=1)
    assert len(half) == round(0.5 * len(add)) and set(half.image_ids) <= set(add.image_ids)


# ----------------------------------------------------------------------------------------------------------------
# index + datasets on the synthetic set

def test_index_roundtrip_matches_reader(synth_dir, tmp_path):
    xml_root = os.path.join(synth_dir, "imagenet_ab")
    out = str(tmp_path / "index.npz")
    st = prepare.build_imagenet_index(xml_root, out, workers=2, progress=False)
    idx = bp.load_imagenet_index(out)
    records, counts = analyses.imagenet_records(xml_root)  # the reader, file by file
    assert st["files"] == len(records) == len(idx.keys) and counts["appledouble_skipped"] == 2 and st["bad"] == 0
    n_click = 0
    for r in records:
        expect = r["click"]
        got = idx.get(r["key"])
        assert (got is None) == (expect is None)
        if expect is not None:
            n_click += 1
            assert got == pytest.approx(expect, abs=1e-7)  # float32 storage
    assert len(idx) == n_click == st["with_click"] and 0 < st["no_click"]
    assert idx.n_entries.max() == 2 and (idx.n_selected == 2).any()  # synth has averaged entries
    pts, status = idx.lookup(["n01440764/n01440764_0", "n01440764/n01440764_1", "n01440764/n01440764_00000"])
    assert status[1] == -1 and status[2] == -1  # _1 has no XML (synth), a longer key never prefix-matches
    assert pts.dtype == np.float32 and pts.shape == (3, 2)


def test_index_cli(synth_dir, tmp_path):
    out = tmp_path / "cli.npz"
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "prepare.py"), "index-imagenet", "--xml-root",
                        os.path.join(synth_dir, "imagenet_ab"), "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "files/s" in r.stdout and "2 AppleDouble skipped" in r.stdout and out.exists()
    bad = tmp_path / "xml" / "n1"
    bad.mkdir(parents=True)
    (bad / "b.xml").write_text("<annotation><metadata>")
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "prepare.py"), "index-imagenet", "--xml-root",
                        str(tmp_path / "xml"), "--out", str(tmp_path / "x.npz"), "--strict"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "b.xml" in r.stderr and not (tmp_path / "x.npz").exists()


def test_imagenet_dataset_modes_shapes_and_loader(synth_dir):
    root = os.path.join(synth_dir, "imagenet", "train")
    xml = os.path.join(synth_dir, "imagenet_ab")
    tt = bp.TrainTransform(size=48)
    ds = bp.ImageNetAB(root, clicks=xml, transform=tt)
    folder = ImageFolder(root)
    assert ds.samples == folder.samples and ds.classes == folder.classes and ds.targets == folder.targets
    assert ds.keys[0] == f"{ds.classes[0]}/{ds.classes[0]}_0"
    idx, _, _ = bp.ClickIndex.from_xml(xml)
    w = ds.point_mask.flatten()
    assert w.sum() == sum(k in idx for k in ds.keys) and 0 < w.sum() < len(ds)
    for i in (0, 3, 5):
        assert (ds.keys[i] in idx) == bool(w[i])
    img, label, pts, wt = ds[0]
    assert img.shape == (3, 48, 48) and img.dtype == torch.float32 and isinstance(label, int)
    assert pts.shape == (1, 2) and wt.shape == (1,) and pts.dtype == wt.dtype == torch.float32
    raw = bp.ImageNetAB(root, clicks=idx)  # transform=None: the PIL image and its own-frame point
    assert isinstance(raw[0][0], Image.Image) and raw[0][2].flatten().tolist() == pytest.approx(idx[ds.keys[0]])
    b = next(iter(DataLoader(ds, batch_size=6, num_workers=2, shuffle=True)))
    assert b[0].shape == (6, 3, 48, 48) and b[1].shape == (6,) and b[2].shape == (6, 1, 2) and b[3].shape == (6, 1)
    none = bp.ImageNetAB(root, point_source="none", transform=tt)
    assert none.point_mask.sum() == 0 and none.points.abs().sum() == 0


def test_random_points_fixed_per_image(synth_dir):
    root = os.path.join(synth_dir, "imagenet", "train")
    a = bp.ImageNetAB(root, point_source="random", seed=1)
    b = bp.ImageNetAB(root, point_source="random", seed=1, data_fraction=0.5)
    c = bp.ImageNetAB(root, point_source="random", seed=2)
    assert a.point_mask.sum() == len(a)
    pa = dict(zip(a.keys, a.points[:, 0].tolist()))
    assert all(pa[k] == p for k, p in zip(b.keys, b.points[:, 0].tolist()))  # fixed per image, not per index
    assert not torch.equal(a.points, c.points)
    assert ((a.points >= 0) & (a.points < 1)).all() and 0.35 < a.points.mean() < 0.65
    assert [a[0][2].tolist() for _ in range(2)] == [a.points[0].tolist()] * 2  # not re-drawn per epoch
    # --rand-points-on clicked: the same random points, on the images that have a click only
    xml = os.path.join(synth_dir, "imagenet_ab", "train_xml")
    clicks = bp.ImageNetAB(root, clicks=xml, point_source="clicks")
    d = bp.random_points_where_clicked(bp.ImageNetAB(root, clicks=xml, point_source="clicks"), seed=1)
    assert torch.equal(d.point_mask, clicks.point_mask) and 0 < d.point_mask.sum() < len(d)
    assert torch.equal(d.points, a.points) and not torch.equal(d.points, clicks.points)


def test_data_fraction_per_class(synth_dir):
    root = os.path.join(synth_dir, "imagenet", "train")
    ds = bp.ImageNetAB(root, point_source="none", data_fraction=0.25, seed=5)
    assert np.bincount(ds.targets).tolist() == [2, 2, 2, 2]  # round(0.25 * 8) of each class
    assert ds.keys == bp.ImageNetAB(root, point_source="none", data_fraction=0.25, seed=5).keys
    assert ds.keys != bp.ImageNetAB(root, point_source="none", data_fraction=0.25, seed=6).keys


def test_load_boxes_layouts_and_caveats(synth_dir, tmp_path):
    train = bp.load_boxes(os.path.join(synth_dir, "imagenet", "boxes", "train"))
    k = next(iter(train))
    assert k.count("/") == 1 and train[k]["boxes"].shape == (1, 4) and train[k]["boxes"].dtype == np.float32
    (tmp_path / "ILSVRC2012_val_00000001.xml").write_text(
        "<annotation><filename>%s</filename><size><width>500</width><height>375</height></size>"
        "<object><name>n01751748</name><bndbox><xmin>111.0</xmin><ymin>300</ymin><xmax>8</xmax><ymax>400</ymax>"
        "</bndbox></object><object><name>Scottish_deerhound</name><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>3"
        "</xmax><ymax>4</ymax></bndbox></object></annotation>")
    (tmp_path / "ILSVRC2012_val_00000002.xml").write_text("<annotation><size>")
    with pytest.warns(bp.BadInputWarning, match="ILSVRC2012_val_00000002.xml"):
        val = bp.load_boxes(str(tmp_path))
    v = val["ILSVRC2012_val_00000001"]  # flat layout: keyed by stem
    assert v["size"] == (500, 375) and v["names"] == ["n01751748", "Scottish_deerhound"]
    # "111.0" read via float, min > max reordered, 400 clamped to the height 375
    np.testing.assert_array_equal(v["boxes"], [[8, 300, 111, 375], [1, 2, 3, 4]])


# ----------------------------------------------------------------------------------------------------------------
# point-aware transforms

def test_crop_and_flip_maths_by_hand(monkeypatch):
    # image 100 x 80, crop top=10 left=20 h=40 w=50. Point (0.5, 0.5) = pixel (50, 40) -> ((50-20)/50, (40-10)/40)
    # = (0.6, 0.75); flipped -> (0.4, 0.75). Point (0.1, 0.5) = pixel (10, 40): x = -0.2, outside -> weight 0.
    monkeypatch.setattr(bp.T.RandomResizedCrop, "get_params", staticmethod(lambda img, s, r: (10, 20, 40, 50)))
    img = Image.new("RGB", (100, 80))
    pts, w = torch.tensor([[0.5, 0.5]]), torch.tensor([1.0])
    for hflip, x_expect in ((0.0, 0.6), (1.0, 0.4)):
        out, p, wt = bp.TrainTransform(size=20, hflip=hflip)(img, pts, w)
        assert out.shape == (3, 20, 20) and p.flatten().tolist() == pytest.approx([x_expect, 0.75]) and wt.item() == 1.0
    _, p, wt = bp.TrainTransform(size=20, hflip=0.0)(img, torch.tensor([[0.1, 0.5]]), w)
    assert wt.item() == 0.0 and p[0, 0].item() == pytest.approx(-0.2)  # never clamped to the border
    # several points (COCO) go the same way; (0.7, 0.25) = pixel (70, 20) -> (1.0, 0.25) -> flip (0, 0.25); a point
    # of weight 0 is no target: it keeps its values
    many = torch.tensor([[0.5, 0.5], [0.1, 0.5], [0.7, 0.25], [0.3, 0.3]])
    _, p, wt = bp.TrainTransform(size=20, hflip=1.0)(img, many, torch.tensor([1.0, 1.0, 1.0, 0.0]))
    assert p.flatten().tolist() == pytest.approx([0.4, 0.75, 1.2, 0.75, 0.0, 0.25, 0.3, 0.3], abs=1e-6)
    assert wt.tolist() == [1, 0, 1, 0]


def test_point_follows_the_pixels_through_rrc_and_flip():
    # a bright 3x3 blob; after a random crop + flip its centroid in the output is where the point says it is
    torch.manual_seed(0)
    arr = np.zeros((90, 120, 3), np.uint8)
    arr[40:43, 70:73] = 255  # centre pixel (71, 41) -> continuous centre (71.5, 41.5)
    img = Image.fromarray(arr)
    t = bp.TrainTransform(size=64, scale=(0.3, 1.0), interpolation="bilinear")
    checked = 0
    for _ in range(30):
        x, p, w = t(img, torch.tensor([[71.5 / 120, 41.5 / 90]]), torch.tensor([1.0]))
        if w.item() == 0:
            assert not ((p >= 0) & (p <= 1)).all()
            continue
        m = x[0] - x[0].min()
        ys, xs = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
        c = torch.stack([(m * xs).sum() / m.sum(), (m * ys).sum() / m.sum()]) / 64
        assert torch.allclose(c, p[0], atol=1.5 / 64)
        checked += 1
    assert checked >= 10


def test_train_transform_equals_torchvision_pipeline():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8))
    plain = T.Compose([T.RandomResizedCrop(32), T.RandomHorizontalFlip(), T.ToTensor(),
                       T.Normalize(bp.IMAGENET_MEAN, bp.IMAGENET_STD)])
    ours = bp.TrainTransform(size=32)
    for seed in range(5):
        torch.manual_seed(seed)
        a = plain(img)
        torch.manual_seed(seed)
        b, _, _ = ours(img, torch.tensor([[0.5, 0.5]]), torch.tensor([1.0]))
        assert torch.equal(a, b)


def test_eval_transform_points_by_hand():
    # 200 x 100 -> Resize(64): 128 x 64 -> CenterCrop(32): top 16, left 48. Point (0.5, 0.5) = (64, 32) px in the
    # resized image -> ((64-48)/32, (32-16)/32) = (0.5, 0.5); (0.3, 0.25) = (38.4, 16) -> (-0.3, 0.0): cut away.
    t = bp.EvalTransform(size=32, resize=64)
    img = Image.new("RGB", (200, 100))
    x, p, w = t(img, torch.tensor([[0.5, 0.5], [0.3, 0.25], [0.6, 0.9]]), torch.ones(3))
    assert x.shape == (3, 32, 32)
    assert p.flatten().tolist() == pytest.approx([0.5, 0.5, -0.3, 0.0, 0.9, 1.3]) and w.tolist() == [1, 0, 0]
    # eval_points_to_original inverts it: back to pixels of the 200 x 100 original, (0.5 * 200, 0.5 * 100) ...
    assert bp.eval_points_to_original(p, [[200, 100]] * 3, resize=64, crop=32).ravel().tolist() == \
        pytest.approx([100, 50, 60, 25, 120, 90])
    assert torch.equal(t(img), T.Compose([T.Resize(64), T.CenterCrop(32), T.ToTensor(),
                                          T.Normalize(bp.IMAGENET_MEAN, bp.IMAGENET_STD)])(img))


def test_v2_keypoints_are_not_a_validity_mask(monkeypatch):
    # Why the point maths is ours: torchvision v2 moves KeyPoints out of the canvas without saying so, its
    # ClampKeyPoints puts them on the border (a wrong target), and its flip is x -> W - 1 - x (pixel indices).
    from torchvision import tv_tensors
    from torchvision.transforms.v2 import functional as F2
    kp = tv_tensors.KeyPoints(torch.tensor([[5.0, 5.0]]), canvas_size=(100, 100))
    out = F2.resized_crop(kp, top=50, left=50, height=50, width=50, size=[25, 25])
    assert out.tolist() == [[-22.5, -22.5]] and out.canvas_size == (25, 25)  # unclamped, no weight
    assert F2.clamp_keypoints(out).tolist() == [[0.0, 0.0]]  # clamped = onto the border
    assert F2.horizontal_flip(tv_tensors.KeyPoints(torch.tensor([[0.0, 0.0]]), canvas_size=(10, 10))).tolist() \
        == [[9.0, 0.0]]  # continuous convention gives 10
    # ours: same crop, the point leaves with mask 0 and its coordinate intact
    monkeypatch.setattr(bp.T.RandomResizedCrop, "get_params", staticmethod(lambda img, s, r: (50, 50, 50, 50)))
    _, p, w = bp.TrainTransform(size=25, hflip=0.0)(Image.new("RGB", (100, 100)), torch.tensor([[0.05, 0.05]]),
                                                     torch.tensor([1.0]))
    assert w.item() == 0.0 and p.flatten().tolist() == pytest.approx([-0.9, -0.9])


@pytest.mark.parametrize("op", ["Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"])
def test_randaugment_geometric_ops_move_the_point(op):
    arr = np.zeros((64, 80, 3), np.uint8)
    arr[30:33, 45:48] = 255  # blob centre (46.5, 31.5) in continuous pixels
    img = Image.fromarray(arr)
    ra = bp.RandAugment("rand-m9", fill=(0, 0, 0), interpolation="bilinear")
    pts = torch.tensor([[46.5 / 80, 31.5 / 64]])
    for seed in range(4):  # both signs
        bp.random.seed(seed)
        out, p = ra._apply(op, img, pts, 0.5)
        m = np.asarray(out, np.float64)[..., 0]
        ys, xs = np.mgrid[0:64, 0:80] + 0.5
        c = np.array([(m * xs).sum() / m.sum() / 80, (m * ys).sum() / m.sum() / 64])
        assert not torch.allclose(p, pts)  # the op did move it
        np.testing.assert_allclose(c, p[0].numpy(), atol=0.75 / 64)


def test_randaugment_in_train_transform(monkeypatch):
    torch.manual_seed(0)
    bp.random.seed(0)
    t = bp.TrainTransform(size=32, randaugment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    assert t.randaugment.ops[4] == "PosterizeIncreasing" and t.randaugment.fill == (124, 116, 104)
    img = Image.new("RGB", (50, 40), (30, 200, 90))
    for _ in range(20):
        x, p, w = t(img, torch.tensor([[0.5, 0.5]]), torch.tensor([1.0]))
        assert x.shape == (3, 32, 32) and p.shape == (1, 2)
        assert w.item() == float(((p >= 0) & (p <= 1)).all())
    # photometric ops leave the point where it was
    ra = bp.RandAugment("rand-m9")
    for op in ("AutoContrast", "Equalize", "Invert", "Posterize", "Solarize", "SolarizeAdd", "Color", "Contrast",
               "Brightness", "Sharpness", "ColorIncreasing", "SolarizeIncreasing"):
        pts = torch.tensor([[0.3, 0.6]])
        assert ra._apply(op, img, pts, 0.9)[1] is pts
    with pytest.raises(ValueError):
        bp.RandAugment("rand-m9-w0")


def test_posterize_at_zero_bits_is_black_on_every_pillow():
    """timm's PosterizeIncreasing keeps 4 - int(level * 4) bits: 0 at the clipped magnitude 10 (level 1.0), and
    plain Posterize keeps int(level * 4): 0 below level 0.25. Pillow >= 13 raises for 0 bits; the recipe meant
    the black image older Pillow returned (mask ~(2**8 - 1) zeroes every value)."""
    img = Image.new("RGB", (8, 6), (200, 130, 7))
    inc = bp.RandAugment("rand-m9-mstd0.5-inc1")
    for op, level in (("PosterizeIncreasing", 1.0), ("Posterize", 0.2)):
        out, _ = inc._apply(op, img, None, level)
        assert out.size == (8, 6) and out.mode == "RGB" and np.asarray(out).max() == 0
    out, _ = inc._apply("PosterizeIncreasing", img, None, 0.5)  # 2 bits kept: 200 -> 192, 130 -> 128, 7 -> 0
    assert np.asarray(out)[0, 0].tolist() == [192, 128, 0]


def test_randaugment_inc1_survives_thousands_of_draws():
    """rand-m9-mstd0.5-inc1 (the DeiT recipe): magnitudes ~ N(9, 0.5) clipped to [0, 10], two ops per image."""
    bp.random.seed(0)
    ra = bp.RandAugment("rand-m9-mstd0.5-inc1")
    img = Image.new("RGB", (16, 12), (90, 40, 220))
    ops = {}
    orig_apply = ra._apply
    def counting(op, im, pts, level):
        ops[op] = ops.get(op, 0) + 1
        return orig_apply(op, im, pts, level)
    ra._apply = counting
    for _ in range(3000):
        out, _, _ = ra(img, torch.tensor([[0.5, 0.5]]), torch.ones(1))
        assert out.size == (16, 12)
    assert ops["PosterizeIncreasing"] > 150 and "Posterize" not in ops  # -inc1 uses the increasing variants
    # the 0-bit case itself: a magnitude clipped at 10 (level 1.0) is a black image, not an exception
    assert np.asarray(orig_apply("PosterizeIncreasing", img, None, 1.0)[0]).max() == 0


# ----------------------------------------------------------------------------------------------------------------
# Mixup / CutMix

def _batch(B=4, K=2, H=16, W=20):
    images = torch.arange(B, dtype=torch.float32).view(B, 1, 1, 1).expand(B, 3, H, W).clone()  # sample b = b
    targets = torch.eye(B)
    points = torch.rand(B, K, 2, generator=torch.Generator().manual_seed(1))
    mask = torch.ones(B, K)
    mask[1, 0] = 0.0
    return images, targets, points, mask


def test_mixup_weights_scale_with_lam():
    images, targets, points, mask = _batch()
    g = torch.Generator().manual_seed(0)
    x, y, p, w = bp.mix_batch(images, targets, points, mask, mixup_alpha=0.8, cutmix_alpha=0.0, generator=g)
    lam = 1 - x[0, 0, 0, 0].item() / 3  # sample 0 (all 0) mixed with sample 3 (all 3): 3 * (1 - lam)
    assert 0 < lam < 1 and torch.allclose(x, images * lam + images.flip(0) * (1 - lam))
    assert torch.allclose(y, targets * lam + targets.flip(0) * (1 - lam))
    assert p.shape == (4, 2, 2, 2) and torch.equal(p[:, 0], points) and torch.equal(p[:, 1], points.flip(0))
    assert torch.allclose(w[:, 0], mask * lam) and torch.allclose(w[:, 1], mask.flip(0) * (1 - lam))
    assert torch.equal(images, _batch()[0])  # inputs untouched


def test_cutmix_masks_points_under_the_pasted_box():
    B, K, H, W = 4, 64, 16, 20
    images, targets, _, mask = _batch(B, 2, H, W)
    # a dense grid of points so some fall inside and some outside the box
    gy, gx = torch.meshgrid(torch.linspace(0.02, 0.98, 8), torch.linspace(0.02, 0.98, 8), indexing="ij")
    points = torch.stack([gx.flatten(), gy.flatten()], 1).expand(B, K, 2).clone()
    points[2] = points[2].flip(0)
    mask = torch.ones(B, K)
    for seed in range(5):
        g = torch.Generator().manual_seed(seed)
        x, y, p, w = bp.mix_batch(images, targets, points, mask, mixup_alpha=0.0, cutmix_alpha=1.0, generator=g)
        pasted = x[0, 0] != images[0, 0]  # sample 0 is 0 everywhere, its partner (3) is 3: the box is where x == 3
        if not pasted.any():
            continue
        rows, cols = pasted.nonzero(as_tuple=True)
        yl, yh, xl, xh = rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1
        assert pasted.sum() == (yh - yl) * (xh - xl)  # a rectangle
        lam = 1 - (yh - yl) * (xh - xl) / (H * W)  # area-corrected, as timm
        assert torch.allclose(y, targets * lam + targets.flip(0) * (1 - lam))
        inside = lambda q: (q[:, 0] * W >= xl) & (q[:, 0] * W < xh) & (q[:, 1] * H >= yl) & (q[:, 1] * H < yh)  # noqa
        for b in range(B):
            own_in, partner_in = inside(points[b]), inside(points[B - 1 - b])
            assert torch.allclose(w[b, 0], lam * (~own_in).float())
            assert torch.allclose(w[b, 1], (1 - lam) * partner_in.float())
            assert own_in.any() and (~own_in).any()


def test_no_mix_and_determinism():
    images, targets, points, mask = _batch()
    x, y, p, w = bp.mix_batch(images, targets, points, mask, prob=0.0)
    assert torch.equal(x, images) and torch.equal(y, targets) and torch.equal(w[:, 0], mask)
    assert (w[:, 1] == 0).all()
    a = bp.mix_batch(images, targets, points, mask, generator=torch.Generator().manual_seed(7))
    b = bp.mix_batch(images, targets, points, mask, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_duplicate_xml_under_two_prefixes(tmp_path):
    # the tar extracted twice (with and without the imagenet_ab_v1_0/ prefix): one entry per image, a note
    ab_file(tmp_path / "imagenet_ab_v1_0" / "train_xml" / "n1" / "n1_0.xml", meta(clicks=((0.1, 0.2),)))
    ab_file(tmp_path / "train_xml" / "n1" / "n1_0.xml", meta(clicks=((0.3, 0.4),)))
    st = prepare.build_imagenet_index(str(tmp_path), str(tmp_path / "i.npz"), workers=2, strict=True, progress=False)
    assert st["files"] == 1 and "duplicate-xml x1" in st["problems"]
    idx = bp.load_imagenet_index(str(tmp_path / "i.npz"))
    assert len(idx) == 1 and idx["n1/n1_0"] == pytest.approx((0.1, 0.2))  # the first path in sorted order
