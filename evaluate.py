"""
Every evaluation number of the LUAB paper for one checkpoint: one command, one JSON, and a side-by-side table.

    python evaluate.py --checkpoint runs/r50/checkpoint.pt --imagenet-val DIR --imagenet-a DIR ... --out r.json
    torchrun --nproc_per_node=8 evaluate.py ...      (every image counted exactly once, no padding)
    python evaluate.py --table base.json luab.json   (rows = checkpoints, columns = benchmarks, diffs to row 1)

Columns: Tables 1, 2, 4-7 (IN-1k ... Background Challenge, MaxBoxAccV2, COCO mAP, context bias, mPxAP), the
appendix tables' and the point head's localisation accuracy (not Table 3, detection transfer). A checkpoint
describes itself (model, classes, point heads, image size: its "meta"); flags override. Each benchmark has its
own root flag, which must exist and hold images. docs/evaluation.md lists every column's JSON key and protocol;
where the paper is silent the choice is a flag, written into the JSON's `protocol` entry next to the number.

Distributed runs shard every set by index (rank r takes r, r + w, ...) and gather results by index, so the
arrays the metrics see are the single-process arrays. The one difference left is the model itself: its float32
outputs depend on the batch composition, as between two --batch-size values of one process (COCO demo, CPU:
context rows up to 4e-6 points apart, the rest equal; more under bf16), which can also move a CAM value across
a PxAP bin or flip a near-tied argmax.

The metrics are pure numpy functions of arrays (logits, labels, masks, boxes), so they are tested without a
model. Coordinates: normalised (x, y) in [0, 1]^2 of the image, origin top-left; boxes (x0, y0, x1, y1) pixels.
"""

import argparse
import contextlib
import copy
import csv
import functools
import json
import math
import multiprocessing as mp
import os
import time
from collections import deque
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS

import byproducts
import models
import utils
from byproducts import IMAGENET_MEAN, IMAGENET_STD, eval_points_to_original
from tools.coco_masks import annotation_mask
from utils import Progress, UnpaddedDistributedSampler, all_reduce_sum, dist_on, gather_by_index, get_rank, \
    get_world_size, init_distributed, log

# -----------------------------------------------------------------------------
# class-mapping data shipped in data/ (provenance and licences: data/README.md)

DATA_DIR = Path(__file__).resolve().parent / "data"

# Each table is read on first use (functools.cache), so importing evaluate (the training scripts do) reads no file.

@functools.cache
def wnids(label_space):
    """The wnids of a label space, from data/<label_space>_wnids.txt: "imagenet" = the 1000 sorted wnids
    (position = torchvision class index); "imagenet_a", "imagenet_r" (200 each, in 1k order; also their folder
    names) and "imagenet_o" (200: the label space of the IN-O detector)."""
    return tuple((DATA_DIR / f"{label_space}_wnids.txt").read_text().split())

@functools.cache
def wnid_positions(label_space):
    """{wnid: its position in wnids(label_space)}; for "imagenet" the 1k class index."""
    return {w: i for i, w in enumerate(wnids(label_space))}

@functools.cache
def subset_indices(label_space):
    """The 1k indices [200] of a 200-class benchmark's wnids ("imagenet_a", "_o", "_r"): its argmax mask."""
    return np.array([wnid_positions("imagenet")[w] for w in wnids(label_space)])

@functools.cache
def imagenet_to_in9():
    """[1000]: the IN-9 class of each 1k class, -1 outside IN-9 (always wrong)."""
    table = json.loads((DATA_DIR / "in_to_in9.json").read_text())
    return np.array([table[str(i)] for i in range(1000)])

@functools.cache
def in9_classes():
    """The 9 IN-9 class names, lower case, in label order."""
    lines = (DATA_DIR / "in9_classes.txt").read_text().splitlines()
    return tuple(line.split()[0].lower() for line in lines if line.strip())

@functools.cache
def si_score_labels():
    """{SI-Score class folder: 1k index}."""
    return json.loads((DATA_DIR / "si_score_labels.json").read_text())

@functools.cache
def objectnet_to_imagenet():
    """{ObjectNet folder: [1k indices]}: the 113 folders that map to ImageNet."""
    return json.loads((DATA_DIR / "objectnet_folder_to_imagenet_indices.json").read_text())

# the 15 IN-C corruptions of the benchmark (the 4 "extra" ones are not part of it) and AlexNet's mean error
# over the 5 severities (easyrobust imagenet_c.py get_ce_alexnet), the mCE normaliser
IMAGENET_C_ALEXNET_ERR = {
    "gaussian_noise": .886428, "shot_noise": .894468, "impulse_noise": .922640, "defocus_blur": .819880,
    "glass_blur": .826268, "motion_blur": .785948, "zoom_blur": .798360, "snow": .866816, "frost": .826572,
    "fog": .819324, "brightness": .564592, "contrast": .853204, "elastic_transform": .646056,
    "pixelate": .717840, "jpeg_compression": .606500,
}
IMAGENET_C_CORRUPTIONS = tuple(IMAGENET_C_ALEXNET_ERR)
SI_SCORE_FACTORS = {"si_size": ("area", "size"), "si_loc": ("location20_area02_min0pc", "location"),
                    "si_rot": ("rotation",)}
SI_SCORE_LEVEL_FIELDS = {"si_size": ("area",), "si_loc": ("x_coord", "y_coord"), "si_rot": ("rotation",)}  # metadata.csv
BGC_SPLITS = ("original", "mixed_same", "mixed_rand", "mixed_next", "only_fg", "no_fg", "only_bg_b", "only_bg_t")

# -----------------------------------------------------------------------------
# classification metrics (pure functions of arrays; accuracies in percent)

def _np(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)

def safe_argmax(logits):
    """Row-wise argmax [N] (the first maximum, torch or numpy); -1 for a row holding a NaN, so that a diverged
    model scores 0 rather than whatever class NaN comparisons happen to pick."""
    if torch.is_tensor(logits):
        return torch.where(torch.isnan(logits).any(1), -1, logits.argmax(1))
    logits = np.asarray(logits)
    return np.where(np.isnan(logits).any(1), -1, logits.argmax(1)) if logits.size else np.zeros(0, np.int64)

def topk_accuracy(logits, labels, ks=(1, 5)):
    """logits [N, C], labels [N] (torch or numpy) -> {"top1": %, "top5": %}. Ties are broken towards the lower
    class index (as argmax does), so the result never depends on a sort's whims; a row with a NaN is wrong."""
    logits = torch.as_tensor(_np(logits)).float()
    labels = torch.as_tensor(_np(labels)).long()
    if len(labels) == 0:
        return {f"top{k}": float("nan") for k in ks}
    target = logits.gather(1, labels[:, None])
    before = torch.arange(logits.shape[1])[None] < labels[:, None]
    rank = (logits > target).sum(1) + ((logits == target) & before).sum(1)
    rank[torch.isnan(logits).any(1)] = logits.shape[1]
    return {f"top{k}": 100.0 * (rank < k).double().mean().item() for k in ks}

def top1(logits, labels):
    """logits [N, C], labels [N] -> top-1 %."""
    return 100.0 * float(np.mean(safe_argmax(_np(logits)) == _np(labels))) if len(labels) else float("nan")

def masked_top1(logits, labels, class_indices):
    """IN-A / IN-R: argmax over the sub-label-space logits[:, class_indices]; labels are positions in it.
    A large logit on a class outside the subset is ignored, as in hendrycks' eval.py."""
    return top1(_np(logits)[:, class_indices], labels)

def real_accuracy(preds, val_indices, real_labels):
    """ImageNet-ReaL: preds [N] (1k indices) of val images whose 0-based val index (ILSVRC2012_val_{i+1:08d})
    is val_indices [N]; real_labels = real.json (50k lists). Two denominators, the same hits:
    "labelled" (the official one, google-research/reassessed-imagenet): images with an empty list are excluded
    from numerator and denominator (46,837 of the 50,000); "all": hits over all N images, an empty list
    counting as wrong (what the paper's appendix tables divide by: 81.1 = 86.6 x 46837 / 50000).
    Returns {"labelled": %, "all": %, "n_labelled": images with a list}."""
    hits = [p in real_labels[i] for p, i in zip(_np(preds).tolist(), _np(val_indices).tolist()) if real_labels[i]]
    n = len(_np(preds))
    return {"labelled": 100.0 * float(np.mean(hits)) if hits else float("nan"),
            "all": 100.0 * float(np.sum(hits)) / n if n else float("nan"), "n_labelled": len(hits)}

def per_level_top1(correct, levels):
    """SI-Score's official aggregation (google-research robustness_metrics, metrics/synthetic.py): correct [N]
    bool, levels [N] hashable (the factor level of each image: its area, its (x, y) offset, its angle) ->
    (mean over levels of each level's accuracy %, {level: accuracy %}). Equals the pooled accuracy only when
    every level holds the same number of images."""
    by_level = {}
    for c, lv in zip(_np(correct).tolist(), levels):
        by_level.setdefault(lv, []).append(bool(c))
    acc = {lv: 100.0 * float(np.mean(v)) for lv, v in by_level.items()}
    return (float(np.mean(list(acc.values()))) if acc else float("nan")), acc

def imagenet_c_summary(acc):
    """acc: {(corruption, severity): top-1 %} -> dict with `inc_acc` (mean top-1 over the (c, s) sets with
    equal weight per set: the paper's IN-C column), `inc_mce` (mean over corruptions of mean_s err / AlexNet's
    mean err, in %; only the 15 benchmark corruptions that are present) and per-corruption accuracies."""
    if not acc:
        return {}
    out = {"inc_acc": float(np.mean(list(acc.values())))}
    per_c = {}
    for (c, s), a in acc.items():
        per_c.setdefault(c, []).append(a)
    ce = [np.mean([100.0 - a for a in per_c[c]]) / 100.0 / IMAGENET_C_ALEXNET_ERR[c]
          for c in per_c if c in IMAGENET_C_ALEXNET_ERR]
    out["inc_mce"] = 100.0 * float(np.mean(ce)) if ce else float("nan")
    out["inc_per_corruption"] = {c: float(np.mean(v)) for c, v in sorted(per_c.items())}
    return out

def max_softmax(logits, class_indices=None):
    """Maximum softmax probability [N] over logits[:, class_indices] (all classes if None)."""
    x = torch.as_tensor(_np(logits)).double()
    if class_indices is not None:
        x = x[:, torch.as_tensor(class_indices)]
    return x.softmax(1).max(1).values.numpy()

