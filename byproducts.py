"""
Annotation byproducts: from the released files to point targets in a batch.

What LUAB (ICCV'23) adds to a plain classifier is one extra target per image: where the annotator clicked
(ImageNet-AB) or dropped each class icon (COCO-AB). This file reads the released files into that target and
carries it through the training augmentations, under these rules.

POINT-TARGET RULES. A point is normalised (x, y) in [0, 1]^2 of the image it belongs to: origin top-left, x to
the right, y down, continuous (pixel column k covers [k, k+1) / W), so pixel = (x * W, y * H). A sample carries
points FloatTensor[K, 2] and point_mask FloatTensor[K] (the weight of each point in the loss, 0 = none); K = 1
for ImageNet, 80 for COCO (index = rank of the category id among the sorted 80 ids).
  crop, flip     RandomResizedCrop's box (top, left, h, w) of a W x H image maps x -> (x W - left) / w and
                 y -> (y H - top) / h, then the flip x -> 1 - x (points of weight 0 are no target and stay). A
                 point the crop cut away gets mask 0 and keeps its out-of-range coordinates: never clamped onto the
                 border, where the object is not.
                 EvalTransform's centre crop is the same map (eval_crop_geometry; eval_points_to_original inverts it).
  RandAugment    its 5 geometric ops (Rotate, ShearX/Y, TranslateX/YRel) move the point with the affine matrix PIL
                 applies to the pixels (mask 0 if it leaves the image); its 10 colour ops leave it.
  Mixup, CutMix  sample i is mixed with B-1-i and both points become targets, the loss weighted by the mask:
                 Mixup: own point x lam, partner's x (1 - lam) (both objects stay visible); CutMix: own point
                 x lam only outside the pasted box, partner's x (1 - lam) only inside it, lam = the area left to
                 the own image.
  random points  the paper's control: a uniform point fixed per image (a hash of seed and key), mask 1 on every
                 image; random_points_where_clicked keeps LUAB's mask instead.
  COCO           one point per class: the class's COCO-AB icon (coco_points), mask 1 only for classes of the
                 ground truth; a class whose point leaves the crop keeps its label 1, with mask 0.

Top to bottom:
  (a) the rules as code   _crop_points, TrainTransform, EvalTransform (eval_crop_geometry), RandAugment, mix_batch
  (b) datasets            ImageNetAB, CocoAB (a point and a point_mask per sample), random points
  (c) readers             ImageNet-AB XML, ILSVRC boxes, the click index, COCO-AB, COCO instances, imagenet_records
Elsewhere: the click index is built by tools/prepare.py (index-imagenet), COCO masks are decoded by
tools/coco_masks.py, synthetic data in these formats is written by tools/synth.py, the appendix-E analyses by
tools/analyses.py. The traps of the released files are in docs/formats.md; comments below name them.

Bad input (corrupt XML/JSON, NaN / non-numeric / out-of-range coordinates, XML without an image, COCO-AB records
for unknown images, unknown icons) is counted and reported in one line, and a broken image is replaced, under
the policy of utils.py (Problems, read_image, ImageReader; "image reading and the bad-input policy"): the
affected sample gets mask 0 or is skipped; strict=True (--strict, --strict-data) makes it a BadInput error.
"""

import hashlib
import json
import math
import os
import random
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as F
from PIL import Image, ImageEnhance, ImageOps
from torch.utils.data import Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS

# the bad-input policy and the image reader, imported by the scripts as byproducts.NAME too
from utils import (IMAGENET_MEAN, IMAGENET_STD, MEAN_RGB, BadImage, BadInput, BadInputWarning,  # noqa: F401
                   ImageReader, Problems, error_line, read_image)


# ----------------------------------------------------------------------------------------------------------------
# (a) the point-target rules as code: crop / flip, RandAugment, the transforms, Mixup / CutMix

_INTERP = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC,
           "nearest": T.InterpolationMode.NEAREST}
_PIL_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}


