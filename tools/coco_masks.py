"""
COCO masks without pycocotools: run-length encoding (RLE, compressed or not) and polygons to boolean masks, ports
of cocoapi's maskApi.c so that masks match pycocotools' pixel for pixel (docs/formats.md §3, "Masks").

evaluate.py's COCO PxAP and context bias, tools/synth.py and tools/analyses.py use them; training does not.
"""

import numpy as np

from utils import BadInput


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
