"""
Annotation byproducts: readers, point targets through augmentation, and synthetic data in the released formats.

What the paper (LUAB, ICCV'23) adds to a plain classifier is one extra target per image: where the annotator
clicked (ImageNet-AB) or dropped each class icon (COCO-AB). This file turns the released files into that target
and carries it through the training augmentations. Top to bottom:

    parsers        read_imagenet_ab_xml, imagenet_click, load_boxes
    index          build_imagenet_index / load_imagenet_index (1.27 M XML files -> one .npz)
    COCO           read_coco_ab, coco_points, read_coco_instances (+ RLE / polygon masks without pycocotools)
    transforms     TrainTransform, EvalTransform, RandAugment (point-aware)
    datasets       read_image, ImageReader (the bad-image policy), ImageNetAB, CocoAB
    mixing         mix_batch (Mixup / CutMix with point targets)
    synthetic data synth
    analyses       imagenet_stats, coco_stats, heatmap_png, click_grid_png (appendix E)
    CLI            python byproducts.py {synth, index-imagenet, stats, draw} ...

Conventions. A point is normalised (x, y) in [0, 1]^2 of the image it belongs to: origin top-left, x to the
right, y down, continuous coordinates (pixel column k covers [k, k+1) / W), so pixel = (x * W, y * H) and a
horizontal flip is x -> 1 - x. Points are FloatTensor[K, 2] per sample, weights FloatTensor[K] (0 = no
regression loss); K = 1 for ImageNet and K = 80 for COCO (contiguous index = rank of the category id among the
sorted 80 ids). The traps of the released files are in docs/formats.md; comments below name them.

Bad input (corrupt XML/JSON, NaN / non-numeric / out-of-range coordinates, XML without an image, COCO-AB records
for unknown images, unknown icons) is counted and reported in one summary line (a BadInputWarning naming the
files); the affected sample gets weight 0 or is skipped. Images are read by read_image (modes converted or refused
by name) under ImageReader's policy: a broken file is counted, named once, and replaced by the mean pixel (NaN
for evaluation). strict=True (--strict, --strict-data) turns any of it into a BadInput error.
"""

import argparse
import contextlib
import hashlib
import json
import math
import multiprocessing as mp
import os
import random
import re
import sys
import time
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Mapping

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image, ImageDraw, ImageEnhance, ImageOps
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# COCO name -> category id, the 80 used slots of the notebook's 91-slot list (formats.md §3). The 11 unused
# slots (street sign, hat, shoe, ...) never occur, so an icon with such a name counts as unknown.
COCO_NAME_TO_ID = {
    "person": 1, "bicycle": 2, "car": 3, "motorcycle": 4, "airplane": 5, "bus": 6, "train": 7, "truck": 8,
    "boat": 9, "traffic light": 10, "fire hydrant": 11, "stop sign": 13, "parking meter": 14, "bench": 15,
    "bird": 16, "cat": 17, "dog": 18, "horse": 19, "sheep": 20, "cow": 21, "elephant": 22, "bear": 23,
    "zebra": 24, "giraffe": 25, "backpack": 27, "umbrella": 28, "handbag": 31, "tie": 32, "suitcase": 33,
    "frisbee": 34, "skis": 35, "snowboard": 36, "sports ball": 37, "kite": 38, "baseball bat": 39,
    "baseball glove": 40, "skateboard": 41, "surfboard": 42, "tennis racket": 43, "bottle": 44,
    "wine glass": 46, "cup": 47, "fork": 48, "knife": 49, "spoon": 50, "bowl": 51, "banana": 52, "apple": 53,
    "sandwich": 54, "orange": 55, "broccoli": 56, "carrot": 57, "hot dog": 58, "pizza": 59, "donut": 60,
    "cake": 61, "chair": 62, "couch": 63, "potted plant": 64, "bed": 65, "dining table": 67, "toilet": 70,
    "tv": 72, "laptop": 73, "mouse": 74, "remote": 75, "keyboard": 76, "cell phone": 77, "microwave": 78,
    "oven": 79, "toaster": 80, "sink": 81, "refrigerator": 82, "book": 84, "clock": 85, "vase": 86,
    "scissors": 87, "teddy bear": 88, "hair drier": 89, "toothbrush": 90,
}
COCO_CATEGORY_IDS = sorted(COCO_NAME_TO_ID.values())  # contiguous class index = position in this list
_COCO_SUPERCATEGORY = {  # only used to write realistic synthetic instances files
    "person": "person", "bicycle": "vehicle", "traffic light": "outdoor", "bird": "animal",
    "backpack": "accessory", "frisbee": "sports", "bottle": "kitchen", "banana": "food", "chair": "furniture",
    "tv": "electronic", "microwave": "appliance", "book": "indoor",
}


# ----------------------------------------------------------------------------------------------------------------
# bad input bookkeeping