def _crop_points(points, point_mask, W, H, top, left, h, w, flip):
    """LUAB: map normalised points [K, 2] of a W x H image into the crop (top, left, h, w) [then flipped] -> (points
    [K, 2], point_mask [K]). A point outside the crop keeps its out-of-range coordinates and gets mask 0: clamped onto
    the border it would teach the head a place where the object is not. Only weighted points move (ImageNet's click,
    COCO's ~2 present classes of 80), in plain floats: tensor ops on a point cost several times more."""
    p, mask = points.numpy().copy(), point_mask.numpy().copy()
    for k in np.flatnonzero(mask):
        x, y = p[k].tolist()
        x, y = (x * W - left) / w, (y * H - top) / h
        if flip:
            x = 1.0 - x
        p[k] = x, y
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            mask[k] = 0.0
    return torch.from_numpy(p), torch.from_numpy(mask)


class TrainTransform:
    """RandomResizedCrop + horizontal flip [+ RandAugment | colour jitter] + ToTensor + Normalize [+ erasing].
    LUAB: the point moves with every geometric step (the crop, the flip, RandAugment's geometric ops).

    t(img: PIL) -> FloatTensor[3, S, S] normalised, or
    t(img, points: FloatTensor[K, 2], point_mask: FloatTensor[K]) -> (image, points [K, 2] in the output image's
    normalised frame, point_mask [K]); a point outside the crop (or pushed off by RandAugment) gets mask 0 and
    keeps its out-of-range coordinates (never clamped). Colour ops, Normalize and RandomErasing leave points
    unchanged. The crop and flip are drawn exactly as torchvision's RandomResizedCrop / RandomHorizontalFlip
    do (same torch RNG calls, same functional ops), so the image equals the plain torchvision pipeline's.
    Point maths for RRC + flip is written out (_crop_points) rather than routed through v2 KeyPoints: v2 costs
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

    def __call__(self, img, points=None, point_mask=None):
        W, H = img.size
        top, left, h, w = T.RandomResizedCrop.get_params(img, self.scale, self.ratio)
        img = F.resized_crop(img, top, left, h, w, self.size, self.interpolation, antialias=True)
        flip = bool(torch.rand(1) < self.hflip)  # the same draw as RandomHorizontalFlip
        if flip:
            img = F.hflip(img)
        if points is not None:
            points, point_mask = _crop_points(points, point_mask, W, H, top, left, h, w, flip)
        if self.randaugment is not None:
            img, points, point_mask = self.randaugment(img, points, point_mask)
        elif self.jitter is not None:
            img = self.jitter(img)
        x = F.normalize(F.to_tensor(img), self.mean, self.std, inplace=True)
        if self.erase is not None:
            x = self.erase(x)
        return x if points is None else (x, points, point_mask)


class EvalTransform:
    """Resize (shorter side = resize) + CenterCrop(size) + ToTensor + Normalize; points mapped the same way.

    t(img) -> FloatTensor[3, S, S]; t(img, points [K, 2], point_mask [K]) -> (image, points, point_mask) with
    points in the crop's normalised frame and mask 0 for points the centre crop cut away. Resizing keeps the
    whole extent, so a normalised point is unchanged by it; only the crop offset (eval_crop_geometry) matters.
    eval_points_to_original maps the network's points back to pixels of the original image.
    """

    def __init__(self, size=224, resize=256, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if resize < size:
            raise ValueError("EvalTransform needs resize >= size (CenterCrop would pad)")
        self.size, self.resize, self.interpolation = size, resize, _INTERP[interpolation]
        self.mean, self.std = list(mean), list(std)

    def __call__(self, img, points=None, point_mask=None):
        (left, top), = eval_crop_geometry([img.size], self.resize, self.size)[1].astype(int).tolist()
        img = F.resize(img, self.resize, self.interpolation, antialias=True)
        W, H = img.size
        img = F.crop(img, top, left, self.size, self.size)
        x = F.normalize(F.to_tensor(img), self.mean, self.std, inplace=True)
        if points is None:
            return x
        return (x, *_crop_points(points, point_mask, W, H, top, left, self.size, self.size, False))


def eval_crop_geometry(sizes, resize, crop):
    """The centre crop of EvalTransform, Resize(resize, shorter side) + CenterCrop(crop), for images of sizes
    [N, 2] (W, H) -> (scale [N, 2] = resized / original per axis, offset [N, 2] = the crop's (left, top) in the
    resized image), with torchvision's integer sizes and offsets: crop pixel = original pixel * scale - offset."""
    sizes = np.asarray(sizes, np.float64).reshape(-1, 2)
    w, h = sizes[:, 0], sizes[:, 1]
    short, long_ = np.minimum(w, h), np.maximum(w, h)
    new_long = np.floor(resize * long_ / short)  # torchvision: int(resize * long / short)
    new = np.stack([np.where(w <= h, resize, new_long), np.where(w <= h, new_long, resize)], 1)
    return new / sizes, np.round((new - crop) / 2.0)  # round half to even, as F.center_crop's round()


