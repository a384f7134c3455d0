"""
The appendix-E analyses of the byproducts: how informative ImageNet-AB clicks and mouse traces are against the
ILSVRC boxes (E.1), and COCO-AB icons against the instance masks (E.2); figures as a table / JSON, and pictures
(PNG, Pillow only). Each *_stats returns (figures, arrays): figures is the JSON, arrays feed the PNGs.

    python tools/analyses.py stats imagenet --xml-root train_xml/ [--boxes ILSVRC_train_boxes/] [--images train/]
    python tools/analyses.py stats coco --coco-ab coco_ab_v1_0.json --instances instances_train2014.json
    python tools/analyses.py draw imagenet --xml-root train_xml/ --images train/ --out pics/ [--checkpoint best.pt]
    python tools/analyses.py draw coco --coco-ab coco_ab_v1_0.json --instances instances_train2014.json --out pics/

`draw imagenet --checkpoint` also draws a trained model's point and the CAM of its predicted class on each grid
cell (the checkpoint describes itself; --model names the architecture of a bare state dict).
"""

import argparse
import json
import math
import os
import sys
from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.datasets.folder import IMG_EXTENSIONS

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import drawing as dr  # noqa: E402
import evaluate  # noqa: E402
from byproducts import (COCO_NAME_TO_ID, IMAGENET_MEAN, IMAGENET_STD, BadInput, EvalTransform,  # noqa: E402
                        _list_xml, _xml_key, coco_points, error_line, imagenet_click, load_boxes, read_coco_ab,
                        read_coco_instances, read_image, read_imagenet_ab_xml)
from tools.coco_masks import annotation_mask  # noqa: E402


ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # random-click curve: 0 = always the centre, 1 = uniform
LAST_N = (0, 1, 2, 4, 8, 16)  # trace records before the click (0 = the click itself)
QUANTILES = ALPHAS  # trace / time quantiles: 0 = entering the image, 1 = the click


def points_in_boxes(points, boxes, W, H):
    """bool[...]: normalised points [..., 2] inside any box float[M, 4] (pixels of a W x H image), with +-1 px
    slack since ILSVRC's 0- or 1-based indexing is undocumented (docs/formats.md §4)."""
    p = np.asarray(points, np.float64)[..., None, :] * (W, H)
    x, y = p[..., 0], p[..., 1]
    b = np.asarray(boxes, np.float64)
    return np.any((b[:, 0] - 1 <= x) & (x <= b[:, 2] + 1) & (b[:, 1] - 1 <= y) & (y <= b[:, 3] + 1), -1)


def imagenet_records(xml_root, boxes=None):
    """ImageNet-AB XML tree -> (records, counts). One record per file: key "wnid/stem", entries, click (x, y) | None
    (imagenet_click), size (W, H) and boxes float[M, 4] px, or None / None without boxes. Boxes come from the
    ILSVRC box tree when `boxes` is given, else from the VOC part merged into the AB XML."""
    box_index = load_boxes(boxes) if boxes else None
    paths, n_apple = _list_xml(xml_root)
    records, bad = [], 0
    for p in paths:
        key = _xml_key(p)
        try:
            entries, voc = read_imagenet_ab_xml(p, with_voc=True)
            click = imagenet_click(entries)
        except (BadInput, OSError):
            bad += 1
            continue
        b = voc if box_index is None else box_index.get(key)
        ok = bool(b and b["size"] and len(b["boxes"]))
        records.append({"key": key, "entries": entries, "click": click, "size": b["size"] if ok else None,
                        "boxes": b["boxes"] if ok else None})
    return records, {"files": len(paths), "bad_files": bad, "appledouble_skipped": n_apple}


def class_mask(inst, image_id, category_id):
    """bool[H, W]: the union of the masks of one class in one image of a byproducts.CocoInstances."""
    im = inst.images[image_id]
    m = np.zeros((im["height"], im["width"]), bool)
    for a in inst.anns[image_id]:
        if a["category_id"] == category_id:
            m |= annotation_mask(a["segmentation"], im["height"], im["width"])
    return m