class BadInput(ValueError):
    """A file or record the parser refuses. kind is a short tag (corrupt-xml, bad-coordinate, ...)."""

    def __init__(self, kind, detail=""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail


class BadImage(BadInput):
    """An image file read_image refuses: kind "unreadable-image" (zero bytes, truncated, not an image) or
    "unsupported-mode" (a pixel format with no faithful RGB form). size is the header's (W, H), or None."""

    def __init__(self, kind, detail="", size=None):
        super().__init__(kind, detail)
        self.size = size


class BadInputWarning(UserWarning):
    pass


def error_line(e):
    """One line for a BadInput, also when a DataLoader re-raised it with the worker's traceback in its text."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return re.sub(r"^[\w.]*Bad(Input|Image): ", "", lines[-1]) if lines else type(e).__name__


class Problems:
    """Counts bad input by kind, keeps the first few file names, and reports everything in one line."""

    # documented quirks of the release, harmless repeats, or what a flag accepted: reported, never fatal
    NOTES = {"duplicate-image-id", "duplicate-xml", "empty-class"}

    def __init__(self, what="byproducts"):
        self.what, self.counts, self.examples = what, Counter(), {}

    def add(self, kind, name, detail=""):
        self.counts[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < 3:
            ex.append(f"{name} ({detail})" if detail else str(name))

    def extend(self, triples):
        for kind, name, detail in triples:
            self.add(kind, name, detail)

    def merge(self, other):
        for kind, n in other.counts.items():
            self.counts[kind] += n
            ex = self.examples.setdefault(kind, [])
            ex.extend(other.examples[kind][:3 - len(ex)])

    @property
    def n_bad(self):
        return sum(n for k, n in self.counts.items() if k not in self.NOTES)

    def __len__(self):
        return sum(self.counts.values())

    def summary(self):
        parts = [f"{k} x{n}: {'; '.join(self.examples[k])}{' ...' if n > len(self.examples[k]) else ''}"
                 for k, n in sorted(self.counts.items())]
        return f"{self.what}: {len(self)} problem(s) [" + " | ".join(parts) + "]"

    def finish(self, strict=False, warn=True):
        """Raise (strict and anything bad) or warn once with the summary line; returns the line or None."""
        if not self.counts:
            return None
        line = self.summary()
        if strict and self.n_bad:
            raise BadInput("strict", line)
        if warn:
            warnings.warn(line, BadInputWarning, stacklevel=3)
        return line


def _coord(v):
    """A click coordinate as a float in [0, 1], or None when NaN, non-numeric or outside [0, 1]."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    if not (-1e-6 <= v <= 1 + 1e-6):  # also false for NaN; the 1e-6 slack only absorbs float rounding
        return None
    return min(max(v, 0.0), 1.0)


# ----------------------------------------------------------------------------------------------------------------
# parsers: ImageNet-AB XML and ILSVRC box XML

_ENCODING_DECL = re.compile(rb"""^\s*<\?xml[^>]*encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")


def _xml_root(data):
    """Parse XML bytes, refusing DTDs. Raises BadInput (entity-declaration, corrupt-xml)."""
    # Billion laughs: entities can only be declared inside a DOCTYPE, so refuse any DTD before expat sees it.
    # The byte test is only sound for ASCII-compatible encodings, so UTF-16/32 and exotic declared encodings
    # (where "<!DOCTYPE" would not appear as these bytes) are refused too.
    if data[:2] in (b"\xff\xfe", b"\xfe\xff") or b"\x00" in data[:64]:
        raise BadInput("corrupt-xml", "not UTF-8")
    m = _ENCODING_DECL.match(data)
    if m and m.group(1).lower() not in (b"utf-8", b"utf8", b"us-ascii", b"ascii"):
        raise BadInput("corrupt-xml", f"encoding {m.group(1).decode()} refused")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise BadInput("entity-declaration", "DTD / entity declarations are refused")
    try:
        return ET.fromstring(data)
    except ET.ParseError as e:
        raise BadInput("corrupt-xml", str(e)) from None


def _str(t):
    return (t or "").strip()


def _int(t):
    t = (t or "").strip()
    try:
        return int(t)
    except ValueError:
        try:
            return int(float(t))  # ILSVRC box files hold a few "43.0"-style values
        except (ValueError, OverflowError):
            return None


def _float(t):
    try:
        return float(t)
    except (TypeError, ValueError):
        return t  # non-numeric text stays text, so the bad-coordinate report shows what the file holds


def _bool(t):
    return _str(t) == "True"  # trap: bool("False") is True ([ALD] did that)


# Types of the <metadata> fields (formats.md §1); unknown fields come back as raw strings.
_AB_SCALAR = {"selected": _bool, **{k: _int for k in (
    "estimateTime", "hit_submit_time", "hoveredCount", "imageHeight", "imageWidth", "image_idx",
    "originalImageHeight", "originalImageWidth", "page_idx", "selectedCount")}}
_AB_RECORD = {"time": _int, "x": _float, "y": _float}
_AB_NESTED = {"selectedRecord": _AB_RECORD, "mouseTracking": _AB_RECORD,
              "hoveredRecord": {"action": _str, "time": _int}, "imagePosition": {"x": _int, "y": _int}}
_AB_LIST = ("hoveredRecord", "mouseTracking", "selectedRecord")  # repeated sibling tags; absent = empty list
# all the index needs: the click, and the size of the image it was made on (to catch an index of other images)
_CLICK_FIELDS = frozenset({"selected", "selectedRecord", "originalImageWidth", "originalImageHeight"})


def _metadata_dict(md, fields=None):
    out = {k: [] for k in _AB_LIST if fields is None or k in fields}
    # with fields, let C find the few wanted tags rather than loop in Python over ~100 mouseTracking children
    for el in md if fields is None else (e for f in fields for e in md.iterfind(f)):
        tag = el.tag
        sub = _AB_NESTED.get(tag)
        if sub is not None or len(el):
            sub = sub or {}
            v = {c.tag: sub.get(c.tag, _str)(c.text) for c in el}
        else:
            v = _AB_SCALAR.get(tag, _str)(el.text)
        if tag in _AB_LIST:
            out[tag].append(v)
        else:
            out[tag] = v
    return out


def _voc_dict(root):
    """The VOC / ILSVRC box part of an XML root. Every field is optional (images without boxes lack them)."""
    size = root.find("size")
    wh = None
    if size is not None:
        w, h = _int(size.findtext("width")), _int(size.findtext("height"))
        wh = (w, h) if w and h else None
    names, boxes = [], []
    for obj in root.iter("object"):
        bb = obj.find("bndbox")
        if bb is None:
            continue
        x0, y0, x1, y1 = (_int(bb.findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax"))
        if None in (x0, y0, x1, y1):
            continue
        x0, x1 = min(x0, x1), max(x0, x1)  # some ILSVRC boxes have min > max: reorder, then clamp to <size>
        y0, y1 = min(y0, y1), max(y0, y1)
        if wh:
            x0, x1 = min(max(x0, 0), wh[0]), min(max(x1, 0), wh[0])
            y0, y1 = min(max(y0, 0), wh[1]), min(max(y1, 0), wh[1])
        names.append(_str(obj.findtext("name")))  # a wnid, or e.g. "Scottish_deerhound" in a few dog files
        boxes.append((x0, y0, x1, y1))
    return {"folder": _str(root.findtext("folder")), "filename": _str(root.findtext("filename")),
            "size": wh, "names": names, "boxes": np.array(boxes, np.float32).reshape(-1, 4)}


def read_imagenet_ab_xml(path, with_voc=False, fields=None):
    """Read one ImageNet-AB XML file.

    Returns a list with one dict per <metadata> block (0..n of them), every field typed: bools from
    "True"/"False", ints, floats, and lists of dicts for the repeated tags selectedRecord / mouseTracking /
    hoveredRecord ({"time": epoch ms, "x": float, "y": float} / {"action", "time"}); unknown tags as strings.
    A coordinate that is not a number keeps its text (imagenet_click reports it as a bad-coordinate).
    With with_voc=True returns (entries, voc) where voc = {"folder", "filename", "size": (W, H) | None,
    "names": [N], "boxes": float32[N, 4] x0, y0, x1, y1 pixels of <size>}.
    AppleDouble "._*" files are not XML (macOS junk in the tar): they read as no entries.
    fields restricts the parsed tags (the index only needs "selected" and "selectedRecord").
    """
    if os.path.basename(path).startswith("._"):
        return ([], None) if with_voc else []
    with open(path, "rb") as f:
        root = _xml_root(f.read())
    entries = [_metadata_dict(md, fields) for md in root.iter("metadata")]
    return (entries, _voc_dict(root)) if with_voc else entries


def imagenet_click(entries):
    """The paper's point for one image: the final select click (x, y) in [0, 1]^2, or None.

    Takes the LAST selectedRecord of each entry whose final state is selected (trap: the official notebook's
    find() returns the first click), and averages over entries when several are selected. Raises BadInput
    (bad-coordinate) when a used click is NaN, non-numeric or outside [0, 1]. x, y are fractions of the
    displayed image, which kept its aspect ratio, so pixels are (x * originalImageWidth, y * originalImageHeight);
    never use imageWidth (it equals imageHeight, the nominal display height).
    """
    xs, ys = [], []
    for e in entries:
        if e.get("selected") is True and e.get("selectedRecord"):
            last = e["selectedRecord"][-1]
            x, y = _coord(last.get("x")), _coord(last.get("y"))
            if x is None or y is None:
                raise BadInput("bad-coordinate", f"x={last.get('x')!r} y={last.get('y')!r}")
            xs.append(x)
            ys.append(y)
    if not xs:
        return None
    return sum(xs) / len(xs), sum(ys) / len(ys)


def _xml_key(path):
    """'wnid/stem' from .../<wnid>/<stem>.xml, whatever prefix (train_xml/, imagenet_ab_v1_0/train_xml/)."""
    d, name = os.path.split(path)
    return f"{os.path.basename(d)}/{os.path.splitext(name)[0]}"


def _list_xml(root):
    """All *.xml files under root (sorted), skipping AppleDouble '._*'. Returns (paths, n_appledouble).
    Raises BadInput (missing-path) when root is not a folder: an empty scan would look like "no matches"."""
    if not os.path.isdir(root):
        raise BadInput("missing-path", f"{root} does not exist or is not a folder")
    paths, n_apple = [], 0
    for d, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        for name in sorted(files):
            if not name.lower().endswith(".xml"):
                continue
            if name.startswith("._"):
                n_apple += 1
                continue
            paths.append(os.path.join(d, name))
    return paths, n_apple


def _parallel(fn, chunks, workers, progress=None, total=0, unit="files"):
    """Map fn over chunks with a process pool (workers > 1) or inline; yields results in chunk order (so the
    output does not depend on the number of workers)."""
    bar = _Progress(total, unit) if progress else None
    if workers <= 1 or len(chunks) <= 1:
        results = map(fn, chunks)
        pool = None
    else:
        pool = mp.get_context("fork").Pool(workers)
        results = pool.imap(fn, chunks)
    try:
        for n, res in results:
            if bar:
                bar.update(n)
            yield res
    finally:
        if pool:
            pool.terminate()
        if bar:
            bar.close()


class _Progress:
    """A one-line progress display on stderr: done/total, files/s, ETA."""

    def __init__(self, total, unit):
        self.total, self.unit, self.done, self.t0, self.last = total, unit, 0, time.perf_counter(), 0.0
        self.tty = sys.stderr.isatty()

    def update(self, n):
        self.done += n
        now = time.perf_counter()
        if now - self.last >= (0.25 if self.tty else 5.0) or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            msg = f"{self.done:,}/{self.total:,} {self.unit}  {rate:,.0f} {self.unit}/s  ETA {eta:.0f}s"
            print(("\r" + msg) if self.tty else msg, end="" if self.tty else "\n", file=sys.stderr, flush=True)

    def close(self):
        if self.tty:
            print(file=sys.stderr)


def _boxes_chunk(paths):
    out, problems = {}, []
    for p in paths:
        try:
            with open(p, "rb") as f:
                out[p] = _voc_dict(_xml_root(f.read()))
        except BadInput as e:
            problems.append((e.kind, p, e.detail))
        except OSError as e:
            problems.append(("unreadable-file", p, str(e)))
    return len(paths), (out, problems)


def load_boxes(root, workers=None, strict=False, progress=False):
    """ILSVRC box XML (VOC) under root -> {key: {"size": (W, H), "boxes": float32[N, 4]}}.

    key is "wnid/stem" for <root>/<wnid>/<stem>.xml (train) and "stem" for flat <root>/<stem>.xml (val).
    Boxes are x0, y0, x1, y1 in pixels of <size> (which may differ from the JPEG: normalise by <size>),
    reordered when min > max and clamped to [0, W] x [0, H]; indexing (0- or 1-based) is undocumented, so
    allow +-1 px when testing a click against them. Files without <size> get size None.
    """
    paths, _ = _list_xml(root)
    workers = _default_workers(len(paths)) if workers is None else workers
    chunks = [paths[i:i + 512] for i in range(0, len(paths), 512)]
    problems, out = Problems(f"load_boxes({root})"), {}
    root_abs = os.path.abspath(root)
    for boxes, probs in _parallel(_boxes_chunk, chunks, workers, progress, len(paths)):
        problems.extend(probs)
        for p, v in boxes.items():
            flat = os.path.abspath(os.path.dirname(p)) == root_abs
            key = os.path.splitext(os.path.basename(p))[0] if flat else _xml_key(p)
            out[key] = {"size": v["size"], "boxes": v["boxes"], "names": v["names"]}
    problems.finish(strict)
    return out


def _default_workers(n_files):
    n_cpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(n_cpu, n_files // 2000))  # a pool costs ~0.1 s to start: not worth it for a few files


# ----------------------------------------------------------------------------------------------------------------
# index: one compact .npz instead of 1.27 M XML files

NO_CLICK, CLICK, BAD = 0, 1, 2  # index status codes
INDEX_FORMAT = "luab-imagenet-ab-index-v2"  # v2 added sizes; a v1 file loads with a warning (no size check)
_FAILED = object()


def _original_size(entries):
    """(W, H) of the image the annotator saw (originalImageWidth/Height of the first entry that has both), or
    (0, 0) when unknown."""
    for e in entries:
        w, h = e.get("originalImageWidth"), e.get("originalImageHeight")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
            return w, h
    return 0, 0


def _index_chunk(paths):
    keys, pts, status, n_sel, n_ent, sizes, problems = [], [], [], [], [], [], []
    for p in paths:
        keys.append(_xml_key(p))
        try:
            with open(p, "rb") as f:
                root = _xml_root(f.read())
            entries = [_metadata_dict(md, _CLICK_FIELDS) for md in root.iter("metadata")]
            click = imagenet_click(entries)
        except BadInput as e:
            problems.append((e.kind, p, e.detail))
            click, entries = _FAILED, []
        except OSError as e:
            problems.append(("unreadable-file", p, str(e)))
            click, entries = _FAILED, []
        n_ent.append(min(len(entries), 255))
        sizes.append(_original_size(entries))
        n_sel.append(min(sum(1 for e in entries if e.get("selected") is True and e.get("selectedRecord")), 255))
        if click is _FAILED:
            status.append(BAD)
            pts.append((0.0, 0.0))
        elif click is None:
            status.append(NO_CLICK)
            pts.append((0.0, 0.0))
        else:
            status.append(CLICK)
            pts.append(click)
    return len(paths), (keys, pts, status, n_sel, n_ent, sizes, problems)


class ClickIndex(Mapping):
    """The final ImageNet-AB click per image, backed by sorted numpy arrays.

    A read-only Mapping "wnid/stem" -> (x, y) over the images WITH a click (so `key in index`, index.get(key)
    work like the dict of the interface), plus vectorised lookup(keys) for datasets. Arrays (N = images with
    an XML file, sorted by key): keys bytes[N], points float32[N, 2] (0 where there is no click), status
    uint8[N] (NO_CLICK = unselected / no select click, CLICK, BAD = unreadable or bad XML), n_selected and
    n_entries uint8[N] (entries averaged / metadata blocks), sizes int32[N, 2]: (W, H) of the image the click
    was made on (originalImageWidth/Height; 0 = unknown), which the dataset compares with the image it opens,
    so an index of other images with the same file names cannot pass silently. has_sizes is False for an
    index written before sizes were recorded (format v1). Numpy arrays are shared copy-on-write by DataLoader
    workers, unlike a dict of 1.27 M tuples.
    """

    def __init__(self, keys, points, status, n_selected=None, n_entries=None, sizes=None):
        keys = np.asarray(keys) if len(keys) else np.zeros(0, "S1")
        if keys.dtype.kind == "U":
            keys = np.char.encode(keys, "utf-8")
        order = np.argsort(keys, kind="stable")
        first = np.ones(len(order), bool)
        first[1:] = keys[order][1:] != keys[order][:-1]
        order = order[first]  # a wnid/stem seen twice (e.g. two extracted copies): the first path wins
        self.keys = keys[order]
        self.points = np.asarray(points, np.float32).reshape(-1, 2)[order]
        self.status = np.asarray(status, np.uint8)[order]
        n = len(self.keys)
        self.n_selected = (np.zeros(n, np.uint8) if n_selected is None else np.asarray(n_selected, np.uint8)[order])
        self.n_entries = (np.zeros(n, np.uint8) if n_entries is None else np.asarray(n_entries, np.uint8)[order])
        self.has_sizes = sizes is not None
        self.sizes = np.zeros((n, 2), np.int32) if sizes is None else np.asarray(sizes, np.int32).reshape(-1, 2)[order]
        self._n_click = int((self.status == CLICK).sum())

    def _find(self, key):
        k = key.encode() if isinstance(key, str) else key
        i = int(np.searchsorted(self.keys, k))
        return i if i < len(self.keys) and self.keys[i] == k else -1

    def __getitem__(self, key):
        i = self._find(key)
        if i < 0 or self.status[i] != CLICK:
            raise KeyError(key)
        x, y = self.points[i]
        return float(x), float(y)

    def __iter__(self):
        for k in self.keys[self.status == CLICK]:
            yield k.decode()

    def __len__(self):
        return self._n_click

    def lookup(self, keys, with_sizes=False):
        """keys: list of "wnid/stem" -> (points float32[n, 2], status int8[n] with -1 = no XML file)
        [, sizes int32[n, 2] (W, H), 0 = unknown]."""
        q = np.array([k.encode() for k in keys]) if len(keys) else np.zeros(0, "S1")
        pts, st = np.zeros((len(q), 2), np.float32), np.full(len(q), -1, np.int8)
        sizes = np.zeros((len(q), 2), np.int32)
        if len(self.keys) and len(q):
            i = np.minimum(np.searchsorted(self.keys, q), len(self.keys) - 1)
            # equality on the untruncated query: a key longer than the index's dtype can never match by prefix
            hit = self.keys[i] == q
            pts[hit], st[hit], sizes[hit] = self.points[i[hit]], self.status[i[hit]], self.sizes[i[hit]]
        return (pts, st, sizes) if with_sizes else (pts, st)

    def save(self, path):
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "wb") as f:  # a file object: np.savez(str) would append ".npz" to the name
            np.savez(f, format=np.array(INDEX_FORMAT), keys=self.keys, points=self.points, status=self.status,
                     n_selected=self.n_selected, n_entries=self.n_entries, sizes=self.sizes)
        os.replace(tmp, path)

    @classmethod
    def from_xml(cls, xml_root, workers=None, progress=False):
        """Scan an ImageNet-AB XML tree. Returns (index, problems as (kind, file, detail) list, n_appledouble)."""
        paths, n_apple = _list_xml(xml_root)
        workers = _default_workers(len(paths)) if workers is None else workers
        chunk = max(64, min(1024, len(paths) // (workers * 8) + 1))
        chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
        cols, problems = ([], [], [], [], [], []), []
        for res in _parallel(_index_chunk, chunks, workers, progress, len(paths)):
            for col, part in zip(cols, res[:6]):
                col.extend(part)
            problems.extend(res[6])
        keys, pts, status, n_sel, n_ent, sizes = cols
        index = cls(keys, np.array(pts, np.float32).reshape(-1, 2), status, n_sel, n_ent, sizes)
        if len(index.keys) < len(keys):
            seen = set()
            for p, k in zip(paths, keys):
                if k in seen:
                    problems.append(("duplicate-xml", p, f"{k} already read from another file; ignored"))
                seen.add(k)
        return index, problems, n_apple


def build_imagenet_index(xml_root, out_path, workers=None, strict=False, progress=True):
    """Convert an ImageNet-AB XML tree into one .npz index (see ClickIndex); returns a stats dict.

    xml_root may be train_xml/, its parent, or an imagenet_ab_v1_0/ prefix above it: every *.xml below is
    keyed by "<parent dir>/<stem>". Bad files are counted, named in one summary line and stored with status
    BAD (weight 0); strict=True raises BadInput after the scan instead of writing the index.
    """
    t0 = time.perf_counter()
    index, probs, n_apple = ClickIndex.from_xml(xml_root, workers=workers, progress=progress)
    seconds = time.perf_counter() - t0
    problems = Problems(f"index-imagenet({xml_root})")
    problems.extend(probs)
    line = problems.finish(strict, warn=False)
    index.save(out_path)
    n = len(index.keys)
    stats = {"files": n, "with_click": int((index.status == CLICK).sum()),
             "no_click": int((index.status == NO_CLICK).sum()), "bad": int((index.status == BAD).sum()),
             "appledouble_skipped": n_apple, "seconds": seconds, "files_per_s": n / max(seconds, 1e-9),
             "workers": _default_workers(n) if workers is None else workers, "problems": line}
    return stats


def _looks_like(path):
    """What a file that is not a click index seems to be, from its first bytes (for the error message)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64).lstrip()
    except OSError as e:
        return f"unreadable ({e.strerror})"
    if head[:1] in (b"[", b"{"):
        return "a JSON file (a COCO-AB file? that one goes to train_coco.py --coco-ab)"
    if head[:1] == b"<":
        return "an XML file (pass the train_xml/ folder, or an index built from it)"
    return "empty" if not head else "not an ImageNet-AB click index"


def load_imagenet_index(path):
    """Load an index written by build_imagenet_index -> ClickIndex (a Mapping "wnid/stem" -> (x, y)).

    Anything else (a COCO-AB JSON, an XML file, a truncated .npz) raises BadInput (not-an-index) saying what the
    file seems to be. An index written before image sizes were recorded (v1) loads with one warning: it still
    works, but the dataset cannot check that it belongs to the images (rebuild it to get the check)."""
    hint = f"expected the .npz that `byproducts.py index-imagenet --xml-root train_xml/ --out {path}` writes"
    try:
        z = np.load(path, allow_pickle=False)  # never unpickle: an index holds plain arrays only
    except Exception:  # ValueError (pickled or unknown data), OSError, EOFError, BadZipFile ...
        raise BadInput("not-an-index", f"{path} is {_looks_like(path)}; {hint}") from None
    if not isinstance(z, np.lib.npyio.NpzFile) or not {"keys", "points", "status"} <= set(z.files):
        raise BadInput("not-an-index", f"{path} is a numpy file without the index arrays; {hint}")
    with z:
        fmt = str(z["format"]) if "format" in z.files else "?"
        if "sizes" not in z.files:
            warnings.warn(f"{path} is an old click index ({fmt}) without image sizes: the clicks are used, but "
                          "nothing checks that the index belongs to these images; rebuild it with "
                          "`byproducts.py index-imagenet` to get that check", BadInputWarning, stacklevel=2)
        return ClickIndex(z["keys"], z["points"], z["status"], z.get("n_selected"), z.get("n_entries"),
                          z.get("sizes"))


# ----------------------------------------------------------------------------------------------------------------
# COCO: COCO-AB records, instances, masks

def read_coco_ab(path, problems=None, strict=False):
    """coco_ab_v1_0.json (a JSON list of per-image dicts) -> {image_id: record}.

    Records are kept raw (every field; see formats.md §2). Duplicate image ids: the last record wins, as in the
    official notebook, and the duplicates are reported as a note. A corrupt or truncated file yields {} and a
    reported problem (strict: BadInput). Pass a Problems to collect into it instead of reporting here.
    """
    own = problems is None
    problems = Problems(f"read_coco_ab({path})") if own else problems
    out = {}
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        problems.add("corrupt-json", path, str(e))
        data = []
    if not isinstance(data, list):
        problems.add("corrupt-json", path, f"expected a list of records, got {type(data).__name__}")
        data = []
    for n, r in enumerate(data):
        iid = r.get("image_id") if isinstance(r, dict) else None
        if isinstance(iid, bool) or not isinstance(iid, int):
            problems.add("malformed-record", f"{os.path.basename(path)}[{n}]", f"image_id={iid!r}")
            continue
        if iid in out:
            problems.add("duplicate-image-id", f"{os.path.basename(path)}[{n}]", f"image_id={iid}")
        out[iid] = r
    if own:
        problems.finish(strict)
    return out


def coco_points(record, mode="final-add", problems=None):
    """One COCO-AB record -> {category_id: (x, y)}, normalised to the image (x = pointTo.x, y = pointTo.y).

    mode "final-add" (the paper's choice): the last `add` of each class, ignoring later moves and removals.
    mode "final-position": replay add / move / remove; where each icon finally rests, removed classes gone.
    Trap: the official notebook stores (y, x) in pixels; we keep (x, y) normalised, so pixel conversion uses
    the instances' width/height and never originalImageWidth (can be 0) or imageWidth (wrong). pointFrom /
    pointTo may be absent (add has no pointFrom, remove no pointTo). Unknown icon names and actions whose
    point is missing, NaN or outside [0, 1] are skipped and, if problems is given, counted.
    """
    if mode not in ("final-add", "final-position"):
        raise ValueError(f"mode must be 'final-add' or 'final-position', not {mode!r}")
    name = f"image_id={record.get('image_id')}"
    state = {}
    for a in record.get("actionHistories") or []:
        if not isinstance(a, dict):
            continue
        kind, icon = a.get("actionType"), a.get("iconType")
        cid = COCO_NAME_TO_ID.get(icon)
        if cid is None:
            if problems is not None:
                problems.add("unknown-icon", name, repr(icon))
            continue
        if kind == "remove":
            if mode == "final-position":
                state.pop(cid, None)
            continue
        if kind not in ("add", "move"):
            if problems is not None:
                problems.add("malformed-action", name, f"actionType={kind!r}")
            continue
        if kind == "move" and mode == "final-add":
            continue  # the paper's rule ignores moves (a documented staleness of final-add)
        p = a.get("pointTo")
        x, y = (_coord(p.get("x")), _coord(p.get("y"))) if isinstance(p, dict) else (None, None)
        if x is None or y is None:
            if problems is not None:
                problems.add("bad-coordinate", name, f"{kind} {icon}: pointTo={p!r}")
            continue
        state[cid] = (x, y)
    return state


def rle_from_string(s):
    """Compressed COCO RLE string -> list of counts (port of cocoapi rleFrString)."""
    if isinstance(s, bytes):
        s = s.decode("ascii")
    counts, p = [], 0
    while p < len(s):
        x = k = 0
        more = 1
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)  # sign extension
        if len(counts) > 2:
            x += counts[-2]  # counts after the third are stored as differences
        counts.append(x)
    return counts