def eval_points_to_original(points, sizes, resize=256, crop=224):
    """The inverse of EvalTransform's point map: points [N, 2] normalised in the network input (numpy or torch),
    sizes [N, 2] original (W, H) -> [N, 2] pixels of the original image. resize=None means Resize((crop, crop))
    (no crop, as evaluate.py's COCO input): x * W, y * H."""
    p = np.asarray(torch.as_tensor(points).detach().cpu(), np.float64).reshape(-1, 2)
    sizes = np.asarray(torch.as_tensor(sizes).cpu(), np.float64).reshape(-1, 2)
    if resize is None:
        return p * sizes
    scale, offset = eval_crop_geometry(sizes, resize, crop)
    return (p * crop + offset) / scale


class RandAugment:
    """timm-style RandAugment ("rand-m9-mstd0.5[-inc1][-n2][-mmax10]") on PIL images that moves the points.

    Same 15 ops, magnitudes, per-op probability 0.5 and fill (the mean colour) as timm's rand_augment_transform,
    written here because v2.RandAugment refuses tv_tensors.KeyPoints (and timm is not a dependency). Choice for
    LUAB: the geometric ops (Rotate, ShearX/Y, TranslateX/YRel) are kept and move the point with the very affine
    matrix PIL applies to the image, so the augmentation is identical with and without the point loss (a
    photometric-only RandAugment would make the LUAB run see weaker augmentation than its baseline). A point
    pushed off the canvas keeps its out-of-range coordinates and gets mask 0.
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

    def __call__(self, img, points=None, point_mask=None):
        """img: PIL; points FloatTensor[K, 2] normalised and point_mask [K], or None -> (img, points, point_mask).
        LUAB: a point that a geometric op pushes off the canvas gets mask 0 (its pixels are gone)."""
        for op in random.choices(self.ops, k=self.num_layers):
            if random.random() > self.prob:
                continue
            m = self.magnitude
            if self.std == float("inf"):
                m = random.uniform(0, m)
            elif self.std > 0:
                m = random.gauss(m, self.std)
            img, moved = self._apply(op, img, points, max(0.0, min(m, self.max)) / 10.0)
            if moved is not points:  # a geometric op
                points, point_mask = moved, point_mask * ((moved >= 0) & (moved <= 1)).all(1)
        return img, points, point_mask

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


def mix_batch(images, soft_targets, points, point_mask, mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0,
              switch_prob=0.5, generator=None):
    """LUAB: DeiT/timm batch-mode Mixup / CutMix, extended to point targets.

    images [B, 3, H, W], soft_targets [B, C], points [B, K, 2], point_mask [B, K]. Sample i is paired with
    B-1-i (x.flip(0)); one lam and one mode per batch. Returns (images, soft_targets, points [B, 2, K, 2],
    point_mask [B, 2, K]) where index 0 of dim 1 is the sample's own point and 1 its partner's:
      no mixing (drew > prob): own mask unchanged, partner mask 0;
      Mixup: both objects are visible, so own mask x lam, partner mask x (1 - lam);
      CutMix: own point kept (mask x lam) only if outside the pasted box, partner's point kept
              (mask x (1 - lam)) only if inside it; lam is area-corrected as in timm.
    Targets mix as timm: lam * y + (1 - lam) * y.flip(0). Inputs are not modified. The point loss is then
    sum_j sum_k point_mask[:, j, k] * loss(pred[:, k], points[:, j, k]) over a normaliser of your choice.
    Randomness: one int from `generator` (or torch's global RNG) seeds numpy's beta / randint, so
    torch.manual_seed reproduces a batch. An odd B pairs the middle sample with itself (timm refuses odd B).
    """
    rng = np.random.default_rng(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
    H, W = images.shape[-2:]
    lam, use_cutmix = 1.0, False
    if rng.random() < prob and (mixup_alpha > 0 or cutmix_alpha > 0):
        use_cutmix = (rng.random() < switch_prob) if (mixup_alpha > 0 and cutmix_alpha > 0) else cutmix_alpha > 0
        alpha = cutmix_alpha if use_cutmix else mixup_alpha
        lam = float(rng.beta(alpha, alpha))
    pts = torch.stack([points, points.flip(0)], 1)
    own, partner = point_mask, point_mask.flip(0)
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
# (b) datasets: ImageNetAB, CocoAB, random points, fraction subsets

def _hash_uniform(seed, keys):
    """float32[N, 2] uniform in [0, 1), fixed per (seed, key) whatever the order, subset or process."""
    digest = b"".join(hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest() for k in keys)
    u = np.frombuffer(digest, "<u4").reshape(-1, 2) if keys else np.zeros((0, 2), np.uint32)
    return (u / 2.0 ** 32).astype(np.float32)


def random_points_where_clicked(dataset, seed):
    """LUAB's control: the random points on exactly the samples LUAB supervises: `dataset` was built with
    point_source="clicks"; its points become the uniform points point_source="random" draws for the same keys
    (ImageNet: the image; COCO: the (image, class) pair), its point_mask (which images / classes have a
    byproduct) stays."""
    if isinstance(dataset, CocoAB):
        keys = [f"{iid}/{cid}" for iid in dataset.image_ids for cid in dataset.instances.cat_ids]
    else:
        keys = dataset.keys
    dataset.points = torch.from_numpy(_hash_uniform(seed, keys)).view_as(dataset.points)
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


class _PointDataset(Dataset):
    """What ImageNetAB and CocoAB share. A subclass sets points FloatTensor[N, K, 2], point_mask FloatTensor[N, K]
    (built once: __getitem__ is two tensor views on top of decoding), transform, reader (ImageReader) and
    problems (Problems), and defines _sample(i) -> (image path, label, (W, H) the annotation expects or None).

    ds[i] -> (image, label, points [K, 2], point_mask [K]): with transform=None the PIL image and points in its
    own frame, else transform(image, points, point_mask). A broken image (ImageReader) gets mask 0."""

    def __len__(self):
        return len(self.point_mask)

    def __getitem__(self, i):
        path, label, size = self._sample(i)
        img = self.reader.read(i, path, size)
        pts, mask = self.points[i], self.point_mask[i]
        if self.reader.failed(i):
            mask = torch.zeros_like(mask)
        if self.transform is None:
            return img, label, pts, mask
        img, pts, mask = self.transform(img, pts, mask)
        return self.reader.finish(i, img), label, pts, mask

    def problem_counts(self, all_ranks=False):
        """{"broken_images": files ImageReader flagged so far, "bad_records": bad byproduct records found when
        the dataset was built + size mismatches found while loading}. Works with DataLoader workers (shared
        flags); all_ranks=True is a collective call that merges every process's flags."""
        c = self.reader.counts(all_ranks)
        return {"broken_images": c["broken_images"], "bad_records": self.problems.n_bad + c["size_mismatches"]}


def _check_point_source(point_source):
    if point_source not in ("clicks", "random", "none"):
        raise ValueError(f"point_source must be 'clicks', 'random' or 'none', not {point_source!r}")


class ImageNetAB(_PointDataset):
    """LUAB: ImageNet (ImageFolder tree root/<wnid>/*.JPEG) with the ImageNet-AB click as a point target.

    ds[i] -> (image, label: int, points: FloatTensor[1, 2], point_mask: FloatTensor[1]) (see _PointDataset;
    TrainTransform / EvalTransform as transform). point_source:
      "clicks": the final click (imagenet_click), mask 1; images without XML, unselected, or with bad XML get
                mask 0 (points 0). clicks = ClickIndex / dict "wnid/stem" -> (x, y) / path to an index file /
                path to an XML root (scanned here).
      "random": the paper's baseline, a uniform point fixed per image (hash of seed and key), mask 1 for all.
      "none":   points 0, mask 0.
    A click index that records image sizes (ClickIndex.sizes) is checked against each image opened: another
    size is a counted bad record, mask 0 (ImageReader). Broken images follow ImageReader's policy (broken=
    "mean" for training, "nan" for validation). A class folder without images is refused (BadInput
    empty-class) unless allow_empty_classes=True, which keeps it as a class and reports it once.
    data_fraction keeps round(fraction * n) images of every class (seeded, stratified). Samples, classes and
    order are those of torchvision's ImageFolder (AppleDouble "._*" files skipped). Attributes: samples
    [(path, label)], classes (wnids), keys ["wnid/stem"], targets, points, point_mask, num_point_targets
    (images whose mask is > 0), problems (Problems), reader (ImageReader); problem_counts().
    """

    def __init__(self, root, clicks=None, point_source="clicks", transform=None, data_fraction=1.0, seed=0,
                 strict=False, allow_empty_classes=False, broken="mean"):
        _check_point_source(point_source)
        self.transform = transform
        self.problems = problems = Problems(f"ImageNetAB({root})")
        self.classes = sorted(e.name for e in os.scandir(root) if e.is_dir())
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
        pts, mask = np.zeros((n, 2), np.float32), np.zeros(n, np.float32)
        sizes = np.zeros((n, 2), np.int32)  # (W, H) the click was made on; 0 = nothing to check
        if point_source == "random":
            pts, mask = _hash_uniform(seed, keys), np.ones(n, np.float32)
        elif point_source == "clicks":
            if clicks is None:
                raise ValueError("point_source='clicks' needs clicks (an index, a dict, or a path)")
            pts, mask, sizes = self._resolve_clicks(clicks, keys, problems)
        problems.finish(strict)

        keep = _fraction_subset(groups, data_fraction, seed)
        self.samples = [(flat[i][0], flat[i][1]) for i in keep]
        self.targets = [s[1] for s in self.samples]
        self.keys = [keys[i] for i in keep]
        self.points = torch.from_numpy(np.ascontiguousarray(pts[keep], np.float32)).view(-1, 1, 2)
        self.point_mask = torch.from_numpy(np.ascontiguousarray(mask[keep], np.float32)).view(-1, 1)
        self._sizes = np.where(mask[keep, None] > 0, sizes[keep], 0)  # only a click that counts needs the check
        self.num_point_targets = int((self.point_mask > 0).sum())
        self.reader = ImageReader(len(self.samples), strict, broken)

    def _sample(self, i):
        return (*self.samples[i], self._sizes[i])

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
            mask = (status == CLICK).astype(np.float32)
            if report_index_bad:
                for i in np.flatnonzero(status == BAD):
                    problems.add("bad-xml", keys[i], "marked bad in the index")
            index_keys = (k.decode() for k in clicks.keys)
        else:  # any mapping "wnid/stem" -> (x, y): validate, since nobody else did
            pts, mask = np.zeros((len(keys), 2), np.float32), np.zeros(len(keys), np.float32)
            for i, k in enumerate(keys):
                v = clicks.get(k)
                if v is None:
                    continue
                x, y = (_coord(v[0]), _coord(v[1])) if len(v) == 2 else (None, None)
                if x is None or y is None:
                    problems.add("bad-coordinate", k, repr(v))
                    continue
                pts[i], mask[i] = (x, y), 1.0
            index_keys = iter(clicks) if hasattr(clicks, "__iter__") else ()  # a bare .get() object
        for k in index_keys:  # an XML for an image that is not in the image folder (only for our classes)
            if k not in key_set and k.split("/", 1)[0] in wnids:
                problems.add("xml-without-image", k)
        return pts, mask, sizes


class CocoAB(_PointDataset):
    """LUAB: COCO 2014 (images + instances) with COCO-AB icon positions as per-class point targets.

    ds[i] -> (image, target: FloatTensor[80] multi-hot, points: FloatTensor[80, 2], point_mask: FloatTensor[80])
    (see _PointDataset). Labels come from the instances file (all annotations, crowd included); a class keeps
    label 1 even when its point leaves the crop (trap: the official notebook drops the label); only its mask
    becomes 0. point_source "clicks": coco_points(record, icon_rule) for the classes present in the ground
    truth (an icon for a class the ground truth lacks gets mask 0); "random": a uniform point fixed per (seed,
    image, class) for every present class, mask 1; "none": zeros, mask 0. icon_rule: "final-add" (the paper's)
    or "final-position" (see coco_points). COCO-AB records for image ids the instances file lacks are counted;
    images without a record get mask 0. Broken images: ImageReader's policy (every mask 0, labels kept).
    Attributes image_ids (in dataset order), instances, targets [N, 80], points, point_mask, reader;
    problem_counts() as ImageNetAB.
    """

    def __init__(self, image_dir, instances_json, coco_ab_json=None, point_source="clicks", icon_rule="final-add",
                 transform=None, data_fraction=1.0, seed=0, strict=False):
        _check_point_source(point_source)
        self.transform = transform
        inst = instances_json if isinstance(instances_json, CocoInstances) else read_coco_instances(instances_json)
        self.instances = inst
        problems = self.problems = Problems(f"CocoAB({image_dir})")
        problems.merge(inst.problems)
        ids = inst.image_ids
        keep = _fraction_subset([ids], data_fraction, seed)
        self.image_ids = [ids[i] for i in keep]
        n, C = len(self.image_ids), inst.num_classes
        targets = np.stack([inst.target(i) for i in self.image_ids]) if n else np.zeros((0, C), np.float32)
        pts, mask = np.zeros((n, C, 2), np.float32), np.zeros((n, C), np.float32)
        if point_source == "random":
            keys = [f"{iid}/{cid}" for iid in self.image_ids for cid in inst.cat_ids]
            pts = _hash_uniform(seed, keys).reshape(n, C, 2)
            mask = targets.copy()
        elif point_source == "clicks":
            if coco_ab_json is None:
                raise ValueError("point_source='clicks' needs coco_ab_json (a path or a read_coco_ab dict)")
            records = coco_ab_json if isinstance(coco_ab_json, dict) else read_coco_ab(coco_ab_json, problems)
            src = os.path.basename(coco_ab_json) if isinstance(coco_ab_json, (str, os.PathLike)) else "coco-ab"
            for iid in records:
                if iid not in inst.images:
                    problems.add("unknown-image-id", src, f"image_id={iid}")
            for r, iid in enumerate(self.image_ids):
                rec = records.get(iid)
                if rec is None:
                    continue
                for cid, (x, y) in coco_points(rec, icon_rule, problems).items():
                    k = inst.cat_index.get(cid)
                    if k is not None and targets[r, k] > 0:
                        pts[r, k], mask[r, k] = (x, y), 1.0
        problems.finish(strict)
        self.files = [os.path.join(image_dir, inst.images[i]["file_name"]) for i in self.image_ids]
        self.targets = torch.from_numpy(targets)
        self.points, self.point_mask = torch.from_numpy(pts), torch.from_numpy(mask)
        self.reader = ImageReader(n, strict)

    def _sample(self, i):
        return self.files[i], self.targets[i], None


# ----------------------------------------------------------------------------------------------------------------
# (c) readers. ImageNet-AB XML (hardened) and ILSVRC box XML

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
    return _str(t) == "True"  # trap: bool("False") is True (a third-party loader did that)


# Types of the <metadata> fields (docs/formats.md §1); unknown fields come back as raw strings.
_AB_SCALAR = {"selected": _bool, **{k: _int for k in (
    "estimateTime", "hit_submit_time", "hoveredCount", "imageHeight", "imageWidth", "image_idx",
    "originalImageHeight", "originalImageWidth", "page_idx", "selectedCount")}}
_AB_RECORD = {"time": _int, "x": _float, "y": _float}
_AB_NESTED = {"selectedRecord": _AB_RECORD, "mouseTracking": _AB_RECORD,
              "hoveredRecord": {"action": _str, "time": _int}, "imagePosition": {"x": _int, "y": _int}}
_AB_LIST = ("hoveredRecord", "mouseTracking", "selectedRecord")  # repeated sibling tags; absent = empty list
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
    fields restricts the parsed tags (the click index reads only the click and the image size).
    """
    if os.path.basename(path).startswith("._"):
        return ([], None) if with_voc else []
    with open(path, "rb") as f:
        root = _xml_root(f.read())
    entries = [_metadata_dict(md, fields) for md in root.iter("metadata")]
    return (entries, _voc_dict(root)) if with_voc else entries


def _coord(v):
    """A click coordinate as a float in [0, 1], or None when NaN, non-numeric or outside [0, 1]."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    if not (-1e-6 <= v <= 1 + 1e-6):  # also false for NaN; the 1e-6 slack only absorbs float rounding
        return None
    return min(max(v, 0.0), 1.0)


def imagenet_click(entries):
    """LUAB's target: the paper's point for one image, the final select click (x, y) in [0, 1]^2, or None.

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


def load_boxes(root, strict=False):
    """ILSVRC box XML (VOC) under root -> {key: {"size": (W, H), "boxes": float32[N, 4], "names": [N]}}.

    key is "wnid/stem" for <root>/<wnid>/<stem>.xml (train) and "stem" for flat <root>/<stem>.xml (val).
    Boxes are x0, y0, x1, y1 in pixels of <size> (which may differ from the JPEG: normalise by <size>),
    reordered when min > max and clamped to [0, W] x [0, H]; indexing (0- or 1-based) is undocumented, so
    allow +-1 px when testing a click against them. Files without <size> get size None.
    """
    paths, _ = _list_xml(root)
    problems, out = Problems(f"load_boxes({root})"), {}
    root_abs = os.path.abspath(root)
    for p in paths:
        try:
            with open(p, "rb") as f:
                v = _voc_dict(_xml_root(f.read()))
        except BadInput as e:
            problems.add(e.kind, p, e.detail)
            continue
        except OSError as e:
            problems.add("unreadable-file", p, str(e))
            continue
        flat = os.path.abspath(os.path.dirname(p)) == root_abs
        key = os.path.splitext(os.path.basename(p))[0] if flat else _xml_key(p)
        out[key] = {"size": v["size"], "boxes": v["boxes"], "names": v["names"]}
    problems.finish(strict)
    return out


# ----------------------------------------------------------------------------------------------------------------
# the click index: one compact .npz instead of 1.27 M XML files (written by tools/prepare.py index-imagenet)

NO_CLICK, CLICK, BAD = 0, 1, 2  # index status codes
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

    @classmethod
    def from_xml(cls, xml_root, workers=None, progress=False):
        """Scan an ImageNet-AB XML tree in memory, as index-imagenet does (tools/prepare.py: scan_imagenet_ab)
        -> (index, problems [(kind, file, detail)], n_appledouble)."""
        from tools.prepare import scan_imagenet_ab  # the builder imports this file: import it when needed
        return scan_imagenet_ab(xml_root, workers, progress)


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
    """Load an index written by tools/prepare.py index-imagenet -> ClickIndex (a Mapping "wnid/stem" -> (x, y)).

    Anything else (a COCO-AB JSON, an XML file, a truncated .npz) raises BadInput (not-an-index) saying what the
    file seems to be. An index written before image sizes were recorded (v1) loads with one warning: it still
    works, but the dataset cannot check that it belongs to the images (rebuild it to get the check)."""
    hint = f"expected the .npz that `tools/prepare.py index-imagenet --xml-root train_xml/ --out {path}` writes"
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
                          "`tools/prepare.py index-imagenet` to get that check", BadInputWarning, stacklevel=2)
        return ClickIndex(z["keys"], z["points"], z["status"], z.get("n_selected"), z.get("n_entries"),
                          z.get("sizes"))


# ----------------------------------------------------------------------------------------------------------------
# COCO: COCO-AB records, instances, masks (RLE, polygons) without pycocotools

# COCO name -> category id, the 80 used slots of the notebook's 91-slot list (docs/formats.md §3). The 11 unused
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


def read_coco_ab(path, problems=None, strict=False):
    """coco_ab_v1_0.json (a JSON list of per-image dicts) -> {image_id: record}.

    Records are kept raw (every field; see docs/formats.md §2). Duplicate image ids: the last record wins, as in the
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
    """LUAB's COCO targets: one COCO-AB record -> {category_id: (x, y)}, normalised to the image
    (x = pointTo.x, y = pointTo.y).

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


def read_coco_instances(path):
    """instances_*.json -> CocoInstances. A corrupt file raises BadInput (there is nothing to train on)."""
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput("corrupt-json", f"{path}: {e}") from None
    return CocoInstances(data, name=f"read_coco_instances({path})")