def _pct(hits):
    return round(100.0 * float(np.mean(hits)), 3) if len(hits) else None


def _box_offset(point, boxes, W, H):
    """A normalised point relative to the box [M, 4] px whose centre is nearest: (u, v), the box centre at 0 and
    its edges at +-0.5, u to the right, v down (so the paper's top-right bias is u > 0, v < 0)."""
    p = np.asarray(point, np.float64) * (W, H)
    b = np.asarray(boxes, np.float64)
    c = (b[:, :2] + b[:, 2:]) / 2
    k = int(np.argmin(((c - p) ** 2).sum(1)))
    return (p - c[k]) / np.maximum(b[k, 2:] - b[k, :2], 1.0)


def _offset_figures(offsets):
    o = np.asarray(offsets, np.float64).reshape(-1, 2)
    if not len(o):
        return {"n": 0}
    return {"n": len(o), "mean_u": round(float(o[:, 0].mean()), 4), "mean_v": round(float(o[:, 1].mean()), 4),
            "median_u": round(float(np.median(o[:, 0])), 4), "median_v": round(float(np.median(o[:, 1])), 4),
            "top_right_pct": _pct((o[:, 0] > 0) & (o[:, 1] < 0)),
            "bottom_left_pct": _pct((o[:, 0] < 0) & (o[:, 1] > 0))}


def _trace(entry):
    """float[L, 3] (time ms, x, y): the mouse trace of one entry from entering the image up to its final click,
    the click last (trace points are not logged while selected); None when the entry has no final click."""
    click = imagenet_click([entry])
    t_click = entry["selectedRecord"][-1].get("time") if click else None
    if t_click is None:
        return None
    tr = [(m.get("time"), m.get("x"), m.get("y")) for m in entry.get("mouseTracking", [])]
    tr = sorted(r for r in tr if r[0] is not None and r[0] <= t_click
                and all(isinstance(v, float) and not math.isnan(v) for v in r[1:]))  # drop NaN / text
    out = np.array(tr + [(t_click, *click)], np.float64)
    out[:, 1:] = out[:, 1:].clip(0, 1)  # a third-party loader masked trace points outside [0, 1]; we clamp them
    return out