def rle_to_string(counts):
    """List of counts -> compressed COCO RLE string (port of cocoapi rleToString)."""
    out = []
    for i, x in enumerate(counts):
        x = int(x) - (int(counts[i - 2]) if i > 2 else 0)
        more = 1
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_decode(rle):
    """{"size": [h, w], "counts": list | compressed str} -> uint8[h, w] mask.

    Counts alternate zeros and ones, starting with zeros, over the pixels in COLUMN-major order.
    """
    h, w = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_from_string(counts)
    counts = np.asarray(counts, np.int64)
    if (counts < 0).any() or counts.sum() != h * w:
        raise BadInput("bad-rle", f"counts sum {counts.sum()} != h*w {h * w}")
    flat = np.repeat((np.arange(len(counts)) % 2).astype(np.uint8), counts)
    return flat.reshape(w, h).T.copy()


def rle_encode(mask):
    """uint8/bool[h, w] mask -> uncompressed RLE {"size": [h, w], "counts": list} (column-major, zeros first)."""
    h, w = mask.shape
    flat = np.asarray(mask, bool).T.ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(h), int(w)], "counts": [int(c) for c in counts]}


def polygon_to_rle(xy, h, w):
    """One COCO polygon [x1, y1, x2, y2, ...] (pixels) -> RLE counts, a port of cocoapi rleFrPoly.

    cocoapi upsamples by 5 and walks the boundary, so a box polygon (0,0)-(3,2) covers exactly 3 x 2 pixels;
    PIL's ImageDraw.polygon would include the outline and differ by ~1 px, which is why we port it.
    """
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    scale = 5.0
    x = np.trunc(scale * xy[:, 0] + 0.5).astype(np.int64)  # C's (int) cast truncates toward zero
    y = np.trunc(scale * xy[:, 1] + 0.5).astype(np.int64)
    x, y = np.append(x, x[:1]), np.append(y, y[:1])
    us, vs = [], []
    for j in range(len(xy)):
        xs, xe, ys, ye = int(x[j]), int(x[j + 1]), int(y[j]), int(y[j + 1])
        dx, dy = abs(xe - xs), abs(ys - ye)
        flip = (dx >= dy and xs > xe) or (dx < dy and ys > ye)
        if flip:
            xs, xe, ys, ye = xe, xs, ye, ys
        if dx >= dy:
            d = np.arange(dx + 1)
            t = dx - d if flip else d
            s = (ye - ys) / dx if dx else 0.0
            us.append(t + xs)
            vs.append(np.trunc(ys + s * t + 0.5).astype(np.int64))
        else:
            d = np.arange(dy + 1)
            t = dy - d if flip else d
            s = (xe - xs) / dy
            vs.append(t + ys)
            us.append(np.trunc(xs + s * t + 0.5).astype(np.int64))
    u, v = np.concatenate(us), np.concatenate(vs)
    j = np.flatnonzero(u[1:] != u[:-1]) + 1  # points where the boundary crosses a column
    xd = np.where(u[j] < u[j - 1], u[j], u[j] - 1).astype(np.float64)
    xd = (xd + 0.5) / scale - 0.5
    keep = (np.floor(xd) == xd) & (xd >= 0) & (xd <= w - 1)
    yd = np.where(v[j] < v[j - 1], v[j], v[j - 1]).astype(np.float64)
    yd = np.ceil(np.clip((yd + 0.5) / scale - 0.5, 0, h))
    a = np.sort(np.append(xd[keep].astype(np.int64) * h + yd[keep].astype(np.int64), h * w))
    a = np.diff(np.concatenate([[0], a])).tolist()
    b, j = [a[0]], 1
    while j < len(a):  # merge zero-length runs exactly as rleFrPoly does
        if a[j] > 0:
            b.append(a[j])
            j += 1
        else:
            j += 1
            if j < len(a):
                b[-1] += a[j]
                j += 1
    return b


