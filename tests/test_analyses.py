"""Tests for the appendix E analyses of tools/analyses.py: every figure on a hand-made fixture whose expected
values are worked out in the comments, then smoke runs of the `stats` / `draw` commands on tools/synth.py output."""

import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import byproducts as bp
from tools import analyses as an
from tools.synth import APPLEDOUBLE

W1, W2, W3 = "AAAAAAAAA1", "AAAAAAAAA2", "AAAAAAAAA3"


def _entry(worker, selected, clicks=(), trace=(), est=0):
    rec = lambda tag, t, x, y: f"<{tag}><time>{t}</time><x>{x!r}</x><y>{y!r}</y></{tag}>"  # noqa: E731
    return ("<metadata><estimateTime>%d</estimateTime>" % est + "".join(rec("mouseTracking", *r) for r in trace)
            + f"<selected>{selected}</selected>" + "".join(rec("selectedRecord", *c) for c in clicks)
            + f"<worker_id>{worker}</worker_id></metadata>")


def _xml(path, entries, boxes=None):
    voc = "" if boxes is None else "<size><width>100</width><height>100</height></size>" + "".join(
        f"<object><name>n</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox>"
        "</object>" for a, b, c, d in boxes)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"<annotation>{voc}{''.join(entries)}</annotation>")


@pytest.fixture(scope="module")
def inet(tmp_path_factory):
    """5 files, 100 x 100 px boxes in the VOC part:
    A n01_0  box (10,10,40,40), not centred; click (0.2,0.3) after a 4-point trace            hit
    B n01_1  box (30,30,70,70); click (0.8,0.2), no trace; + an unselected entry of W2       miss
    C n02_0  boxes (45,45,55,55), (0,0,10,10); two selected entries (0.45,.5), (0.55,.5)      hit (mean (.5,.5))
    D n02_1  no boxes, click (0.5, 0.5)                                                      not evaluated
    E n02_2  no boxes, unselected (a select click, then deselected)                          no click
    plus an AppleDouble ._ file."""
    root = tmp_path_factory.mktemp("inet") / "train_xml"
    trace = [(1000, 0.9, 0.0), (1100, 0.6, 0.1), (1200, 0.35, 0.2), (1300, 0.25, 0.25)]
    _xml(root / "n01/n01_0.xml", [_entry(W1, True, [(1400, 0.2, 0.3)], trace, est=400)], [(10, 10, 40, 40)])
    _xml(root / "n01/n01_1.xml", [_entry(W1, True, [(5000, 0.8, 0.2)]), _entry(W2, False, est=100)],
         [(30, 30, 70, 70)])
    _xml(root / "n02/n02_0.xml", [_entry(W2, True, [(2000, 0.45, 0.5)], est=300),
                                  _entry(W2, True, [(3000, 0.55, 0.5)], est=500)],
         [(45, 45, 55, 55), (0, 0, 10, 10)])
    _xml(root / "n02/n02_1.xml", [_entry(W3, True, [(7000, 0.5, 0.5)])])
    _xml(root / "n02/n02_2.xml", [_entry(W3, False, [(8000, 0.5, 0.5)])])
    (root / "n01/._n01_0.xml").write_bytes(APPLEDOUBLE)
    boxes = root.parent / "boxes"  # an ILSVRC box tree that overrides the merged boxes: only A, full image
    _xml(boxes / "n01/n01_0.xml", [], [(0, 0, 100, 100)])
    return str(root), str(boxes)


@pytest.fixture(scope="module")
def inet_figures(inet):
    records, counts = an.imagenet_records(inet[0])
    return an.imagenet_stats(records, counts, n_images=10)