def imagenet_stats(records, counts=None, n_images=None, grid=16):
    """Appendix E.1 on imagenet_records(). Accuracies are % of clicks inside any GT box of images with boxes.
    The random-click curve puts the click uniformly on a centred square of side alpha (0 = centre click,
    1 = uniform), integrated with a grid x grid midpoint rule. Trace figures count each selected entry once."""
    f = dict(counts or {})
    f.update(with_entries=sum(bool(r["entries"]) for r in records),
             selected=sum(r["click"] is not None for r in records),
             several_entries=sum(len(r["entries"]) > 1 for r in records))
    if n_images:
        f.update(images=n_images, coverage_pct=round(100.0 * f["with_entries"] / n_images, 3))
    boxed = [r for r in records if r["boxes"] is not None]
    ev = [r for r in boxed if r["click"] is not None]
    hit = np.array([points_in_boxes(r["click"], r["boxes"], *r["size"]) for r in ev], bool)
    centre = np.array([points_in_boxes((0.5, 0.5), r["boxes"], *r["size"]) for r in ev], bool)
    u = (np.arange(grid) + 0.5) / grid - 0.5
    square = np.stack(np.meshgrid(u, u), -1).reshape(-1, 2)
    centres = [(r["boxes"][:, :2] + r["boxes"][:, 2:]) / 2 / r["size"] for r in boxed]
    centres = np.concatenate(centres or [np.zeros((0, 2))])
    f.update(evaluated=len(ev), click_acc=_pct(hit), centre_click_acc=_pct(centre), non_centred=int((~centre).sum()),
             non_centred_click_acc=_pct(hit[~centre]),
             box_centres_in_central_0_82pct=_pct(np.all(np.abs(centres - 0.5) <= math.sqrt(0.0082) / 2, 1)),
             random_click_acc={str(a): _pct([points_in_boxes(0.5 + a * square, r["boxes"], *r["size"]).mean()
                                             for r in ev]) for a in ALPHAS})
    offsets = [_box_offset(r["click"], r["boxes"], *r["size"]) for r in ev]
    f["click_offset"] = _offset_figures(offsets)
    last_n, trace_q, time_q = ({k: [] for k in keys} for keys in (LAST_N, QUANTILES, QUANTILES))
    workers, times = {}, []
    for r in records:
        for e in r["entries"]:
            w = workers.setdefault(e.get("worker_id", "?"), {"entries": 0, "selected": 0, "hits": [], "times": []})
            w["entries"] += 1
            if isinstance(e.get("estimateTime"), int):
                w["times"].append(e["estimateTime"])
            tr = _trace(e)
            w["selected"] += tr is not None
            if tr is None or r["boxes"] is None:
                continue
            h = points_in_boxes(tr[:, 1:], r["boxes"], *r["size"])
            w["hits"].append(h[-1])
            for n in LAST_N:
                if len(h) > n:
                    last_n[n].append(h[-1 - n])
            t = tr[:, 0]
            for q in QUANTILES:
                trace_q[q].append(h[int(q * (len(h) - 1) + 0.5)])  # nearest record, halves rounded up
                time_q[q].append(h[np.searchsorted(t, t[0] + q * (t[-1] - t[0]), side="right") - 1])
    f.update({name: {str(k): _pct(v) for k, v in d.items()}
              for name, d in (("last_n_acc", last_n), ("trace_quantile_acc", trace_q), ("time_quantile_acc", time_q))})
    times = [t for w in workers.values() for t in w["times"]]
    f["estimate_time_ms"] = {f"q{q}": float(np.quantile(times, q / 100)) for q in (10, 50, 90)} if times else {}
    per_worker = {k: {"entries": w["entries"], "selected": w["selected"], "evaluated": len(w["hits"]),
                      "click_acc": _pct(w["hits"]),
                      "median_time_ms": float(np.median(w["times"])) if w["times"] else None}
                  for k, w in sorted(workers.items())}
    accs = [w["click_acc"] for w in per_worker.values() if w["evaluated"] >= 5]
    f["workers"] = {"n": len(per_worker), "with_5_evaluated": len(accs),
                    "click_acc_min": min(accs, default=None),
                    "click_acc_median": float(np.median(accs)) if accs else None,
                    "click_acc_max": max(accs, default=None)}
    f["per_worker"] = per_worker
    arrays = {"clicks": np.array([r["click"] for r in records if r["click"] is not None]).reshape(-1, 2),
              "box_centres": centres, "offsets": np.array(offsets).reshape(-1, 2)}
    return f, arrays


def _size_bucket(area):
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"  # COCO's area thresholds