def annotation_mask(segmentation, h, w):
    """COCO segmentation (list of polygons, uncompressed RLE dict, or compressed RLE dict) -> bool[h, w]."""
    if isinstance(segmentation, dict):
        return rle_decode(segmentation).astype(bool)
    m = np.zeros((h, w), bool)
    for poly in segmentation:  # several polygons: their union (pycocotools merges the RLEs)
        if len(poly) >= 6:
            m |= rle_decode({"size": [h, w], "counts": polygon_to_rle(poly, h, w)}).astype(bool)
    return m


class CocoInstances:
    """A COCO instances file without pycocotools.

    images: {image_id: {"id", "width", "height", "file_name"}}, image_ids sorted, categories sorted by id,
    cat_ids (sorted, usually the 80), cat_index {category_id: contiguous index}, anns {image_id: [annotation]}.
    """

    def __init__(self, data, name="instances"):
        self.images = {im["id"]: im for im in data.get("images", [])}
        self.image_ids = sorted(self.images)
        self.categories = sorted(data.get("categories", []), key=lambda c: c["id"])
        self.cat_ids = [c["id"] for c in self.categories]
        self.cat_index = {c: k for k, c in enumerate(self.cat_ids)}
        self.num_classes = len(self.cat_ids)
        self.anns = {i: [] for i in self.image_ids}
        self.problems = Problems(name)
        for a in data.get("annotations", []):
            if a.get("image_id") in self.anns and a.get("category_id") in self.cat_index:
                self.anns[a["image_id"]].append(a)
            else:
                self.problems.add("bad-annotation", name, f"id={a.get('id')}")

    def target(self, image_id):
        """float32[C] multi-hot over ALL annotations, crowd included (as the notebook's getAnnIds)."""
        t = np.zeros(self.num_classes, np.float32)
        for a in self.anns[image_id]:
            t[self.cat_index[a["category_id"]]] = 1.0
        return t

    def boxes(self, image_id):
        """(float32[N, 4] x0, y0, x1, y1 pixels, int64[N] contiguous class) from bbox [x, y, w, h]."""
        anns = self.anns[image_id]
        b = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        return b, np.array([self.cat_index[a["category_id"]] for a in anns], np.int64)

    def ann_mask(self, ann):
        im = self.images[ann["image_id"]]
        return annotation_mask(ann["segmentation"], im["height"], im["width"])

    def class_mask(self, image_id, category_id):
        """bool[H, W]: the union of the masks of one class in one image."""
        im = self.images[image_id]
        m = np.zeros((im["height"], im["width"]), bool)
        for a in self.anns[image_id]:
            if a["category_id"] == category_id:
                m |= self.ann_mask(a)
        return m