def _stepwise_rates(pos_scores, neg_scores):
    """Cumulative (tp, fp) at each distinct score threshold, scores sorted descending, ties grouped."""
    scores = np.concatenate([pos_scores, neg_scores]).astype(np.float64)
    labels = np.concatenate([np.ones(len(pos_scores)), np.zeros(len(neg_scores))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]  # the last item of each tie group
    tp = np.cumsum(labels)[last]
    return tp, (last + 1) - tp

def ood_measures(out_scores, in_scores, recall_level=0.95):
    """IN-O detection with OOD as the positive class (hendrycks calibration_tools.get_measures(out, in)).
    Scores: higher = more anomalous (IN-O uses -MSP). Returns {"aupr", "auroc", "fpr95"} in %.
    AUPR = sum_n (R_n - R_{n-1}) P_n at distinct thresholds (sklearn's average_precision_score);
    AUROC = trapezoid over (FPR, TPR) from (0, 0); FPR at the threshold whose recall is nearest recall_level."""
    out_scores, in_scores = _np(out_scores).ravel(), _np(in_scores).ravel()
    tp, fp = _stepwise_rates(out_scores, in_scores)
    n_pos, n_neg = len(out_scores), len(in_scores)
    precision, recall = tp / (tp + fp), tp / n_pos
    aupr = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    tpr, fpr = np.r_[0.0, tp / n_pos], np.r_[0.0, fp / n_neg]
    auroc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    # hendrycks fpr_and_fdr_at_recall: walk back from the first full-recall threshold; nearest recall wins,
    # ties to the higher recall
    last = int(np.searchsorted(tp, tp[-1]))
    k = int(np.argmin(np.abs(recall[last::-1] - recall_level)))
    fpr95 = float(fp[last::-1][k] / n_neg)
    return {"aupr": 100.0 * aupr, "auroc": 100.0 * auroc, "fpr95": 100.0 * fpr95}

def objectnet_accuracy(logits, folder_ids):
    """logits [N, 1000]; folder_ids: for each image the list of 1k indices its ObjectNet folder maps to.
    Protocol A: argmax over all 1000 classes, correct iff it is one of the folder's indices (= mapping the
    prediction to an ObjectNet class with unmapped predictions wrong, abarbu/easyrobust). Protocol B: argmax
    restricted to the 125 indices of the 113 overlapping classes (imagenet-testbed's class sublist).
    Returns (A %, B %)."""
    logits = _np(logits)
    if len(logits) == 0:
        return float("nan"), float("nan")
    sub = np.array(sorted({i for ids in objectnet_to_imagenet().values() for i in ids}))
    pred_a = safe_argmax(logits)
    pred_b = np.where(pred_a < 0, -1, sub[safe_argmax(logits[:, sub])])
    a = np.mean([p in ids for p, ids in zip(pred_a, folder_ids)])
    b = np.mean([p in ids for p, ids in zip(pred_b, folder_ids)])
    return 100.0 * float(a), 100.0 * float(b)

def in9_predictions(logits, in_to_in9="imagenet"):
    """Background Challenge: IN-9 class of the 1000-way argmax (-1 = outside IN-9, always wrong) through
    imagenet_to_in9() ("imagenet") or any [C] mapping. With in_to_in9=None the logits are already over the 9 (or
    any) classes: plain argmax."""
    pred = safe_argmax(_np(logits))
    if in_to_in9 is None:
        return pred
    table = imagenet_to_in9() if isinstance(in_to_in9, str) else np.asarray(in_to_in9)
    return np.where(pred < 0, -1, table[pred])

def in9_accuracy(logits, labels, in_to_in9="imagenet"):
    """logits [N, 1000] (or [N, 9] with in_to_in9=None), IN-9 labels [N] -> top-1 %."""
    labels = _np(labels)
    return 100.0 * float(np.mean(in9_predictions(logits, in_to_in9) == labels)) if len(labels) else float("nan")

def bgc_gap(acc_mixed_same, acc_mixed_rand):
    """BGC-gap = acc(mixed_same) - acc(mixed_rand), in points (lower = less reliance on the background)."""
    return acc_mixed_same - acc_mixed_rand

def bgc_accuracy(vulnerable):
    """BGC-acc: % of foregrounds that no background in the pool can flip (vulnerable [N] bool)."""
    return 100.0 * (1.0 - float(np.mean(_np(vulnerable)))) if len(vulnerable) else float("nan")

def average_precision(scores, targets):
    """AP of one class, ASL's formula (Alibaba-MIIL/ASL helper_functions.average_precision): the mean over
    positives of precision at the positive's rank, scores sorted descending. Ties, which ASL leaves to
    argsort's order, are one group here: every positive of a group gets the precision at the group's end.
    That makes AP independent of the sample order (and equal to ASL's whenever scores are distinct).
    A class without positives gets AP 0, as in ASL."""
    scores, targets = _np(scores).astype(np.float64).ravel(), _np(targets).ravel() > 0
    if targets.sum() == 0:
        return 0.0
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], targets[order]
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # end of each tie group
    group = np.repeat(np.arange(len(last)), np.diff(np.r_[-1, last]))
    prec_at_end = np.cumsum(t)[last] / (last + 1)
    return float(prec_at_end[group][t].sum() / t.sum())

def mean_average_precision(scores, targets):
    """scores [N, C] (logits or probabilities; only the order matters), targets [N, C] multi-hot ->
    (mAP %, per-class AP [C] in %). Evaluate logits rather than sigmoids: float32 sigmoids saturate to ties."""
    scores, targets = _np(scores), _np(targets)
    ap = np.array([average_precision(scores[:, k], targets[:, k]) for k in range(scores.shape[1])])
    return 100.0 * float(ap.mean()) if len(ap) else float("nan"), 100.0 * ap

def context_bias(clean, erased, erased_self, thr=0.5):
    """Shetty et al. (CVPR'19) context reliance, reconstructed (no public code; the reasoning is in
    docs/evaluation.md). For each (image, GT class c) pair with clean score s_c > thr and at least one other GT
    class: clean [P] = s_c; erased [P] = s_c after another class o's pixels were erased (the random or the
    worst-case o); erased_self [P] = s_c after c's own pixels were erased. Scores are probabilities; results in
    points (100 x probability):
      "diff": mean of s_c(o erased) - s_c(c erased), the paper's "difference between the classification scores
              when the class of interest is removed and when another class is removed" (the table's rows);
      "flip": % of pairs whose s_c(o erased) falls to <= thr (this file's earlier definition);
      "drop": mean of s_c - s_c(o erased)."""
    clean, erased, own = (_np(a).astype(np.float64) for a in (clean, erased, erased_self))
    if len(clean) == 0:
        return {"diff": float("nan"), "flip": float("nan"), "drop": float("nan")}
    return {"diff": 100.0 * float(np.mean(erased - own)), "flip": 100.0 * float(np.mean(erased <= thr)),
            "drop": 100.0 * float(np.mean(clean - erased))}

def occlude_center(x, hole=112, fill=0.0):
    """Cocc: a copy of x [B, C, H, W] with a centred hole x hole square set to `fill` (a scalar, or a [C]
    per-channel value). The hole is rows/cols (H - hole)//2 ... + hole: 56..167 for 112 on 224."""
    x = x.clone()
    h, w = min(hole, x.shape[-2]), min(hole, x.shape[-1])
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    fill = torch.as_tensor(fill, dtype=x.dtype, device=x.device)
    x[..., top:top + h, left:left + w] = fill.view(-1, 1, 1) if fill.ndim else fill
    return x

# -----------------------------------------------------------------------------
# localisation: CAM boxes (MaxBoxAccV2), PxAP, the point head

def normalize_cam(cam):
    """wsolevaluation's normalize_scoremap: min-max to [0, 1]; a constant or NaN map becomes all zeros."""
    cam = np.asarray(cam, dtype=np.float32)
    if np.isnan(cam).any() or cam.min() == cam.max():
        return np.zeros_like(cam)
    cam = cam - cam.min()
    return cam / cam.max()

def _expand_ranges(lo, hi):
    """Flat positions p with hi[p] > lo[p], each repeated for every level lo[p] + 1 .. hi[p] -> (level, p)."""
    sel = np.flatnonzero(hi > lo)
    cnt = (hi.ravel() - lo.ravel())[sel]
    offset = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    return np.repeat(lo.ravel()[sel] + 1, cnt) + offset, np.repeat(sel, cnt)

def _label_runs(lv, y, x0, x1, H, W):
    """Union-find over row runs (level lv, row y, columns [x0, x1)), sorted by (lv, y, x0). Two runs in adjacent
    rows of a level are 8-connected iff x0_j <= x1_i and x1_j >= x0_i. Vectorised: hooking of the larger root
    onto the smaller + pointer jumping, O(log n) rounds. Returns (level [P], boxes [P, 4], area [P])."""
    n = len(x0)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros((0, 4), np.int64), np.zeros(0, np.int64)
    row, stride = lv * H + y, W + 2
    start_key, end_key = row * stride + x0, row * stride + x1
    # within a row runs are sorted, so the runs of the next row touching run i are the index range [lo, hi]
    lo = np.searchsorted(end_key, (row + 1) * stride + x0, side="left")
    hi = np.searchsorted(start_key, (row + 1) * stride + x1, side="right") - 1
    count = np.where(y < H - 1, np.maximum(hi - lo + 1, 0), 0)
    u = np.repeat(np.arange(n), count)
    v = np.arange(len(u)) - np.repeat(np.cumsum(count) - count, count) + np.repeat(lo, count)
    parent = np.arange(n)
    while len(u):
        a, b = parent[u], parent[v]
        keep = a != b
        if not keep.any():
            break
        u, v, a, b = u[keep], v[keep], a[keep], b[keep]
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))
        while True:  # pointer jumping until every run points at its root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    roots = np.flatnonzero(parent == np.arange(n))  # a root is its component's first run: raster order
    comp = (np.cumsum(parent == np.arange(n)) - 1)[parent]
    P = len(roots)
    boxes = np.zeros((P, 4), np.int64)
    boxes[:, 0], boxes[:, 1] = W, H
    np.minimum.at(boxes[:, 0], comp, x0)
    np.minimum.at(boxes[:, 1], comp, y)
    np.maximum.at(boxes[:, 2], comp, x1)
    np.maximum.at(boxes[:, 3], comp, y + 1)
    area = np.bincount(comp, weights=x1 - x0, minlength=P).astype(np.int64)
    return lv[roots], boxes, area

def nested_component_boxes(top):
    """8-connected components, without OpenCV, of the nested masks {top >= k} for k = 0 .. top.max(): the masks
    of a thresholded map. top: int [H, W], the highest level each pixel belongs to (-1: none). Returns (level [P],
    boxes [P, 4] int64 (x0, y0, x1, y1) with x1 = max x + 1 and y1 = max y + 1, as cv2.boundingRect gives, area
    [P] in pixels), sorted by level, then by first pixel in raster order. The row runs of all levels come
    straight from horizontal neighbour pairs (a run of level k starts at x iff top[x-1] < k <= top[x]), so the
    [L, H, W] stack of masks is never built."""
    top = np.asarray(top, np.int64)
    H, W = top.shape
    k = np.full((H, W + 2), -1, np.int64)
    k[:, 1:-1] = top
    left, right = k[:, :-1], k[:, 1:]  # pair x: pixels x - 1 and x
    ls, ps = _expand_ranges(left, right)  # run starts at x
    le, pe = _expand_ranges(right, left)  # run ends (exclusive) at x
    # both lists are in raster order; a stable sort by level (radix sort on int16) makes them level-major
    order_s, order_e = (np.argsort(lev.astype(np.int16), kind="stable") for lev in (ls, le))
    lv, (y, x0), x1 = ls[order_s], np.divmod(ps[order_s], W + 1), pe[order_e] % (W + 1)
    return _label_runs(lv, y, x0, x1, H, W)

def box_iou(boxes_a, boxes_b):
    """IoU [P, G] of pixel boxes (x0, y0, x1, y1) with inclusive ends (+1 areas), as wsolevaluation."""
    a = np.asarray(boxes_a, np.float64).reshape(-1, 4)[:, None]
    b = np.asarray(boxes_b, np.float64).reshape(-1, 4)[None]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + 1
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[..., 2] - a[..., 0] + 1) * (a[..., 3] - a[..., 1] + 1)
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area_a + area_b - inter)

def cam_box_ious(cam, gt_boxes, thresholds):
    """Best box IoU at every CAM threshold for one image (wsolevaluation compute_bboxes_from_scoremaps).
    cam: [H, W] normalised to [0, 1]; gt_boxes: [G, 4] in the CAM's pixel frame; thresholds: [T] in [0, 1).
    At tau the mask is uint8(255 cam) > int(tau * max) (cv2.THRESH_BINARY). V2 boxes every 8-connected
    component (multi_contour_eval); V1 only the largest by pixel count (cv2 takes the largest contour by
    polygon area: the same blob but for ties and thin shapes). No component gives the box (0, 0, 0, 0).
    RETR_TREE also returns hole contours, whose boxes lie inside their component's box: ignored here.
    Returns (iou_v2 [T], iou_v1 [T]). Only distinct binarisations are labelled (at most 256)."""
    s8 = (np.asarray(cam, np.float32) * 255).astype(np.uint8)
    H, W = s8.shape
    cut = (np.asarray(thresholds, np.float64) * int(s8.max())).astype(np.int64)
    values = np.unique(s8).astype(np.int64)
    keep_from = np.searchsorted(values, cut, side="right")  # the mask keeps values[keep_from:]
    levels, level_of = np.unique(keep_from, return_inverse=True)
    lowest = np.where(levels < len(values), values[np.minimum(levels, len(values) - 1)], 256)
    # level j keeps s8 >= lowest[j] (ascending, so the masks are nested): label all of them in one go
    lv, boxes, area = nested_component_boxes(np.searchsorted(lowest, s8, side="right") - 1)
    boxes[:, 2] = np.minimum(boxes[:, 2], W - 1)  # wsolevaluation clips x1, y1 to width-1, height-1
    boxes[:, 3] = np.minimum(boxes[:, 3], H - 1)
    gt = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    empty = box_iou(np.zeros((1, 4)), gt).max()
    best_v2 = np.full(len(levels), -np.inf)
    best_v1 = np.full(len(levels), empty)
    if len(lv):
        iou = box_iou(boxes, gt).max(1)
        np.maximum.at(best_v2, lv, iou)
        order = np.lexsort((np.arange(len(lv)), -area, lv))  # per level: largest first, then raster order
        first = order[np.r_[True, lv[order][1:] != lv[order][:-1]]]
        best_v1[lv[first]] = iou[first]
    best_v2[np.isinf(best_v2)] = empty
    return best_v2[level_of], best_v1[level_of]