def coco_stats(coco_ab, inst, mode="final-add"):
    """Appendix E.2. coco_ab {image_id: record} (read_coco_ab), inst a CocoInstances. Recall is over (image, GT
    class) pairs of re-annotated images, a pair's size the pixel area of its largest box (COCO buckets);
    icon precision = placements inside their class's GT mask / all placements (coco_points(record, mode));
    action sequences are the add / move / remove histories of icons that end up placed (final-position)."""
    ids = [i for i in inst.image_ids if i in coco_ab]
    names = {c["id"]: c["name"] for c in inst.categories}
    pairs, buckets, per_class = [], {b: [] for b in ("small", "medium", "large")}, {}
    correct, seqs, points, offsets, box_centres = [], Counter(), [], [], []
    for iid in ids:
        rec, im = coco_ab[iid], inst.images[iid]
        W, H = im["width"], im["height"]
        pts = coco_points(rec, mode)
        boxes, cls = inst.boxes(iid)
        box_centres.append((boxes[:, :2] + boxes[:, 2:]) / 2 / (W, H))
        for cid in sorted({inst.cat_ids[c] for c in cls}):
            b = boxes[cls == inst.cat_index[cid]]
            area = float(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).max())
            pairs.append(cid in pts)
            buckets[_size_bucket(area)].append(cid in pts)
            per_class.setdefault(names[cid], []).append((cid in pts, area / (W * H)))
        for cid, (x, y) in pts.items():
            points.append((x, y))
            px, py = min(int(x * W), W - 1), min(int(y * H), H - 1)
            inside = cid in inst.cat_index and bool(class_mask(inst, iid, cid)[py, px])
            correct.append(inside)
            if cid in inst.cat_index and (cls == inst.cat_index[cid]).any():
                offsets.append(_box_offset((x, y), boxes[cls == inst.cat_index[cid]], W, H))
        final, hist = coco_points(rec, "final-position"), {}
        for a in rec.get("actionHistories") or []:
            if isinstance(a, dict) and COCO_NAME_TO_ID.get(a.get("iconType")) in final:
                hist.setdefault(a["iconType"], []).append(str(a.get("actionType")))
        seqs.update("-".join(s) for s in hist.values())
    n_seq = max(sum(seqs.values()), 1)
    f = {"images": len(inst.image_ids), "reannotated": len(ids),
         "coverage_pct": _pct([i in coco_ab for i in inst.image_ids]),
         "records_without_image": len(set(coco_ab) - set(inst.images)), "icon_rule": mode,
         "gt_pairs": len(pairs), "recall": _pct(pairs), "placements": len(correct), "icon_precision": _pct(correct),
         "recall_by_size": {b: _pct(v) for b, v in buckets.items()},
         "pairs_by_size": {b: len(v) for b, v in buckets.items()}, "icon_offset": _offset_figures(offsets),
         "action_sequences_top_pct": {s: round(100.0 * c / n_seq, 3) for s, c in seqs.most_common(10)},
         "action_sequences": dict(seqs.most_common()),
         "per_class": {n: {"pairs": len(v), "recall": _pct([t for t, _ in v]),
                           "mean_rel_area": round(float(np.mean([a for _, a in v])), 5)}
                       for n, v in sorted(per_class.items())}}
    arrays = {"clicks": np.array(points).reshape(-1, 2), "offsets": np.array(offsets).reshape(-1, 2),
              "box_centres": np.concatenate(box_centres or [np.zeros((0, 2))])}
    return f, arrays


# What `stats` prints: the figures grouped by the appendix-E quantity they reproduce, each with its unit and its
# JSON key. A row is (key, label, unit); a key ending in ".*" stands for every entry of that dict, its label a
# format string of the entry's name. Percentages are of the count named in the group's title.
def _offset_rows(key, things):
    """The rows of an _offset_figures dict at key (clicks or icons around the nearest box centre)."""
    return ((f"{key}.n", things, things), (f"{key}.mean_u", "mean u", "box widths"),
            (f"{key}.mean_v", "mean v", "box heights"), (f"{key}.median_u", "median u", "box widths"),
            (f"{key}.median_v", "median v", "box heights"),
            (f"{key}.top_right_pct", f"{things} top-right of the box centre", "%"),
            (f"{key}.bottom_left_pct", f"{things} bottom-left of the box centre", "%"))