def read_coco_instances(path):
    """instances_*.json -> CocoInstances. A corrupt file raises BadInput (there is nothing to train on)."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput("corrupt-json", f"{path}: {e}") from None
    return CocoInstances(data, name=f"read_coco_instances({path})")


# ----------------------------------------------------------------------------------------------------------------
# point-aware transforms

_INTERP = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
           "nearest": T.InterpolationMode.NEAREST}
_PIL_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def _crop_points(points, weights, W, H, top, left, h, w, flip):
    """Map normalised points of a W x H image into the crop (top, left, h, w) [then flipped]; a point outside
    the crop keeps its (out-of-range) coordinates and gets weight 0. Never clamp it onto the border: the
    object is not in the crop, and a border point would teach the head a wrong location."""
    if points.shape[0] == 1:  # ImageNet: plain floats cost ~5 us where tensor ops on one point cost ~30 us
        (x, y), = points.tolist()
        x, y = (x * W - left) / w, (y * H - top) / h
        if flip:
            x = 1.0 - x
        wt = weights.item() if (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0) else 0.0
        # from_numpy(np.array) builds a tiny tensor ~2.5x faster than torch.tensor(list)
        return torch.from_numpy(np.array([[x, y]], np.float32)), torch.from_numpy(np.array([wt], np.float32))
    # COCO's 80 points: one numpy multiply-add (the flip folded in), ~2x cheaper than the same in torch ops
    sx, ox = (-W / w, 1.0 + left / w) if flip else (W / w, -left / w)
    p = points.numpy().astype(np.float64) * (sx, H / h) + (ox, -top / h)
    inside = ((p >= 0) & (p <= 1)).all(1)
    return torch.from_numpy(p.astype(np.float32)), torch.from_numpy(weights.numpy() * inside)


class RandAugment:
    """timm-style RandAugment ("rand-m9-mstd0.5[-inc1][-n2][-mmax10]") on PIL images that moves the points.

    Same 15 ops, magnitudes, per-op probability 0.5 and fill (the mean colour) as timm's rand_augment_transform,
    written here because v2.RandAugment refuses tv_tensors.KeyPoints (and timm is not a dependency). Choice for
    LUAB: the geometric ops (Rotate, ShearX/Y, TranslateX/YRel) are kept and move the point with the very affine
    matrix PIL applies to the image, so the augmentation is identical with and without the point loss (a
    photometric-only RandAugment would make the LUAB run see weaker augmentation than its baseline). A point
    pushed off the canvas leaves with its out-of-range coordinates; the caller sets its weight to 0.
    Randomness: Python's `random` (seeded per DataLoader worker by torch), as timm.
    """

    _OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
    _INCREASING = {"Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"}

    def __init__(self, config="rand-m9-mstd0.5", fill=(124, 116, 104), interpolation="bicubic",
                 translate_pct=0.45, prob=0.5):
        parts = config.split("-")
        if parts[0] != "rand":
            raise ValueError(f"RandAugment config must start with 'rand', got {config!r}")
        self.magnitude, self.std, self.max, self.num_layers, inc = 10.0, 0.0, 10.0, 2, False
        for p in parts[1:]:
            key, val = re.match(r"([a-z]+)(.*)", p).groups()
            if key == "m":
                self.magnitude = float(val)
            elif key == "mstd":
                self.std = float(val) if float(val) <= 100 else float("inf")  # timm: > 100 means uniform
            elif key == "mmax":
                self.max = float(val)
            elif key == "n":
                self.num_layers = int(val)
            elif key == "inc":
                inc = bool(int(val))
            else:
                raise ValueError(f"unsupported RandAugment option {p!r} in {config!r}")
        self.ops = [o + ("Increasing" if inc and o in self._INCREASING else "") for o in self._OPS]
        self.fill, self.resample, self.translate_pct, self.prob = tuple(fill), _PIL_INTERP[interpolation], \
            translate_pct, prob

    def __call__(self, img, points=None):
        """img: PIL; points: FloatTensor[K, 2] normalised or None -> (img, points)."""
        for op in random.choices(self.ops, k=self.num_layers):
            if random.random() > self.prob:
                continue
            m = self.magnitude
            if self.std == float("inf"):
                m = random.uniform(0, m)
            elif self.std > 0:
                m = random.gauss(m, self.std)
            img, points = self._apply(op, img, points, max(0.0, min(m, self.max)) / 10.0)
        return img, points

    @staticmethod
    def _sign(v):
        return -v if random.random() > 0.5 else v

    def _affine(self, img, points, data):
        """Apply PIL's AFFINE (data maps output pixel -> input pixel) to the image and the inverse to points."""
        img = img.transform(img.size, Image.AFFINE, data, resample=self.resample, fillcolor=self.fill)
        if points is not None:
            W, H = img.size
            a, b, c, d, e, f = data
            inv = torch.linalg.inv(torch.tensor([[a, b], [d, e]], dtype=torch.float64))
            px = points.to(torch.float64) * torch.tensor([W, H], dtype=torch.float64)
            px = (px - torch.tensor([c, f], dtype=torch.float64)) @ inv.T
            points = (px / torch.tensor([W, H], dtype=torch.float64)).float()
        return img, points

    def _apply(self, op, img, points, level):
        if op == "AutoContrast":
            return ImageOps.autocontrast(img), points
        if op == "Equalize":
            return ImageOps.equalize(img), points
        if op == "Invert":
            return ImageOps.invert(img), points
        if op.startswith("Posterize"):
            bits = int(level * 4)
            bits = 4 - bits if op.endswith("Increasing") else bits
            if bits >= 8:
                return img, points
            # 0 bits (Posterize below level 2.5, PosterizeIncreasing at the clipped maximum): the black image that
            # Pillow's posterize gave when DeiT was trained; Pillow >= 13 raises for bits < 1 instead
            return (Image.new(img.mode, img.size) if bits <= 0 else ImageOps.posterize(img, bits)), points
        if op.startswith("Solarize") and op != "SolarizeAdd":
            thresh = int(level * 256)
            return ImageOps.solarize(img, 256 - thresh if op.endswith("Increasing") else thresh), points
        if op == "SolarizeAdd":
            add = int(level * 110)
            lut = [min(255, i + add) if i < 128 else i for i in range(256)]
            return img.point(lut * len(img.getbands())), points
        for name, enh in (("Color", ImageEnhance.Color), ("Contrast", ImageEnhance.Contrast),
                          ("Brightness", ImageEnhance.Brightness), ("Sharpness", ImageEnhance.Sharpness)):
            if op.startswith(name):
                factor = max(0.1, 1.0 + self._sign(level * 0.9)) if op.endswith("Increasing") else level * 1.8 + 0.1
                return enh(img).enhance(factor), points
        W, H = img.size
        if op == "Rotate":  # the matrix PIL's Image.rotate builds: counter-clockwise about (W/2, H/2)
            ang = -math.radians(self._sign(level * 30.0))
            a, b, d, e = round(math.cos(ang), 15), round(math.sin(ang), 15), round(-math.sin(ang), 15), \
                round(math.cos(ang), 15)
            cx, cy = W / 2.0, H / 2.0
            return self._affine(img, points, (a, b, a * -cx + b * -cy + cx, d, e, d * -cx + e * -cy + cy))
        if op == "ShearX":
            return self._affine(img, points, (1, self._sign(level * 0.3), 0, 0, 1, 0))
        if op == "ShearY":
            return self._affine(img, points, (1, 0, 0, self._sign(level * 0.3), 1, 0))
        if op == "TranslateXRel":
            return self._affine(img, points, (1, 0, self._sign(level * self.translate_pct) * W, 0, 1, 0))
        if op == "TranslateYRel":
            return self._affine(img, points, (1, 0, 0, 0, 1, self._sign(level * self.translate_pct) * H))
        raise ValueError(op)