class BoxAccumulator:
    """MaxBoxAcc over a dataset (wsolevaluation BoxEvaluator). MaxBoxAccV2 = mean over IoU thresholds
    delta in {30, 50, 70} of max_tau % images whose best box IoU >= delta at tau (all components);
    MaxBoxAcc (V1) = IoU 50 with the largest component only. Counts are integers, so sums over ranks are exact."""

    def __init__(self, cam_curve_interval=0.001, iou_thresholds=(30, 50, 70)):
        self.thresholds = np.arange(0, 1, cam_curve_interval)
        self.iou_thresholds = tuple(iou_thresholds)
        self.counts = np.zeros((2, len(self.iou_thresholds), len(self.thresholds)), np.int64)  # [v2|v1, delta, tau]
        self.n = 0

    def accumulate(self, cam, gt_boxes):
        self.add(*cam_box_ious(cam, gt_boxes, self.thresholds))

    def add(self, v2, v1):
        """One image's best IoU per threshold, as cam_box_ious returns them (e.g. from a worker process)."""
        for k, delta in enumerate(self.iou_thresholds):
            self.counts[0, k] += v2 >= delta / 100
            self.counts[1, k] += v1 >= delta / 100
        self.n += 1

    def state(self):
        return np.concatenate([[self.n], self.counts.ravel()])

    def load_state(self, state):
        self.n = int(state[0])
        self.counts = np.asarray(state[1:], np.int64).reshape(self.counts.shape)

    def compute(self):
        best = 100.0 * self.counts.max(2) / max(self.n, 1)  # [v2|v1, delta]
        out = {"maxboxacc_v2": float(best[0].mean())}
        out.update({f"maxboxacc_v2_iou{d}": float(best[0, k]) for k, d in enumerate(self.iou_thresholds)})
        if 50 in self.iou_thresholds:
            out["maxboxacc_v1"] = float(best[1, self.iou_thresholds.index(50)])
        return out

def pxap_bin_edges(cam_curve_interval=0.001):
    """wsolevaluation MaskEvaluator bins: [0, d), ..., [1 - d, 1), [1, 2), [2, 3]."""
    return np.append(np.arange(0, 1, cam_curve_interval), [1.0, 2.0, 3.0])

def pxap_histograms(cam, mask, edges):
    """cam [H, W] normalised; mask [H, W]: 1 = foreground, 0 = background, anything else (255) ignored.
    Returns (fg_hist, bg_hist) over `edges`."""
    cam, mask = np.asarray(cam), np.asarray(mask)
    return np.histogram(cam[mask == 1], bins=edges)[0], np.histogram(cam[mask == 0], bins=edges)[0]

def pxap(fg_hist, bg_hist):
    """PxAP % from accumulated histograms (MaskEvaluator.compute): thresholds swept from the top bin down,
    P = tp / (tp + fp), R = tp / #fg, PxAP = sum P[1:] * diff(R) over thresholds with tp + fp > 0."""
    fg, bg = np.asarray(fg_hist, np.float64), np.asarray(bg_hist, np.float64)
    if fg.sum() == 0:
        return float("nan")
    tp, fp = np.cumsum(fg[::-1]), np.cumsum(bg[::-1])
    valid = (tp + fp) != 0
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = tp / (tp + fp)
    recall = tp / fg.sum()
    return 100.0 * float((precision[1:] * np.diff(recall))[valid[1:]].sum())

def point_in_box_accuracy(points_px, boxes):
    """points_px [N, 2]; boxes: N arrays [M, 4] (x0, y0, x1, y1) in the same units, ends inclusive.
    % of points inside any of their boxes; entries without boxes (None or M = 0) are skipped."""
    points_px = np.asarray(_np(points_px), np.float64).reshape(-1, 2)
    hits = []
    for (x, y), b in zip(points_px, boxes):
        if b is None or len(b) == 0:
            continue
        b = np.asarray(b, np.float64).reshape(-1, 4)
        hits.append(bool(np.any((b[:, 0] <= x) & (x <= b[:, 2]) & (b[:, 1] <= y) & (y <= b[:, 3]))))
    return 100.0 * float(np.mean(hits)) if hits else float("nan")

# -----------------------------------------------------------------------------
# datasets: explicit labels from each benchmark's layout (never ImageFolder's string sort)

def _images(folder):
    return sorted(str(p) for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS and not p.name.startswith("."))

def _subdirs(folder):
    return sorted(p for p in Path(folder).iterdir() if p.is_dir() and not p.name.startswith("."))

def scan_class_folders(root, label_of):
    """root/<folder>/<image>: label_of(folder name) -> int label, or None to skip the folder.
    Returns (paths, labels [N], folder names [N])."""
    paths, labels, folders = [], [], []
    for d in _subdirs(root):
        label = label_of(d.name)
        if label is None:
            continue
        for p in _images(d):
            paths.append(p)
            labels.append(label)
            folders.append(d.name)
    return paths, np.array(labels, dtype=np.int64), folders

def wnid_label(name, label_space="imagenet"):
    """A wnid folder -> its position in wnids(label_space) (the 1k index by default); a clear error otherwise."""
    table = wnid_positions(label_space)
    if name not in table:
        raise ValueError(f"folder {name!r} is not a wnid of this benchmark's label space")
    return table[name]

def label_space(classes, num_classes):
    """The model's outputs as ImageNet classes. None: the 1000 classes in torchvision order (sorted wnids), also
    for a 1000-class model that names no classes; {wnid: output index}: a model trained on a subset of the wnids
    (a checkpoint's meta["classes"], e.g. the synthetic data's 10). SystemExit if the names are not wnids."""
    if classes is None:
        return None if num_classes == 1000 else {}  # {}: unknown names, no ImageNet benchmark can be scored
    if tuple(classes) == wnids("imagenet"):
        return None
    if len(classes) != num_classes or not all(c in wnid_positions("imagenet") for c in classes):
        return {}
    return {c: i for i, c in enumerate(classes)}

def imagenet_label_of(args, to_wnid=None):
    """Folder name -> the model's label for ImageNet-layout sets (IN-val, V2, Sketch, IN-C), or None to skip the
    folder: every wnid for a 1000-class model, only the model's own wnids for a class subset. to_wnid maps the
    folder name first (ImageNetV2's numeric folders)."""
    to_wnid = to_wnid or (lambda name: name)
    if args.label_space is None:
        return lambda name: wnid_label(to_wnid(name))
    return lambda name: args.label_space.get(to_wnid(name))

def label_space_doc(args):
    if args.label_space is None:
        return "top-1 over 1000 classes"
    return (f"class-subset model: top-1 over its own {len(args.label_space)} classes, on the images of those "
            "classes only (folders of other classes skipped)")

def imagenet_v2_label(name):
    """ImageNetV2 folders are the 1k indices as integers ("0".."999"; "0000" style too). ImageFolder would
    sort them as strings and map "10" to 2."""
    if not name.isdigit():
        raise ValueError(f"ImageNet-V2 folder {name!r} is not a class index")
    return int(name)

def in9_label(name, sorted_position):
    """IN-9 class folder -> 0..8: a leading number ("00_dog"), else the class name ("dog"), else the sorted
    position among the folders (the official ImageFolder behaviour)."""
    head = name.split("_", 1)[0]
    if head.isdigit():
        return int(head)
    if name.lower() in in9_classes():
        return in9_classes().index(name.lower())
    return sorted_position

def imagenet_val_index(path):
    """ILSVRC2012_val_00000001.JPEG -> 0, the row of real.json (parse the name, never trust the order)."""
    name = os.path.basename(path)
    if not name.startswith("ILSVRC2012_val_"):
        raise ValueError(f"{name!r} is not an ILSVRC2012 val file name")
    return int(name[15:23]) - 1

def default_transform(args):
    """Resize(resize, shorter side) + CenterCrop(crop) + ToTensor + Normalize, bilinear unless told: training's
    validation transform (byproducts.EvalTransform), so both report the same numbers."""
    if args.resize < args.img_size:
        raise SystemExit(f"--resize {args.resize} < --img-size {args.img_size}: the centre crop would pad the image; "
                         "give a resize of at least the crop (the protocol's is img_size / 0.875)")
    return byproducts.EvalTransform(size=args.img_size, resize=args.resize, interpolation=args.interpolation)

def describe_default(args):
    return f"Resize({args.resize}, {args.interpolation})+CenterCrop({args.img_size})"

def square_transform(size, interpolation):
    """Resize((size, size)) of the whole image (no crop) + ToTensor + Normalize: COCO, WSOL, SI-Score resize."""
    return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode(interpolation)), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

class ImageList(Dataset):
    """Image files -> (normalised tensor, dataset index). Labels stay with the caller. `border` crops that many
    pixels off every side first (ObjectNet's red frame). Every image goes through byproducts.read_image (Sketch,
    IN-R and ObjectNet hold gray, CMYK and RGBA files); a broken one becomes a NaN tensor, which every metric
    counts wrong, and is counted in the JSON (byproducts.ImageReader)."""

    def __init__(self, paths, transform, border=0):
        self.paths, self.transform, self.border = list(paths), transform, border
        self.reader = byproducts.ImageReader(len(self.paths), broken="nan")

    def __len__(self):
        return len(self.paths)

    def load(self, i):
        img = self.reader.read(i, self.paths[i])
        if self.border:
            w, h = img.size
            img = img.crop((self.border, self.border, w - self.border, h - self.border))
        return img

    def __getitem__(self, i):
        return self.reader.finish(i, self.transform(self.load(i))), i

# -----------------------------------------------------------------------------
# COCO val for evaluation (instances parsed by byproducts.py, masks decoded by tools/coco_masks.py; no pycocotools)

class CocoEvalSet(Dataset):
    """COCO val images with >= 1 annotation (ASL's CocoDetection: imgToAnns keys), sorted by image id.
    Items: (image [3, S, S] after Resize((S, S)), index) or, with masks=True, also the sorted contiguous GT
    classes [k] and their masks uint8 [k, S, S] resized with nearest: 1 = a non-crowd instance of the class,
    255 = crowd region of the class only (ignored by PxAP), 0 = the rest.
    Targets [N, C] multi-hot over all annotations, crowd included (the COCO-AB notebook's getAnnIds)."""

    def __init__(self, image_dir, instances, size=224, masks=False, interpolation="bilinear"):
        self.coco = byproducts.CocoInstances(instances) if isinstance(instances, dict) else \
            byproducts.read_coco_instances(instances)
        self.category_ids = list(self.coco.cat_ids)
        self.images = [self.coco.images[i] for i in self.coco.image_ids if self.coco.anns[i]]
        self.targets = np.array([self.coco.target(im["id"]) for im in self.images], np.float32).reshape(
            len(self.images), len(self.category_ids))
        self.image_dir, self.size, self.masks = Path(image_dir), size, masks
        self.transform = square_transform(size, interpolation)
        self.reader = byproducts.ImageReader(len(self.images), broken="nan")  # broken: NaN, counted wrong

    def __len__(self):
        return len(self.images)

    def boxes(self, i):
        """{class index: [M, 4] (x0, y0, x1, y1) original pixels} of image i."""
        boxes, classes = self.coco.boxes(self.images[i]["id"])
        return {int(k): boxes[classes == k].astype(np.float64) for k in np.unique(classes)}

    def class_masks(self, i):
        """(classes [k], masks uint8 [k, S, S]) as described in the class docstring."""
        info, S = self.images[i], self.size
        h, w = info["height"], info["width"]
        per_class = {}
        for a in self.coco.anns[info["id"]]:
            m = per_class.setdefault(self.coco.cat_index[a["category_id"]], np.zeros((2, h, w), bool))
            m[1 if a.get("iscrowd", 0) else 0] |= annotation_mask(a["segmentation"], h, w)[:h, :w]
        classes = sorted(per_class)
        out = np.zeros((len(classes), S, S), np.uint8)
        for j, k in enumerate(classes):
            fg, crowd = per_class[k]
            full = np.where(fg, 1, np.where(crowd, 255, 0)).astype(np.uint8)
            out[j] = np.asarray(Image.fromarray(full).resize((S, S), Image.NEAREST))
        return torch.tensor(classes, dtype=torch.long), torch.from_numpy(out)

    def __getitem__(self, i):
        x = self.reader.finish(i, self.transform(self.reader.read(i, self.image_dir / self.images[i]["file_name"])))
        if not self.masks:
            return x, i
        return (x, i) + self.class_masks(i)

