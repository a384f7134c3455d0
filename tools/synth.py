"""
Synthetic data in the released formats: small ImageNet + ImageNet-AB + ILSVRC boxes + COCO + COCO-AB sets that
the readers of byproducts.py read as they read the real files (the demos, the tests and the benchmarks train
on them), and the background-shortcut set of the spurious-feature study.

    python tools/synth.py --out DIR [--seed 0] [--classes 10] [--train 40] [--val 10] [--coco-train 60] ...
    python tools/synth.py --out DIR --spurious 0.9      # synth_spurious: mixed_same / mixed_rand test splits

From Python (the repository root on sys.path): `from tools.synth import synth; synth(out_dir, seed=0)`.
Every image shows one object whose shape / colour / texture depend on the class; the clicks fall near it with
human-like noise and the paper's slight top-right bias, so a model can learn both the class and the point.
"""

import argparse
import json
import math
import os
import sys
import time
from collections import Counter

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from byproducts import COCO_NAME_TO_ID  # noqa: E402
from tools.coco_masks import annotation_mask, rle_encode  # noqa: E402

# Imagenette's ten wnids: real ImageNet class folders, so class-name tables downstream still resolve.
SYNTH_WNIDS = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079", "n03394916", "n03417042",
               "n03425413", "n03445777", "n03888605"]
_SHAPES = ["disk", "square", "triangle", "diamond", "cross", "ring", "star", "hexagon", "ellipse", "bar"]
_PALETTE = [(220, 40, 40), (40, 170, 60), (40, 80, 225), (235, 205, 30), (200, 60, 200), (30, 200, 205),
            (245, 130, 20), (130, 70, 25), (250, 250, 250), (25, 25, 25)]
_SYNTH_COCO = ["person", "dog", "sports ball", "cake", "potted plant", "teddy bear"]


def _shape_polygons(shape, cx, cy, r, angle):
    """Outer polygon(s) [[x, y], ...] of a class shape, and an optional hole polygon (ring)."""
    def ngon(n, rx, ry, phase=0.0):
        t = phase + np.arange(n) * 2 * np.pi / n
        return np.stack([rx * np.cos(t), ry * np.sin(t)], 1)

    def rot(p):
        c, s = math.cos(angle), math.sin(angle)
        return p @ np.array([[c, s], [-s, c]]) + (cx, cy)

    hole = None
    if shape in ("disk", "ring"):
        p = ngon(40, r, r)
        hole = rot(ngon(40, 0.5 * r, 0.5 * r)) if shape == "ring" else None
    elif shape == "square":
        p = ngon(4, r, r, np.pi / 4)
    elif shape == "triangle":
        p = ngon(3, r, r, -np.pi / 2)
    elif shape == "diamond":
        p = ngon(4, 0.7 * r, r)
    elif shape == "cross":
        a, b = r, 0.35 * r
        p = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a], [-b, b], [-a, b],
                      [-a, -b], [-b, -b]])
    elif shape == "star":
        t = np.arange(10) * np.pi / 5 - np.pi / 2
        rr = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        p = np.stack([rr * np.cos(t), rr * np.sin(t)], 1)
    elif shape == "hexagon":
        p = ngon(6, r, r)
    elif shape == "ellipse":
        p = ngon(40, r, 0.55 * r)
    else:  # bar
        p = np.array([[-r, -0.3 * r], [r, -0.3 * r], [r, 0.3 * r], [-r, 0.3 * r]])
    return rot(p), hole