def test_imagenet_coverage_and_accuracy(inet_figures):
    f, arrays = inet_figures
    assert (f["files"], f["appledouble_skipped"], f["bad_files"]) == (5, 1, 0)
    assert (f["with_entries"], f["selected"], f["several_entries"]) == (5, 4, 2)
    assert f["coverage_pct"] == 50.0  # 5 files / 10 images
    assert f["evaluated"] == 3  # A, B, C
    assert f["click_acc"] == pytest.approx(200 / 3, abs=1e-3)  # A, C hit; B (80, 20) misses (30..70)
    assert f["centre_click_acc"] == pytest.approx(200 / 3, abs=1e-3)  # (50, 50) misses A's box (10..40, +-1 px)
    assert (f["non_centred"], f["non_centred_click_acc"]) == (1, 100.0)  # A alone, and its click hits
    assert f["box_centres_in_central_0_82pct"] == 50.0  # centres (.25,.25) (.5,.5) (.5,.5) (.05,.05)
    assert arrays["clicks"].shape == (4, 2) and arrays["box_centres"].shape == (4, 2)


def test_imagenet_random_click_curve(inet_figures):
    f, _ = inet_figures
    assert f["random_click_acc"]["0.0"] == f["centre_click_acc"]
    # alpha = 1: 16 x 16 midpoints at 3.125 + 6.25 k px; per axis A's [9, 41] holds 6 (9.375..40.625), B's
    # [29, 71] 6 (34.375..65.625), C's [44, 56] 2 and [-1, 11] 2 -> (36 + 36 + 4 + 4) / 256 over 3 images
    assert f["random_click_acc"]["1.0"] == pytest.approx(100 * 80 / 768, abs=1e-3)
    curve = [f["random_click_acc"][str(a)] for a in an.ALPHAS]
    assert curve[-1] < curve[0]


def test_imagenet_offset_bias(inet_figures):
    o = inet_figures[0]["click_offset"]
    # A: ((20-25)/30, (30-25)/30); B: ((80-50)/40, (20-50)/40); C: nearest box (45..55) -> (0, 0)
    assert o["n"] == 3
    assert o["mean_u"] == pytest.approx((-1 / 6 + 0.75) / 3, abs=1e-4)
    assert o["mean_v"] == pytest.approx((1 / 6 - 0.75) / 3, abs=1e-4)
    assert o["top_right_pct"] == pytest.approx(100 / 3, abs=1e-3)  # B
    assert o["bottom_left_pct"] == pytest.approx(100 / 3, abs=1e-3)  # A


def test_imagenet_traces(inet_figures):
    f, _ = inet_figures
    # selected entries with boxes: A (trace miss, miss, hit, hit + click hit), B (click miss), C1, C2 (click hit)
    assert f["last_n_acc"]["0"] == 75.0
    assert f["last_n_acc"]["1"] == 100.0 and f["last_n_acc"]["2"] == 100.0  # A's (25,25), (35,20)
    assert f["last_n_acc"]["4"] == 0.0  # A's entry point (90, 0)
    assert f["last_n_acc"]["8"] is None  # no trace that long
    assert f["trace_quantile_acc"]["0.0"] == 50.0  # A enters outside; B misses; C's single records hit
    assert f["trace_quantile_acc"]["0.5"] == 75.0  # A's record 2 of 0..4 (35, 20) hits
    assert f["trace_quantile_acc"]["1.0"] == 75.0
    assert f["time_quantile_acc"]["0.3"] == 50.0  # A at t=1120 -> the record of t=1100 (60, 10): miss
    assert f["time_quantile_acc"]["0.5"] == 75.0  # t=1200 -> (35, 20): hit


def test_imagenet_workers(inet_figures):
    pw = inet_figures[0]["per_worker"]
    assert pw[W1] == {"entries": 2, "selected": 2, "evaluated": 2, "click_acc": 50.0, "median_time_ms": 200.0}
    assert pw[W2] == {"entries": 3, "selected": 2, "evaluated": 2, "click_acc": 100.0, "median_time_ms": 300.0}
    assert (pw[W3]["entries"], pw[W3]["selected"], pw[W3]["evaluated"], pw[W3]["click_acc"]) == (2, 1, 0, None)


def test_imagenet_cli_with_box_tree(inet, tmp_path, capsys):
    out = tmp_path / "in.json"
    assert an.main(["stats", "imagenet", "--xml-root", inet[0], "--boxes", inet[1], "--out", str(out)]) == 0
    f = json.loads(out.read_text())
    assert (f["evaluated"], f["click_acc"], f["centre_click_acc"]) == (1, 100.0, 100.0)  # only A, full-image box
    assert "click_acc" in capsys.readouterr().out