def _collate_with_masks(batch):
    return (torch.stack([b[0] for b in batch]), torch.tensor([b[1] for b in batch]),
            [b[2] for b in batch], [b[3] for b in batch])

# -----------------------------------------------------------------------------
# inference: the one prediction loop (evaluation and the training scripts' validation), batched, multi-worker,
# exact under torchrun

@torch.no_grad()
def predict(model, loader, device, autocast=contextlib.nullcontext, channels_last=False, points=False, pre=None,
            post=None, desc=None):
    """Run `model` over this process's share of a dataset and gather every process's outputs in dataset order.

    loader: a DataLoader whose sampler is a utils.UnpaddedDistributedSampler (list(loader.sampler) are the
    dataset indices of this process's rows) and whose items start with the image batch [B, 3, H, W] (the rest of
    an item is ignored). device: where the model is. autocast: a zero-argument factory of the context the model
    runs in (the scripts' bf16 / fp16 autocast; only the model runs inside it). channels_last: NHWC inputs.
    points: the output is model(x, return_points=True) = (logits, points [B, K, 2] or None), else model(x).
    pre(x) edits the normalised batch on the device (Cocc's hole). post(output) -> tensor or tuple of tensors
    [B, ...] to keep; default: every output as float32, a None output (a model without point head) left out.
    desc: the name of a Progress line (None: no line). The caller sets model.eval().
    Returns a tuple of CPU tensors [N, ...], row n = dataset item n, the same on every process."""
    if not isinstance(loader.sampler, UnpaddedDistributedSampler):
        raise TypeError("predict: the loader's sampler must be a UnpaddedDistributedSampler (each item once)")
    post = post or (lambda out: tuple(o.float() for o in (out if isinstance(out, tuple) else (out,)) if o is not None))
    indices = torch.tensor(list(loader.sampler), dtype=torch.long)
    progress = Progress(desc, len(loader.dataset)) if desc else None
    outs = []
    for batch in loader:
        x = utils.to_input(batch[0], device, channels_last)
        if pre is not None:
            x = pre(x)
        with autocast():
            out = model(x, return_points=True) if points else model(x)
        out = post(out)
        outs.append(tuple(o.cpu() for o in (out if isinstance(out, tuple) else (out,))))
        if progress:
            progress.update(len(x) * get_world_size())
    if sum(len(o[0]) for o in outs if o) != len(indices):
        raise ValueError("predict: the loader dropped items (drop_last=True?); every item must be predicted")
    ncols = len(outs[0]) if outs else None
    if dist_on():  # a process without items does not know how many outputs `post` gives: ask the others
        everyone = [None] * get_world_size()
        dist.all_gather_object(everyone, ncols)
        ncols = next((k for k in everyone if k is not None), None)
    cols = [torch.cat(c) for c in zip(*outs)] if outs else [torch.zeros(0)] * (ncols or 1)
    return gather_by_index(indices, *cols)

def per_process(batch, flag):
    """A global batch size (summed over the processes, as the training scripts' --batch-size) -> this
    process's share; SystemExit if the processes cannot split it evenly."""
    world = get_world_size()
    if batch % world:
        raise SystemExit(f"{flag} {batch} (global) must be divisible by {world} processes")
    return batch // world

def _loader(dataset, args, collate_fn=None):
    return DataLoader(dataset, batch_size=args.process_batch, sampler=UnpaddedDistributedSampler(dataset),
                      num_workers=args.workers, pin_memory=args.device.type == "cuda", collate_fn=collate_fn)

def predict_set(model, dataset, args, desc, **hooks):
    """predict over `dataset` with this run's loader, device, autocast and memory format; hooks: points, pre,
    post of predict."""
    return predict(model, _loader(dataset, args), args.device, lambda: utils.autocast(args.device, args.amp_dtype),
                   args.channels_last, desc=desc, **hooks)

# -----------------------------------------------------------------------------
# the benchmarks: each runner returns (results, protocol, counts), dicts keyed by the JSON keys (numbers, how
# they were measured, images used), or raises Skip(reason) when it cannot run for this model or these inputs

class Skip(Exception):
    """A benchmark that cannot run (a COCO root for an ImageNet model): evaluate_all records why in `skipped`."""

def eval_imagenet_val(model, args):
    """IN-1k top-1/top-5, IN-ReaL, and the in-distribution side of IN-O, from one pass over IN-val; Cocc on a
    second pass with the centre hole; the point head's accuracy if the checkpoint has one and boxes are found.
    A class-subset model (args.label_space) sees only the folders of its own classes, top-1 over those.
    With --imagenet-o, results["ino_in_scores"] holds IN-O's in-distribution side, the anomaly scores of the val
    images of the 200 IN-O wnids: evaluate_all takes it out of the results and hands it to eval_imagenet_o."""
    res, proto, n = {}, {}, {}
    paths, labels, _ = scan_class_folders(args.imagenet_val, imagenet_label_of(args))
    if not paths:
        raise SystemExit(f"--imagenet-val {args.imagenet_val}: no <wnid>/ folder of the model's classes holds an "
                         "image; give the val/ folder of the set the model was trained on")
    ds = ImageList(paths, default_transform(args))
    logits, *points = predict_set(model, ds, args, "IN-1k", points=args.has_points)  # points: [] or [[N, 1, 2]]
    acc = topk_accuracy(logits, labels)
    res["in1k"], res["in1k_top5"] = acc["top1"], acc["top5"]
    proto["in1k"] = f"{describe_default(args)}; {label_space_doc(args)}"
    n["in1k"] = len(paths)
    if args.imagenet_real and args.label_space is None:
        real = json.loads(Path(args.imagenet_real).read_text())
        r = real_accuracy(safe_argmax(logits), [imagenet_val_index(p) for p in paths], real)
        res["inreal"], res["inreal_all"], n["inreal"] = r["labelled"], r["all"], r["n_labelled"]
        proto["inreal"] = ("top-1 in the real.json list of the image (by file name); images with an empty list "
                           "excluded (official: 46,837 of 50,000)")
        proto["inreal_all"] = "the same hits over all IN-val images (an empty list counts as wrong; appendix tables)"
    if args.imagenet_o:
        in_o = torch.from_numpy(np.isin(labels, subset_indices("imagenet_o")))
        res["ino_in_scores"] = -max_softmax(logits[in_o], subset_indices("imagenet_o"))
    if points:
        boxes, sizes, source = val_point_boxes(paths, args)
        kept = sum(b is not None for b in boxes)
        if kept:
            res["point_acc"] = box_point_accuracy(points[0][:, 0].numpy(), boxes, sizes, args.resize, args.img_size)
            n["point_acc"] = kept
            proto["point_acc"] = (f"point head output on the IN-1k input ({describe_default(args)}) mapped back to "
                                  f"the original image; hit iff inside any GT box of {source} (inclusive)")
    fill = cocc_fill(args.cocc_fill)
    (pred,) = predict_set(model, ds, args, "Cocc", pre=lambda x: occlude_center(x, args.cocc_hole, fill.to(x.device)),
                          post=lambda o: safe_argmax(o.float()))
    res["cocc"] = 100.0 * float(np.mean(pred.numpy() == labels))
    covers = args.cocc_hole >= args.img_size  # the input is the img_size x img_size centre crop
    res["cocc_params"] = {"hole": args.cocc_hole, "fill": args.cocc_fill, "input": args.img_size,
                          "hole_covers_input": covers}
    proto["cocc"] = (f"[A] centre occlusion on IN-val: {describe_default(args)}, then a {args.cocc_hole}x"
                     f"{args.cocc_hole} centre square set to {args.cocc_fill} ({_FILL_DOC[args.cocc_fill]}); top-1")
    if covers:
        why = (f"the {args.cocc_hole}-px Cocc hole covers the whole {args.img_size}-px input: every image is the fill "
               f"alone, so Cocc is the share of the one class predicted for it (chance); --cocc-hole "
               f"{args.img_size // 2} is the paper's half side")
        log(f"warning: {why}")
        proto["cocc"] += f"; NOT A MEASURE: {why}"
    n["cocc"] = len(paths)
    return res, proto, n

def find_val_boxes(imagenet_val):
    """ILSVRC box XMLs next to an IN-val tree, in the two layouts that ship them: <root>/boxes/val/ beside
    <root>/val/ (tools/synth.py) and ILSVRC/Annotations/CLS-LOC/val/ beside ILSVRC/Data/CLS-LOC/val/."""
    val = Path(imagenet_val).resolve()
    candidates = [val.parent / "boxes" / val.name]
    if val.parent.name == "CLS-LOC" and len(val.parents) > 2:  # ILSVRC/Data/CLS-LOC/val
        candidates.append(val.parents[2] / "Annotations" / "CLS-LOC" / val.name)
    return next((c for c in candidates if c.is_dir()), None)

def image_boxes(paths, keys, table):
    """The one join of ILSVRC box XMLs (`table`, from byproducts.load_boxes) with image files, for the point
    accuracy of training's validation and of evaluate.py -> (boxes, sizes): per image its GT boxes [M, 4]
    normalised to [0, 1] of the image (by the XML's <size>, which may differ from the JPEG's) or None, and the
    [N, 2] (W, H) of the image the eval crop is cut from (its header only). Under the bad-input policy: an image
    whose header cannot be read gets None (the val set counts the image wrong; no point sample), counted and
    named once in a BadInputWarning."""
    sizes, out, problems = np.zeros((len(paths), 2), np.float64), [], byproducts.Problems("point-accuracy boxes")
    for j, (path, key) in enumerate(zip(paths, keys)):
        rec = table.get(key) or table.get(key.split("/")[-1])
        if rec is None:
            out.append(None)
            continue
        try:
            with Image.open(path) as im:
                sizes[j] = im.size
        except Exception as e:  # zero bytes, not an image, missing: the val pass counts it as wrong
            problems.add("unreadable-image", path, type(e).__name__)
            out.append(None)
            continue
        w, h = rec["size"] or sizes[j]
        out.append(rec["boxes"] / np.array([w, h, w, h], np.float64))
    problems.finish()
    return out, sizes

def box_point_accuracy(points, boxes, sizes, resize, crop):
    """% of points [N, 2] on the eval crop inside a GT box, image_boxes' (boxes, sizes); images without boxes skipped."""
    keep = [i for i, b in enumerate(boxes) if b is not None]
    px = eval_points_to_original(points[keep], sizes[keep], resize=resize, crop=crop)
    return point_in_box_accuracy(px / sizes[keep], [boxes[i] for i in keep])

def val_point_boxes(paths, args):
    """GT boxes of the IN-val images for the point accuracy -> (boxes, sizes, description) as image_boxes
    returns them. Source: the ILSVRC box XMLs of --imagenet-boxes (or found by find_val_boxes), else the WSOL
    metadata's localization.txt (boxes in the frame of its image_sizes.txt)."""
    xml_root = args.imagenet_boxes or find_val_boxes(args.imagenet_val)
    if xml_root:
        keys = [f"{Path(p).parent.name}/{Path(p).stem}" for p in paths]
        return (*image_boxes(paths, keys, byproducts.load_boxes(str(xml_root))), f"the ILSVRC box XMLs in {xml_root}")
    if not args.wsol_metadata:
        return [None] * len(paths), np.zeros((len(paths), 2), np.float64), None
    meta = read_wsol_metadata(args.wsol_metadata)
    table = {os.path.basename(k): {"size": meta["sizes"][k], "boxes": b} for k, b in meta["boxes"].items()}
    return (*image_boxes(paths, [os.path.basename(p) for p in paths], table), "localization.txt of --wsol-metadata")

_FILL_DOC = {"mean": "0 after normalisation = the mean pixel", "black": "black pixels, (0 - mean) / std"}

def cocc_fill(kind):
    """The normalised [3] value of a fill (Cocc's hole, context erasing): _FILL_DOC."""
    return torch.zeros(3) if kind == "mean" else -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)