class TrainTransform:
    """RandomResizedCrop + horizontal flip [+ RandAugment | colour jitter] + ToTensor + Normalize [+ erasing].

    t(img: PIL) -> FloatTensor[3, S, S] normalised, or
    t(img, points: FloatTensor[K, 2], weights: FloatTensor[K]) -> (image, points [K, 2] in the output image's
    normalised frame, weights [K]); a point outside the crop (or pushed off by RandAugment) gets weight 0 and
    keeps its out-of-range coordinates (never clamped). Colour ops, Normalize and RandomErasing leave points
    unchanged. The crop and flip are drawn exactly as torchvision's RandomResizedCrop / RandomHorizontalFlip
    do (same torch RNG calls, same functional ops), so the image equals the plain torchvision pipeline's.
    Point maths for RRC + flip is written out (4 float ops) rather than routed through v2 KeyPoints: v2 costs
    tens of us per item, does not say which points left the crop, and flips keypoints as x -> W - 1 - x
    (pixel-index convention), 1 px off our continuous x -> 1 - x.
    As timm: colour jitter (brightness = contrast = saturation = color_jitter) is only used without RandAugment;
    re_prob is per-pixel-noise RandomErasing (timm's "pixel" mode).
    """

    def __init__(self, size=224, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=0.5, interpolation="bilinear",
                 randaugment=None, color_jitter=0.0, re_prob=0.0, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.scale, self.ratio, self.hflip = [size, size], tuple(scale), tuple(ratio), hflip
        self.interpolation, self.mean, self.std = _INTERP[interpolation], list(mean), list(std)
        self.randaugment = RandAugment(randaugment, fill=tuple(round(255 * m) for m in mean),
                                       interpolation=interpolation) if randaugment else None
        self.jitter = T.ColorJitter(color_jitter, color_jitter, color_jitter) \
            if color_jitter and not randaugment else None
        self.erase = T.RandomErasing(p=re_prob, value="random") if re_prob > 0 else None

    def __call__(self, img, points=None, weights=None):
        W, H = img.size
        top, left, h, w = T.RandomResizedCrop.get_params(img, self.scale, self.ratio)
        img = F.resized_crop(img, top, left, h, w, self.size, self.interpolation, antialias=True)
        flip = bool(torch.rand(1) < self.hflip)  # the same draw as RandomHorizontalFlip
        if flip:
            img = F.hflip(img)
        if points is not None:
            points, weights = _crop_points(points, weights, W, H, top, left, h, w, flip)
        if self.randaugment is not None:
            img, moved = self.randaugment(img, points)
            if points is not None and moved is not points:
                points = moved
                weights = weights * ((points >= 0) & (points <= 1)).all(1)
        elif self.jitter is not None:
            img = self.jitter(img)
        x = F.normalize(F.to_tensor(img), self.mean, self.std, inplace=True)
        if self.erase is not None:
            x = self.erase(x)
        return x if points is None else (x, points, weights)


class EvalTransform:
    """Resize (shorter side = resize) + CenterCrop(size) + ToTensor + Normalize; points mapped the same way.

    t(img) -> FloatTensor[3, S, S]; t(img, points [K, 2], weights [K]) -> (image, points, weights) with points
    in the crop's normalised frame and weight 0 for points the centre crop cut away. Resizing keeps the whole
    extent, so a normalised point is unchanged by it; only the crop offset matters.
    """

    def __init__(self, size=224, resize=256, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if resize < size:
            raise ValueError("EvalTransform needs resize >= size (CenterCrop would pad)")
        self.size, self.resize, self.interpolation = size, resize, _INTERP[interpolation]
        self.mean, self.std = list(mean), list(std)

    def __call__(self, img, points=None, weights=None):
        img = F.resize(img, self.resize, self.interpolation, antialias=True)
        W, H = img.size
        top, left = int(round((H - self.size) / 2.0)), int(round((W - self.size) / 2.0))  # as F.center_crop
        img = F.crop(img, top, left, self.size, self.size)
        x = F.normalize(F.to_tensor(img), self.mean, self.std, inplace=True)
        if points is None:
            return x
        points, weights = _crop_points(points, weights, W, H, top, left, self.size, self.size, False)
        return x, points, weights


# ----------------------------------------------------------------------------------------------------------------
# datasets

MEAN_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104): 0 after Normalize
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(img):
    """A decoded PIL image -> RGB without losing what it shows; raises BadImage (unsupported-mode) otherwise.

    16-bit gray (I;16*, and I, the 32-bit mode 16-bit PNG / TIFF files open as): scaled to 8 bits (v / 257,
    rounded), where PIL's convert("RGB") clips every value above 255 to white. Alpha (RGBA, LA, PA, P with a
    transparent colour): composited over the mean pixel, not dropped (PIL would show whatever colour hides
    under transparent pixels). CMYK, palette, 1-bit, L, YCbCr: PIL's conversion. F (float) and values of I
    outside 0..65535 have no agreed 8-bit form: refused by name.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT:
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise BadImage("unsupported-mode", f"mode {mode} with values {a.min()}..{a.max()} (not 16-bit)")
        return Image.fromarray(((a + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if "A" in mode or "a" in mode or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, MEAN_RGB + (255,)), rgba).convert("RGB")
    if mode == "F":
        raise BadImage("unsupported-mode", "mode F (32-bit float pixels)")
    try:
        return img.convert("RGB")
    except ValueError as e:  # e.g. LAB / HSV without a colour-management conversion
        raise BadImage("unsupported-mode", f"mode {mode}: {e}") from None


def read_image(path):
    """The one image reader of every dataset (training, validation, evaluate.py, COCO): path -> PIL RGB image.

    Decodes the whole file (a truncated JPEG fails here, not later in a transform) and converts its mode with
    _to_rgb. Raises BadImage: unreadable-image (missing, zero bytes, truncated, not an image; .size holds the
    header's (W, H) when the header was readable) or unsupported-mode. Datasets apply the policy through
    ImageReader.
    """
    size = None
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            size = img.size
            img.load()
    except Exception as e:  # OSError (truncated, unidentified), SyntaxError, ValueError, DecompressionBombError
        raise BadImage("unreadable-image", f"{path}: {type(e).__name__}: {e}", size) from None
    try:
        return _to_rgb(img)
    except BadImage as e:
        raise BadImage(e.kind, f"{path}: {e.detail}", size) from None


BROKEN_IMAGE, SIZE_MISMATCH = 1, 2  # ImageReader flag bits


class ImageReader:
    """The bad-image policy, one reader per dataset: reader.read(i, path, size=None) -> PIL RGB image.

    A file read_image refuses becomes a mean-pixel image (MEAN_RGB, 0 after Normalize) of the header's size
    (32 x 32 when even the header is unreadable), so no DataLoader worker dies and the batch keeps its shape.
    Given size (W, H) (what an annotation says the image measures), an image of another size is a bad record:
    the annotation belongs to other images. Either way sample i is flagged, named once in a BadInputWarning
    (once per dataset, whichever worker meets it) and counted; strict=True raises BadImage / BadInput instead.
    failed(i): sample i is flagged (its dataset gives it point weight 0). finish(i, x): for broken="nan" (the
    evaluation policy) the tensor of a broken image becomes all NaN, so every metric counts it wrong (NaN
    logits are a wrong answer for safe_argmax / topk_accuracy, the last rank for AP); broken="mean" keeps the
    mean-pixel image (training). flags uint8[N] is in shared memory: what workers find, the main process sees.
    """

    _collecting = []  # the lists collect() handed out; every reader made meanwhile joins them

    def __init__(self, n, strict=False, broken="mean", fallback_size=32):
        if broken not in ("mean", "nan"):
            raise ValueError(f"broken must be 'mean' or 'nan', not {broken!r}")
        self.flags = torch.zeros(n, dtype=torch.uint8).share_memory_()
        self._view = self.flags.numpy()  # same memory; indexing it costs ~0.1 us, a tensor's ~2 us
        self.strict, self.broken, self.fallback_size = strict, broken, fallback_size
        for made in ImageReader._collecting:
            made.append(self)

    @classmethod
    @contextlib.contextmanager
    def collect(cls):
        """`with ImageReader.collect() as made:` made lists the readers created inside the block, so a caller can
        count the broken images of datasets it did not build (evaluate.py, per benchmark). Kept only as long
        as `made`: each reader holds a shared-memory segment (a file descriptor)."""
        made = []
        cls._collecting.append(made)
        try:
            yield made
        finally:
            cls._collecting.remove(made)

    def __getstate__(self):  # spawned workers get the shared tensor (a handle), and rebuild the view on it
        return {k: v for k, v in self.__dict__.items() if k != "_view"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._view = self.flags.numpy()

    def _flag(self, i, bit, message):
        """Set a flag bit of sample i; warn the first time it is set."""
        first = not self._view[i] & bit
        self._view[i] |= bit
        if first:
            warnings.warn(message, BadInputWarning, stacklevel=3)

    def read(self, i, path, size=None):
        try:
            img = read_image(path)
        except BadImage as e:
            if self.strict:
                raise
            self._flag(i, BROKEN_IMAGE, f"{e.kind}: {e.detail}; using a mean-pixel image, label kept, point "
                                        "weight 0 (evaluation: counted wrong)")
            return Image.new("RGB", e.size or (self.fallback_size,) * 2, MEAN_RGB)
        if size is not None and size[0] > 0 and tuple(img.size) != (int(size[0]), int(size[1])):
            detail = (f"{path} is {img.size[0]}x{img.size[1]} but its annotation was made on a "
                      f"{int(size[0])}x{int(size[1])} image (an index of other images?)")
            if self.strict:
                raise BadInput("size-mismatch", detail)
            self._flag(i, SIZE_MISMATCH, f"size-mismatch: {detail}; point weight 0")
        return img

    def failed(self, i):
        return bool(self._view[i])

    def finish(self, i, x):
        if self.broken == "nan" and self._view[i] & BROKEN_IMAGE and x.is_floating_point():
            return torch.full_like(x, float("nan"))
        return x

    def counts(self, all_ranks=False):
        """{"broken_images", "size_mismatches"}: samples flagged so far. all_ranks=True (a collective call)
        merges the flags of every process first, so an image met on several ranks counts once."""
        f = self.flags
        if all_ranks and torch.distributed.is_available() and torch.distributed.is_initialized():
            nccl = torch.distributed.get_backend() == "nccl"
            f = f.to(f"cuda:{torch.cuda.current_device()}" if nccl else "cpu", copy=True)
            torch.distributed.all_reduce(f, op=torch.distributed.ReduceOp.MAX)
            f = f.cpu()
        return {"broken_images": int((f & BROKEN_IMAGE).count_nonzero()),
                "size_mismatches": int((f & SIZE_MISMATCH).count_nonzero())}


def _hash_uniform(seed, keys):
    """float32[N, 2] uniform in [0, 1), fixed per (seed, key) whatever the order, subset or process."""
    digest = b"".join(hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest() for k in keys)
    u = np.frombuffer(digest, "<u4").reshape(-1, 2) if keys else np.zeros((0, 2), np.uint32)
    return (u / 2.0 ** 32).astype(np.float32)


def random_points_where_clicked(dataset, seed):
    """The random-point control on exactly the samples LUAB supervises: `dataset` was built with
    points="clicks"; its points become the uniform points points="random" draws for the same keys (ImageNet:
    the image; COCO: the (image, class) pair), its weights (which images / classes have a byproduct) stay."""
    if isinstance(dataset, CocoAB):
        keys = [f"{iid}/{cid}" for iid in dataset.image_ids for cid in dataset.instances.cat_ids]
    else:
        keys = dataset.keys
    dataset._points = torch.from_numpy(_hash_uniform(seed, keys)).view_as(dataset._points)
    return dataset


def _fraction_subset(groups, fraction, seed):
    """Indices keeping round(fraction * n) (>= 1) of each group, drawn with a seeded permutation, sorted."""
    if fraction >= 1.0:
        return np.arange(sum(len(g) for g in groups))
    if not 0.0 < fraction:
        raise ValueError("data_fraction must be in (0, 1]")
    rng, keep, start = np.random.default_rng(seed), [], 0
    for g in groups:
        n = len(g)
        k = max(1, int(round(fraction * n))) if n else 0
        keep.append(start + np.sort(rng.permutation(n)[:k]))
        start += n
    return np.concatenate(keep) if keep else np.zeros(0, np.int64)


class _CountsProblems:
    def problem_counts(self, all_ranks=False):
        """{"broken_images": files ImageReader flagged so far, "bad_records": bad byproduct records found when
        the dataset was built + size mismatches found while loading}. Works with DataLoader workers (shared
        flags); all_ranks=True is a collective call that merges every process's flags."""
        c = self.reader.counts(all_ranks)
        return {"broken_images": c["broken_images"], "bad_records": self.problems.n_bad + c["size_mismatches"]}


class ImageNetAB(_CountsProblems, Dataset):
    """ImageNet (ImageFolder tree root/<wnid>/*.JPEG) with the ImageNet-AB click as a point target.

    ds[i] -> (image, label: int, points: FloatTensor[1, 2], weights: FloatTensor[1]); with transform=None the
    image is the PIL image and points are relative to it; otherwise transform(img, points, weights) is applied
    (TrainTransform / EvalTransform). points:
      "clicks": the final click (imagenet_click), weight 1; images without XML, unselected, or with bad XML get
                weight 0 (points 0). clicks = ClickIndex / dict "wnid/stem" -> (x, y) / path to an index file /
                path to an XML root (scanned here).
      "random": the paper's baseline, a uniform point fixed per image (hash of seed and key), weight 1 for all.
      "none":   points 0, weight 0.
    A click index that records image sizes (ClickIndex.sizes) is checked against each image opened: another
    size is a counted bad record, weight 0 (ImageReader). Broken images follow ImageReader's policy (broken=
    "mean" for training, "nan" for validation). A class folder without images is refused (BadInput
    empty-class) unless allow_empty_classes=True, which keeps it as a class and reports it once.
    data_fraction keeps round(fraction * n) images of every class (seeded, stratified). Samples, classes and
    order are those of torchvision's ImageFolder (AppleDouble "._*" files skipped). Attributes: samples
    [(path, label)], classes (wnids), keys ["wnid/stem"], targets, problems (Problems), reader (ImageReader);
    problem_counts() -> {"broken_images", "bad_records"}.
    """

    def __init__(self, root, clicks=None, points="clicks", transform=None, data_fraction=1.0, seed=0,
                 strict=False, allow_empty_classes=False, broken="mean"):
        if points not in ("clicks", "random", "none"):
            raise ValueError(f"points must be 'clicks', 'random' or 'none', not {points!r}")
        self.root, self.transform, self.strict, self.points_mode = root, transform, strict, points
        self.problems = problems = Problems(f"ImageNetAB({root})")
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        groups = []  # as torchvision.datasets.folder.make_dataset: sorted walk per class, sorted names
        for label, wnid in enumerate(self.classes):
            g = []
            for d, _, names in sorted(os.walk(os.path.join(root, wnid), followlinks=True)):
                for name in sorted(names):
                    if name.lower().endswith(IMG_EXTENSIONS) and not name.startswith("._"):
                        g.append((os.path.join(d, name), label, f"{wnid}/{os.path.splitext(name)[0]}"))
            groups.append(g)
        empty = [wnid for wnid, g in zip(self.classes, groups) if not g]
        if empty and not allow_empty_classes:  # a silent empty class would give a model with a dead output
            raise BadInput("empty-class", f"{root}: {len(empty)} class folder(s) without images: "
                           f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; remove them, or pass "
                           "--allow-empty-classes to keep them as classes without images")
        for wnid in empty:
            problems.add("empty-class", wnid, "no images; kept as a class (--allow-empty-classes)")
        flat = [s for g in groups for s in g]
        keys = [k for _, _, k in flat]

        n = len(flat)
        pts, w = np.zeros((n, 2), np.float32), np.zeros(n, np.float32)
        sizes = np.zeros((n, 2), np.int32)  # (W, H) the click was made on; 0 = nothing to check
        if points == "random":
            pts, w = _hash_uniform(seed, keys), np.ones(n, np.float32)
        elif points == "clicks":
            if clicks is None:
                raise ValueError("points='clicks' needs clicks (an index, a dict, or a path)")
            pts, w, sizes = self._resolve_clicks(clicks, keys, problems)
        problems.finish(strict)

        keep = _fraction_subset(groups, data_fraction, seed)
        self.samples = [(flat[i][0], flat[i][1]) for i in keep]
        self.targets = [s[1] for s in self.samples]
        self.keys = [keys[i] for i in keep]
        # Tensors built once: __getitem__ is a list lookup and two tensor views on top of decoding.
        self._points = torch.from_numpy(np.ascontiguousarray(pts[keep], np.float32)).view(-1, 1, 2)
        self._weights = torch.from_numpy(np.ascontiguousarray(w[keep], np.float32)).view(-1, 1)
        self._sizes = np.where(w[keep, None] > 0, sizes[keep], 0)  # only a click that counts needs the check
        self.num_points = int((self._weights > 0).sum())  # images whose point target counts
        self.reader = ImageReader(len(self.samples), strict, broken)

    def _resolve_clicks(self, clicks, keys, problems):
        report_index_bad = True
        if isinstance(clicks, (str, os.PathLike)):
            if os.path.isdir(clicks):
                clicks, probs, _ = ClickIndex.from_xml(clicks)
                problems.extend(probs)
                report_index_bad = False  # already named, file by file, by the scan
            else:
                clicks = load_imagenet_index(clicks)
        key_set, wnids = set(keys), set(self.classes)
        sizes = np.zeros((len(keys), 2), np.int32)
        if isinstance(clicks, ClickIndex):
            pts, status, sizes = clicks.lookup(keys, with_sizes=True)
            w = (status == CLICK).astype(np.float32)
            if report_index_bad:
                for i in np.flatnonzero(status == BAD):
                    problems.add("bad-xml", keys[i], "marked bad in the index")
            index_keys = (k.decode() for k in clicks.keys)
        else:  # any mapping "wnid/stem" -> (x, y): validate, since nobody else did
            pts, w = np.zeros((len(keys), 2), np.float32), np.zeros(len(keys), np.float32)
            for i, k in enumerate(keys):
                v = clicks.get(k)
                if v is None:
                    continue
                x, y = (_coord(v[0]), _coord(v[1])) if len(v) == 2 else (None, None)
                if x is None or y is None:
                    problems.add("bad-coordinate", k, repr(v))
                    continue
                pts[i], w[i] = (x, y), 1.0
            index_keys = iter(clicks) if hasattr(clicks, "__iter__") else ()  # a bare .get() object
        for k in index_keys:  # an XML for an image that is not in the image folder (only for our classes)
            if k not in key_set and k.split("/", 1)[0] in wnids:
                problems.add("xml-without-image", k)
        return pts, w, sizes

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, label = self.samples[i]
        img = self.reader.read(i, path, self._sizes[i])
        pts, w = self._points[i], self._weights[i]
        if self.reader.failed(i):
            w = torch.zeros_like(w)
        if self.transform is None:
            return img, label, pts, w
        img, pts, w = self.transform(img, pts, w)
        return self.reader.finish(i, img), label, pts, w


class CocoAB(_CountsProblems, Dataset):
    """COCO 2014 (images + instances) with COCO-AB icon positions as per-class point targets.

    ds[i] -> (image, target: FloatTensor[80] multi-hot, points: FloatTensor[80, 2], weights: FloatTensor[80]).
    Labels come from the instances file (all annotations, crowd included); a class keeps label 1 even when its
    point leaves the crop (trap: the official notebook drops the label); only its weight becomes 0.
    points "clicks": coco_points(record, point_source) for the classes present in the ground truth (an icon for
    a class the ground truth lacks gets no weight); "random": a uniform point fixed per (seed, image, class) for
    every present class, weight 1; "none": zeros, weight 0. COCO-AB records for image ids the instances file
    lacks are counted; images without a record get weight 0. Broken images: ImageReader's policy (every
    weight 0, labels kept). Attributes image_ids (in dataset order), reader; problem_counts() as ImageNetAB.
    """

    def __init__(self, image_dir, instances_json, coco_ab_json=None, points="clicks", point_source="final-add",
                 transform=None, data_fraction=1.0, seed=0, strict=False):
        if points not in ("clicks", "random", "none"):
            raise ValueError(f"points must be 'clicks', 'random' or 'none', not {points!r}")
        self.image_dir, self.transform, self.strict, self.points_mode = image_dir, transform, strict, points
        inst = instances_json if isinstance(instances_json, CocoInstances) else read_coco_instances(instances_json)
        self.instances = inst
        problems = self.problems = Problems(f"CocoAB({image_dir})")
        problems.merge(inst.problems)
        ids = inst.image_ids
        keep = _fraction_subset([ids], data_fraction, seed)
        self.image_ids = [ids[i] for i in keep]
        n, C = len(self.image_ids), inst.num_classes
        targets = np.stack([inst.target(i) for i in self.image_ids]) if n else np.zeros((0, C), np.float32)
        pts, w = np.zeros((n, C, 2), np.float32), np.zeros((n, C), np.float32)
        if points == "random":
            keys = [f"{iid}/{cid}" for iid in self.image_ids for cid in inst.cat_ids]
            pts = _hash_uniform(seed, keys).reshape(n, C, 2)
            w = targets.copy()
        elif points == "clicks":
            if coco_ab_json is None:
                raise ValueError("points='clicks' needs coco_ab_json (a path or a read_coco_ab dict)")
            records = coco_ab_json if isinstance(coco_ab_json, dict) else read_coco_ab(coco_ab_json, problems)
            src = os.path.basename(coco_ab_json) if isinstance(coco_ab_json, (str, os.PathLike)) else "coco-ab"
            for iid in records:
                if iid not in inst.images:
                    problems.add("unknown-image-id", src, f"image_id={iid}")
            for r, iid in enumerate(self.image_ids):
                rec = records.get(iid)
                if rec is None:
                    continue
                for cid, (x, y) in coco_points(rec, point_source, problems).items():
                    k = inst.cat_index.get(cid)
                    if k is not None and targets[r, k] > 0:
                        pts[r, k], w[r, k] = (x, y), 1.0
        problems.finish(strict)
        self.files = [os.path.join(image_dir, inst.images[i]["file_name"]) for i in self.image_ids]
        self._targets = torch.from_numpy(targets)
        self._points, self._weights = torch.from_numpy(pts), torch.from_numpy(w)
        self.reader = ImageReader(n, strict)

    def __len__(self):
        return len(self.image_ids)

    def __getitem__(self, i):
        img = self.reader.read(i, self.files[i])
        pts, w = self._points[i], self._weights[i]
        if self.reader.failed(i):
            w = torch.zeros_like(w)
        if self.transform is None:
            return img, self._targets[i], pts, w
        img, pts, w = self.transform(img, pts, w)
        return img, self._targets[i], pts, w


# ----------------------------------------------------------------------------------------------------------------
# mixing: Mixup / CutMix with point targets

def mix_batch(images, soft_targets, points, weights, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
              switch_prob=0.5, generator=None):
    """DeiT/timm batch-mode Mixup / CutMix, extended to point targets.

    images [B, 3, H, W], soft_targets [B, C], points [B, K, 2], weights [B, K]. Sample i is paired with
    B-1-i (x.flip(0)); one lam and one mode per batch. Returns (images, soft_targets, points [B, 2, K, 2],
    weights [B, 2, K]) where index 0 of dim 1 is the sample's own point and 1 its partner's:
      no mixing (drew > prob): own weight unchanged, partner weight 0;
      Mixup: both objects are visible, so own weight x lam, partner weight x (1 - lam);
      CutMix: own point kept (weight x lam) only if outside the pasted box, partner's point kept
              (weight x (1 - lam)) only if inside it; lam is area-corrected as in timm.
    Targets mix as timm: lam * y + (1 - lam) * y.flip(0). Inputs are not modified. The point loss is then
    sum_j sum_k weights[:, j, k] * loss(pred[:, k], points[:, j, k]) over a normaliser of your choice.
    Randomness: one int from `generator` (or torch's global RNG) seeds numpy's beta / randint, so
    torch.manual_seed reproduces a batch. An odd B pairs the middle sample with itself (timm refuses odd B).
    """
    rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
    B, H, W = images.shape[0], images.shape[-2], images.shape[-1]
    lam, use_cutmix = 1.0, False
    if rng.random() < prob and (mixup_alpha > 0 or cutmix_alpha > 0):
        use_cutmix = (rng.random() < switch_prob) if (mixup_alpha > 0 and cutmix_alpha > 0) else cutmix_alpha > 0
        alpha = cutmix_alpha if use_cutmix else mixup_alpha
        lam = float(rng.beta(alpha, alpha))
    pts = torch.stack([points, points.flip(0)], 1)
    own, partner = weights, weights.flip(0)
    if lam == 1.0:
        return images, soft_targets, pts, torch.stack([own, torch.zeros_like(partner)], 1)
    if use_cutmix:  # timm rand_bbox + correct_lam
        r = math.sqrt(1 - lam)
        ch, cw = int(H * r), int(W * r)
        cy, cx = int(rng.integers(0, H)), int(rng.integers(0, W))
        yl, yh = int(np.clip(cy - ch // 2, 0, H)), int(np.clip(cy + ch // 2, 0, H))
        xl, xh = int(np.clip(cx - cw // 2, 0, W)), int(np.clip(cx + cw // 2, 0, W))
        lam = 1.0 - (yh - yl) * (xh - xl) / float(H * W)
        out = images.clone()
        out[..., yl:yh, xl:xh] = images.flip(0)[..., yl:yh, xl:xh]
        px, py = points[..., 0] * W, points[..., 1] * H  # pasted box covers [xl, xh) x [yl, yh) in pixels
        inside = (px >= xl) & (px < xh) & (py >= yl) & (py < yh)
        own = own * lam * ~inside
        partner = partner * (1 - lam) * inside.flip(0)
    else:
        out = images * lam + images.flip(0) * (1 - lam)
        own, partner = own * lam, partner * (1 - lam)
    targets = soft_targets * lam + soft_targets.flip(0) * (1 - lam)
    return out, targets, pts, torch.stack([own, partner], 1)


# ----------------------------------------------------------------------------------------------------------------
# synthetic data in the released formats

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


_APPLEDOUBLE = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        \x00\x02\x00\x00\x00\t\x00\x00\x002"


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
    iscrowd=1 with uncompressed RLE, add / move / remove histories, zero original sizes, a duplicate record and
    an image without a record. Deterministic for a seed. Returns a dict of counts.

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
            f.write(_APPLEDOUBLE)
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
    """A Background-Challenge-like set where the background is a shortcut (issue 9, benchmarks/spurious.py).

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
    for split, n_img in (("train", n_train), ("val", n_val)):
        rng_ids = np.random.default_rng([seed, 7, split == "train"])
        ids = sorted(int(i) for i in rng_ids.choice(np.arange(9, 582000), n_img, replace=False))
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
    if records:  # one duplicate image id: an early junk record that the later, real one must override
        junk = dict(records[0], actionHistories=[{"actionType": "add", "iconType": "cake",
                                                  "pointTo": {"x": 0.01, "y": 0.01}, "timeAt": 100}])
        records.insert(0, junk)
    with open(os.path.join(root, "coco_ab_v1_0.json"), "w") as f:
        json.dump(records, f)
    stats["coco_ab_records"] = len(records)
    return stats


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


# ----------------------------------------------------------------------------------------------------------------
# ---- analyses (appendix E) ----
# How informative the byproducts are: ImageNet clicks and mouse traces against ILSVRC boxes (E.1), COCO icons
# against instance masks (E.2). Each *_stats returns (figures, arrays): figures is the JSON, arrays feed the PNGs.

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # random-click curve: 0 = always the centre, 1 = uniform
LAST_N = (0, 1, 2, 4, 8, 16)  # trace records before the click (0 = the click itself)
QUANTILES = ALPHAS  # trace / time quantiles: 0 = entering the image, 1 = the click


def _pct(hits):
    return round(100.0 * float(np.mean(hits)), 3) if len(hits) else None


def _hits(points, boxes, W, H):
    """bool[...]: normalised points [..., 2] inside any box float[M, 4] (pixels of a W x H image), with +-1 px
    slack since ILSVRC's 0- or 1-based indexing is undocumented (formats.md §4)."""
    p = np.asarray(points, np.float64)[..., None, :] * (W, H)
    x, y = p[..., 0], p[..., 1]
    b = np.asarray(boxes, np.float64)
    return np.any((b[:, 0] - 1 <= x) & (x <= b[:, 2] + 1) & (b[:, 1] - 1 <= y) & (y <= b[:, 3] + 1), -1)


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
    out[:, 1:] = out[:, 1:].clip(0, 1)  # [ALD] masked trace points outside [0, 1]; we clamp them (formats.md §1)
    return out


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
    hit = np.array([_hits(r["click"], r["boxes"], *r["size"]) for r in ev], bool)
    centre = np.array([_hits((0.5, 0.5), r["boxes"], *r["size"]) for r in ev], bool)
    u = (np.arange(grid) + 0.5) / grid - 0.5
    square = np.stack(np.meshgrid(u, u), -1).reshape(-1, 2)
    centres = [(r["boxes"][:, :2] + r["boxes"][:, 2:]) / 2 / r["size"] for r in boxed]
    centres = np.concatenate(centres or [np.zeros((0, 2))])
    f.update(evaluated=len(ev), click_acc=_pct(hit), centre_click_acc=_pct(centre), non_centred=int((~centre).sum()),
             non_centred_click_acc=_pct(hit[~centre]),
             box_centres_in_central_0_82pct=_pct(np.all(np.abs(centres - 0.5) <= math.sqrt(0.0082) / 2, 1)),
             random_click_acc={str(a): _pct([_hits(0.5 + a * square, r["boxes"], *r["size"]).mean() for r in ev])
                               for a in ALPHAS})
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
            h = _hits(tr[:, 1:], r["boxes"], *r["size"])
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
            inside = cid in inst.cat_index and bool(inst.class_mask(iid, cid)[py, px])
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
         "records_without_image": len(set(coco_ab) - set(inst.images)), "point_source": mode,
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


def format_table(figures, skip=("per_worker", "per_class", "action_sequences")):
    """The scalar figures as aligned 'name  value' lines (nested dicts flattened with '.'; big ones JSON only)."""
    rows = []

    def walk(d, prefix):
        for k, v in d.items():
            if isinstance(v, dict):
                if k not in skip:
                    walk(v, f"{prefix}{k}.")
            else:
                rows.append((prefix + k, "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)))
    walk(figures, "")
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


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
    import drawing as dr  # here, not at the top: only the pictures need it
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
    and a legend of the marks; with a model (num_points=1), each cell is the eval centre crop with the
    predicted point and the CAM of the predicted class blended in."""
    import drawing as dr  # here, not at the top: only the pictures need it
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
        items += [("predicted point", PRED_COLOUR, "ring"),
                  ("CAM of the predicted class (bright = high)", (255, 150, 0), "patch")]
        title = "ImageNet-AB clicks, GT boxes, the model's point and CAM"
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
                weight = model.classifier.weight[logits[0].argmax()]  # CAM of the predicted class
                cam = torch.einsum("d,dhw->hw", weight, model.feature_map(x[None])[0])
            cam = ((cam - cam.min()) / (cam.max() - cam.min() + 1e-8)).numpy()
            rgb = x * torch.tensor(IMAGENET_STD)[:, None, None] + torch.tensor(IMAGENET_MEAN)[:, None, None]
            rgb = rgb.clamp(0, 1)
            img = Image.fromarray((rgb.permute(1, 2, 0).numpy() * 255).astype(np.uint8))
            img = Image.blend(img, Image.fromarray(_hot(cam)).resize(img.size, Image.BILINEAR), 0.4)
            pred = pred[0, 0].tolist()
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


def _load_model(name, checkpoint):
    import models  # here, not at the top: models is only needed to draw predictions
    try:
        sd = models.read_checkpoint(checkpoint)  # weights_only=True: a checkpoint must not run code
    except (OSError, ValueError) as e:
        raise SystemExit(f"--checkpoint: {e}")
    sd = sd.get("model", sd)
    n_cls = next(v.shape[0] for k, v in sd.items() if k.endswith(("fc.weight", "heads.head.weight")))
    model = models.create_model(name, num_classes=n_cls, num_points=1)
    models.load_pretrained(model, sd)
    return model.eval()


def _add_analysis_parsers(sub):
    for cmd, what in (("stats", "appendix E figures: a table on stdout, JSON with --out"),
                      ("draw", "appendix E pictures (PNG) into --out DIR")):
        ds = sub.add_parser(cmd, help=what).add_subparsers(dest="dataset", required=True)
        im = ds.add_parser("imagenet")
        im.add_argument("--xml-root", required=True, help="ImageNet-AB train_xml/")
        im.add_argument("--boxes", help="ILSVRC train box XML tree (default: the boxes merged into the AB XML)")
        im.add_argument("--images", help="ImageNet train tree <wnid>/<stem>.JPEG (coverage; the draw grid)")
        co = ds.add_parser("coco")
        co.add_argument("--coco-ab", required=True)
        co.add_argument("--instances", required=True, help="instances_train2014.json")
        co.add_argument("--point-source", default="final-add", choices=("final-add", "final-position"))
        for p in (im, co):
            p.add_argument("--out", required=cmd == "draw", help="JSON file (stats) or folder (draw)")
        if cmd == "draw":
            im.add_argument("--n", type=int, default=16, help="images in the grid")
            im.add_argument("--model", help="models.create_model name, with --checkpoint: draw predicted points")
            im.add_argument("--checkpoint")


def _analysis_main(args):
    # the checkpoint first: a file it refuses should not cost a scan of the XML tree
    model = _load_model(args.model, args.checkpoint) if getattr(args, "checkpoint", None) else None
    if args.dataset == "imagenet":
        records, counts = imagenet_records(args.xml_root, args.boxes)
        figures, arrays = imagenet_stats(records, counts, n_images=_count_images(args.images))
    else:
        figures, arrays = coco_stats(read_coco_ab(args.coco_ab), read_coco_instances(args.instances), args.point_source)
    if args.cmd == "stats":
        print(format_table(figures))
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


# ----------------------------------------------------------------------------------------------------------------
# CLI

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("synth", help="write the synthetic data set (see synth())")
    s.add_argument("--out", required=True)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--classes", type=int, default=None, help="default 10 (6 with --spurious)")
    s.add_argument("--train", type=int, default=None, help="train images per class (default 40; 100 with --spurious)")
    s.add_argument("--val", type=int, default=None, help="val images per class (default 10; 30 with --spurious)")
    s.add_argument("--spurious", type=float, default=None, metavar="P",
                   help="write the background-shortcut set instead (synth_spurious): train background = label's "
                        "with probability P, test splits mixed_same / mixed_rand")
    s.add_argument("--coco-train", type=int, default=60)
    s.add_argument("--coco-val", type=int, default=20)
    i = sub.add_parser("index-imagenet", help="convert an ImageNet-AB XML tree into one .npz index")
    i.add_argument("--xml-root", required=True, help="train_xml/ (or a parent, e.g. imagenet_ab_v1_0/)")
    i.add_argument("--out", required=True, help="output file (.npz)")
    i.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    i.add_argument("--strict", action="store_true", help="any bad file is an error (nothing is written)")
    _add_analysis_parsers(sub)  # stats / draw (appendix E)
    args = ap.parse_args(argv)
    if args.cmd in ("stats", "draw"):
        try:
            return _analysis_main(args)
        except BadInput as e:
            print(f"error: {error_line(e)}", file=sys.stderr)
            return 1

    if args.cmd == "synth":
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
    workers = args.workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    try:
        st = build_imagenet_index(args.xml_root, args.out, workers=workers, strict=args.strict)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if st["problems"]:
        print(st["problems"], file=sys.stderr)
    print(f"indexed {st['files']:,} XML files in {st['seconds']:.1f}s: {st['files_per_s']:,.0f} files/s on "
          f"{st['workers']} worker(s) ({st['files_per_s'] / st['workers']:,.0f}/s per worker); "
          f"{st['with_click']:,} with a click, {st['no_click']:,} without, {st['bad']:,} bad, "
          f"{st['appledouble_skipped']} AppleDouble skipped -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