def _table_rows(text):
    """format_table's text -> ([section titles], {JSON key: (label, value, unit)}); every key once."""
    titles, rows = [], {}
    for line in text.splitlines():
        if line and not line.startswith("  "):
            titles.append(line)
        elif line:
            label, value_unit, key = re.split(r"\s{2,}", line.strip())  # "label    66.67 %      click_acc"
            assert key not in rows
            rows[key] = (label, *(value_unit.split(" ", 1) + [""])[:2])
    return titles, rows


def test_stats_table_sections_units_keys(inet_figures):
    f = dict(inet_figures[0], a_new_figure=3)
    titles, rows = _table_rows(an.format_table(f, an.IMAGENET_SECTIONS))
    assert [t.split(":")[0].split(" (")[0] for t in titles] == [
        "E.1 coverage", "E.1 click accuracy and centre bias, over the images with a click and GT boxes",
        "E.1 random clicks", "E.1 click position around the nearest GT box", "E.1 mouse traces",
        "E.1 annotation time", "other figures"]
    assert rows["click_acc"] == ("clicks inside a GT box", "66.67", "%")
    assert rows["evaluated"] == ("images scored", "3", "images")
    assert rows["random_click_acc.1.0"] == ("alpha = 1.0", "10.42", "%")  # 80 / 768, see above
    assert rows["click_offset.mean_u"][1:] == ("0.19", "box widths")
    assert rows["last_n_acc.8"] == ("8 records before the final click (0: the click)", "-", "%")  # None
    # estimateTime of the 7 entries: 400, 0, 100, 300, 500, 0, 0 -> median 100
    assert rows["estimate_time_ms.q50"] == ("estimateTime per entry, q50", "100.00", "ms")
    assert rows["a_new_figure"] == ("a_new_figure", "3", "")  # a figure no section names is still printed
    flat = an._flat(f, ("per_worker", "per_class", "action_sequences"))
    assert set(rows) == set(flat) and "per_worker" not in " ".join(rows)  # every scalar once; big ones JSON only


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Images 1, 2 (100 x 100, with records) and 3 (no record); square polygons equal to their boxes.
    1: person (10,10)-(30,30) small, dog (50,50)-(90,90) medium; 2: cake whole image large, person (60,60)-(70,70),
    dog (5,70)-(15,80) small, never tagged. Record 1: person add (.2,.2) in; dog add (.3,.3) then move (.7,.7)
    (final-add keeps the stale (.3,.3): outside); cake add then remove (final-add keeps it: not in the image).
    Record 2: cake add (.5,.5) in; person add, remove, add (.65,.65) in. A record for unknown image 999."""
    d = tmp_path_factory.mktemp("coco")
    cats = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 61, "name": "cake"}]
    objs = [(1, 1, 10, 10, 20), (1, 18, 50, 50, 40), (2, 61, 0, 0, 100), (2, 1, 60, 60, 10), (2, 18, 5, 70, 10),
            (3, 18, 0, 0, 50)]
    anns = [{"id": k, "image_id": i, "category_id": c, "bbox": [x, y, s, s], "area": s * s, "iscrowd": 0,
             "segmentation": [[x, y, x + s, y, x + s, y + s, x, y + s]]} for k, (i, c, x, y, s) in enumerate(objs)]
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.jpg"} for i in (1, 2, 3)]
    with open(d / "inst.json", "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)
    add = lambda icon, x, y: {"actionType": "add", "iconType": icon, "pointTo": {"x": x, "y": y}}  # noqa: E731
    rm = lambda icon: {"actionType": "remove", "iconType": icon, "pointFrom": {"x": 0.5, "y": 0.5}}  # noqa: E731
    mv = {"actionType": "move", "iconType": "dog", "pointFrom": {"x": 0.3, "y": 0.3}, "pointTo": {"x": 0.7, "y": 0.7}}
    recs = [{"image_id": 1, "actionHistories": [add("person", 0.2, 0.2), add("dog", 0.3, 0.3), mv,
                                                add("cake", 0.5, 0.5), rm("cake")]},
            {"image_id": 2, "actionHistories": [add("cake", 0.5, 0.5), add("person", 0.65, 0.65), rm("person"),
                                                add("person", 0.65, 0.65)]},
            {"image_id": 999, "actionHistories": [add("cake", 0.5, 0.5)]}]
    with open(d / "ab.json", "w") as f:
        json.dump(recs, f)
    return str(d / "ab.json"), str(d / "inst.json")


def test_coco_stats(coco):
    f, arrays = an.coco_stats(bp.read_coco_ab(coco[0]), bp.read_coco_instances(coco[1]))
    assert (f["images"], f["reannotated"], f["records_without_image"]) == (3, 2, 1)
    assert f["coverage_pct"] == pytest.approx(200 / 3, abs=1e-3)
    assert (f["gt_pairs"], f["recall"]) == (5, 80.0)  # all but image 2's dog
    assert f["recall_by_size"]["small"] == pytest.approx(200 / 3, abs=1e-3)  # persons yes, dog no
    assert (f["recall_by_size"]["medium"], f["recall_by_size"]["large"]) == (100.0, 100.0)
    assert f["pairs_by_size"] == {"small": 3, "medium": 1, "large": 1}
    assert (f["placements"], f["icon_precision"]) == (5, 60.0)  # person, cake, person in; stale dog, cake out
    assert f["action_sequences"] == {"add": 2, "add-move": 1, "add-remove-add": 1}  # removed cake not counted
    assert f["action_sequences_top_pct"]["add"] == 50.0
    o = f["icon_offset"]  # dog (30,30) vs box centre (70,70), size 40 -> (-1, -1); the other three at 0
    assert (o["n"], o["mean_u"], o["mean_v"]) == (4, -0.25, -0.25)
    assert f["per_class"]["dog"]["recall"] == 50.0 and f["per_class"]["person"]["recall"] == 100.0
    assert arrays["clicks"].shape == (5, 2)
    titles, rows = _table_rows(an.format_table(f, an.COCO_SECTIONS))
    assert [t.split(":")[0] for t in titles] == ["E.2 coverage", "E.2 recall", "E.2 icon precision",
                                                 "E.2 icon position around the nearest GT box of its class",
                                                 "E.2 action sequences"]
    assert rows["recall_by_size.small"] == ("pairs with an icon, small boxes", "66.67", "%")
    assert rows["icon_precision"] == ("placements inside a mask", "60.00", "%")
    assert rows["icon_rule"] == ("icon rule (--icon-rule)", "final-add", "")
    assert rows["action_sequences_top_pct.add-remove-add"][1:] == ("25.00", "%")
    g, _ = an.coco_stats(bp.read_coco_ab(coco[0]), bp.read_coco_instances(coco[1]), mode="final-position")
    assert (g["placements"], g["icon_precision"]) == (4, 100.0)  # the moved dog lands inside, cake gone


def test_stats_commands_on_synth(synth_dir, tmp_path):
    r = Path(synth_dir)
    assert an.main(["stats", "imagenet", "--xml-root", str(r / "imagenet_ab/train_xml"), "--boxes",
                    str(r / "imagenet/boxes/train"), "--images", str(r / "imagenet/train"),
                    "--out", str(tmp_path / "i.json")]) == 0
    f = json.loads((tmp_path / "i.json").read_text())
    assert f["images"] == 32 and f["with_entries"] == 28 and f["appledouble_skipped"] == 2
    # seed 0 writes 11 train images with a click and a box file, every click on its object (none sloppy)
    assert f["evaluated"] == 11 and f["click_acc"] == 100.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", bp.BadInputWarning)  # synth's COCO data is clean: no duplicate image id
        assert an.main(["stats", "coco", "--coco-ab", str(r / "coco/coco_ab_v1_0.json"), "--instances",
                        str(r / "coco/annotations/instances_train2014.json"), "--out", str(tmp_path / "c.json")]) == 0
    g = json.loads((tmp_path / "c.json").read_text())
    assert g["images"] == 12 and g["gt_pairs"] > 0 and g["action_sequences"]


def _png(path, width):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] == width
        return np.asarray(im.convert("RGB"))


def test_draw_commands_on_synth(synth_dir, tmp_path):
    r = Path(synth_dir)
    import models
    ck = tmp_path / "ck.pth"
    torch.manual_seed(0)
    torch.save({"model": models.create_model("resnet18", num_classes=3, num_points=1).state_dict()}, ck)
    common = ["--xml-root", str(r / "imagenet_ab/train_xml"), "--images", str(r / "imagenet/train")]
    assert an.main(["draw", "imagenet", *common, "--out", str(tmp_path / "a"), "--n", "4"]) == 0
    assert an.main(["draw", "imagenet", *common, "--out", str(tmp_path / "b"), "--n", "2", "--model", "resnet18",
                    "--checkpoint", str(ck)]) == 0
    heatmap_width = 66 + 384 + 2 + an.HEATMAP_BAR  # left margin, the histogram in its frame, the colour bar
    for d in ("a", "b"):
        for name in ("clicks", "box_centres", "click_offsets"):
            _png(tmp_path / d / f"{name}.png", heatmap_width)
    # 2 x 2 and 1 x 2 cells of 160 px, on a sheet of at least 560 px for the title and legend; the predicted
    # point's colour only where a model is drawn (cells and legend)
    has = lambda a, colour: bool((a == colour).all(-1).any())  # noqa: E731
    a, b = _png(tmp_path / "a/grid.png", 560), _png(tmp_path / "b/grid.png", 560)
    assert has(a, an.CLICK_COLOUR) and has(a, an.BOX_COLOUR) and not has(a, an.PRED_COLOUR)
    assert has(b, an.PRED_COLOUR)
    # a self-describing checkpoint without a point head (plain training): no --model needed, the CAM but no point;
    # a bare state dict needs --model, said in one line
    plain = tmp_path / "plain.pth"
    torch.save({"model": models.create_model("resnet18", num_classes=3, num_points=0).state_dict(),
                "meta": {"model": "resnet18", "num_classes": 3, "num_points": 0}}, plain)
    assert an.main(["draw", "imagenet", *common, "--out", str(tmp_path / "p"), "--n", "2", "--checkpoint",
                    str(plain)]) == 0
    assert not has(_png(tmp_path / "p/grid.png", 560), an.PRED_COLOUR)
    with pytest.raises(SystemExit, match=r"^--checkpoint .*ck.pth does not say which architecture .*pass --model"):
        an.main(["draw", "imagenet", *common, "--out", str(tmp_path / "x"), "--checkpoint", str(ck)])
    assert an.main(["draw", "coco", "--coco-ab", str(r / "coco/coco_ab_v1_0.json"), "--instances",
                    str(r / "coco/annotations/instances_train2014.json"), "--out", str(tmp_path / "c")]) == 0
    for name in ("icons", "box_centres", "icon_offsets"):
        _png(tmp_path / "c" / f"{name}.png", heatmap_width)


def test_heatmap_orientation(tmp_path):
    # one point top-right (x = 0.95, y = 0.05) against one bottom-left: the pictures differ only in the two
    # 10 x 10 px cells (10 bins on 100 px), and the bright one of the first is up and to the right
    a, b = (np.asarray(Image.open(an.heatmap_png([p], str(tmp_path / f"{i}.png"), bins=10, size=100)))
            for i, p in enumerate([(0.95, 0.05), (0.05, 0.95)]))
    ya, xa = np.nonzero((a != b).any(-1) & (a[..., 0] > 200))
    yb, xb = np.nonzero((a != b).any(-1) & (b[..., 0] > 200))
    assert len(xa) == len(xb) == 100 and np.ptp(xa) == np.ptp(ya) == 9
    assert xa.min() - xb.max() == 81 and yb.min() - ya.max() == 81  # 9 cells apart, 10 px each