def eval_top1_folder(model, args, root, label_of, desc, transform=None, border=0, return_paths=False):
    """Logits [N, C] of every image under root/<folder>/ that label_of maps, labels [N], and the folder names
    (or, with return_paths, the image paths) [N]."""
    paths, labels, folders = scan_class_folders(root, label_of)
    (pred,) = predict_set(model, ImageList(paths, transform or default_transform(args), border), args, desc)
    return pred, labels, (paths if return_paths else folders)

def eval_imagenet_v2(model, args):
    label_of = imagenet_label_of(args, lambda name: wnids("imagenet")[imagenet_v2_label(name)])
    logits, labels, _ = eval_top1_folder(model, args, args.imagenet_v2, label_of, "IN-V2")
    return ({"inv2": top1(logits, labels)},
            {"inv2": f"{describe_default(args)}; label = int(folder name); {label_space_doc(args)}"},
            {"inv2": len(labels)})

def _eval_200_classes(model, args, root, label_space, key, desc, source):
    """IN-A / IN-R: folder wnid -> position among the 200, argmax over those 200 classes only."""
    logits, labels, _ = eval_top1_folder(model, args, root, lambda n: wnid_label(n, label_space), desc)
    return ({key: masked_top1(logits, labels, subset_indices(label_space))},
            {key: f"{describe_default(args)}; argmax over the 200 {desc} classes ({source})"}, {key: len(labels)})

def eval_imagenet_a(model, args):
    return _eval_200_classes(model, args, args.imagenet_a, "imagenet_a", "ina", "IN-A", "hendrycks eval.py")

def eval_imagenet_r(model, args):
    return _eval_200_classes(model, args, args.imagenet_r, "imagenet_r", "inr", "IN-R",
                             "hendrycks imagenet-r eval.py")

def eval_sketch(model, args):
    logits, labels, _ = eval_top1_folder(model, args, args.imagenet_sketch, imagenet_label_of(args), "Sketch")
    return {"sketch": top1(logits, labels)}, {"sketch": f"{describe_default(args)}; {label_space_doc(args)}"}, \
        {"sketch": len(labels)}

def eval_imagenet_o(model, args, in_scores):
    """IN-O against in_scores [M], the anomaly scores of the IN-val images of the same 200 wnids (what
    eval_imagenet_val returns as results["ino_in_scores"]); Skip if they are None (no --imagenet-val)."""
    if in_scores is None:
        raise Skip("IN-O needs --imagenet-val for its in-distribution side (val images of the 200 IN-O wnids)")
    logits, _, _ = eval_top1_folder(model, args, args.imagenet_o, lambda n: wnid_label(n, "imagenet_o"), "IN-O")
    m = ood_measures(-max_softmax(logits, subset_indices("imagenet_o")), in_scores)
    proto = (f"{describe_default(args)}; anomaly score = -max softmax over the 200 IN-O classes; OOD (IN-O) is "
             f"the positive class against IN-val images of the same 200 wnids (hendrycks get_measures)")
    return ({"ino_aupr": m["aupr"], "ino_auroc": m["auroc"], "ino_fpr95": m["fpr95"]},
            {"ino_aupr": proto, "ino_auroc": proto + "; [A] the table's IN-O column shows AUROC by default "
             "(56.7 for R50 is far above AUPR's 16.7% chance level and Hendrycks' ResNet AUPRs)"},
            {"ino": len(logits), "ino_in_distribution": len(in_scores)})