def _background(rng, W, H):
    small = rng.integers(0, 256, (H // 12 + 2, W // 12 + 2, 3), dtype=np.uint8)
    bg = np.asarray(Image.fromarray(small).resize((W, H), Image.BICUBIC), np.float32)
    base = rng.uniform(60, 200, 3)
    bg = 0.45 * bg + 0.55 * base + rng.normal(0, 6, (H, W, 3))
    return bg


def _polygon_mask(outer, hole, W, H):
    """bool[H, W] mask of the polygon `outer` minus the polygon `hole` (or None)."""
    m = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(m)
    d.polygon([tuple(v) for v in outer], fill=255)
    if hole is not None:
        d.polygon([tuple(v) for v in hole], fill=0)
    return np.asarray(m) > 0


def _paint(canvas, rng, cls, outer, hole, W, H):
    """Paint a textured class-coloured shape onto canvas (float32[H, W, 3]); returns its bool mask."""
    mask = _polygon_mask(outer, hole, W, H)
    colour = np.array(_PALETTE[cls % len(_PALETTE)], np.float32) + rng.normal(0, 12, 3)
    yy, xx = np.mgrid[0:H, 0:W]
    texture = cls % 3  # 0 solid, 1 stripes (class-dependent direction), 2 checker
    if texture == 1:
        ang = (cls * 37 % 180) * np.pi / 180
        tex = ((xx * math.cos(ang) + yy * math.sin(ang)) // 3 % 2) * 0.45 + 0.55
    elif texture == 2:
        tex = ((xx // 4 + yy // 4) % 2) * 0.4 + 0.6
    else:
        tex = np.ones((H, W))
    canvas[mask] = (colour[None, :] * tex[mask][:, None]).clip(0, 255)
    return mask


def _jpeg(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)


def _human_click(rng, cx, cy, ow, oh, W, H, sloppy=False):
    """A click near (cx, cy) px with human-like noise and the paper's top-right bias (appendix E, Fig. F)."""
    sd = 0.35 if sloppy else 0.12
    x = cx + rng.normal(0.06, sd) * ow  # mode slightly up-right of the centre ...
    y = cy + rng.normal(-0.06, sd) * oh
    if rng.random() < 0.15:  # ... and a comet-like tail towards the top-right corner (~94 % land in the box;
        e = rng.exponential(0.5)  # the paper measured 82.9 % on real ImageNet boxes, which are larger)
        x, y = x + e * ow, y - e * oh
    return min(max(x, 0.0), W - 1e-3) / W, min(max(y, 0.0), H - 1e-3) / H


def _hexid(rng, n, upper=False, alphabet="0123456789abcdef"):
    s = "".join(alphabet[i] for i in rng.integers(0, len(alphabet), n))
    return s.upper() if upper else s


def _ab_metadata(rng, wnid, stem, W, H, click_target, selected, n_clicks, t0):
    """One <metadata> block, children sorted alphabetically as in the release; returns (xml, final click)."""
    cx, cy, ow, oh = click_target
    trace, t = [], t0
    x, y = rng.uniform(0.1, 0.9), 0.0  # annotators enter the image through its top side
    clicks = []
    for c in range(n_clicks):  # earlier clicks are sloppier: only the last one is the final answer
        cxn, cyn = _human_click(rng, cx, cy, ow, oh, W, H, sloppy=c < n_clicks - 1)
        steps = int(rng.integers(4, 30))
        for s in range(steps):
            t += int(rng.integers(17, 60))
            f = (s + 1) / steps
            trace.append((t, x + (cxn - x) * f + rng.normal(0, 0.01), y + (cyn - y) * f + rng.normal(0, 0.01)))
        t += int(rng.integers(40, 200))
        clicks.append((t, cxn, cyn))
        x, y = cxn, cyn
    if not selected and not n_clicks:  # hovered over without clicking
        for s in range(int(rng.integers(3, 15))):
            t += int(rng.integers(17, 60))
            trace.append((t, float(rng.uniform(0, 1)), float(rng.uniform(0, 1))))
    trace = [(tt, min(max(a, 0.0), 1.0), min(max(b, 0.0), 1.0)) for tt, a, b in trace]
    # float() first: under numpy 2 repr(np.float64(0.5)) is "np.float64(0.5)", not "0.5"
    rec = lambda tag, tt, a, b: f"<{tag}><time>{tt}</time><x>{float(a)!r}</x><y>{float(b)!r}</y></{tag}>"  # noqa
    fields = [
        ("assignment_id", _hexid(rng, 30, alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")),
        ("estimateTime", str(max(0, (trace[-1][0] - trace[0][0]) if trace else 0))),
        ("hit_id", _hexid(rng, 30, alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")),
        ("hit_submit_time", str(t // 1000 + int(rng.integers(60, 900)))),
        ("hoveredCount", "1"),
        ("imageHeight", "243"), ("imageWidth", "243"),  # nominal display size: wrong on purpose, as released
        ("imageID", f"{wnid}/{stem}"),
        ("imagePosition", f"<x>{int(rng.integers(0, 1100))}</x><y>{int(rng.integers(0, 4000))}</y>"),
        ("image_idx", str(int(rng.integers(0, 48)))),
        ("imagenet_hit_id", _hexid(rng, 32)),
        ("originalImageHeight", str(H)), ("originalImageWidth", str(W)),
        ("page_idx", str(int(rng.integers(0, 10)))),
        ("selected", "True" if selected else "False"),
        ("selectedCount", str(n_clicks)),
        ("worker_id", _hexid(rng, 10, upper=True)),
    ]
    body = [(k, f"<{k}>{v}</{k}>") for k, v in fields]
    body += [("hoveredRecord", f"<hoveredRecord><action>{a}</action><time>{tt}</time></hoveredRecord>")
             for a, tt in (("enter", t0), ("leave", t + int(rng.integers(50, 400))))]
    body += [("mouseTracking", rec("mouseTracking", *tr)) for tr in trace]
    body += [("selectedRecord", rec("selectedRecord", *c)) for c in clicks]
    body.sort(key=lambda kv: kv[0])  # stable: repeated tags keep their time order
    final = (clicks[-1][1], clicks[-1][2]) if selected and clicks else None
    return "<metadata>\n\t\t" + "\n\t\t".join(v for _, v in body) + "\n\t</metadata>", final


def _voc_xml(wnid, stem, W, H, boxes):
    objs = "".join(
        f"\t<object>\n\t\t<name>{wnid}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
        f"\t\t<difficult>0</difficult>\n\t\t<bndbox>\n\t\t\t<xmin>{x0}</xmin>\n\t\t\t<ymin>{y0}</ymin>\n"
        f"\t\t\t<xmax>{x1}</xmax>\n\t\t\t<ymax>{y1}</ymax>\n\t\t</bndbox>\n\t</object>\n" for x0, y0, x1, y1 in boxes)
    return (f"\t<folder>{wnid}</folder>\n\t<filename>{stem}</filename>\n\t<source>\n\t\t<database>ILSVRC_2012"
            f"</database>\n\t</source>\n\t<size>\n\t\t<width>{W}</width>\n\t\t<height>{H}</height>\n\t\t<depth>3"
            f"</depth>\n\t</size>\n\t<segmented>0</segmented>\n{objs}")


# the first bytes of a macOS AppleDouble "._" file, which the released tar holds next to real files
APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\x00\x00\x00\t\x00\x00\x002"


def synth(out_dir, seed=0, n_classes=10, n_train=40, n_val=10, coco_train=60, coco_val=20, size=(64, 160),
          spurious=None):
    """Write a small synthetic ImageNet + ImageNet-AB + ILSVRC boxes + COCO + COCO-AB set in the real layouts.

    out_dir/imagenet/{train,val}/<wnid>/<wnid>_[val_]<n>.JPEG    non-square images, size[0]..size[1] px
    out_dir/imagenet_ab/train_xml/<wnid>/<stem>.xml              ImageNet-AB (most train images; see below)
    out_dir/imagenet/boxes/{train,val}/<wnid>/<stem>.xml          ILSVRC VOC boxes (half of train, all of val)
    out_dir/coco/{train2014,val2014}/COCO_<split>2014_%012d.jpg, coco/annotations/instances_{train,val}2014.json,
    out_dir/coco/coco_ab_v1_0.json
    Each image shows one object whose shape / colour / texture depend on the class, at a random position and
    size on a textured background; clicks fall near it with human-like noise and a slight top-right bias, so a
    model can learn both the class and the point. ImageNet-AB quirks reproduced: ~5 % of images without XML,
    ~8 % unselected, ~10 % with two <metadata> entries, ~20 % with several select clicks (the last one is the
    good one), imageWidth == imageHeight == 243, two "._" AppleDouble files. COCO: polygon objects, some
    iscrowd=1 with uncompressed RLE, add / move / remove histories, zero original sizes and an image without a
    record; image ids are unique (the release's duplicate COCO-AB records are left to the tests that need one, so
    the demos print no warning). Deterministic for a seed. Returns a dict of counts.

    spurious=p writes the background-shortcut set of synth_spurious() instead (n_classes, n_train, n_val,
    seed used; no COCO, no boxes).
    """
    if spurious is not None:
        return synth_spurious(out_dir, p=spurious, seed=seed, n_classes=n_classes, n_train=n_train, n_val=n_val)
    wnids = (SYNTH_WNIDS + [f"n9{i:07d}" for i in range(n_classes)])[:n_classes]
    inet, ab, boxes_dir = (os.path.join(out_dir, p) for p in ("imagenet", "imagenet_ab/train_xml", "imagenet/boxes"))
    stats = Counter()
    for split, n_img in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(wnids):
            for n in range(n_img):
                rng = np.random.default_rng([seed, 0 if split == "train" else 1, c, n])
                stem = f"{wnid}_{n}" if split == "train" else f"{wnid}_val_{n}"
                W, H = (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
                r = rng.uniform(0.16, 0.32) * min(W, H)
                cx, cy = rng.uniform(r, W - r), rng.uniform(r, H - r)
                canvas = _background(rng, W, H)
                outer, hole = _shape_polygons(_SHAPES[c % len(_SHAPES)], cx, cy, r, rng.uniform(0, 2 * np.pi))
                mask = _paint(canvas, rng, c, outer, hole, W, H)
                _jpeg(os.path.join(inet, split, wnid, stem + ".JPEG"), canvas)
                ys, xs = np.nonzero(mask)
                box = (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))  # inclusive pixel indices
                has_box = split == "val" or rng.random() < 0.5
                if has_box:
                    p = os.path.join(boxes_dir, split, wnid, stem + ".xml")
                    os.makedirs(os.path.dirname(p), exist_ok=True)
                    with open(p, "w") as f:
                        f.write(f"<annotation>\n{_voc_xml(wnid, stem, W, H, [box])}</annotation>\n")
                if split != "train":
                    continue
                stats["imagenet_train"] += 1
                u = rng.random()
                if u < 0.05 or n == 1:  # no XML file at all (the release misses ~6.3 k images)
                    stats["ab_missing"] += 1
                    continue
                target = (xs.mean() + 0.5, ys.mean() + 0.5, box[2] - box[0] + 1, box[3] - box[1] + 1)
                t0 = 1641425000000 + int(rng.integers(0, 10 ** 8))
                # forced per class so every quirk occurs even in tiny sets: n=1 no XML, n=2 two selected
                # entries (averaged), n=3 unselected, n=4 two select clicks, n=5 unselected + selected entry
                n_entries = 2 if (u > 0.9 or n in (2, 5)) else 1
                blocks = []
                for e in range(n_entries):
                    selected = not ((0.05 <= u < 0.13 or n in (3, 5)) and e == 0)
                    n_clicks = (2 if rng.random() < 0.2 or n == 4 else 1) if selected else int(rng.random() < 0.4)
                    xml, _ = _ab_metadata(rng, wnid, stem, W, H, target, selected, n_clicks, t0 + e * 10 ** 7)
                    blocks.append(xml)
                    stats["ab_unselected_entries"] += not selected
                stats["ab_files"] += 1
                stats["ab_multi_entry"] += n_entries > 1
                voc = _voc_xml(wnid, stem, W, H, [box]) if has_box else \
                    f"\t<folder>{wnid}</folder>\n\t<filename>{stem}</filename>\n\t<source>\n\t\t<database>" \
                    f"ILSVRC_2012</database>\n\t</source>\n"
                p = os.path.join(ab, wnid, stem + ".xml")
                os.makedirs(os.path.dirname(p), exist_ok=True)
                with open(p, "w") as f:
                    f.write("<annotation>\n" + voc + "\t" + "\n\t".join(blocks) + "\n</annotation>\n")
    for wnid in wnids[:2]:  # macOS AppleDouble junk next to real files, as in the released tar
        with open(os.path.join(ab, wnid, f"._{wnid}_0.xml"), "wb") as f:
            f.write(APPLEDOUBLE)
        stats["ab_appledouble"] += 1
    stats.update(_synth_coco(os.path.join(out_dir, "coco"), seed, coco_train, coco_val, size))
    return dict(stats)


_SPURIOUS_SHAPES = ["disk", "square", "triangle", "cross", "ring", "star", "bar", "hexagon", "ellipse", "diamond"]
_SPURIOUS_BG = [(150, 100, 95), (95, 140, 100), (95, 105, 150), (155, 145, 95), (135, 95, 135), (95, 140, 140),
                (160, 125, 90), (110, 95, 80), (125, 125, 125), (70, 70, 85)]  # muted: objects stand out


def _class_background(rng, b, W, H):
    """Background texture of class b: its colour plus stripes at a class-specific angle and period."""
    base = np.array(_SPURIOUS_BG[b % len(_SPURIOUS_BG)], np.float32) + rng.normal(0, 10, 3)
    yy, xx = np.mgrid[0:H, 0:W]
    ang, period = (b * 47 % 180) * np.pi / 180, 4 + b % 4
    phase = rng.uniform(0, period)
    stripes = ((xx * math.cos(ang) + yy * math.sin(ang) + phase) // (period / 2) % 2)[..., None]
    return base * (0.8 + 0.3 * stripes) + 0.5 * (_background(rng, W, H) - 128) * 0.4


def synth_spurious(out_dir, p=0.9, seed=0, n_classes=6, n_train=100, n_val=30, size=32):
    """A Background-Challenge-like set where the background is a shortcut (benchmarks/spurious.py).

    The label is carried by the object's shape and bright colour (random texture, radius 18-32 % of the
    image, anywhere in it); each class also owns a background (muted colour + stripe angle/period). In train/
    and val/ the background is the label's with probability p, otherwise another class's chosen uniformly
    at random (so the background/label agreement is exactly ~p, not p + (1 - p) / C). Test splits reuse
    the same objects on two backgrounds, mirroring the Background Challenge:
      mixed_same/  the true class's background;   mixed_rand/  a random *other* class's background.
    out_dir/imagenet/{train,val,mixed_same,mixed_rand}/<wnid>/<stem>.JPEG    size x size px
    out_dir/imagenet_ab/train_xml/<wnid>/<stem>.xml   ImageNet-AB clicks for ~95 % of train (human-like noise
                                                      and the top-right bias of _human_click; ~20 % two clicks)
    out_dir/spurious.json   {"p", "classes", "images": {split: [[key, label, bg_class, cx, cy, r], ...]}}
                            (cx, cy, r normalised by the image side)
    Deterministic for a seed. Returns a dict of counts.
    """
    wnids = (SYNTH_WNIDS + [f"n9{i:07d}" for i in range(n_classes)])[:n_classes]
    W = H = size
    inet, ab = os.path.join(out_dir, "imagenet"), os.path.join(out_dir, "imagenet_ab", "train_xml")
    meta, stats = {"p": p, "seed": seed, "classes": wnids, "images": {}}, Counter()
    for s, (split, n_img) in enumerate((("train", n_train), ("val", n_val), ("mixed_same", n_val),
                                        ("mixed_rand", n_val))):
        rows = meta["images"][split] = []
        for c, wnid in enumerate(wnids):
            for n in range(n_img):
                # the two mixed splits draw the same object (same rng stream) and differ in the background only
                obj_rng = np.random.default_rng([seed, 11, min(s, 2), c, n])
                bg_rng = np.random.default_rng([seed, 12, s, c, n])
                r = obj_rng.uniform(0.18, 0.32) * size
                margin = r + 0.04 * size
                cx, cy = obj_rng.uniform(margin, W - margin), obj_rng.uniform(margin, H - margin)
                outer, hole = _shape_polygons(_SPURIOUS_SHAPES[c % len(_SPURIOUS_SHAPES)], cx, cy, r,
                                              obj_rng.uniform(0, 2 * np.pi))
                colour = np.array(_PALETTE[c % len(_PALETTE)], np.float32) + obj_rng.normal(0, 20, 3)
                texture = int(obj_rng.integers(0, 3))
                if split == "mixed_same" or (split in ("train", "val") and bg_rng.random() < p):
                    b = c
                else:
                    b = (c + 1 + int(bg_rng.integers(0, n_classes - 1))) % n_classes
                canvas = _class_background(bg_rng, b, W, H)
                mask = _polygon_mask(outer, hole, W, H)
                yy, xx = np.nonzero(mask)
                tex = [np.ones(len(xx)), (xx + yy) // 2 % 2 * 0.45 + 0.55, (xx // 3 + yy // 3) % 2 * 0.4 + 0.6][texture]
                canvas[mask] = colour[None] * tex[:, None]
                stem = f"{wnid}_{n}" if split == "train" else f"{wnid}_{split}_{n}"
                _jpeg(os.path.join(inet, split, wnid, stem + ".JPEG"), canvas)
                rows.append([f"{wnid}/{stem}", c, b, cx / W, cy / H, r / size])
                stats[f"{split}_images"] += 1
                stats[f"{split}_bg_match"] += b == c
                if split != "train":
                    continue
                if bg_rng.random() < 0.05:  # images without an ImageNet-AB file, as in the release
                    stats["ab_missing"] += 1
                    continue
                target = (xx.mean() + 0.5, yy.mean() + 0.5, xx.max() - xx.min() + 1, yy.max() - yy.min() + 1)
                n_clicks = 2 if bg_rng.random() < 0.2 else 1
                xml, _ = _ab_metadata(bg_rng, wnid, stem, W, H, target, True, n_clicks,
                                      1641425000000 + int(bg_rng.integers(0, 10 ** 8)))
                path = os.path.join(ab, wnid, stem + ".xml")
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(f"<annotation>\n\t<folder>{wnid}</folder>\n\t<filename>{stem}</filename>\n\t{xml}\n"
                            "</annotation>\n")
                stats["ab_files"] += 1
    with open(os.path.join(out_dir, "spurious.json"), "w") as f:
        json.dump(meta, f)
    return dict(stats)


def _synth_coco(root, seed, n_train, n_val, size):
    cats = [{"id": cid, "name": name, "supercategory": _supercategory(name)}
            for name, cid in sorted(COCO_NAME_TO_ID.items(), key=lambda kv: kv[1])]
    stats, records = Counter(), []
    lo, hi = max(size[0], 80), max(size[1], 120)
    taken = set()  # image ids are unique across train2014 and val2014, as in COCO
    for split, n_img in (("train", n_train), ("val", n_val)):
        rng_ids = np.random.default_rng([seed, 7, split == "train"])
        ids = {int(i) for i in rng_ids.choice(np.arange(9, 582000), n_img, replace=False)} - taken
        while len(ids) < n_img:  # val drew an id of train: draw another (the same ids as before where none is)
            ids |= {int(rng_ids.integers(9, 582000))} - taken
        ids = sorted(ids)
        taken |= set(ids)
        images, anns = [], []
        for n, iid in enumerate(ids):
            rng = np.random.default_rng([seed, 8, iid])
            W, H = (int(v) for v in rng.integers(lo, hi + 1, 2))
            fname = f"COCO_{split}2014_{iid:012d}.jpg"
            images.append({"id": iid, "width": W, "height": H, "file_name": fname, "license": 1})
            canvas = _background(rng, W, H)
            objects = []
            for o in range(int(rng.integers(1, 4))):
                k = int(rng.integers(0, len(_SYNTH_COCO)))
                name = _SYNTH_COCO[k]
                crowd = rng.random() < 0.15 or (n == 0 and o == 0)
                r = rng.uniform(0.1, 0.2) * min(W, H)
                cx, cy = rng.uniform(r, W - r), rng.uniform(r, H - r)
                shape = ["ellipse", "hexagon", "disk", "star", "triangle", "diamond"][k]
                parts = [(cx, cy, r)]
                if crowd:  # a crowd region: a few small blobs of the class, stored as uncompressed RLE
                    parts = [(cx + rng.uniform(-r, r), cy + rng.uniform(-r, r), 0.45 * r) for _ in range(3)]
                elif rng.random() < 0.15:  # an occluded object in two polygons
                    parts = [(cx - 0.6 * r, cy, 0.5 * r), (cx + 0.6 * r, cy, 0.5 * r)]
                polys = [_shape_polygons(shape, px, py, pr, rng.uniform(0, 2 * np.pi))[0]
                         for px, py, pr in parts]
                polys = [np.clip(p, 0, [W - 1e-3, H - 1e-3]) for p in polys]
                for p in polys:
                    _paint(canvas, rng, k, p, None, W, H)
                seg = [[round(float(v), 2) for v in p.ravel()] for p in polys]
                mask = annotation_mask(seg, H, W)
                if not mask.any():
                    continue
                if crowd:
                    seg = rle_encode(mask)
                ys, xs = np.nonzero(mask)
                bbox = [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                        float(ys.max() - ys.min() + 1)]
                anns.append({"id": len(anns) + 1 + (0 if split == "train" else 10 ** 6), "image_id": iid,
                             "category_id": COCO_NAME_TO_ID[name], "bbox": bbox, "area": float(mask.sum()),
                             "iscrowd": int(crowd), "segmentation": seg})
                objects.append((name, xs.mean() + 0.5, ys.mean() + 0.5))
                stats[f"coco_{split}_crowd"] += crowd
            _jpeg(os.path.join(root, f"{split}2014", fname), canvas)
            if split == "train" and n != len(ids) - 1:  # the last image has no COCO-AB record
                records.append(_coco_ab_record(rng, iid, W, H, objects, n))
        stats[f"coco_{split}"] = len(ids)
        os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
        with open(os.path.join(root, "annotations", f"instances_{split}2014.json"), "w") as f:
            json.dump({"info": {"description": "LUAB synthetic COCO-style data", "version": "1.0"},
                       "licenses": [{"id": 1, "name": "synthetic"}], "images": images, "annotations": anns,
                       "categories": cats}, f)
    with open(os.path.join(root, "coco_ab_v1_0.json"), "w") as f:
        json.dump(records, f)
    stats["coco_ab_records"] = len(records)
    return stats


_COCO_SUPERCATEGORY = {  # the first class of each, in id order
    "person": "person", "bicycle": "vehicle", "traffic light": "outdoor", "bird": "animal",
    "backpack": "accessory", "frisbee": "sports", "bottle": "kitchen", "banana": "food", "chair": "furniture",
    "tv": "electronic", "microwave": "appliance", "book": "indoor",
}


def _supercategory(name):
    sup, cur = {}, None
    for n, cid in sorted(COCO_NAME_TO_ID.items(), key=lambda kv: kv[1]):
        cur = _COCO_SUPERCATEGORY.get(n, cur)
        sup[n] = cur
    return sup[name]


def _coco_ab_record(rng, iid, W, H, objects, n):
    """A COCO-AB record for the objects (name, cx, cy px): mostly single adds, some add-move, add-remove-add,
    add-remove, and a wrong class added then removed. Icon placement has no systematic bias (appendix E.2)."""
    def pt(cx, cy, sd=0.03):
        return {"x": float(np.clip(cx / W + rng.normal(0, sd), 0, 1)),
                "y": float(np.clip(cy / H + rng.normal(0, sd), 0, 1))}

    actions, t, seen = [], int(rng.integers(2000, 20000)), set()
    for name, cx, cy in objects:
        if name in seen or (n > 3 and rng.random() < 0.1):  # one point per class; some classes missed
            continue
        seen.add(name)
        u = rng.random() if n > 3 else [0.95, 0.75, 0.85, 0.5][n]  # every history kind occurs
        t += int(rng.integers(500, 4000))
        first = pt(cx, cy, 0.15) if 0.7 <= u < 0.8 else pt(cx, cy)
        actions.append({"actionType": "add", "iconType": name, "pointTo": first, "timeAt": t})
        if 0.7 <= u < 0.8:  # add then move to the right place
            t += int(rng.integers(300, 3000))
            actions.append({"actionType": "move", "iconType": name, "pointFrom": first, "pointTo": pt(cx, cy),
                            "timeAt": t})
        elif 0.8 <= u < 0.9:  # add, remove, add again
            t += int(rng.integers(300, 3000))
            actions.append({"actionType": "remove", "iconType": name, "pointFrom": first, "timeAt": t})
            t += int(rng.integers(300, 3000))
            actions.append({"actionType": "add", "iconType": name, "pointTo": pt(cx, cy), "timeAt": t})
        elif u >= 0.9:  # added, then removed for good: final-position drops it, final-add keeps it
            t += int(rng.integers(300, 3000))
            actions.append({"actionType": "remove", "iconType": name, "pointFrom": first, "timeAt": t})
    if rng.random() < 0.15 or n == 5:  # a wrong class added then removed
        t += int(rng.integers(300, 3000))
        p = {"x": float(rng.uniform(0, 1)), "y": float(rng.uniform(0, 1))}
        actions.append({"actionType": "add", "iconType": "bicycle", "pointTo": p, "timeAt": t})
        actions.append({"actionType": "remove", "iconType": "bicycle", "pointFrom": p, "timeAt": t + 700})
    idx = sorted(set(int(i) for i in rng.integers(1, 11, int(rng.integers(3, 12)))) | {10})
    names = ["PersonAccessory", "Animal", "Vehicle", "OutdoorObj", "Sports", "Kitchenware", "Food", "Furniture",
             "Appliance", "Electronics", "IndoorObjects"]
    cat_hist = [{"categoryIndex": i, "categoryName": names[i], "timeAt": 1000 * (j + 1),
                 "usingKeyboard": bool(rng.random() < 0.3)} for j, i in enumerate(idx)]
    mouse = [] if rng.random() < 0.3 else [
        {"x": float(rng.uniform(0, 1)), "y": float(rng.uniform(0, 1)), "timeAt": int(1000 + 37 * j)}
        for j in range(int(rng.integers(1, 30)))]
    zero = rng.random() < 0.05 or n == 2  # originalImage* can be 0 in the release
    return {"image_id": iid, "originalImageWidth": 0 if zero else W, "originalImageHeight": 0 if zero else H,
            "imageWidth": 450, "imageHeight": 450, "page_id": int(rng.integers(0, 20)), "hit_id": _hexid(rng, 32),
            "worker_id": _hexid(rng, 10, upper=True), "timeSpent": t + int(rng.integers(1000, 9000)),
            "actionHistories": actions, "categoryHistories": cat_hist, "mouseTracking": mouse}


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.strip().split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--classes", type=int, default=None, help="default 10 (6 with --spurious)")
    ap.add_argument("--train", type=int, default=None, help="train images per class (default 40; 100 with --spurious)")
    ap.add_argument("--val", type=int, default=None, help="val images per class (default 10; 30 with --spurious)")
    ap.add_argument("--spurious", type=float, default=None, metavar="P",
                    help="write the background-shortcut set instead (synth_spurious): train background = label's "
                         "with probability P, test splits mixed_same / mixed_rand")
    ap.add_argument("--coco-train", type=int, default=60)
    ap.add_argument("--coco-val", type=int, default=20)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.spurious is not None:
        given = {k: v for k, v in (("n_classes", args.classes), ("n_train", args.train), ("n_val", args.val))
                 if v is not None}
        stats = synth_spurious(args.out, p=args.spurious, seed=args.seed, **given)
    else:
        stats = synth(args.out, seed=args.seed, n_classes=args.classes or 10, n_train=args.train or 40,
                      n_val=args.val or 10, coco_train=args.coco_train, coco_val=args.coco_val)
    print(f"synth -> {args.out} in {time.perf_counter() - t0:.1f}s: " + json.dumps(stats, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