IMAGENET_SECTIONS = (
    ("E.1 coverage: which training images have ImageNet-AB byproducts", (
        ("files", "XML files read", "files"), ("bad_files", "unreadable XML files", "files"),
        ("appledouble_skipped", "AppleDouble ._ files skipped", "files"),
        ("with_entries", "images with at least one annotation entry", "images"),
        ("selected", "images with a final click (selected)", "images"),
        ("several_entries", "images annotated in several entries", "images"),
        ("images", "training images under --images", "images"),
        ("coverage_pct", "training images with an annotation entry", "%"))),
    ("E.1 click accuracy and centre bias, over the images with a click and GT boxes", (
        ("evaluated", "images scored", "images"), ("click_acc", "clicks inside a GT box", "%"),
        ("centre_click_acc", "image centres inside a GT box (the centre baseline)", "%"),
        ("non_centred", "images whose GT boxes miss the centre", "images"),
        ("non_centred_click_acc", "clicks inside a GT box, on those images", "%"),
        ("box_centres_in_central_0_82pct", "GT boxes centred in the central 0.82 % of the area", "%"))),
    ("E.1 random clicks: % inside a GT box, uniform on a centred square of side alpha (0 = centre, 1 = image)", (
        ("random_click_acc.*", "alpha = {}", "%"),)),
    ("E.1 click position around the nearest GT box: centre 0, edges +-0.5, u right, v down (top-right: u>0, v<0)", (
        _offset_rows("click_offset", "clicks"))),
    ("E.1 mouse traces: % of trace points inside a GT box (selected entries of images with GT boxes)", (
        ("last_n_acc.*", "{} records before the final click (0: the click)", "%"),
        ("trace_quantile_acc.*", "at fraction {} of the records (0 = entering, 1 = click)", "%"),
        ("time_quantile_acc.*", "at fraction {} of the time (0 = entering, 1 = click)", "%"))),
    ("E.1 annotation time (q10: 10th percentile) and annotators", (
        ("estimate_time_ms.*", "estimateTime per entry, {}", "ms"), ("workers.n", "annotators", "workers"),
        ("workers.with_5_evaluated", "annotators with >= 5 scored clicks", "workers"),
        ("workers.click_acc_min", "their click accuracy: lowest", "%"),
        ("workers.click_acc_median", "their click accuracy: median", "%"),
        ("workers.click_acc_max", "their click accuracy: highest", "%"))),
)
COCO_SECTIONS = (
    ("E.2 coverage: which COCO images have a COCO-AB record", (
        ("images", "images in --instances", "images"),
        ("reannotated", "images re-annotated (a COCO-AB record)", "images"),
        ("coverage_pct", "images re-annotated", "%"),
        ("records_without_image", "COCO-AB records of images not in --instances", "records"),
        ("icon_rule", "icon rule (--icon-rule)", ""))),
    ("E.2 recall: (image, GT class) pairs with an icon of the class; size: its largest box (small < 32^2, "
     "medium < 96^2 px)", (
        ("gt_pairs", "(image, GT class) pairs", "pairs"), ("recall", "pairs with an icon", "%"),
        ("recall_by_size.*", "pairs with an icon, {} boxes", "%"),
        ("pairs_by_size.*", "pairs, {} boxes", "pairs"))),
    ("E.2 icon precision: % of icon placements inside a GT mask of their class", (
        ("placements", "icon placements", "icons"), ("icon_precision", "placements inside a mask", "%"))),
    ("E.2 icon position around the nearest GT box of its class: centre 0, edges +-0.5, u right, v down", (
        _offset_rows("icon_offset", "icons"))),
    ("E.2 action sequences: % of placed icons by their add / move / remove history (the 10 most frequent)", (
        ("action_sequences_top_pct.*", "{}", "%"),)),
)