def eval_imagenet_c(model, args):
    """One pass over every (corruption, severity) set found among the 15 benchmark corruptions."""
    root = Path(args.imagenet_c)
    paths, labels, groups = [], [], []
    found = [c for c in IMAGENET_C_CORRUPTIONS if (root / c).is_dir()]
    for c in found:
        for s in range(1, 6):
            if (root / c / str(s)).is_dir():
                p, l, _ = scan_class_folders(root / c / str(s), imagenet_label_of(args))
                paths += p
                labels.append(l)
                groups += [(c, s)] * len(p)
    labels = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    # IN-C images are already 224 x 224: CenterCrop only (Resize(256) would zoom in once more)
    tf = T.Compose([T.CenterCrop(args.img_size), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    (pred,) = predict_set(model, ImageList(paths, tf), args, "IN-C", post=lambda o: safe_argmax(o.float()))
    _, acc = per_level_top1(pred.numpy() == labels, groups)  # {(corruption, severity): top-1 %}
    out = imagenet_c_summary(acc)
    out["inc_sets"] = len(acc)
    note = "" if len(acc) == 75 else f"; PARTIAL: {len(acc)} of 75 (corruption, severity) sets found"
    proto = (f"CenterCrop({args.img_size}) only; mean top-1 over the (corruption, severity) sets, equal weight "
             f"per set, 15 corruptions without the 4 extra ones{note}")
    return out, {"inc_acc": proto, "inc_mce": "mean over corruptions of sum_s err / AlexNet's (easyrobust "
                 "get_ce_alexnet)" + note}, {"inc": len(paths)}

def eval_objectnet(model, args):
    root = Path(args.objectnet)
    images = root / "images" if (root / "images").is_dir() else root
    logits, _, folders = eval_top1_folder(model, args, images, lambda n: 0 if n in objectnet_to_imagenet() else None,
                                          "ObjectNet", border=args.objectnet_border)
    a, b = objectnet_accuracy(logits, [objectnet_to_imagenet()[f] for f in folders])
    base = (f"{args.objectnet_border}px border cropped, then {describe_default(args)}; only the 113 folders that map "
            "to ImageNet")
    return ({"objnet_A": a, "objnet_B": b},
            {"objnet_A": base + "; protocol A (table default): argmax over 1000, correct iff one of the folder's "
             "1k classes", "objnet_B": base + "; protocol B: argmax over the 125 mapped 1k classes"},
            {"objnet": len(folders)})

def eval_si_score(model, args):
    root = Path(args.si_score)
    res, proto, n = {}, {}, {}
    if args.si_transform == "resize":
        tf = square_transform(args.img_size, args.interpolation)
        desc = f"Resize(({args.img_size}, {args.img_size})) of the whole square image"
    else:
        tf, desc = default_transform(args), describe_default(args) + " (clips the image border)"

    def label_of(name):
        if name not in si_score_labels():
            raise ValueError(f"SI-Score class folder {name!r} is not in data/si_score_labels.json")
        return si_score_labels()[name]

    for key, names in SI_SCORE_FACTORS.items():
        d = next((root / nm for nm in names if (root / nm).is_dir()), None)
        if d is None:
            continue
        logits, labels, paths = eval_top1_folder(model, args, d, label_of, f"SI-Score {d.name}", transform=tf,
                                                 return_paths=True)
        res[f"{key}_pooled"], n[key] = top1(logits, labels), len(labels)
        pooled = f"{desc}; 1000-way top-1 pooled over all images of {d.name}/"
        proto[f"{key}_pooled"] = pooled
        levels = si_score_levels(d / "metadata.csv", paths, SI_SCORE_LEVEL_FIELDS[key])
        if levels is None:
            res[key] = res[f"{key}_pooled"]
            proto[key] = pooled + f" (NOT the official per-level mean: {d.name}/metadata.csv is missing)"
            continue
        res[key], per_level = per_level_top1(safe_argmax(logits) == labels, levels)
        res[f"{key}_per_level"] = {str(k): v for k, v in sorted(per_level.items())}
        n[f"{key}_levels"] = len(per_level)
        proto[key] = (f"{desc}; 1000-way top-1 per {'/'.join(SI_SCORE_LEVEL_FIELDS[key])} level of "
                      f"{d.name}/metadata.csv, mean over the levels (robustness_metrics synthetic.py)")
    return res, proto, n

def si_score_levels(metadata_csv, paths, fields):
    """The factor level of each SI-Score image: metadata.csv rows (image_id, ..., fields ...) keyed by the file
    stem (".../area/koala/17.jpg" -> 17). One field -> its text ("0.5"); two (x, y) -> "(0.05,0.10)", as
    robustness_metrics formats them. None if the file is missing; SystemExit naming it if an image has no row."""
    metadata_csv = Path(metadata_csv)
    if not metadata_csv.is_file():
        return None
    with open(metadata_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [k for k in ("image_id",) + tuple(fields) if rows and k not in rows[0]]
    if not rows or missing:
        raise SystemExit(f"--si-score: {metadata_csv} needs the columns image_id,{','.join(fields)} "
                         f"(missing {missing or 'all rows'}); use the metadata.csv of the SI-Score release")
    if len(fields) == 1:
        level = {int(float(r["image_id"])): r[fields[0]].strip() for r in rows}
    else:
        level = {int(float(r["image_id"])): "(%.2f,%.2f)" % tuple(float(r[k]) for k in fields) for r in rows}
    out = []
    for p in paths:
        stem = Path(p).stem
        if not stem.isdigit() or int(stem) not in level:
            raise SystemExit(f"--si-score: {p} has no row in {metadata_csv}; use that folder's own metadata.csv")
        out.append(level[int(stem)])
    return out

def bgc_split(root, split):
    """Background Challenge split -> (paths, IN-9 labels, class folder names)."""
    d = Path(root) / split / "val"
    position = {f.name: pos for pos, f in enumerate(_subdirs(d))}
    return scan_class_folders(d, lambda name: in9_label(name, position[name]))

@torch.no_grad()
def bgc_vulnerability(model, args, fg_paths, mask_paths, labels, bg_paths):
    """BGC-acc (challenge_eval.py, adv_bgs_eval_model): foreground i (image fg_paths[i], mask [H, W] 0/1
    .npy) is vulnerable if some background b of the pool makes the model predict another IN-9 class on
    x = b (1 - m) + m fg, composed in [0, 1] before normalisation. Backgrounds are batched (--bgc-batch-size
    over all processes); a foreground stops at its first fooling batch. Each rank takes a strided share of the
    foregrounds. Returns vulnerable [N] bool.
    Its own loop, not predict's: each foreground is one answer from up to |pool| composites built on the device."""
    to_tensor = T.ToTensor()
    mean = torch.tensor(IMAGENET_MEAN, device=args.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=args.device).view(1, 3, 1, 1)
    bgs = torch.cat([x for x, _ in DataLoader(ImageList(bg_paths, T.PILToTensor()), batch_size=args.process_batch,
                                              num_workers=args.workers)]).to(args.device)  # uint8 [Nb, 3, H, W]
    map9 = torch.as_tensor(imagenet_to_in9(), device=args.device)
    mine = list(UnpaddedDistributedSampler(len(fg_paths)))
    vulnerable, progress = [], Progress("BGC-acc foregrounds", len(fg_paths))
    fg_reader = byproducts.ImageReader(len(fg_paths), broken="nan")  # a broken foreground: NaN, "vulnerable"
    for i in mine:
        fg = fg_reader.finish(i, to_tensor(fg_reader.read(i, fg_paths[i]))).to(args.device)[None]
        m = np.load(mask_paths[i]).astype(np.float32)
        if m.ndim == 3:  # an [H, W, 1|3] or [1|3, H, W] mask: any channel marks the foreground
            m = m.max(-1) if m.shape[-1] in (1, 3) else m.max(0)
        m = torch.from_numpy(m).to(args.device).clamp(0, 1)[None, None]
        fooled = False
        for s in range(0, len(bgs), args.process_bgc_batch):
            x = bgs[s:s + args.process_bgc_batch].float() / 255 * (1 - m) + m * fg
            x = utils.to_input((x - mean) / std, args.device, args.channels_last)
            with utils.autocast(args.device, args.amp_dtype):
                pred = safe_argmax(model(x).float())
            pred = torch.where(pred < 0, -1, map9[pred.clamp(min=0)])
            if bool((pred != int(labels[i])).any()):
                fooled = True
                break
        vulnerable.append(fooled)
        progress.update(get_world_size())
    (out,) = gather_by_index(torch.tensor(mine, dtype=torch.long), torch.tensor(vulnerable, dtype=torch.bool))
    return out.numpy()

def eval_bg_challenge(model, args):
    """Accuracy on each split found, BGC-gap = mixed_same - mixed_rand, and BGC-acc over all foregrounds
    against every only_bg_t background (same class included)."""
    root = Path(args.bg_challenge)
    tf = T.Compose([T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])  # 224 px inputs as released
    res, proto, n, split_acc = {}, {}, {}, {}
    for split in BGC_SPLITS:
        if (root / split / "val").is_dir():
            paths, labels, _ = bgc_split(root, split)
            (logits,) = predict_set(model, ImageList(paths, tf), args, f"BGC {split}")
            split_acc[split] = in9_accuracy(logits, labels)
            n[f"bgc_{split}"] = len(paths)
    res["bgc_split_acc"] = split_acc
    if "mixed_same" in split_acc and "mixed_rand" in split_acc:
        res["bgc_gap"] = bgc_gap(split_acc["mixed_same"], split_acc["mixed_rand"])
        proto["bgc_gap"] = ("ToTensor only; IN-9 = in_to_in9[argmax over 1000] (-1 wrong); "
                            "acc(mixed_same) - acc(mixed_rand)")
    masks_dir = root / "fg_mask" / "val"
    if not args.bgc_skip_acc and masks_dir.is_dir() and (root / "only_bg_t" / "val").is_dir() \
            and (root / "original" / "val").is_dir():
        fg_paths, mask_paths, labels = [], [], []
        for pos, d in enumerate(_subdirs(masks_dir)):
            originals = {Path(p).stem: p for p in _images(root / "original" / "val" / d.name)}
            for npy in sorted(d.glob("*.npy")):
                if npy.stem in originals:
                    fg_paths.append(originals[npy.stem])
                    mask_paths.append(str(npy))
                    labels.append(in9_label(d.name, pos))
        bg_paths = bgc_split(root, "only_bg_t")[0]
        vulnerable = bgc_vulnerability(model, args, fg_paths, mask_paths, labels, bg_paths)
        res["bgc_acc"] = bgc_accuracy(vulnerable)
        n["bgc_acc_foregrounds"], n["bgc_acc_backgrounds"] = len(fg_paths), len(bg_paths)
        proto["bgc_acc"] = ("worst case over all only_bg_t backgrounds: x = bg (1 - m) + m fg in [0, 1], a "
                            "foreground counts if no background changes the IN-9 prediction away from its class")
    return res, proto, n

def read_wsol_metadata(meta_dir):
    """wsolevaluation metadata/ILSVRC/<split>/: image_ids.txt, class_labels.txt (id,cls), image_sizes.txt
    (id,w,h), localization.txt (id,x0,y0,x1,y1, one line per box) -> dict of ids, labels, sizes, boxes."""
    d = Path(meta_dir)

    def rows(name):
        return [line.strip().split(",") for line in (d / name).read_text().splitlines() if line.strip()]

    ids = [r[0] for r in rows("image_ids.txt")]
    labels = {r[0]: int(r[1]) for r in rows("class_labels.txt")}
    sizes = {r[0]: (int(r[1]), int(r[2])) for r in rows("image_sizes.txt")}
    boxes = {}
    for r in rows("localization.txt"):
        boxes.setdefault(r[0], []).append([float(v) for v in r[1:5]])
    return {"ids": ids, "labels": labels, "sizes": sizes, "boxes": {k: np.array(v) for k, v in boxes.items()}}

def resolve_wsol_images(ids, images_root=None, imagenet_val=None):
    """Metadata image ids ("val/ILSVRC2012_val_00000001.JPEG") -> file paths: images_root/<id> if it exists,
    else the file of the same name anywhere in an IN-val tree of wnid folders."""
    paths, by_name = [], None
    for k in ids:
        p = Path(images_root) / k if images_root else None
        if p is None or not p.is_file():
            if by_name is None:
                by_name = {}
                for d in _subdirs(imagenet_val) if imagenet_val else []:
                    by_name.update({os.path.basename(q): q for q in _images(d)})
            p = by_name.get(os.path.basename(k))
            if p is None:
                raise FileNotFoundError(f"WSOL image {k} is neither under --wsol-images nor in --imagenet-val")
        paths.append(str(p))
    return paths

def compute_cams(model, fmap, classes, size):
    """CAMs [P, size, size] float32 (not yet normalised) of class classes[p] on feature map fmap[p]
    ([P, D, h, w] from model.feature_map): classifier.weight[c] . fmap, upsampled bicubically (wsolevaluation
    uses cv2 INTER_CUBIC). ResNet: last conv stage x fc weights (CAM). ViT: the patch tokens after the final
    LayerNorm x the head's weights, a documented stand-in (the head was trained on the class token only)."""
    with torch.autocast(fmap.device.type, enabled=False):  # the weighting and upsampling in float32, even under bf16
        cam = torch.einsum("pd,pdhw->phw", model.classifier.weight.float()[classes], fmap.float())[:, None]
        if cam.shape[-2:] != (size, size):
            cam = F.interpolate(cam, size=(size, size), mode="bicubic", align_corners=False)
    return cam[:, 0]

@torch.no_grad()
def eval_wsol(model, args):
    """MaxBoxAccV2 (and V1) of the GT-class CAM on the wsolevaluation metadata split (Resize((224, 224)))."""
    meta = read_wsol_metadata(args.wsol_metadata)
    ids = meta["ids"]
    paths = resolve_wsol_images(ids, args.wsol_images, args.imagenet_val)
    S = args.img_size
    ds = ImageList(paths, square_transform(S, args.interpolation))
    acc = BoxAccumulator(args.cam_curve_interval, args.iou_thresholds)
    progress = Progress("WSOL MaxBoxAccV2", len(ds))
    # Its own loop, not predict's: the CAMs (feature maps, not logits) are consumed batch by batch, the box search
    # (~15-20 ms per image on one core) in a pool while the model computes the next CAMs; only counts are kept
    pool = mp.get_context("spawn").Pool(args.workers) if args.workers > 0 else None
    pending = deque()
    for x, idx in _loader(ds, args):
        x = utils.to_input(x, args.device, args.channels_last)
        classes = torch.tensor([meta["labels"][ids[i]] for i in idx.tolist()], device=args.device)
        with utils.autocast(args.device, args.amp_dtype):
            fmap = model.feature_map(x)
        cams = compute_cams(model, fmap, classes, S).cpu().numpy()
        for cam, i in zip(cams, idx.tolist()):
            w, h = meta["sizes"][ids[i]]
            gt = meta["boxes"].get(ids[i], np.zeros((0, 4)))
            # wsolevaluation resize_bbox: int() of the box scaled to the S x S input
            gt = np.floor(gt * np.array([S / w, S / h, S / w, S / h])).astype(np.int64)
            if pool is None:
                acc.accumulate(normalize_cam(cam), gt)
            else:
                pending.append(pool.apply_async(cam_box_ious, (normalize_cam(cam), gt, acc.thresholds)))
        while len(pending) > 4 * args.process_batch:
            acc.add(*pending.popleft().get())
        progress.update(len(idx) * get_world_size())
    while pending:
        acc.add(*pending.popleft().get())
    if pool is not None:
        pool.close()
        pool.join()
    acc.load_state(all_reduce_sum(acc.state()))
    res = acc.compute()
    vit = " ViT: patch tokens after the final LayerNorm x head weights [A]." if model.is_vit else ""
    proto = (f"GT-class CAM (feature map x classifier weights), Resize(({S}, {S})), bicubic upsampling, min-max "
             f"normalised; thresholds arange(0, 1, {args.cam_curve_interval}); boxes of all 8-connected components "
             f"(own labelling, no OpenCV); IoU {list(args.iou_thresholds)} averaged for V2; V1 = IoU 50, largest "
             f"component.{vit}")
    return res, {"maxboxacc_v2": proto}, {"wsol": len(ds)}

@torch.no_grad()
def eval_coco(model, args):
    """COCO val: mAP (80 classes, images with >= 1 annotation) and the point head's per-class accuracy from one
    predict pass; class-mean PxAP of the GT-class CAMs and the two context-bias metrics from a second pass that
    also loads the instance masks."""
    root = Path(args.coco)
    instances = root / "annotations" / f"instances_{args.coco_split}.json"
    ds = CocoEvalSet(root / args.coco_split, instances, args.coco_size, interpolation=args.interpolation)
    C = len(ds.category_ids)
    if model.classifier.out_features != C:
        raise Skip(f"needs a {C}-class model (the categories of {instances.name}), this one has "
                   f"{model.classifier.out_features}")
    logits, *points = predict_set(model, ds, args, "COCO", points=args.has_points)
    res, proto, n = {}, {}, {"coco": len(ds)}
    res["coco_map"], ap = mean_average_precision(logits.numpy(), ds.targets)
    res["coco_ap_per_class"] = {str(c): float(a) for c, a in zip(ds.category_ids, ap)}
    no_pos = int((ds.targets.sum(0) == 0).sum())
    proto["coco_map"] = (f"Resize(({args.coco_size}, {args.coco_size})); {args.coco_split} images with >= 1 "
                         f"annotation; ASL average precision (ties grouped), mean over {C} classes"
                         + (f"; {no_pos} classes without positives count as 0" if no_pos else ""))
    if args.coco_pxap or args.coco_context:
        hist, ctx = coco_mask_pass(model, args, ds, logits)
        parts = ([pxap_results(hist, model.is_vit)] if args.coco_pxap else []) + \
            ([context_results(ctx, args)] if args.coco_context else [])
        for r, p, c in parts:
            res.update(r)
            proto.update(p)
            n.update(c)
    if points:
        h = coco_point_hits(ds, points[0].numpy())
        res["coco_point_acc"] = 100.0 * float(h[h >= 0].mean()) if (h >= 0).any() else float("nan")
        proto["coco_point_acc"] = "per (image, GT class): the class's predicted point inside any GT box of the class"
    return res, proto, n

def coco_point_hits(ds, points):
    """points [N, C, 2] (normalised, one per class head) -> hits int8 [N, C]: 1 if the point of GT class k of
    image n is inside one of its boxes (inclusive), 0 if not, -1 where k is not in image n."""
    hits = np.full(points.shape[:2], -1, np.int8)
    for i, info in enumerate(ds.images):
        for k, boxes in ds.boxes(i).items():
            p = points[i, k] * np.array([info["width"], info["height"]])
            hits[i, k] = int(point_in_box_accuracy(p[None], [boxes]) > 0)
    return hits

@torch.no_grad()
def coco_mask_pass(model, args, ds, logits):
    """The pass over COCO val with the instance masks: PxAP histograms hist [2 (fg | bg), C, bins] summed over
    all images and processes, and the context scores ctx [N, C, 4] of context_scores (NaN where a pair does not
    qualify; all NaN without --coco-context), in dataset order. logits [N, C]: predict's, to pick the pairs.
    Its own loop, not predict's: per image the GT classes' CAMs and one forward per erased class."""
    masked = copy.copy(ds)  # the same images and reader (a broken image is counted once)
    masked.masks = True
    C, S = len(ds.category_ids), args.coco_size
    edges = pxap_bin_edges(args.cam_curve_interval)
    hist = np.zeros((2, C, len(edges) - 1), np.float64)
    fill = cocc_fill(args.ctx_fill).to(args.device).view(3, 1, 1)
    loader, ctx = _loader(masked, args, collate_fn=_collate_with_masks), [torch.zeros(0, C, 4)]
    progress = Progress("COCO masks", len(ds))
    for x, idx, classes, masks in loader:
        x = utils.to_input(x, args.device, args.channels_last)
        if args.coco_pxap:
            flat = torch.cat(classes).to(args.device)
            owner = torch.repeat_interleave(torch.arange(len(idx)), torch.tensor([len(c) for c in classes]))
            with utils.autocast(args.device, args.amp_dtype):
                fmap = model.feature_map(x)  # once per image, shared by its GT classes
            cams = compute_cams(model, fmap[owner.to(args.device)], flat, S).cpu().numpy()
            for cam, k, m in zip(cams, flat.tolist(), torch.cat(masks).numpy()):
                fg_h, bg_h = pxap_histograms(normalize_cam(cam), m, edges)
                hist[0, k] += fg_h
                hist[1, k] += bg_h
        ctx.append(context_scores(model, args, x, logits[idx], classes, masks, idx, fill) if args.coco_context
                   else torch.full((len(idx), C, 4), float("nan")))
        progress.update(len(idx) * get_world_size())
    (ctx,) = gather_by_index(torch.tensor(list(loader.sampler), dtype=torch.long), torch.cat(ctx))
    return all_reduce_sum(hist), ctx

def pxap_results(hist, is_vit):
    """hist [2, C, bins] -> ({pxap, pxap_pooled}, protocol, counts): the class-mean PxAP over the classes with
    a positive pixel, and the PxAP of the histograms pooled over classes."""
    C = hist.shape[1]
    per_class = [pxap(hist[0, k], hist[1, k]) for k in range(C)]
    present = [v for v in per_class if not math.isnan(v)]
    res = {"pxap": float(np.mean(present)) if present else float("nan"),
           "pxap_pooled": pxap(hist[0].sum(0), hist[1].sum(0))}
    proto = {"pxap": "[A] class-mean PxAP: per GT class of an image, its CAM (Resize((S, S)) input, bicubic, "
                     "min-max normalised) against the union of its instance masks (nearest-resized); crowd-only "
                     "pixels ignored; histograms per class over the whole set, mean over classes with a positive"
                     " pixel" + (" [ViT: patch-token CAM]" if is_vit else "")}
    return res, proto, {"pxap_classes": len(present)}

def context_results(ctx, args):
    """ctx [N, C, 4] of context_scores -> (ctx_random / ctx_worst with their _flip and _drop variants,
    protocol, counts) over the qualifying (image, class) pairs."""
    c = ctx.numpy().reshape(-1, 4)
    c = c[~np.isnan(c[:, 0])]
    what = (f"[A] Shetty et al. reconstructed: pairs (image, GT class c) with sigmoid score > {args.ctx_thr} and "
            f"another GT class; erase another class o's masks minus c's mask (or c's own masks), fill = "
            f"{args.ctx_fill} ({_FILL_DOC[args.ctx_fill]}); o = ")
    res, proto = {}, {}
    for key, col, which in (("ctx_random", 1, f"one other class drawn uniformly (seed {args.ctx_seed})"),
                            ("ctx_worst", 2, "the other class whose erasure lowers s_c most")):
        m = context_bias(c[:, 0], c[:, col], c[:, 3], args.ctx_thr)
        res.update({key: m["diff"], f"{key}_flip": m["flip"], f"{key}_drop": m["drop"]})
        proto[key] = what + which + "; mean of s_c(o erased) - s_c(c erased), in points"
        proto[f"{key}_flip"] = what + which + "; % pairs whose s_c(o erased) <= thr"
        proto[f"{key}_drop"] = what + which + "; mean of s_c - s_c(o erased), in points (table default)"
    return res, proto, {"ctx_pairs": len(c)}

def context_scores(model, args, x, logits, classes, masks, idx, fill):
    """Per image of the batch: [C, 4] = (clean s_c, s_c after erasing the random other class, after the worst
    one, after erasing c itself) for each qualifying class c, NaN elsewhere. The erased region of o != c is o's
    mask (crowd included) minus c's mask; of c, c's mask. Every (c, o) pair is one forward pass, batched."""
    C = logits.shape[1]
    out = torch.full((len(idx), C, 4), float("nan"))
    probs = logits.sigmoid().cpu()
    jobs = []  # (b, c, o)
    for b in range(len(idx)):
        cls = classes[b].tolist()
        for c in cls:
            if probs[b, c] > args.ctx_thr and len(cls) > 1:
                jobs += [(b, c, o) for o in cls]  # o == c: the class of interest itself
    scores = []
    for s in range(0, len(jobs), args.process_batch):
        chunk = jobs[s:s + args.process_batch]
        xs = x[[b for b, _, _ in chunk]].clone()
        for j, (b, c, o) in enumerate(chunk):
            cls = classes[b].tolist()
            region = masks[b][cls.index(o)] > 0
            if o != c:
                region &= ~(masks[b][cls.index(c)] > 0)
            region = region.to(args.device)
            xs[j] = torch.where(region[None], fill, xs[j])
        with utils.autocast(args.device, args.amp_dtype):
            p = model(xs).float().sigmoid()
        scores += [float(p[j, c]) for j, (_, c, _) in enumerate(chunk)]
    per_pair = {}
    for (b, c, o), s in zip(jobs, scores):
        per_pair.setdefault((b, c), []).append((o, s))
    for (b, c), lst in per_pair.items():
        own = [s for o, s in lst if o == c][0]
        lst = [(o, s) for o, s in lst if o != c]
        rng = np.random.default_rng([args.ctx_seed, int(idx[b]), c])  # fixed per (image, class)
        out[b, c, 0] = probs[b, c]
        out[b, c, 1] = lst[int(rng.integers(len(lst)))][1]
        out[b, c, 2] = min(s for _, s in lst)
        out[b, c, 3] = own
    return out

# -----------------------------------------------------------------------------
# the paper-style table

# (JSON key, header, higher is better; None: no arrow, no difference); the IN-Real, IN-O, ObjNet and context
# columns follow --real-denominator, --ino-metric, --objnet-protocol and --ctx-metric; Params = meta.params_m
TABLE_COLUMNS = [
    ("params", "Params", None), ("in1k", "IN-1k", True), ("inv2", "IN-V2", True), ("inreal", "IN-Real", True), ("ina", "IN-A", True),
    ("inc_acc", "IN-C", True), ("ino", "IN-O", True), ("sketch", "Sketch", True), ("inr", "IN-R", True),
    ("cocc", "Cocc", True), ("objnet", "ObjNet", True), ("si_size", "SI-size", True), ("si_loc", "SI-loc", True),
    ("si_rot", "SI-rot", True), ("bgc_gap", "BGC-gap", False), ("bgc_acc", "BGC-acc", True),
    ("inc_mce", "IN-C mCE", False), ("maxboxacc_v2", "Loc", True), ("point_acc", "PointAcc", True),
    ("coco_map", "mAP", True), ("ctx_worst", "Ctx-worst", False), ("ctx_random", "Ctx-rand", False),
    ("pxap", "mPxAP", True), ("coco_point_acc", "COCO PointAcc", True),
]

def table_value(results, key, args):
    ctx = "" if args.ctx_metric == "diff" else f"_{args.ctx_metric}"
    alias = {"ino": f"ino_{args.ino_metric}", "objnet": f"objnet_{args.objnet_protocol}",
             "inreal": "inreal" + ("_all" if args.real_denominator == "all" else ""),
             "ctx_random": "ctx_random" + ctx, "ctx_worst": "ctx_worst" + ctx}
    v = results.get("meta", {}).get("params_m") if key == "params" else results.get(alias.get(key, key))
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

def format_table(rows, args):
    """rows: list of (name, results dict) -> the table as a string. Row 1 is the reference; later rows show
    their difference to it in brackets. Columns nobody has are left out."""
    cols = [c for c in TABLE_COLUMNS if any(table_value(r, c[0], args) is not None for _, r in rows)]
    names = {"inreal": "IN-Real(50k)"} if args.real_denominator == "all" else {}
    header = ["Model"] + [names.get(k, h) + ("" if up is None else "↑" if up else "↓") for k, h, up in cols]
    lines = []
    for j, (name, r) in enumerate(rows):
        cells = [name]
        for key, _, up in cols:
            v = table_value(r, key, args)
            ref = table_value(rows[0][1], key, args)
            if v is None:
                cells.append("-")
            elif up is None:
                cells.append(f"{v:.1f}M")
            elif j == 0 or ref is None:
                cells.append(f"{v:.1f}")
            else:
                cells.append(f"{v:.1f} ({v - ref:+.1f})")
        lines.append(cells)
    widths = [max(len(row[i]) for row in [header] + lines) for i in range(len(header))]
    fmt = lambda row: " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
    sep = "-|-".join("-" * w for w in widths)
    return "\n".join([fmt(header), sep] + [fmt(r) for r in lines])

def print_table(paths, args):
    rows = [json.loads(Path(p).read_text()) for p in paths]
    print(format_table([(r.get("meta", {}).get("name") or Path(p).stem, r) for p, r in zip(paths, rows)], args))

# -----------------------------------------------------------------------------
# model, run, main

def resolve_eval_geometry(args, meta=None):
    """Unset geometry flags <- the checkpoint's meta (the geometry its training validated with), else the
    benchmarks' defaults: img_size 224, resize = img_size / 0.875 (256), bilinear; COCO input = img_size."""
    meta = meta or {}
    args.img_size = args.img_size or meta.get("img_size") or 224
    args.resize = args.resize or meta.get("val_resize") or int(round(args.img_size / 0.875))
    args.interpolation = args.interpolation or meta.get("interpolation") or "bilinear"
    args.coco_size = args.coco_size or meta.get("img_size") or 224
    return args

def load_model(path, name=None, num_classes=None, num_points=None, img_size=None):
    """The trained classifier a checkpoint file holds -> (model in eval mode, meta), by models.model_from_checkpoint
    (the meta says architecture, classes, point heads and input size; the arguments override it; a bare
    torchvision / DeiT state dict needs `name`). Every problem is a one-line SystemExit naming the file and the fix;
    a backbone without classifier weights is refused. tools/figures.py and tools/analyses.py load with it too."""
    if name is not None and name not in models.MODEL_NAMES:
        raise SystemExit(f"--model {name}: unknown; choose from {', '.join(models.MODEL_NAMES)}")
    try:
        ckpt = utils.read_checkpoint(path)  # weights_only=True: a checkpoint must not run code
    except FileNotFoundError:
        raise SystemExit(f"--checkpoint {path}: no such file; give the checkpoint.pt a training run wrote "
                         "(or a torchvision / DeiT state dict)") from None
    except ValueError as e:  # not a torch file, truncated, or a pickle that would run code
        raise SystemExit(f"--checkpoint {path}: refused by torch.load(weights_only=True) ({e}); load only "
                         "files holding tensors, e.g. torch.save(model.state_dict(), ...)") from None
    try:
        model, meta, notes = models.model_from_checkpoint(ckpt, name, num_classes, num_points, img_size=img_size)
    except ValueError as e:
        raise SystemExit(f"--checkpoint {path} {e}") from None
    fresh = [note for note in notes if "fresh initialisation" in note and "point_head" not in note]
    if fresh:
        raise SystemExit(f"--checkpoint {path} has no classifier weights ({fresh[0]}): it is a backbone "
                         "only; give the checkpoint of a trained classifier")
    for note in notes:
        log(f"note: {note}")
    return model, meta

def load_run_model(args):
    """load_model for this run's flags (a ViT's input size: --img-size, else the checkpoint's); the flags left
    unset take the checkpoint's model name, classes and eval geometry. -> the model."""
    model, meta = load_model(args.checkpoint, args.model, args.num_classes, args.num_points, args.img_size)
    resolve_eval_geometry(args, meta)
    args.model, args.classes = args.model or meta["model"], meta.get("classes")
    return model

# (flag attribute, runner, label space it needs: "imagenet" = the 1000 classes or a class subset of them,
# "1k" = exactly the 1000 ImageNet classes, None = the runner checks (COCO: the instances file's categories)).
# IN-val comes before IN-O: it gives IN-O its in-distribution side (see evaluate_all).
BENCHMARKS = [
    ("imagenet_val", eval_imagenet_val, "imagenet"), ("imagenet_v2", eval_imagenet_v2, "imagenet"),
    ("imagenet_a", eval_imagenet_a, "1k"), ("imagenet_r", eval_imagenet_r, "1k"),
    ("imagenet_c", eval_imagenet_c, "1k"), ("imagenet_o", eval_imagenet_o, "1k"),
    ("imagenet_sketch", eval_sketch, "imagenet"), ("objectnet", eval_objectnet, "1k"),
    ("si_score", eval_si_score, "1k"), ("bg_challenge", eval_bg_challenge, "1k"), ("wsol_metadata", eval_wsol, "1k"),
    ("coco", eval_coco, None),
]
WSOL_METADATA_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")

def _has_image(root):
    return any(n.lower().endswith(IMG_EXTENSIONS) and not n.startswith(".")
               for _, _, names in os.walk(root, followlinks=True) for n in names)

def check_inputs(args):
    """Every root flag that is given must exist and hold what it names: a one-line SystemExit otherwise
    (naming the flag, the path and where to look), before any model runs."""
    flags = [f for f, _, _ in BENCHMARKS] + ["imagenet_real", "imagenet_boxes", "wsol_images"]
    for flag in flags:
        root = getattr(args, flag, None)
        if not root:
            continue
        name = f"--{flag.replace('_', '-')}"
        if not Path(root).exists():
            raise SystemExit(f"{name} {root}: no such file or directory (the expected layout is in --help)")
        if flag == "imagenet_real":
            if not Path(root).is_file():
                raise SystemExit(f"{name} {root}: not a file; give real.json of google-research/reassessed-imagenet")
        elif flag == "wsol_metadata":
            missing = [f for f in WSOL_METADATA_FILES if not (Path(root) / f).is_file()]
            if missing:
                raise SystemExit(f"{name} {root}: missing {', '.join(missing)}; give wsolevaluation's "
                                 "metadata/ILSVRC/<split>/ folder")
        elif flag == "coco":
            inst = Path(root) / "annotations" / f"instances_{args.coco_split}.json"
            if not inst.is_file() or not (Path(root) / args.coco_split).is_dir():
                raise SystemExit(f"{name} {root}: needs {args.coco_split}/ and annotations/{inst.name}; give the "
                                 "COCO root (or set --coco-split)")
        elif flag == "imagenet_boxes":
            if not any(n.endswith(".xml") for _, _, ns in os.walk(root) for n in ns):
                raise SystemExit(f"{name} {root}: no .xml file; give the ILSVRC box XMLs of the val images")
        elif not _has_image(root):
            raise SystemExit(f"{name} {root}: holds no image ({', '.join(IMG_EXTENSIONS)}); give the folder "
                             "with the layout --help describes")

def prepare(model, args):
    """Ready a model and the parsed flags for the runners: checks the roots, resolves the geometry, the device,
    channels_last, the per-process batches, whether there is a point head and the model's label space.
    -> the model in eval mode (NHWC on CUDA for a CNN)."""
    model.eval()
    check_inputs(args)
    resolve_eval_geometry(args)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    args.channels_last = args.device.type == "cuda" and not getattr(model, "is_vit", False)
    args.amp_dtype = "bfloat16" if args.device.type == "cuda" and args.amp else None  # every forward's autocast
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    args.process_batch = per_process(args.batch_size, "--batch-size")
    args.process_bgc_batch = per_process(args.bgc_batch_size or args.batch_size, "--bgc-batch-size")
    args.has_points = bool(models.point_parameters(model))  # a point head or an attentive pool
    args.label_space = label_space(getattr(args, "classes", None), model.classifier.out_features)
    return model

def require_label_space(needs, args, num_classes):
    """Skip unless the model's classes are those a benchmark's metric needs (see BENCHMARKS)."""
    if needs and args.label_space == {}:
        raise Skip(f"the model's {num_classes} classes are not ImageNet classes (no wnid class names in the "
                   "checkpoint)")
    if needs == "1k" and args.label_space is not None:
        raise Skip(f"needs the 1000 ImageNet classes; this model has {num_classes} of them")

def evaluate_all(model, args):
    """Every benchmark whose root flag is set. -> the results dict that --out writes (same on every rank).
    One value goes from one benchmark to another, IN-O's in-distribution side (see eval_imagenet_val)."""
    model = prepare(model, args)
    num_classes = model.classifier.out_features
    name = args.name or (Path(args.checkpoint).stem if args.checkpoint else args.model) or type(model).__name__
    results = {"meta": {"name": name,
                        "model": args.model, "checkpoint": args.checkpoint, "num_classes": num_classes,
                        # the paper's Params column: the classifier without the point head (dropped at inference)
                        "params_m": sum(p.numel() for k, p in model.named_parameters()
                                        if not k.startswith("point_head.")) / 1e6,
                        "point_head": args.has_points, "world_size": get_world_size(),
                        "amp_bf16": args.amp_dtype is not None,
                        "img_size": args.img_size, "resize": args.resize, "interpolation": args.interpolation,
                        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S")},
               "protocol": {}, "counts": {}, "skipped": {}, "seconds": {}}
    ino_in_scores = None
    for flag, run, needs in BENCHMARKS:
        root = getattr(args, flag)
        if not root:
            results["skipped"][flag] = f"--{flag.replace('_', '-')} not given"
            continue
        t0 = time.time()
        try:
            with byproducts.ImageReader.collect() as readers:  # those of the datasets this benchmark makes
                require_label_space(needs, args, num_classes)
                res, proto, counts = run(model, args, ino_in_scores) if run is eval_imagenet_o else run(model, args)
        except Skip as why:
            results["skipped"][flag] = str(why)
            log(f"warning: skipping {flag}: {why}")
            continue
        ino_in_scores = res.pop("ino_in_scores", ino_in_scores)
        results.update(res)
        results["protocol"].update(proto)
        results["counts"].update(counts)
        results["counts"][f"{flag}_broken_images"] = sum(  # counted wrong (NaN input), named in a warning
            r.counts(all_ranks=True)["broken_images"] for r in readers)
        results["seconds"][flag] = round(time.time() - t0, 1)
        log(f"{flag}: " + ", ".join(f"{k} {v:.2f}" for k, v in res.items() if isinstance(v, float)))
    if args.imagenet_real and "inreal" not in results:
        results["skipped"]["imagenet_real"] = "needs --imagenet-val and the 1000 ImageNet classes"
    return results

def add_model_args(p):
    """The flags that choose the model and its input, shared with tools/figures.py. -> their argument group."""
    g = p.add_argument_group("model and input")
    g.add_argument("--checkpoint", default=None, help="our training checkpoint (it describes itself: model, classes, "
                   "point heads, image size), or a torchvision / DeiT file")
    g.add_argument("--model", default=None, help="resnet18/50/101/152, vit_tiny/small/base (default: the "
                   "checkpoint's meta; needed for a bare torchvision / DeiT state dict)")
    g.add_argument("--num-classes", type=int, default=None, help="default: from the checkpoint")
    g.add_argument("--num-points", type=int, default=None, help="point-head size; default: from the checkpoint")
    g.add_argument("--device", default=None, help="default: this process's GPU if there is one, else cpu")
    g.add_argument("--img-size", type=int, default=None,
                   help="network input (the crop); default: the checkpoint's, else 224")
    g.add_argument("--resize", type=int, default=None,
                   help="shorter side before the centre crop; default: the checkpoint's val_resize, else 256")
    g.add_argument("--interpolation", default=None, choices=["bilinear", "bicubic"],
                   help="resize interpolation; default: the checkpoint's, else bilinear (the benchmarks' code)")
    return g

def get_args_parser():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--table", nargs="+", metavar="JSON", help="print the paper-style table of these results and exit")
    g = add_model_args(p)
    g.add_argument("--name", default=None, help="row name in the table (default: the checkpoint's file name)")
    g = p.add_argument_group("run")
    g.add_argument("--batch-size", type=int, default=128,
                   help="global, as in training: each of N processes takes 1/N (must divide evenly)")
    g.add_argument("--workers", type=int, default=utils.default_workers(),
                   help="data-loading workers per process (default: up to 8, this process's share of the CPU cores)")
    g.add_argument("--no-amp", dest="amp", action="store_false", help="disable bf16 autocast on CUDA")
    g.add_argument("--out", default=None, help="write the results JSON here")
    g = p.add_argument_group("benchmark roots (a benchmark runs only if its root is given)")
    g.add_argument("--imagenet-val", help="val/<wnid>/*.JPEG (IN-1k, ReaL, Cocc, IN-O's in-distribution side)")
    g.add_argument("--imagenet-real", help="real.json (needs --imagenet-val)")
    g.add_argument("--imagenet-boxes", help="ILSVRC box XMLs of the val images (<stem>.xml or <wnid>/<stem>.xml) for "
                   "the point head's accuracy; default: boxes/val/ beside val/, or ILSVRC/Annotations/CLS-LOC/val")
    g.add_argument("--imagenet-v2", help="imagenetv2-matched-frequency-format-val/<k>/*.jpeg")
    g.add_argument("--imagenet-a", help="imagenet-a/<wnid>/*.jpg")
    g.add_argument("--imagenet-r", help="imagenet-r/<wnid>/*.jpg")
    g.add_argument("--imagenet-c", help="imagenet-c/<corruption>/<1..5>/<wnid>/*.JPEG")
    g.add_argument("--imagenet-o", help="imagenet-o/<wnid>/*.jpg (needs --imagenet-val)")
    g.add_argument("--imagenet-sketch", help="sketch/<wnid>/*.JPEG")
    g.add_argument("--objectnet", help="objectnet-1.0 (with images/<folder>/*.png) or its images/ folder")
    g.add_argument("--si-score", help="folder holding area/, location20_area02_min0pc/, rotation/ (<class>/*.jpg)")
    g.add_argument("--bg-challenge", help="backgrounds_challenge data: <split>/val/<class>/*.JPEG, fg_mask/val/...")
    g.add_argument("--wsol-metadata", help="wsolevaluation metadata/ILSVRC/test (image_ids, class_labels, "
                   "image_sizes, localization .txt)")
    g.add_argument("--wsol-images", help="root the metadata image ids are relative to (default: look the file "
                   "names up in --imagenet-val)")
    g.add_argument("--coco", help="COCO root with <split>/ images and annotations/instances_<split>.json")
    g = p.add_argument_group("benchmark options (the paper is silent on these; the JSON records what was used)")
    g.add_argument("--cocc-hole", type=int, default=112, help="Cocc: side of the centre hole on the input, in px "
                   "(112: half of 224; a hole that covers a smaller input is flagged in the log and the JSON)")
    g.add_argument("--cocc-fill", default="mean", choices=["mean", "black"],
                   help="Cocc fill: 0 after normalisation (the mean pixel) or black pixels")
    g.add_argument("--objectnet-border", type=int, default=2, help="pixels cropped off each side (red frame)")
    g.add_argument("--si-transform", default="center-crop", choices=["center-crop", "resize"],
                   help="SI-Score: the default Resize+CenterCrop, or Resize((S, S)) keeping the whole image")
    g.add_argument("--bgc-batch-size", type=int, default=None, help="BGC-acc: backgrounds per forward, global "
                   "like --batch-size (default: --batch-size)")
    g.add_argument("--bgc-skip-acc", action="store_true", help="skip BGC-acc (up to 4050^2 forward passes)")
    g.add_argument("--cam-curve-interval", type=float, default=0.001, help="CAM threshold step (MaxBoxAcc, PxAP)")
    g.add_argument("--iou-thresholds", type=int, nargs="+", default=[30, 50, 70], help="MaxBoxAccV2 deltas")
    g.add_argument("--coco-split", default="val2014")
    g.add_argument("--coco-size", type=int, default=None,
                   help="COCO input: Resize((S, S)), no crop; default: the checkpoint's img_size, else 224")
    g.add_argument("--no-coco-pxap", dest="coco_pxap", action="store_false")
    g.add_argument("--no-coco-context", dest="coco_context", action="store_false")
    g.add_argument("--ctx-thr", type=float, default=0.5, help="context bias: a class counts if its sigmoid > thr")
    g.add_argument("--ctx-fill", default="mean", choices=["mean", "black"], help="fill of erased pixels")
    g.add_argument("--ctx-seed", type=int, default=0, help="seed of the random erased class")
    g = p.add_argument_group("table")
    g.add_argument("--ino-metric", default="auroc", choices=["auroc", "aupr"], help="what the IN-O column shows")
    g.add_argument("--objnet-protocol", default="A", choices=["A", "B"], help="what the ObjNet column shows")
    g.add_argument("--ctx-metric", default="drop", choices=["diff", "flip", "drop"],
                   help="context columns: drop = clean - other erased (default), diff = s_c(other erased) - "
                   "s_c(c erased), flip = %% pairs flipped below --ctx-thr")
    g.add_argument("--real-denominator", default="labelled", choices=["labelled", "all"],
                   help="IN-Real column: over the 46,837 labelled images (Table 1) or all 50,000 (appendix tables)")
    return p

def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if args.table:
        print_table(args.table, args)
        return
    if not args.checkpoint:
        parser.error("--checkpoint is required (or --table JSON ... to print results)")
    if not any(getattr(args, flag) for flag, _, _ in BENCHMARKS):
        parser.error("give at least one benchmark root, e.g. --imagenet-val DIR or --coco DIR")
    check_inputs(args)  # before the model is built: a wrong path fails in a second
    args.device = torch.device(init_distributed(args.device)[2])  # torchrun's process group, if any
    model = load_run_model(args).to(args.device)
    results = evaluate_all(model, args)
    if not results["protocol"]:
        raise SystemExit("nothing was evaluated: " + "; ".join(f"--{k.replace('_', '-')}: {v}" for k, v in
                                                                results["skipped"].items() if "not given" not in v))
    if get_rank() == 0:
        text = json.dumps(results, indent=1, default=float)
        if args.out:
            Path(args.out).write_text(text)
            log(f"wrote {args.out}")
        print(format_table([(results["meta"]["name"], results)], args))
    if dist.is_initialized():
        dist.destroy_process_group()

if __name__ == "__main__":
    main()