def _flat(figures, skip, prefix=""):
    """{dotted key: scalar} of the figures, nested dicts flattened with "."; the skipped ones are JSON only."""
    out = {}
    for k, v in figures.items():
        if isinstance(v, dict):
            if k not in skip:
                out.update(_flat(v, skip, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def format_table(figures, sections=IMAGENET_SECTIONS, skip=("per_worker", "per_class", "action_sequences")):
    """The scalar figures as one block per section: its title, then 'label  value unit  JSON key' lines. A figure
    that no section names is listed under "other figures"; the skipped (big) ones are in the JSON only."""
    flat, lines = _flat(figures, skip), []

    def value(v):
        return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)

    rows_of = []
    for title, rows in sections:
        found = []
        for key, label, unit in rows:
            if key.endswith(".*"):
                found += [(k, label.format(k[len(key) - 1:]), unit) for k in flat if k.startswith(key[:-1])]
            elif key in flat:
                found.append((key, label, unit))
        rows_of.append((title, found))
    named = {k for _, found in rows_of for k, _, _ in found}
    rows_of.append(("other figures", [(k, k, "") for k in flat if k not in named]))
    width = max((len(label) for _, found in rows_of for _, label, _ in found), default=0)
    for title, found in rows_of:
        if found:
            lines += ([""] if lines else []) + [title]
            lines += [f"  {label:<{width}}  {value(flat[k]):>9} {unit:<11}  {k}".rstrip() for k, label, unit in found]
    return "\n".join(lines)


# pictures (Pillow only; the shared drawing primitives are in drawing.py)

CLICK_COLOUR, BOX_COLOUR, PRED_COLOUR, UNIT_BOX_COLOUR = (255, 30, 30), (0, 220, 0), (0, 230, 255), (0, 200, 255)
HEATMAP_BAR = 100  # px right of a heatmap: its colour bar, tick labels and the bar's label


def _hot(a):
    """float[...] in [0, 1] -> uint8[..., 3], black -> red -> yellow -> white."""
    return (np.clip(np.stack([3 * a, 3 * a - 1, 3 * a - 2], -1), 0, 1) * 255).astype(np.uint8)


def heatmap_png(points, path, lim=(0.0, 1.0), bins=48, size=384, box=False, title="",
                labels=("x (fraction of image width)", "y (fraction of image height, down)")):
    """2-D histogram of points [N, 2] (x right, y down) over lim x lim, sqrt-scaled, saved as a PNG: the title,
    axes in the points' units (y down, as in an image) around a size x size px histogram, and a colour bar in
    points per cell. box=True outlines the unit box [-0.5, 0.5]^2 and its centre lines (for offsets in
    normalised box coordinates), with a legend saying so."""
    p = np.asarray(points, np.float64).reshape(-1, 2)
    h = np.histogram2d(p[:, 1], p[:, 0], bins=bins, range=[lim, lim])[0]  # rows = y, so the image is upright
    peak = max(h.max(), 1.0)
    ml, _, _, mb = dr.MARGINS
    items = [("nearest GT box: centre 0, edges +-0.5", UNIT_BOX_COLOUR, "box")] if box else []
    img, top = dr.canvas(ml + size + 2 + HEATMAP_BAR, size + 2 + mb, title, items)
    ax = dr.Axes(img, (ml, top, ml + size + 1, top + size + 1), lim, lim[::-1])  # y down
    ax.frame(None, *labels, grid=False)
    img.paste(Image.fromarray(_hot(np.sqrt(h / peak))).resize((size, size), Image.NEAREST), (ml + 1, top + 1))
    if box:
        ax.draw.rectangle([*ax.px(-0.5, -0.5), *ax.px(0.5, 0.5)], outline=UNIT_BOX_COLOUR)
        ax.draw.line([*ax.px(0, lim[0]), *ax.px(0, lim[1])], fill=(0, 120, 160))
        ax.draw.line([*ax.px(lim[0], 0), *ax.px(lim[1], 0)], fill=(0, 120, 160))
    x = ml + size + 16  # the colour bar: top = the fullest cell, ticks at counts, placed on the sqrt scale
    img.paste(Image.fromarray(_hot(np.linspace(1, 0, size))[:, None].repeat(14, 1)), (x, top + 1))
    ax.draw.rectangle([x - 1, top, x + 14, top + size + 1], outline=dr.BLACK)
    right = x + 14
    for v in dr.nice_ticks(0, peak, n=4, integer=True):
        y = top + 1 + (1 - math.sqrt(v / peak)) * (size - 1)
        ax.draw.line([x + 14, y, x + 18, y], fill=dr.BLACK)
        right = max(right, dr.text(img, (x + 20, y), f"{v:g}", dr.TICK_SIZE, "lm")[2])
    dr.text(img, (right + 6, top + size / 2), "points per cell (sqrt scale)", dr.LABEL_SIZE, "lm", vertical=True)
    img.save(path)
    return path


def click_grid_png(records, image_root, path, n=16, cell=160, model=None):
    """A titled grid of images (each resized to cell x cell, its key below it) with the click and the GT boxes,
    and a legend of the marks; with a model, each cell is the eval centre crop with the CAM of the predicted
    class (evaluate.compute_cams) blended in, and the predicted point if the model has a point head."""
    paths = {}
    for r in records:
        if r["click"] is not None:
            p = next((q for q in (os.path.join(image_root, r["key"] + e) for e in (".JPEG", ".jpg", ".png"))
                      if os.path.exists(q)), None)
            if p:
                paths[r["key"]] = (r, p)
    keys = sorted(paths)[:: max(1, len(paths) // n)][:n]
    cols = max(1, math.ceil(math.sqrt(len(keys))))
    items = [("click (ImageNet-AB)", CLICK_COLOUR, "cross"), ("GT box", BOX_COLOUR, "box")]
    title = "ImageNet-AB clicks and GT boxes"
    if model is not None:
        items += [("predicted point", PRED_COLOUR, "ring")] * (model.num_points > 0)
        items += [("CAM of the predicted class (bright = high)", (255, 150, 0), "patch")]
        title = "ImageNet-AB clicks, GT boxes, the model's " + ("point and CAM" if model.num_points else "CAM")
    cap = dr.text_size("Ag", dr.TICK_SIZE)[1] + 8  # the key under each cell
    width = max(cols * cell, 560)  # room for the title and legend
    sheet, y0 = dr.canvas(width, max(1, math.ceil(len(keys) / cols)) * (cell + cap), title, items)
    x0 = (width - cols * cell) // 2
    tf = EvalTransform()
    for i, k in enumerate(keys):
        r, p = paths[k]
        img = read_image(p)
        corners = r["boxes"].reshape(-1, 2) / r["size"] if r["boxes"] is not None else np.zeros((0, 2))
        pts = torch.tensor(np.concatenate([[r["click"]], corners]), dtype=torch.float32)
        pred = None
        if model is not None:
            x, pts, _ = tf(img, pts, torch.ones(len(pts)))
            with torch.no_grad():
                logits, pred = model(x[None], return_points=True)
                cam = evaluate.compute_cams(model, model.feature_map(x[None]), logits.argmax(1), x.shape[-1])[0]
            cam = ((cam - cam.min()) / (cam.max() - cam.min() + 1e-8)).numpy()
            rgb = x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
            rgb = rgb.clamp(0, 1)
            img = Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
            img = Image.blend(img, Image.fromarray(_hot(cam)), 0.4)
            pred = None if pred is None else pred[0, 0].tolist()
        cellimg = img.convert("RGB").resize((cell, cell), Image.BILINEAR)
        d = ImageDraw.Draw(cellimg)
        s = pts.numpy() * cell
        for a, b in zip(s[1::2], s[2::2]):
            lo, hi = np.minimum(a, b), np.maximum(a, b)
            d.rectangle([*lo, *hi], outline=BOX_COLOUR, width=2)
        dr.marker(d, *s[0], CLICK_COLOUR, "cross", r=5)
        if pred is not None:
            dr.marker(d, pred[0] * cell, pred[1] * cell, PRED_COLOUR, "ring", r=5)
        x, y = x0 + (i % cols) * cell, y0 + (i // cols) * (cell + cap)
        sheet.paste(cellimg, (x, y))
        dr.text(sheet, (x + cell / 2, y + cell + 3), k if dr.text_size(k, dr.TICK_SIZE)[0] < cell - 4 else
                k.rsplit("/", 1)[-1], dr.TICK_SIZE, "mt")
    sheet.save(path)
    return path


def _count_images(root):
    return sum(n.lower().endswith(IMG_EXTENSIONS) for _, _, files in os.walk(root) for n in files) if root else None


def _load_model(path, name=None):
    """A trained model from its checkpoint (evaluate.load_model: weights_only=True, one-line errors); name
    overrides the architecture the checkpoint names (needed for a bare state dict)."""
    model, _ = evaluate.load_model(path, name)
    if model.num_points > 1:
        raise SystemExit(f"--checkpoint {path} has {model.num_points} point heads (a COCO model?); the grid draws "
                         "an ImageNet model's single point")
    return model


def _add_analysis_parsers(sub):
    for cmd, what in (("stats", "appendix E figures: a table on stdout, JSON with --out"),
                      ("draw", "appendix E pictures (PNG) into --out DIR")):
        ds = sub.add_parser(cmd, help=what, allow_abbrev=False).add_subparsers(dest="dataset", required=True)
        im = ds.add_parser("imagenet", allow_abbrev=False)
        im.add_argument("--xml-root", required=True, help="ImageNet-AB train_xml/")
        im.add_argument("--boxes", help="ILSVRC train box XML tree (default: the boxes merged into the AB XML)")
        im.add_argument("--images", help="ImageNet train tree <wnid>/<stem>.JPEG (coverage; the draw grid)")
        co = ds.add_parser("coco", allow_abbrev=False)
        co.add_argument("--coco-ab", required=True)
        co.add_argument("--instances", required=True, help="instances_train2014.json")
        co.add_argument("--icon-rule", default="final-add", choices=("final-add", "final-position"))
        for p in (im, co):
            p.add_argument("--out", required=cmd == "draw", help="JSON file (stats) or folder (draw)")
        if cmd == "draw":
            im.add_argument("--n", type=int, default=16, help="images in the grid")
            im.add_argument("--checkpoint", help="a trained model's checkpoint: draw its point and CAM on the grid")
            im.add_argument("--model", help="the architecture (models.create_model name) of a --checkpoint that does "
                                            "not name it (a bare state dict)")


def _analysis_main(args):
    # the checkpoint first: a file it refuses should not cost a scan of the XML tree
    model = _load_model(args.checkpoint, args.model) if getattr(args, "checkpoint", None) else None
    if args.dataset == "imagenet":
        records, counts = imagenet_records(args.xml_root, args.boxes)
        figures, arrays = imagenet_stats(records, counts, n_images=_count_images(args.images))
    else:
        figures, arrays = coco_stats(read_coco_ab(args.coco_ab), read_coco_instances(args.instances), args.icon_rule)
    if args.cmd == "stats":
        print(format_table(figures, IMAGENET_SECTIONS if args.dataset == "imagenet" else COCO_SECTIONS))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(figures, f, indent=1)
        return 0
    os.makedirs(args.out, exist_ok=True)
    name, what, data = (("clicks", "ImageNet-AB clicks", "ImageNet") if args.dataset == "imagenet" else
                        ("icons", "COCO-AB icons", "COCO"))
    n = {k: len(v) for k, v in arrays.items()}
    written = [heatmap_png(arrays["clicks"], os.path.join(args.out, f"{name}.png"),
                           title=f"{what}: where in the image (n = {n['clicks']})"),
               heatmap_png(arrays["box_centres"], os.path.join(args.out, "box_centres.png"),
                           title=f"{data} GT box centres (n = {n['box_centres']})"),
               heatmap_png(arrays["offsets"], os.path.join(args.out, f"{name[:-1]}_offsets.png"), lim=(-1.0, 1.0),
                           box=True, title=f"{what} around the nearest box centre (n = {n['offsets']})",
                           labels=("u (box widths, right)", "v (box heights, down)"))]
    if args.dataset == "imagenet" and args.images:
        written.append(click_grid_png(records, args.images, os.path.join(args.out, "grid.png"), n=args.n, model=model))
    print("wrote " + " ".join(written))
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.strip().split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_analysis_parsers(ap.add_subparsers(dest="cmd", required=True))
    args = ap.parse_args(argv)
    try:
        return _analysis_main(args)
    except BadInput as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
