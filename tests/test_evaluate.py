"""evaluate.py: every metric against hand-computed values, every benchmark layout on tiny on-disk fixtures, and
exact distributed evaluation (2 gloo processes == 1 process).

The fake models read colours: each fixture image is a solid colour (or has coloured shapes), and a palette maps
the colour at the image centre to a row of logits. That exercises loaders, label mappings and metrics end to
end without a trained network; every expected number below is worked out by hand in the comments."""

import json
import math
import contextlib
import os
import socket
import subprocess
import sys
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch.utils.data import DataLoader

import byproducts
import evaluate as E
import utils
from tools import analyses, coco_masks, figures
from tools.synth import _voc_xml, synth

W = E.wnids("imagenet")
MEAN = torch.tensor(E.IMAGENET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(E.IMAGENET_STD).view(1, 3, 1, 1)
GREY = (124, 116, 104)  # the ImageNet mean pixel: what a "mean" fill looks like

# colour -> logits {1k class: value}; colours are >= 60 apart so JPEG noise never changes the nearest one
PALETTE = [
    ((230, 20, 20), {1: 10}),             # red: IN-val class 1
    ((20, 230, 20), {51: 10}),            # green: IN-val class 51 (an IN-O wnid)
    ((20, 20, 230), {7: 10}),             # blue: class 7 (outside the IN-O mask; IN-9 bird)
    (GREY, {2: 10}),                      # grey: class 2, also what a Cocc hole filled with the mean looks like
    ((0, 0, 0), {0: 10}),                 # black: class 0 (a Cocc hole filled with black pixels)
    ((230, 230, 20), {300: 10}),          # yellow: IN-O image, outside the IN-O mask
    ((230, 20, 230), {301: 10}),          # magenta: same
    ((230, 120, 20), {0: 10}),            # orange: IN-V2 class 0
    ((20, 230, 230), {2: 10}),            # cyan: IN-V2 class 2
    ((120, 20, 230), {10: 10}),           # purple: IN-V2 class 10
    ((200, 200, 200), {1: 10}),           # light grey: a grayscale Sketch image of class 1
    ((120, 230, 20), {6: 10, 0: 20}),     # lime: IN-A class 6, with a larger logit on excluded class 0
    ((20, 120, 230), {11: 10, 0: 20}),    # azure: IN-A class 11, same decoy
    ((230, 20, 120), {1: 10, 0: 20}),     # rose: IN-R class 1, decoy on class 0 (outside the R mask)
    ((100, 100, 20), {2: 10, 0: 20}),     # olive: IN-R class 2, same
    ((20, 120, 120), {530: 10}),          # teal: ObjectNet alarm_clock (1k 409 or 530)
    ((120, 20, 120), {0: 10, 409: 5}),    # plum: argmax 0 (A wrong), best mapped class 409 (B right)
    ((20, 120, 20), {1: 10, 414: 5}),     # dark green: A wrong, B picks 414 backpack (wrong folder)
    ((230, 170, 120), {105: 10}),         # peach: SI-Score koala
    ((120, 170, 230), {340: 10}),         # sky: SI-Score zebra
    ((170, 120, 20), {151: 10}),          # brown: IN-9 dog (1k 151)
    ((60, 60, 60), {0: 10}),              # dark grey: 1k 0 tench = IN-9 fish
]
COLOUR = {name: c for name, c in zip(
    ["red", "green", "blue", "grey", "black", "yellow", "magenta", "orange", "cyan", "purple", "light", "lime",
     "azure", "rose", "olive", "teal", "plum", "darkgreen", "peach", "sky", "brown", "dark"], [c for c, _ in PALETTE])}


class FakeCamModel(nn.Module):
    """The CAM interface of models.py for the fakes: feature_map = the un-normalised image, classifier = fc."""

    is_vit = False

    @property
    def classifier(self):
        return self.fc

    def feature_map(self, x):
        return x * STD + MEAN


class PaletteModel(FakeCamModel):
    """Logits = the palette row of the colour nearest to the centre pixel of the (un-normalised) input.
    feature_map = the un-normalised image (3 channels), so CAM of any class = its red channel (fc rows [1, 0, 0]).
    With num_points, a point head that always answers the image centre (0.5, 0.5)."""

    def __init__(self, num_points=0):
        super().__init__()
        self.colours = torch.tensor([c for c, _ in PALETTE], dtype=torch.float32) / 255
        self.table = torch.zeros(len(PALETTE), 1000)
        for j, (_, logits) in enumerate(PALETTE):
            for k, v in logits.items():
                self.table[j, k] = v
        self.fc = nn.Linear(3, 1000)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.weight[:, 0] = 1
            self.fc.bias.zero_()
        self.num_points = num_points
        self.point_head = nn.Linear(3, 2 * num_points) if num_points else None
        self.images = 0

    def forward(self, x, return_points=False):
        self.images += len(x)
        img = x.float() * STD + MEAN
        centre = img[:, :, img.shape[2] // 2, img.shape[3] // 2]
        logits = self.table[torch.cdist(centre, self.colours).argmin(1)]
        logits = logits + 0 * centre.sum(1, keepdim=True)  # a NaN input gives NaN logits, as a network's would
        if not return_points:
            return logits
        return logits, None if self.point_head is None else torch.full((len(x), self.num_points, 2), 0.5)


class CocoFake(FakeCamModel):
    """3 COCO classes A, B, C. Logit A = +5 if any green pixel is present (A "uses" B's context), B = -5 always,
    C = +5 if any blue pixel. CAM: A = red channel, B = green, C = blue. Points: always the centre."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.eye(3))
            self.fc.bias.zero_()
        self.num_points = 3
        self.point_head = nn.Linear(3, 6)

    def forward(self, x, return_points=False):
        img = x.float() * STD + MEAN
        green = ((img[:, 1] - img[:, 0]) > 0.5).flatten(1).any(1)
        blue = ((img[:, 2] - img[:, 0]) > 0.5).flatten(1).any(1)
        five = torch.full((len(x),), 5.0)
        logits = torch.stack([torch.where(green, five, -five), -five, torch.where(blue, five, -five)], 1)
        return (logits, torch.full((len(x), 3, 2), 0.5)) if return_points else logits


def test_palette_is_well_separated():
    c = np.array([c for c, _ in PALETTE], float)
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1)) + np.eye(len(c)) * 1e9
    assert d.min() >= 60


# -----------------------------------------------------------------------------
# fixtures on disk, in each benchmark's real layout

def save(path, colour=None, size=(64, 48), mode="RGB", image=None, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = image if image is not None else Image.new(mode, size, colour)
    kw = {"quality": 95} if str(path).lower().endswith((".jpg", ".jpeg")) and fmt is None else {}
    img.save(path, format=fmt, **kw)


def make_imagenet_val(root):
    """5 images: red, red (class 1), green (51), blue in class 51's folder (predicted 7: wrong), grey (2)."""
    files = [(W[1], 1, "red"), (W[1], 2, "red"), (W[51], 3, "green"), (W[51], 4, "blue"), (W[2], 5, "grey")]
    for wnid, i, colour in files:
        save(f"{root}/val/{wnid}/ILSVRC2012_val_{i:08d}.JPEG", COLOUR[colour], size=(64, 48))
    with open(f"{root}/real.json", "w") as f:
        json.dump([[1], [], [51, 3], [7], [0]], f)  # image 2's list is empty: excluded


def make_fixtures(root):
    root = str(root)
    make_imagenet_val(root)
    # ImageNetV2: numeric folders; ImageFolder's string sort would give "0"->0, "10"->1, "2"->2
    for k, colour in [(0, "orange"), (2, "cyan"), (10, "purple")]:
        save(f"{root}/v2/{k}/img{k}.jpeg", COLOUR[colour])
    # IN-A / IN-R: a README at the root, and a decoy logit on class 0, outside both masks
    os.makedirs(f"{root}/imagenet-a", exist_ok=True)
    open(f"{root}/imagenet-a/README.txt", "w").write("not a class")
    save(f"{root}/imagenet-a/{W[6]}/a.jpg", COLOUR["lime"])
    save(f"{root}/imagenet-a/{W[11]}/b.jpg", COLOUR["azure"])
    save(f"{root}/imagenet-r/{W[1]}/a.jpg", COLOUR["rose"])
    save(f"{root}/imagenet-r/{W[2]}/b.jpg", COLOUR["olive"])
    # Sketch: a grayscale JPEG (class 1, light grey) and an RGBA PNG (blue in class 3's folder: wrong)
    save(f"{root}/sketch/{W[1]}/gray.JPEG", 200, mode="L")
    save(f"{root}/sketch/{W[3]}/rgba.png", COLOUR["blue"] + (255,), mode="RGBA")
    # IN-C: 224 px images; gaussian_noise severity 1 has 2 images (1 right), severities 4-5 wrong;
    # contrast all right; speckle_noise (an "extra" corruption) must be ignored
    for s in range(1, 6):
        save(f"{root}/imagenet-c/gaussian_noise/{s}/{W[1]}/ILSVRC2012_val_00000001.JPEG",
             COLOUR["red" if s <= 3 else "blue"], size=(224, 224))
        save(f"{root}/imagenet-c/contrast/{s}/{W[1]}/ILSVRC2012_val_00000001.JPEG", COLOUR["red"], size=(224, 224))
    save(f"{root}/imagenet-c/gaussian_noise/1/{W[1]}/ILSVRC2012_val_00000002.JPEG", COLOUR["blue"], size=(224, 224))
    save(f"{root}/imagenet-c/speckle_noise/1/{W[1]}/ILSVRC2012_val_00000001.JPEG", COLOUR["blue"], size=(224, 224))
    # IN-O: 2 images the model puts outside the IN-O mask (low MSP), 1 inside (high MSP)
    save(f"{root}/imagenet-o/{W[70]}/a.jpg", COLOUR["yellow"])
    save(f"{root}/imagenet-o/{W[79]}/b.jpg", COLOUR["magenta"])
    save(f"{root}/imagenet-o/{W[79]}/c.jpg", COLOUR["green"])
    # ObjectNet: PNGs with a 2 px red frame; alarm_clock maps to 1k {409, 530}; an unmapped folder is ignored
    for name, colour in [("a", "teal"), ("b", "plum"), ("c", "darkgreen")]:
        img = Image.new("RGB", (80, 60), (255, 0, 0))
        img.paste(Image.new("RGB", (76, 56), COLOUR[colour]), (2, 2))
        save(f"{root}/objectnet-1.0/images/alarm_clock/{name}.png", image=img)
    save(f"{root}/objectnet-1.0/images/not_in_imagenet/x.png", COLOUR["teal"])
    # SI-Score: size (area/) with koala and zebra, location with one image, no rotation folder
    save(f"{root}/si/area/koala/1.jpg", COLOUR["peach"])
    save(f"{root}/si/area/zebra/2.jpg", COLOUR["sky"])
    save(f"{root}/si/area/zebra/3.jpg", COLOUR["peach"])
    # unbalanced levels: image 1 alone at area 0.2, images 2 and 3 at 0.5 (image 7 is not in the folder)
    open(f"{root}/si/area/metadata.csv", "w").write("image_id,area\n1,0.2\n2,0.5\n3,0.5\n7,0.2\n")
    save(f"{root}/si/location20_area02_min0pc/koala/1.jpg", COLOUR["peach"])
    make_bg_challenge(f"{root}/bgc")
    make_wsol(root)
    make_coco(f"{root}/coco")
    return root


def make_bg_challenge(root, size=32):
    """IN-9 classes 00_dog and 01_bird. BGC-acc: each class has a foreground whose mask covers the centre
    (robust: the centre-pixel model always sees it) and one whose mask does not (the background decides)."""
    dog, bird, fish = COLOUR["brown"], COLOUR["blue"], COLOUR["dark"]
    for split, dogs, birds in [("original", [dog, dog], [bird, bird]), ("mixed_same", [dog, dog], [bird, bird]),
                               ("mixed_rand", [dog, fish], [bird, bird])]:
        for cls, colours in [("00_dog", dogs), ("01_bird", birds)]:
            for j, c in enumerate(colours):
                save(f"{root}/{split}/val/{cls}/n0000000{j}_{j}.JPEG", c, size=(size, size))
    # backgrounds, in order: dog-coloured, then fish-coloured
    save(f"{root}/only_bg_t/val/00_dog/bg0.JPEG", dog, size=(size, size))
    save(f"{root}/only_bg_t/val/01_bird/bg1.JPEG", fish, size=(size, size))
    centre, corner = np.zeros((size, size)), np.zeros((size, size))
    centre[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    corner[:4, :4] = 1
    for cls in ("00_dog", "01_bird"):
        os.makedirs(f"{root}/fg_mask/val/{cls}", exist_ok=True)
        np.save(f"{root}/fg_mask/val/{cls}/n00000000_0.npy", centre)
        np.save(f"{root}/fg_mask/val/{cls}/n00000001_1.npy", corner)


WSOL_BOXES = {1: ([30, 20, 80, 70], [30, 20, 80, 70]),   # (drawn rectangle, GT box): a hit, contains the centre
              2: ([60, 50, 100, 90], [0, 0, 20, 20]),    # a miss; the GT box is in a corner, not at the centre
              3: ([40, 30, 70, 60], [40, 30, 70, 60])}   # a hit, contains the centre


def make_wsol(root):
    """wsolevaluation metadata for val images 1..3 (112 x 96, the IN-val fixture's basenames), images with a red
    rectangle on black in a flat wsol/val/ folder."""
    meta = f"{root}/wsol_meta"
    os.makedirs(meta, exist_ok=True)
    ids = [f"val/ILSVRC2012_val_{i:08d}.JPEG" for i in WSOL_BOXES]
    for i, k in zip(WSOL_BOXES, ids):
        img = Image.new("RGB", (112, 96), (0, 0, 0))
        ImageDraw.Draw(img).rectangle(WSOL_BOXES[i][0], fill=(255, 0, 0))
        save(f"{root}/wsol/{k}", image=img)
    open(f"{meta}/image_ids.txt", "w").write("".join(f"{k}\n" for k in ids))
    open(f"{meta}/class_labels.txt", "w").write("".join(f"{k},1\n" for k in ids))
    # the IN-val fixture images are 64 x 48; the point-accuracy test uses these sizes with the IN-val images
    open(f"{meta}/image_sizes.txt", "w").write("".join(f"{k},112,96\n" for k in ids))
    open(f"{meta}/localization.txt", "w").write(
        "".join(f"{k},{','.join(map(str, WSOL_BOXES[i][1]))}\n" for i, k in zip(WSOL_BOXES, ids)))


COCO_A = [20, 20, 90, 30, 50, 90]  # red triangle: class A (category 1)
COCO_B = [100, 100, 200, 100, 200, 200, 100, 200]  # green square: class B (category 3), contains the centre
COCO_C = [30, 30, 90, 30, 90, 90, 30, 90]  # blue square: class C (category 18)


def make_coco(root):
    """val2014 with 3 images (224 x 224 PNGs): 10 = A + B, 20 = C + a crowd region of C (also painted blue),
    30 = no annotation (not evaluated). Shapes are painted from the decoded masks, so a channel's CAM is exactly
    its class's mask."""
    mask = lambda poly: coco_masks.annotation_mask([poly], 224, 224)
    arr = np.zeros((224, 224, 3), np.uint8)
    arr[mask(COCO_A)] = (255, 0, 0)
    arr[mask(COCO_B)] = (0, 255, 0)
    save(f"{root}/val2014/COCO_val2014_000000000010.png", image=Image.fromarray(arr))
    crowd = np.zeros((224, 224), np.uint8)
    crowd[150:200, 150:200] = 1
    arr = np.zeros((224, 224, 3), np.uint8)
    arr[mask(COCO_C) | (crowd == 1)] = (0, 0, 255)
    save(f"{root}/val2014/COCO_val2014_000000000020.png", image=Image.fromarray(arr))
    save(f"{root}/val2014/COCO_val2014_000000000030.png", (0, 0, 0), size=(224, 224))
    box = lambda p: [min(p[0::2]), min(p[1::2]), max(p[0::2]) - min(p[0::2]), max(p[1::2]) - min(p[1::2])]
    anns = [dict(id=1, image_id=10, category_id=1, segmentation=[COCO_A], bbox=box(COCO_A), iscrowd=0, area=1),
            dict(id=2, image_id=10, category_id=3, segmentation=[COCO_B], bbox=box(COCO_B), iscrowd=0, area=1),
            dict(id=3, image_id=20, category_id=18, segmentation=[COCO_C], bbox=box(COCO_C), iscrowd=0, area=1),
            dict(id=4, image_id=20, category_id=18, segmentation=coco_masks.rle_encode(crowd),
                 bbox=[150, 150, 50, 50], iscrowd=1, area=1)]
    images = [dict(id=i, width=224, height=224, file_name=f"COCO_val2014_{i:012d}.png") for i in (30, 20, 10)]
    cats = [dict(id=18, name="dog"), dict(id=1, name="person"), dict(id=3, name="car")]
    os.makedirs(f"{root}/annotations", exist_ok=True)
    with open(f"{root}/annotations/instances_val2014.json", "w") as f:
        json.dump(dict(images=images, annotations=anns, categories=cats), f)


def eval_args(root, extra=()):
    r = str(root)
    return E.get_args_parser().parse_args([
        "--imagenet-val", f"{r}/val", "--imagenet-real", f"{r}/real.json", "--imagenet-v2", f"{r}/v2",
        "--imagenet-a", f"{r}/imagenet-a", "--imagenet-r", f"{r}/imagenet-r", "--imagenet-c", f"{r}/imagenet-c",
        "--imagenet-o", f"{r}/imagenet-o", "--imagenet-sketch", f"{r}/sketch", "--objectnet", f"{r}/objectnet-1.0",
        "--si-score", f"{r}/si", "--bg-challenge", f"{r}/bgc", "--wsol-metadata", f"{r}/wsol_meta",
        "--wsol-images", f"{r}/wsol", "--batch-size", "2", "--workers", "0", "--device", "cpu",
        "--bgc-batch-size", "1", "--cam-curve-interval", "0.01", *extra])


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    return make_fixtures(tmp_path_factory.mktemp("bench"))


@pytest.fixture(scope="module")
def results(fixture_root):
    """One single-process run over every ImageNet-side benchmark with the palette model (with a point head)."""
    return E.evaluate_all(PaletteModel(num_points=1), eval_args(fixture_root))


@pytest.fixture(scope="module")
def coco_results(fixture_root):
    args = E.get_args_parser().parse_args(["--coco", f"{fixture_root}/coco", "--batch-size", "2", "--workers", "0",
                                           "--device", "cpu", "--cam-curve-interval", "0.01"])
    return E.evaluate_all(CocoFake(), args)

# -----------------------------------------------------------------------------
# pure metrics against hand-computed values

def test_topk_accuracy_breaks_ties_towards_the_lower_index():
    logits = torch.tensor([[0.0, 5.0, 5.0, 1.0], [3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    # row 0: label 2 ties with class 1 (lower index first) -> rank 1; row 1: label 3 rank 3; row 2: label 0 rank 0
    acc = E.topk_accuracy(logits, torch.tensor([2, 3, 0]), ks=(1, 2, 3))
    assert acc == pytest.approx({"top1": 100 / 3, "top2": 200 / 3, "top3": 200 / 3})
    assert E.topk_accuracy(logits.numpy(), np.array([1, 0, 3]))["top1"] == pytest.approx(200 / 3)


def test_nan_logits_count_as_wrong():
    logits = np.zeros((2, 1000))
    logits[0] = np.nan
    logits[1, 7] = 1
    assert E.topk_accuracy(logits, [0, 7]) == {"top1": 50.0, "top5": 50.0}
    assert E.top1(logits, [0, 7]) == 50.0 and list(E.safe_argmax(torch.tensor(logits))) == [-1, 7]
    assert list(E.in9_predictions(logits)) == [-1, 1]  # never wraps -1 around to class 999's IN-9 class
    assert E.objectnet_accuracy(logits[:1], [[0]]) == (0.0, 0.0)


def test_real_accuracy_spec_example():
    # real.json [[0], [], [1, 2]], predictions (0, x, 2): image 1 has no label, so 2 hits of 2 -> 100 %
    # the official denominator counts the 2 labelled images; "all" divides the same 2 hits by all 3 images
    assert E.real_accuracy([0, 7, 2], [0, 1, 2], [[0], [], [1, 2]]) == {"labelled": 100.0, "all": 200 / 3,
                                                                          "n_labelled": 2}
    assert E.real_accuracy([1, 7, 0], [0, 1, 2], [[0], [], [1, 2]]) == {"labelled": 0.0, "all": 0.0,
                                                                          "n_labelled": 2}
    assert E.imagenet_val_index("/x/n01440764/ILSVRC2012_val_00000003.JPEG") == 2


def test_masked_top1_ignores_an_excluded_class():
    logits = np.zeros((2, 1000))
    logits[:, 0] = 20  # class 0 is in neither the A nor the R mask
    a_mask, r_mask, o_mask = (E.subset_indices(s) for s in ("imagenet_a", "imagenet_r", "imagenet_o"))
    logits[0, a_mask[5]] = 10
    logits[1, a_mask[7]] = 10
    assert E.top1(logits, [a_mask[5], a_mask[7]]) == 0.0
    assert E.masked_top1(logits, [5, 7], a_mask) == 100.0
    assert list(a_mask[:8]) == [6, 11, 13, 15, 17, 22, 23, 27]
    assert list(a_mask[-4:]) == [984, 986, 987, 988]
    assert list(r_mask[:8]) == [1, 2, 4, 6, 8, 9, 11, 13]
    assert list(r_mask[-4:]) == [980, 981, 983, 988]
    assert list(o_mask[:8]) == [1, 51, 70, 79, 89, 90, 107, 109]
    assert list(o_mask[-4:]) == [980, 987, 988, 996]


def test_imagenet_c_summary_weights_each_set_equally():
    acc = {("gaussian_noise", 1): 50.0, ("gaussian_noise", 2): 100.0, ("contrast", 1): 0.0}
    out = E.imagenet_c_summary(acc)
    assert out["inc_acc"] == pytest.approx(50.0)  # not the per-corruption mean (37.5)
    # CE: gaussian mean err 0.25 / .886428, contrast 1.0 / .853204
    assert out["inc_mce"] == pytest.approx(100 * (0.25 / .886428 + 1.0 / .853204) / 2)


def test_ood_measures_spec_example_and_ties():
    # out = [.9, .8], in = [.85, .1]: ranked .9+ .85- .8+ .1-, AP = 1 * 0.5 + (2/3) * 0.5
    m = E.ood_measures([0.9, 0.8], [0.85, 0.1])
    assert m["aupr"] == pytest.approx(100 * (0.5 + 0.5 * 2 / 3))
    assert m["auroc"] == pytest.approx(75.0)  # 3 of the 4 (out, in) pairs ordered correctly
    assert m["fpr95"] == pytest.approx(50.0)  # full recall is first reached at 0.8, with 1 of 2 in above it
    # ties: out = [.5, .5], in = [.5, .1] -> one group {pos, pos, neg}: AP = 2/3; AUROC = (2 * .5 + 2) / 4
    m = E.ood_measures([0.5, 0.5], [0.5, 0.1])
    assert m["aupr"] == pytest.approx(200 / 3)
    assert m["auroc"] == pytest.approx(75.0)
    assert m["fpr95"] == pytest.approx(50.0)


def test_objectnet_protocols():
    logits = np.zeros((3, 1000))
    logits[0, 530] = 10  # A right, B right
    logits[1, 0], logits[1, 409] = 10, 5  # A wrong (0 is not mapped), B right
    logits[2, 1], logits[2, 414] = 10, 5  # A wrong, B wrong (414 is the backpack folder)
    ids = [E.objectnet_to_imagenet()["alarm_clock"]] * 3
    assert sorted(ids[0]) == [409, 530]
    a, b = E.objectnet_accuracy(logits, ids)
    assert (a, b) == pytest.approx((100 / 3, 200 / 3))


def test_in9_mapping():
    in9 = E.imagenet_to_in9()
    assert list(np.bincount(in9[in9 >= 0])) == [116, 52, 42, 36, 35, 27, 26, 20, 16]
    assert (in9 == -1).sum() == 630
    logits = np.zeros((3, 1000))
    logits[0, 151] = 1  # dog
    logits[1, 999] = 1  # toilet tissue: outside IN-9 -> -1, always wrong
    logits[2, 0] = 1  # tench: fish
    assert list(E.in9_predictions(logits)) == [0, -1, 8]
    assert E.in9_accuracy(logits, [0, 0, 8]) == pytest.approx(200 / 3)
    assert E.in9_accuracy(np.eye(3), [0, 1, 1], in_to_in9=None) == pytest.approx(200 / 3)
    assert E.bgc_gap(86.2, 78.9) == pytest.approx(7.3)
    assert E.bgc_accuracy(np.array([True, False, False, False])) == 75.0


def asl_average_precision(scores, targets):
    """ASL's helper_functions.average_precision, written out as a loop (for distinct scores)."""
    order = np.argsort(-scores)
    hits, total = 0, 0.0
    for rank, i in enumerate(order, 1):
        if targets[i]:
            hits += 1
            total += hits / rank
    return total / (targets.sum() + 1e-8)


def test_average_precision_matches_asl_and_groups_ties():
    rng = np.random.default_rng(0)
    s, t = rng.random(50), rng.random(50) < 0.3
    assert E.average_precision(s, t) == pytest.approx(asl_average_precision(s, t))
    # ties: scores [.9, .5, .5, .1], targets [1, 0, 1, 0]: the tie group {.5, .5} ends at rank 3 with 2 hits
    # -> AP = (1 + 2/3) / 2, whatever the order of the tied rows
    s, t = np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 0, 1, 0])
    assert E.average_precision(s, t) == pytest.approx((1 + 2 / 3) / 2)
    assert E.average_precision(s[[0, 2, 1, 3]], t[[0, 2, 1, 3]]) == pytest.approx((1 + 2 / 3) / 2)
    assert E.average_precision(s, np.zeros(4)) == 0.0  # no positives: 0, as ASL
    m, ap = E.mean_average_precision(np.stack([s, s], 1), np.stack([t, np.zeros(4)], 1))
    assert m == pytest.approx(100 * (1 + 2 / 3) / 4) and ap[1] == 0


def test_context_bias():
    # 4 pairs: clean s_c, s_c with another class erased, s_c with c itself erased
    clean, other, own = [0.9, 0.8, 0.7, 0.6], [0.2, 0.85, 0.5, 0.6], [0.1, 0.05, 0.4, 0.3]
    out = E.context_bias(clean, other, own, thr=0.5)
    assert out["flip"] == pytest.approx(50.0)  # 0.2 and 0.5 (<= thr) flipped
    assert out["drop"] == pytest.approx(100 * (0.7 - 0.05 + 0.2 + 0.0) / 4)
    assert out["diff"] == pytest.approx(100 * (0.1 + 0.8 + 0.1 + 0.3) / 4)  # other - own, per pair


def test_context_diff_orders_worst_below_random_flip_does_not():
    # one pair, two other classes: erasing B leaves s_c 0.8, erasing D leaves 0.3 (the worst case); erasing c
    # itself leaves 0.2. diff: random (B drawn) 0.8 - 0.2 = 60, worst 0.3 - 0.2 = 10 -> worst <= random, as in
    # the paper's Tables 6-7 (R50: 47.6 vs 25.0). flip: worst 100 >= random 0, the opposite order.
    rand, worst = E.context_bias([0.9], [0.8], [0.2]), E.context_bias([0.9], [0.3], [0.2])
    assert (rand["diff"], worst["diff"]) == pytest.approx((60.0, 10.0))
    assert (rand["flip"], worst["flip"]) == (0.0, 100.0)


def test_occlude_center_hole_location():
    x = torch.ones(2, 3, 224, 224)
    y = E.occlude_center(x, 112, 0.0)
    assert y.sum() == 2 * 3 * (224 ** 2 - 112 ** 2) and x.sum() == 2 * 3 * 224 ** 2  # input untouched
    assert (y[:, :, 56:168, 56:168] == 0).all()
    assert (y[:, :, 55, :] == 1).all() and (y[:, :, 168, :] == 1).all()
    assert (y[:, :, :, 55] == 1).all() and (y[:, :, :, 168] == 1).all()
    y = E.occlude_center(torch.ones(1, 3, 8, 8), 3, torch.tensor([1.0, 2.0, 3.0]) * -1)
    assert (y[0, :, 2:5, 2:5] == torch.tensor([-1.0, -2.0, -3.0]).view(3, 1, 1)).all()
    assert y[0, :, 5, 2].eq(1).all() and y[0, :, 1, 2].eq(1).all()


def bfs_components(b):
    """Reference 8-connected labelling by breadth-first search: sorted (x0, y0, x1, y1, area)."""
    H, W = b.shape
    seen, out = np.zeros_like(b), []
    for y in range(H):
        for x in range(W):
            if b[y, x] and not seen[y, x]:
                q, ys, xs = deque([(y, x)]), [], []
                seen[y, x] = True
                while q:
                    cy, cx = q.popleft()
                    ys.append(cy)
                    xs.append(cx)
                    for ny in (cy - 1, cy, cy + 1):
                        for nx in (cx - 1, cx, cx + 1):
                            if 0 <= ny < H and 0 <= nx < W and b[ny, nx] and not seen[ny, nx]:
                                seen[ny, nx] = True
                                q.append((ny, nx))
                out.append((min(xs), min(ys), max(xs) + 1, max(ys) + 1, len(xs)))
    return sorted(out)


def test_connected_components_match_bfs():
    diag = np.eye(5, dtype=bool) | np.eye(5, dtype=bool)[::-1]  # an X: one component through diagonals
    lv, boxes, area = E.nested_component_boxes(diag.astype(np.int64) - 1)
    assert lv.tolist() == [0] and boxes.tolist() == [[0, 0, 5, 5]] and area.tolist() == [9]
    rng = np.random.default_rng(0)
    for _ in range(60):
        H, Wd = rng.integers(1, 16, 2)
        cam = rng.integers(0, 6, (H, Wd))  # levels 0..4 of the output: the components of the masks {cam >= 1..5}
        lv, boxes, area = E.nested_component_boxes(cam - 1)
        assert lv.tolist() == sorted(lv.tolist())
        for level in range(5):
            got = sorted(tuple(x) + (a,) for x, a in zip(boxes[lv == level].tolist(), area[lv == level].tolist()))
            assert got == bfs_components(cam >= level + 1)


def two_blob_cam():
    """224^2 CAM: blob A (1.0) x 30..129, y 10..89 (the largest), blob B (0.6) x 150..199, y 120..159."""
    cam = np.zeros((224, 224), np.float32)
    cam[10:90, 30:130] = 1.0
    cam[120:160, 150:200] = 0.6
    return cam


def box_accuracy(cams, gt_boxes):
    """MaxBoxAcc over images as eval_wsol accumulates it, thresholds every 0.01."""
    acc = E.BoxAccumulator(cam_curve_interval=0.01)
    for cam, boxes in zip(cams, gt_boxes):
        acc.accumulate(cam, boxes)
    return acc.compute()


def test_maxboxacc_two_blobs_v1_vs_v2():
    cam = two_blob_cam()
    gt = np.array([[150, 120, 199, 159]])  # blob B, inclusive ends
    thr = np.array([0.0, 0.3, 0.59, 0.6, 0.9])
    v2, v1 = E.cam_box_ious(cam, gt, thr)
    # s8: A = 255, B = 153. int(tau * 255) = 0, 76, 150 keep both blobs; 153 and 229 keep A only.
    # B's box is (150, 120, 200, 160) (x1 = max x + 1); IoU with +1 areas: 2000 / (51 * 41) = 0.9565
    iou_b = 2000 / (51 * 41)
    assert v2 == pytest.approx([iou_b, iou_b, iou_b, 0, 0])
    assert v1 == pytest.approx([0, 0, 0, 0, 0])  # V1 only boxes the largest blob, A, which misses the GT
    out = box_accuracy([cam], [gt])
    assert out["maxboxacc_v2"] == 100.0 and out["maxboxacc_v1"] == 0.0
    # a GT box on blob A instead: V1 hits too; and a second image that never hits halves it
    gt_a = np.array([[30, 10, 129, 89]])
    out = box_accuracy([cam, cam], [gt_a, np.array([[0, 200, 10, 210]])])
    assert out["maxboxacc_v2"] == 50.0 and out["maxboxacc_v1"] == 50.0
    # the box of a component touching the border is clipped to width-1 / height-1, as wsolevaluation does
    full = np.ones((224, 224), np.float32)
    full[0, 0] = 0
    v2, _ = E.cam_box_ious(full, np.array([[0, 0, 223, 223]]), np.array([0.5]))
    assert v2[0] == pytest.approx(1.0)


def test_no_component_gives_the_empty_box():
    gt = np.array([[0, 0, 1, 1]])
    v2, v1 = E.cam_box_ious(np.zeros((8, 8), np.float32), gt, np.array([0.0, 0.5]))
    assert v2 == pytest.approx([0.25, 0.25]) and v1 == pytest.approx([0.25, 0.25])  # box (0,0,0,0) vs 2x2 GT


def test_pxap_hand_computed_and_perfect():
    edges = E.pxap_bin_edges(0.5)  # [0, .5, 1, 2, 3]
    cam = np.array([[0.9, 0.2], [0.7, 0.1]])
    mask = np.array([[1, 1], [0, 0]])
    fg, bg = E.pxap_histograms(cam, mask, edges)
    # from the top: bins [2,3], [1,2), [.5,1), [0,.5): tp 0,0,1,2; fp 0,0,1,2 -> P .5 at R .5 and 1 -> 50
    assert E.pxap(fg, bg) == pytest.approx(50.0)
    mask_ignore = np.array([[1, 255], [0, 255]])  # 255 ignored: fg {.9}, bg {.7} share a bin: P .5 at R 1
    assert E.pxap(*E.pxap_histograms(cam, mask_ignore, edges)) == pytest.approx(50.0)
    mask_ignore = np.array([[1, 255], [255, 0]])  # fg {.9}, bg {.1}: P 1 at R 1
    assert E.pxap(*E.pxap_histograms(cam, mask_ignore, edges)) == pytest.approx(100.0)
    m = np.zeros((224, 224))
    m[50:100, 60:200] = 1
    assert E.pxap(*E.pxap_histograms(m.astype(np.float32), m, E.pxap_bin_edges())) == pytest.approx(100.0)


def test_eval_points_to_original():
    # 400 x 300: Resize(256) -> 341 x 256 (int(256 * 400 / 300)); CenterCrop(224): left round(58.5) = 58, top 16
    px = E.eval_points_to_original(np.array([[0.5, 0.5], [0.0, 1.0]]), np.array([[400, 300], [400, 300]]))
    assert px[0] == pytest.approx([(112 + 58) * 400 / 341, (112 + 16) * 300 / 256])
    assert px[1] == pytest.approx([58 * 400 / 341, (224 + 16) * 300 / 256])
    assert E.eval_points_to_original(np.array([[0.25, 0.5]]), np.array([[100, 60]]), resize=None) == \
        pytest.approx(np.array([[25, 30]]))


def test_point_in_box_accuracy_inclusive_and_skips():
    boxes = np.array([[10, 10, 20, 20], [30, 0, 40, 5]])
    pts = np.array([[15, 15], [20, 10], [25, 25], [35, 5], [0, 0]])
    # inside the first box, on its corner (inclusive), outside both, on the second box's edge, skipped (None)
    assert E.point_in_box_accuracy(pts, [boxes] * 4 + [None]) == pytest.approx(75.0)
    assert math.isnan(E.point_in_box_accuracy(pts[:1], [np.zeros((0, 4))]))


def test_coco_mask_decoding_used_by_pxap():
    # tools/coco_masks' decoders (pycocotools ports), which CocoEvalSet uses: a 3 x 2 toy mask [[0, 1], [1, 1], [0, 0]]
    # is column-major 0 1 0 | 1 1 0 -> counts [1, 1, 1, 2, 1]; compressed, counts after the 3rd are deltas: "11110"
    want = np.array([[0, 1], [1, 1], [0, 0]])
    assert np.array_equal(coco_masks.rle_decode({"counts": [1, 1, 1, 2, 1], "size": [3, 2]}), want)
    assert np.array_equal(coco_masks.rle_decode({"counts": "11110", "size": [3, 2]}), want)
    # a negative delta: counts [1, 3, 1, 1, 1]; 1 - 3 = -2 -> 5 bits 11110 with the sign bit set -> chr(48+30) = "N"
    assert coco_masks.rle_from_string("131N0") == [1, 3, 1, 1, 1]
    # a box polygon (2, 2)-(7, 5) covers exactly 5 x 3 pixels, as pycocotools' rleFrPoly
    m = coco_masks.annotation_mask([[2, 2, 7, 2, 7, 5, 2, 5]], 8, 10)
    assert m.sum() == 15 and m[2:5, 2:7].all()

# -----------------------------------------------------------------------------
# the one prediction loop

class Rows(torch.utils.data.Dataset):
    """Item i: (a 3 x 2 x 2 image whose pixels are all i, the label i)."""

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.full((3, 2, 2), float(i)), i


class MeanModel(nn.Module):
    """Logits = the mean of each channel [B, 3]; no point head: return_points gives (logits, None)."""

    def forward(self, x, return_points=False):
        logits = x.mean((2, 3))
        return (logits, None) if return_points else logits


def test_predict_gathers_in_dataset_order_with_hooks_and_autocast():
    ds, entered = Rows(), []
    loader = lambda **kw: DataLoader(ds, batch_size=2, sampler=utils.UnpaddedDistributedSampler(ds, **kw))
    (logits,) = E.predict(MeanModel(), loader(), "cpu", points=True)  # the headless model's None is left out
    assert logits.dtype == torch.float32 and logits[:, 0].tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    # pre edits the batch before the model, post picks what to keep; the model runs in autocast(), once a batch
    autocast = lambda: entered.append(1) or contextlib.nullcontext()
    pred, kept = E.predict(MeanModel(), loader(), "cpu", autocast, pre=lambda x: x + 1,
                           post=lambda o: (o.argmax(1), 2 * o[:, 0]))
    assert pred.tolist() == [0] * 5 and kept.tolist() == [2.0, 4.0, 6.0, 8.0, 10.0] and len(entered) == 3
    # the rows are the sampler's dataset indices: rank 1 of 2 (without a process group) holds items 1 and 3
    (logits,) = E.predict(MeanModel(), loader(rank=1, world_size=2), "cpu")
    assert logits[:, 0].tolist() == [1.0, 3.0]
    with pytest.raises(TypeError, match="UnpaddedDistributedSampler"):  # a padding or shuffling sampler
        E.predict(MeanModel(), DataLoader(ds, batch_size=2), "cpu")
    with pytest.raises(ValueError, match="drop_last"):
        E.predict(MeanModel(), DataLoader(ds, batch_size=2, sampler=utils.UnpaddedDistributedSampler(ds),
                                          drop_last=True), "cpu")


def test_global_batch_is_split_over_the_processes(monkeypatch):
    assert E.per_process(6, "--batch-size") == 6
    monkeypatch.setattr(E, "get_world_size", lambda: 3)
    assert E.per_process(6, "--batch-size") == 2
    assert _exit_message(lambda: E.per_process(4, "--bgc-batch-size")) == \
        "--bgc-batch-size 4 (global) must be divisible by 3 processes"


def test_import_reads_no_data_file():
    code = ("import pathlib; reads = []; read = pathlib.Path.read_text; data = pathlib.Path('data').resolve()\n"
            "pathlib.Path.read_text = lambda self, *a, **k: (self.parent == data and reads.append(self.name)) or "
            "read(self, *a, **k)\n"
            "import evaluate; print(reads); evaluate.subset_indices('imagenet_a'); evaluate.wnids('imagenet')\n"
            "print(reads)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(E.__file__).parent, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out == ["[]", "['imagenet_a_wnids.txt', 'imagenet_wnids.txt']"]  # each table once, on first use

# -----------------------------------------------------------------------------
# loaders and benchmarks end to end (single process)

def test_imagenet_val_real_cocc_and_point_acc(results):
    # predictions 1, 1, 51, 7 (wrong), 2 -> 80 %; label 51's rank for image 4 is 51: not top-5 either
    assert results["in1k"] == pytest.approx(80.0) and results["in1k_top5"] == pytest.approx(80.0)
    # ReaL [[1], [], [51, 3], [7], [0]]: image 2 excluded; 1, 51, 7 right, 2 wrong -> 75 % of 4
    assert results["inreal"] == pytest.approx(75.0) and results["counts"]["inreal"] == 4
    assert results["inreal_all"] == pytest.approx(60.0)  # the same 3 hits over all 5 val images
    # Cocc: the 112 px hole filled with the mean pixel makes the centre grey = class 2: only image 5 right
    assert results["cocc"] == pytest.approx(20.0)
    assert results["cocc_params"] == {"hole": 112, "fill": "mean", "input": 224, "hole_covers_input": False}
    # point head answers the centre; WSOL boxes of images 1 and 3 contain it, image 2's does not; 4, 5 no box
    assert results["point_acc"] == pytest.approx(200 / 3) and results["counts"]["point_acc"] == 3


def test_cocc_hole_that_covers_the_input_is_flagged(fixture_root, capsys):
    args = eval_args(fixture_root, ["--img-size", "64", "--resize", "73"])  # the default 112 px hole on 64 px
    res, proto, _ = E.eval_imagenet_val(E.prepare(PaletteModel(), args), args)
    assert res["cocc_params"] == {"hole": 112, "fill": "mean", "input": 64, "hole_covers_input": True}
    assert res["cocc"] == pytest.approx(20.0)  # every input is the grey fill = class 2: image 5's share
    assert "NOT A MEASURE: the 112-px Cocc hole covers the whole 64-px input" in proto["cocc"]
    assert "--cocc-hole 32 is the paper's half side" in capsys.readouterr().out


def test_cocc_black_fill(fixture_root):
    args = eval_args(fixture_root, ["--cocc-fill", "black"])
    model = E.prepare(PaletteModel(), args)
    res, proto, _ = E.eval_imagenet_val(model, args)
    assert res["cocc"] == 0.0 and "black" in proto["cocc"]  # the centre is black = class 0: nobody's label


def test_imagenet_v2_numeric_folders(fixture_root, results):
    paths, labels, folders = E.scan_class_folders(f"{fixture_root}/v2", E.imagenet_v2_label)
    assert folders == ["0", "10", "2"] and list(labels) == [0, 10, 2]
    assert results["inv2"] == 100.0  # ImageFolder's labels (0, 1, 2) would give 33.3


def test_imagenet_a_r_sketch(results):
    assert results["ina"] == 100.0 and results["inr"] == 100.0  # despite the decoy logit on class 0
    assert results["counts"]["ina"] == 2  # README.txt at the root is not a class
    assert results["sketch"] == 50.0  # gray JPEG -> RGB, light grey = class 1 right; RGBA blue in class 3 wrong


def test_imagenet_c(results):
    # gaussian_noise: s1 1/2 right = 50, s2 100, s3 100, s4 0, s5 0; contrast 100 x 5 -> mean of 10 sets = 75
    assert results["inc_acc"] == pytest.approx(75.0)
    assert results["inc_sets"] == 10 and results["counts"]["inc"] == 11  # speckle_noise ignored
    assert results["inc_mce"] == pytest.approx(100 * (0.5 / .886428 + 0.0) / 2)
    assert "PARTIAL" in results["protocol"]["inc_acc"]


def test_imagenet_o(results):
    # out = -MSP: yellow, magenta -> outside the mask: MSP 1/200 (score -lo); green -> class 51: -hi.
    # in (val of IN-O wnids 1 and 51): red, red, green: -hi; blue (class 7): -lo.
    # groups: {-lo: 2 out, 1 in}, {-hi: 1 out, 3 in}: AP = (2/3)(2/3) + (1/3)(3/7); AUROC (6 + 1 + 1.5) / 12
    assert results["ino_aupr"] == pytest.approx(100 * (4 / 9 + 1 / 7))
    assert results["ino_auroc"] == pytest.approx(100 * 8.5 / 12)
    assert results["ino_fpr95"] == pytest.approx(100.0)
    assert results["counts"]["ino"] == 3 and results["counts"]["ino_in_distribution"] == 4
    assert "ino_in_scores" not in results  # handed from IN-val to IN-O, not written


def test_objectnet(fixture_root, results):
    assert (results["objnet_A"], results["objnet_B"]) == pytest.approx((100 / 3, 200 / 3))
    assert results["counts"]["objnet"] == 3  # the unmapped folder is not scored
    paths = sorted(str(p) for p in Path(f"{fixture_root}/objectnet-1.0/images/alarm_clock").iterdir())
    raw = np.asarray(E.ImageList(paths, lambda im: im).load(0))
    img = np.asarray(E.ImageList(paths, lambda im: im, border=2).load(0))
    assert (raw[0, 0] == [255, 0, 0]).all() and img.shape == (56, 76, 3)
    assert np.array_equal(img, np.broadcast_to(np.array(COLOUR["teal"], np.uint8), img.shape))  # no red left


def test_si_score(results):
    # area/: koala 1 right (level 0.2), zebra 2 right and zebra 3 (koala colour) wrong (both level 0.5):
    # pooled 2 of 3; official per-level mean (100 + 50) / 2 = 75
    assert results["si_size_pooled"] == pytest.approx(200 / 3)
    assert results["si_size"] == pytest.approx(75.0)
    assert results["si_size_per_level"] == {"0.2": 100.0, "0.5": 50.0} and results["counts"]["si_size_levels"] == 2
    # location without metadata.csv: the pooled value, marked as not the official aggregation
    assert results["si_loc"] == 100.0 and "NOT the official" in results["protocol"]["si_loc"]
    assert "si_rot" not in results


def test_si_score_levels_formats_like_robustness_metrics(tmp_path):
    csv_path = tmp_path / "metadata.csv"
    csv_path.write_text("image_id,x_coord,y_coord\n4,0.05,0.1\n9,0.5,0.25\n")
    assert E.si_score_levels(csv_path, ["a/koala/9.jpg", "a/zebra/4.jpg"], ("x_coord", "y_coord")) == \
        ["(0.50,0.25)", "(0.05,0.10)"]
    assert E.si_score_levels(tmp_path / "none.csv", ["a/k/1.jpg"], ("area",)) is None
    with pytest.raises(SystemExit, match="has no row"):
        E.si_score_levels(csv_path, ["a/koala/5.jpg"], ("x_coord", "y_coord"))
    assert E.per_level_top1([True, False, True, True], ["a", "a", "b", "b"]) == (75.0, {"a": 50.0, "b": 100.0})


def test_bg_challenge(fixture_root, results):
    # only_bg_t: the dog-coloured background in 00_dog is "right", the fish-coloured one in 01_bird is not
    assert results["bgc_split_acc"] == pytest.approx({"original": 100.0, "mixed_same": 100.0, "mixed_rand": 75.0,
                                                      "only_bg_t": 50.0})
    assert results["bgc_gap"] == pytest.approx(25.0)
    # centre masks are robust; the dog with a corner mask falls to the fish background, the bird to the dog one
    assert results["bgc_acc"] == pytest.approx(50.0)
    # early exit, one background per forward: 2 + 2 (fooled by the 2nd) + 2 + 1 (fooled by the 1st) = 7 images
    root = f"{fixture_root}/bgc"
    model = PaletteModel()
    fg = [f"{root}/original/val/{c}/n0000000{j}_{j}.JPEG" for c in ("00_dog", "01_bird") for j in (0, 1)]
    masks = [f"{root}/fg_mask/val/{c}/n0000000{j}_{j}.npy" for c in ("00_dog", "01_bird") for j in (0, 1)]
    bgs = E.bgc_split(root, "only_bg_t")[0]
    args = eval_args(fixture_root)
    vul = E.bgc_vulnerability(E.prepare(model, args), args, fg, masks, [0, 0, 1, 1], bgs)
    assert list(vul) == [False, True, False, True] and model.images == 7


def test_wsol_maxboxacc(results):
    # images 1 and 3: the red rectangle is the GT box (IoU > .7 over a wide range of thresholds); image 2 never hits
    for k in ("maxboxacc_v2", "maxboxacc_v2_iou30", "maxboxacc_v2_iou50", "maxboxacc_v2_iou70", "maxboxacc_v1"):
        assert results[k] == pytest.approx(200 / 3), k
    assert results["counts"]["wsol"] == 3


def test_wsol_images_found_in_the_imagenet_val_tree(fixture_root):
    ids = ["val/ILSVRC2012_val_00000003.JPEG", "val/ILSVRC2012_val_00000001.JPEG"]
    got = E.resolve_wsol_images(ids, None, f"{fixture_root}/val")
    assert got == [f"{fixture_root}/val/{W[51]}/ILSVRC2012_val_00000003.JPEG",
                   f"{fixture_root}/val/{W[1]}/ILSVRC2012_val_00000001.JPEG"]
    assert E.resolve_wsol_images(ids[:1], f"{fixture_root}/wsol", None) == [f"{fixture_root}/wsol/{ids[0]}"]
    with pytest.raises(FileNotFoundError):
        E.resolve_wsol_images(["val/ILSVRC2012_val_00000009.JPEG"], f"{fixture_root}/wsol", f"{fixture_root}/val")


def test_wsol_box_search_in_worker_processes(fixture_root, results):
    args = eval_args(fixture_root, ["--workers", "2"])
    res, _, n = E.eval_wsol(E.prepare(PaletteModel(), args), args)
    assert n["wsol"] == 3
    assert {k: v for k, v in res.items()} == {k: results[k] for k in res}  # same counts as the inline path


def test_coco(coco_results):
    r = coco_results
    assert r["counts"]["coco"] == 2  # image 30 has no annotation
    # A: image 10 (+5) > image 20 (-5): AP 1. B: both -5, a tie group with 1 of 2 positive: AP 1/2. C: AP 1
    assert r["coco_map"] == pytest.approx(100 * 2.5 / 3)
    # only (image 10, A) qualifies (B's score is below .5, image 20 has one class): erasing B removes all green
    # (s_A = sigmoid(-5)); erasing A itself leaves the green square (s_A = sigmoid(5))
    assert r["ctx_random_flip"] == 100.0 and r["ctx_worst_flip"] == 100.0 and r["counts"]["ctx_pairs"] == 1
    drop = 100 * (torch.sigmoid(torch.tensor(5.0)) - torch.sigmoid(torch.tensor(-5.0))).item()
    assert r["ctx_random_drop"] == pytest.approx(drop, rel=1e-5)
    assert r["ctx_worst_drop"] == pytest.approx(drop, rel=1e-5)
    assert r["ctx_random"] == pytest.approx(-drop, rel=1e-5) and r["ctx_worst"] == pytest.approx(-drop, rel=1e-5)
    # CAMs equal the masks; C's crowd region is also blue but ignored -> 100 for every class
    assert r["pxap"] == pytest.approx(100.0) and r["pxap_pooled"] == pytest.approx(100.0)
    assert r["counts"]["pxap_classes"] == 3
    # points at the centre (112, 112): only B's box contains it, of the pairs (10, A), (10, B), (20, C)
    assert r["coco_point_acc"] == pytest.approx(100 / 3)


def test_coco_for_an_imagenet_model_is_skipped_with_the_reason(fixture_root):
    args = E.get_args_parser().parse_args(["--coco", f"{fixture_root}/coco", "--workers", "0", "--device", "cpu"])
    res = E.evaluate_all(PaletteModel(), args)
    assert res["skipped"]["coco"] == ("needs a 3-class model (the categories of instances_val2014.json), this one "
                                      "has 1000") and "coco_map" not in res


def test_coco_masks_and_targets(fixture_root):
    ds = E.CocoEvalSet(f"{fixture_root}/coco/val2014", f"{fixture_root}/coco/annotations/instances_val2014.json",
                       224, masks=True)
    assert ds.category_ids == [1, 3, 18] and [im["id"] for im in ds.images] == [10, 20]
    assert ds.targets.tolist() == [[1, 1, 0], [0, 0, 1]]
    classes, masks = ds.class_masks(1)
    assert classes.tolist() == [2]
    m = masks[0].numpy()
    assert (m[150:200, 150:200] == 255).all()  # the crowd region: ignored
    assert (m == 1).sum() == 60 * 60 and (m[30:90, 30:90] == 1).all()  # square (30, 30)-(90, 90): 60 x 60 px


def _exit_message(argv_or_call):
    with pytest.raises(SystemExit) as e:
        argv_or_call()
    return str(e.value.code)


def test_bad_roots_are_one_line_errors(fixture_root, tmp_path):
    parse = lambda *a: E.get_args_parser().parse_args([*a, "--device", "cpu", "--workers", "0"])
    msg = _exit_message(lambda: E.evaluate_all(PaletteModel(), parse("--imagenet-a", str(tmp_path / "nope"))))
    assert msg == f"--imagenet-a {tmp_path / 'nope'}: no such file or directory (the expected layout is in --help)"
    (tmp_path / "empty" / W[1]).mkdir(parents=True)
    msg = _exit_message(lambda: E.evaluate_all(PaletteModel(), parse("--imagenet-val", str(tmp_path / "empty"))))
    assert msg.startswith(f"--imagenet-val {tmp_path / 'empty'}: holds no image") and "\n" not in msg
    msg = _exit_message(lambda: E.evaluate_all(PaletteModel(), parse("--coco", f"{fixture_root}/val")))
    assert "needs val2014/ and annotations/instances_val2014.json" in msg
    res = E.evaluate_all(PaletteModel(), parse("--imagenet-o", f"{fixture_root}/imagenet-o"))
    assert "needs --imagenet-val" in res["skipped"]["imagenet_o"]
    assert res["skipped"]["imagenet_v2"] == "--imagenet-v2 not given"


def test_usage_errors(capsys):
    # nothing at all (no random-model run any more), and a checkpoint without any benchmark: argparse errors
    for argv, why in (([], "--checkpoint is required"), (["--checkpoint", "x.pt"], "at least one benchmark root")):
        with pytest.raises(SystemExit) as e:
            E.main(argv)
        assert e.value.code == 2 and why in capsys.readouterr().err.splitlines()[-1]
    assert E.get_args_parser().parse_args([]).workers == utils.default_workers()


class _Exploit:
    """A pickle whose loading would call os.system: weights_only=True must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_checkpoint_errors_are_one_line(fixture_root, tmp_path):
    models = pytest.importorskip("models")
    val = ["--imagenet-val", f"{fixture_root}/val", "--device", "cpu", "--workers", "0"]
    msg = _exit_message(lambda: E.main(["--checkpoint", str(tmp_path / "none.pt"), *val]))
    assert msg.startswith(f"--checkpoint {tmp_path / 'none.pt'}: no such file")
    torch.save({"model": _Exploit()}, tmp_path / "evil.pt")
    msg = _exit_message(lambda: E.main(["--checkpoint", str(tmp_path / "evil.pt"), *val]))
    assert msg.startswith(f"--checkpoint {tmp_path / 'evil.pt'}: refused by torch.load(weights_only=True)")
    assert "\n" not in msg
    net = models.create_model("resnet18", num_classes=1000)
    torch.save(net.state_dict(), tmp_path / "bare.pt")  # a torchvision-style file: names no architecture
    msg = _exit_message(lambda: E.main(["--checkpoint", str(tmp_path / "bare.pt"), *val]))
    assert msg.startswith(f"--checkpoint {tmp_path / 'bare.pt'} does not say which architecture") and "--model" in msg
    msg = _exit_message(lambda: E.main(["--checkpoint", str(tmp_path / "bare.pt"), "--model", "resnet5", *val]))
    assert msg.startswith("--model resnet5: unknown; choose from resnet18")
    msg = _exit_message(lambda: E.main(["--checkpoint", str(tmp_path / "bare.pt"), "--model", "resnet50", *val]))
    assert msg.startswith(f"--checkpoint {tmp_path / 'bare.pt'} does not fit --model resnet50 (1000 classes, 0 "
                          "points): checkpoint does not fit ResNet") and msg.endswith("it was trained with")
    sd = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save(sd, tmp_path / "backbone.pt")
    msg = _exit_message(lambda: E.main(["--checkpoint", str(tmp_path / "backbone.pt"), "--model", "resnet18", *val]))
    assert "has no classifier weights" in msg
    # a COCO model (its classes are category names) given only ImageNet benchmarks: nothing can be scored
    coco = models.create_model("resnet18", num_classes=3)
    torch.save({"model": coco.state_dict(), "meta": {"model": "resnet18", "num_classes": 3, "num_points": 0,
                                                     "classes": ["person", "car", "dog"], "img_size": 32}},
               tmp_path / "coco.pt")
    msg = _exit_message(lambda: E.main(["--checkpoint", str(tmp_path / "coco.pt"), *val]))
    assert msg == ("nothing was evaluated: --imagenet-val: the model's 3 classes are not ImageNet classes (no wnid "
                   "class names in the checkpoint)")


def test_checkpoint_meta_sets_model_classes_and_geometry(fixture_root, tmp_path):
    models = pytest.importorskip("models")
    net = models.create_model("resnet18", num_classes=2, num_points=1)
    meta = {"model": "resnet18", "num_classes": 2, "num_points": 1, "img_size": 32, "val_resize": 37,
            "interpolation": "bicubic", "classes": [W[51], W[1]], "points": "clicks"}
    torch.save({"model": net.state_dict(), "args": {"model": "resnet50"}, "meta": meta}, tmp_path / "c.pt")
    E.main(["--checkpoint", str(tmp_path / "c.pt"), "--imagenet-val", f"{fixture_root}/val", "--device", "cpu",
            "--workers", "0", "--out", str(tmp_path / "r.json")])
    res = json.loads((tmp_path / "r.json").read_text())  # meta wins over args; W[2]'s image is not scored
    assert (res["meta"]["model"], res["meta"]["num_classes"], res["meta"]["point_head"]) == ("resnet18", 2, True)
    assert (res["meta"]["img_size"], res["meta"]["resize"], res["meta"]["interpolation"]) == (32, 37, "bicubic")
    assert res["counts"]["in1k"] == 4 and "Resize(37, bicubic)+CenterCrop(32)" in res["protocol"]["in1k"]
    E.main(["--checkpoint", str(tmp_path / "c.pt"), "--imagenet-val", f"{fixture_root}/val", "--img-size", "36",
            "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "r.json")])
    res = json.loads((tmp_path / "r.json").read_text())  # a flag overrides the checkpoint
    assert (res["meta"]["img_size"], res["meta"]["resize"]) == (36, 37)
    # a crop larger than the resized image would be padded: refused, not scored on black borders
    msg = _exit_message(lambda: E.main(["--checkpoint", str(tmp_path / "c.pt"), "--imagenet-val",
                                        f"{fixture_root}/val", "--img-size", "48", "--device", "cpu", "--workers", "0"]))
    assert msg.startswith("--resize 37 < --img-size 48: the centre crop would pad the image")


def test_val_boxes_found_beside_the_val_tree(tmp_path):
    for d in ("a/val", "a/boxes/val", "ILSVRC/Data/CLS-LOC/val", "ILSVRC/Annotations/CLS-LOC/val", "b/val"):
        (tmp_path / d).mkdir(parents=True)
    assert E.find_val_boxes(tmp_path / "a" / "val") == tmp_path / "a" / "boxes" / "val"
    assert E.find_val_boxes(tmp_path / "ILSVRC/Data/CLS-LOC/val") == tmp_path / "ILSVRC/Annotations/CLS-LOC/val"
    assert E.find_val_boxes(tmp_path / "b" / "val") is None


def make_val_with_broken_files(root):
    """An IN-val tree with box XMLs beside it (boxes/val/, flat): images 1, 2 red (class 1), 3 green (class 51),
    all 64 x 48, and two files the reader refuses: 6 (class 1) has zero bytes, 7 (class 51) is text. Boxes: 1 and 3
    hold the image centre, 2's is a corner; 6 and 7 have boxes too. -> (val dir, boxes dir)"""
    files = [(W[1], 1, "red", [10, 10, 50, 40]), (W[1], 2, "red", [0, 0, 10, 10]),
             (W[51], 3, "green", [20, 12, 44, 36]), (W[1], 6, None, [10, 10, 50, 40]), (W[51], 7, None, [10, 10, 50, 40])]
    os.makedirs(f"{root}/boxes/val")
    for wnid, i, colour, box in files:
        path = f"{root}/val/{wnid}/ILSVRC2012_val_{i:08d}.JPEG"
        if colour:
            save(path, COLOUR[colour], size=(64, 48))
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            open(path, "wb").write(b"" if i == 6 else b"not an image, only text")
        with open(f"{root}/boxes/val/ILSVRC2012_val_{i:08d}.xml", "w") as f:
            f.write(f"<annotation>\n{_voc_xml(wnid, f'ILSVRC2012_val_{i:08d}', 64, 48, [box])}</annotation>\n")
    return root / "val", root / "boxes" / "val"


def test_broken_images_beside_box_xmls_are_counted_not_fatal(tmp_path):
    """evaluate.py's IN-val pass with two unreadable files that have box XMLs: no crash; both counted wrong
    (NaN input) and counted in the JSON; the point accuracy is over the 3 readable images (centre point: 1 and 3
    inside their box, 2 not)."""
    val, _ = make_val_with_broken_files(tmp_path)
    args = E.get_args_parser().parse_args(["--imagenet-val", str(val), "--device", "cpu", "--workers", "0",
                                           "--batch-size", "2"])
    with pytest.warns(byproducts.BadInputWarning) as caught:
        res = E.evaluate_all(PaletteModel(num_points=1), args)
    assert res["counts"]["imagenet_val_broken_images"] == 2 and res["counts"]["in1k"] == 5
    assert res["in1k"] == pytest.approx(60.0)  # 1, 2, 3 right; 6, 7 broken: counted wrong
    assert res["point_acc"] == pytest.approx(200 / 3) and res["counts"]["point_acc"] == 3
    boxes_warning = [str(w.message) for w in caught if str(w.message).startswith("point-accuracy boxes")]
    assert len(boxes_warning) == 1 and "unreadable-image x2" in boxes_warning[0]
    assert "ILSVRC2012_val_00000006.JPEG" in boxes_warning[0] and "ILSVRC2012_val_00000007.JPEG" in boxes_warning[0]


class TwoClassPalette(PaletteModel):
    """The palette over the classes (W[1], W[51]) of make_val_with_broken_files, in that (sorted) order."""

    def __init__(self):
        super().__init__(num_points=1)

    def forward(self, x, return_points=False):
        out = super().forward(x, return_points)
        return (out[0][:, [1, 51]], out[1]) if return_points else out[:, [1, 51]]


def test_training_validation_with_broken_images_beside_box_xmls(tmp_path):
    """The same files through train_imagenet's validation: val_point_boxes skips (and names) the two unreadable
    images, evaluate_imagenet counts them wrong and reports the point accuracy over the readable three."""
    import train_imagenet
    val_dir, boxes_dir = make_val_with_broken_files(tmp_path)
    args = SimpleNamespace(val_boxes=str(boxes_dir), device="cpu", channels_last=False, amp=False, amp_dtype=None,
                           val_resize=73, img_size=64)
    val = byproducts.ImageNetAB(str(val_dir), point_source="none", broken="nan",
                                transform=byproducts.EvalTransform(size=64, resize=73))
    with pytest.warns(byproducts.BadInputWarning, match=r"point-accuracy boxes: 2 problem\(s\) \[unreadable-image x2"):
        boxes, sizes = train_imagenet.val_point_boxes(args, val)
    assert [b is None for b in boxes] == [False, False, True, False, True]  # sorted: W[1] 1, 2, 6; W[51] 3, 7
    assert sizes[~np.array([b is None for b in boxes])].tolist() == [[64, 48]] * 3
    loader = DataLoader(val, batch_size=2, sampler=utils.UnpaddedDistributedSampler(val))
    with pytest.warns(byproducts.BadInputWarning):
        stats = train_imagenet.evaluate_imagenet(args, TwoClassPalette(), loader, (boxes, sizes))
    assert stats["val_broken_images"] == 2 and stats["val_top1"] == pytest.approx(60.0)
    assert stats["val_point_acc"] == pytest.approx(200 / 3)


class SubsetPalette(PaletteModel):
    """A 2-class model trained on the wnids (W[51], W[1]), in that order: the palette's logits of those classes."""

    classes = [W[51], W[1]]

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x, return_points=False):
        return super().forward(x)[:, [51, 1]]


def test_class_subset_model_on_the_matching_subset(fixture_root):
    args = E.get_args_parser().parse_args(["--imagenet-val", f"{fixture_root}/val", "--imagenet-real",
                                           f"{fixture_root}/real.json", "--imagenet-a", f"{fixture_root}/imagenet-a",
                                           "--device", "cpu", "--workers", "0", "--batch-size", "2"])
    args.classes = SubsetPalette.classes
    res = E.evaluate_all(SubsetPalette(), args)
    # W[2]'s grey image is skipped; red x2 -> W[1] (output 1) right, green -> W[51] (output 0) right, and the
    # blue image in W[51]'s folder has both logits 0 -> output 0 = W[51]: right among the model's own classes
    assert res["in1k"] == 100.0 and res["counts"]["in1k"] == 4
    assert "class-subset model: top-1 over its own 2 classes" in res["protocol"]["in1k"]
    assert "inreal" not in res and "1000 ImageNet classes" in res["skipped"]["imagenet_real"]  # a 1000-way metric
    assert res["skipped"]["imagenet_a"] == "needs the 1000 ImageNet classes; this model has 2 of them"
    assert E.label_space(None, 1000) is None and E.label_space(list(E.wnids("imagenet")), 1000) is None
    assert E.label_space(["person", "car"], 2) == {} and E.label_space([W[3], W[0]], 2) == {W[3]: 0, W[0]: 1}


def test_table(tmp_path, capsys):
    a = {"meta": {"name": "R50"}, "in1k": 77.4, "bgc_gap": 6.3, "ino_aupr": 16.0, "ino_auroc": 56.7,
         "objnet_A": 27.8, "objnet_B": 35.0}
    b = {"meta": {"name": "+LUAB"}, "in1k": 77.5, "bgc_gap": 5.6, "ino_aupr": 16.5, "ino_auroc": 57.0,
         "objnet_A": 28.5, "objnet_B": 36.0}
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    E.main(["--table", str(pa), str(pb)])
    out = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in out[0].split("|")]
    assert header == ["Model", "IN-1k↑", "IN-O↑", "ObjNet↑", "BGC-gap↓"]  # columns nobody has are left out
    assert [c.strip() for c in out[2].split("|")] == ["R50", "77.4", "56.7", "27.8", "6.3"]
    assert [c.strip() for c in out[3].split("|")] == ["+LUAB", "77.5 (+0.1)", "57.0 (+0.3)", "28.5 (+0.7)",
                                                       "5.6 (-0.7)"]
    E.main(["--table", str(pa), "--ino-metric", "aupr", "--objnet-protocol", "B"])
    assert "16.0" in capsys.readouterr().out.splitlines()[2].split("|")[2]

def test_table_params_real_denominator_and_context_metric(tmp_path, capsys):
    r = {"meta": {"name": "R50", "params_m": 25.557032}, "inreal": 86.6, "inreal_all": 81.1, "ctx_random": 47.6,
         "ctx_random_flip": 3.0}
    (tmp_path / "r.json").write_text(json.dumps(r))
    E.main(["--table", str(tmp_path / "r.json"), "--ctx-metric", "diff"])
    out = capsys.readouterr().out.splitlines()
    assert [c.strip() for c in out[0].split("|")] == ["Model", "Params", "IN-Real↑", "Ctx-rand↓"]
    assert [c.strip() for c in out[2].split("|")] == ["R50", "25.6M", "86.6", "47.6"]
    E.main(["--table", str(tmp_path / "r.json"), "--real-denominator", "all", "--ctx-metric", "flip"])
    out = capsys.readouterr().out.splitlines()
    assert [c.strip() for c in out[0].split("|")] == ["Model", "Params", "IN-Real(50k)↑", "Ctx-rand↓"]
    assert [c.strip() for c in out[2].split("|")] == ["R50", "25.6M", "81.1", "3.0"]
    r.update(ctx_worst_drop=4.9, ctx_random_drop=2.2)  # the default reading (drop), the worst-case row first
    (tmp_path / "r.json").write_text(json.dumps(r))
    E.main(["--table", str(tmp_path / "r.json")])
    out = capsys.readouterr().out.splitlines()
    assert [c.strip() for c in out[0].split("|")][-2:] == ["Ctx-worst↓", "Ctx-rand↓"]
    assert [c.strip() for c in out[2].split("|")][-2:] == ["4.9", "2.2"]


def test_params_count_leaves_out_the_point_head(tmp_path):
    models = pytest.importorskip("models")
    args = E.get_args_parser().parse_args(["--device", "cpu", "--workers", "0"])
    res = E.evaluate_all(models.create_model("resnet50", num_points=1), args)
    assert res["meta"]["params_m"] == 25.557032  # torchvision's resnet50: 25,557,032 (Table 1: 25.6M)

# -----------------------------------------------------------------------------
# exact distributed evaluation: 2 gloo processes give the single-process numbers

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank, world, port, root, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        # the batch sizes are global: --batch-size 2 and --bgc-batch-size 2 are the single run's 2 and 1 per process
        res = E.evaluate_all(PaletteModel(num_points=1), eval_args(root, ["--bgc-batch-size", "2"]))
        coco_args = E.get_args_parser().parse_args(["--coco", f"{root}/coco", "--batch-size", "2", "--workers", "0",
                                                    "--device", "cpu", "--cam-curve-interval", "0.01"])
        res["coco"] = E.evaluate_all(CocoFake(), coco_args)
        with pytest.raises(SystemExit) as e:  # 3 images per step cannot be split over 2 processes
            E.evaluate_all(PaletteModel(), eval_args(root, ["--batch-size", "3"]))
        res["odd_batch"] = str(e.value)
        with open(f"{out_dir}/rank{rank}.json", "w") as f:
            json.dump(res, f, default=float)
    finally:
        torch.distributed.destroy_process_group()


def _comparable(res):
    drop = {"meta", "seconds"}
    return {k: v for k, v in res.items() if k not in drop}


def test_distributed_equals_single_process(fixture_root, results, coco_results, tmp_path):
    port = _free_port()
    mp.spawn(_dist_worker, args=(2, port, str(fixture_root), str(tmp_path)), nprocs=2, join=True)
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0.pop("odd_batch") == r1.pop("odd_batch") == "--batch-size 3 (global) must be divisible by 2 processes"
    single = json.loads(json.dumps(_comparable(results), default=float))
    single_coco = json.loads(json.dumps(_comparable(coco_results), default=float))
    assert r0["meta"]["world_size"] == 2
    for r in (r0, r1):  # every rank ends with the same, exact numbers
        coco = r.pop("coco")
        assert _comparable(coco) == single_coco
        assert _comparable(r) == single

# -----------------------------------------------------------------------------
# through models.py: a real ResNet-18 checkpoint in our training format

def test_resnet18_checkpoint_end_to_end(tmp_path):
    models = pytest.importorskip("models")
    torch.manual_seed(0)
    net = models.create_model("resnet18", num_classes=1000, num_points=1)
    ckpt = tmp_path / "ckpt.pt"
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
    F.cross_entropy(net(torch.randn(2, 3, 64, 64)), torch.tensor([1, 2])).backward()
    opt.step()
    # what train_imagenet.py saves: optimizer, RNG states and args next to the weights (read with weights_only)
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
                "rng": {"torch": torch.get_rng_state(), "python": __import__("random").getstate()},
                "args": {"model": "resnet18", "img_size": 224, "luab": True}}, ckpt)
    # an IN-val tree filed by the network's own predictions, image 5 misfiled: IN-1k must be exactly 80 %
    args = E.resolve_eval_geometry(E.get_args_parser().parse_args(["--img-size", "64", "--resize", "72"]))
    rng = np.random.default_rng(0)
    staged = []
    for i in range(1, 6):
        p = tmp_path / "stage" / f"ILSVRC2012_val_{i:08d}.JPEG"
        save(str(p), image=Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 80, 3), dtype=np.uint8)))
        staged.append(p)
    net.eval()
    with torch.no_grad():
        x = torch.stack([E.default_transform(args)(Image.open(p).convert("RGB")) for p in staged])
        pred = net(x).argmax(1).tolist()
        occluded = net(E.occlude_center(x, 32, 0.0)).argmax(1).tolist()
    labels = pred[:4] + [(pred[4] + 1) % 1000]
    for p, label in zip(staged, labels):
        os.makedirs(tmp_path / "val" / W[label], exist_ok=True)
        os.replace(p, tmp_path / "val" / W[label] / p.name)
    out = tmp_path / "r.json"
    E.main(["--checkpoint", str(ckpt), "--imagenet-val", str(tmp_path / "val"), "--img-size", "64", "--resize", "72",
            "--cocc-hole", "32", "--device", "cpu", "--workers", "0", "--batch-size", "2", "--out", str(out),
            "--name", "r18"])
    res = json.loads(out.read_text())
    assert res["meta"]["model"] == "resnet18" and res["meta"]["point_head"] is True and res["meta"]["name"] == "r18"
    assert res["in1k"] == pytest.approx(80.0)
    # Cocc by hand: the same network on the same inputs with a 32 px centre hole
    assert res["cocc"] == pytest.approx(100.0 * np.mean(np.array(occluded) == np.array(labels)))
    assert res["counts"]["in1k"] == 5 and "Resize(72, bilinear)+CenterCrop(64)" in res["protocol"]["in1k"]

# -----------------------------------------------------------------------------
# parity with the training scripts: evaluate.py on a freshly trained synthetic checkpoint reports exactly what
# the training run's own validation logged for it, with no geometry or class flag (the checkpoint says them)

@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth(str(root), seed=0)
    return root


def _last_log_line(out):
    return json.loads((out / "log.jsonl").read_text().splitlines()[-1])


@pytest.mark.slow
def test_imagenet_checkpoint_matches_training_validation(synth_root, tmp_path):
    import train_imagenet
    out = tmp_path / "run"
    train_imagenet.main(train_imagenet.get_args_parser().parse_args([
        "--data-dir", str(synth_root / "imagenet"), "--byproducts", str(synth_root / "imagenet_ab" / "train_xml"),
        "--val-boxes", str(synth_root / "imagenet" / "boxes" / "val"), "--luab", "--model", "resnet18",
        "--img-size", "40", "--batch-size", "16", "--epochs", "1", "--lr", "0.05", "--workers", "0",
        "--print-freq", "1000", "--device", "cpu", "--output-dir", str(out)]))
    logged = _last_log_line(out)
    E.main(["--checkpoint", str(out / "checkpoint.pt"), "--imagenet-val", str(synth_root / "imagenet" / "val"),
            "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "r.json")])
    res = json.loads((tmp_path / "r.json").read_text())
    # 10 synthetic classes of the 1000: the subset protocol; 40 px input, Resize(46) as the training validated
    assert res["meta"]["num_classes"] == 10 and res["counts"]["in1k"] == 100
    assert (res["meta"]["img_size"], res["meta"]["resize"]) == (40, 46)
    assert (res["in1k"], res["in1k_top5"], res["point_acc"]) == \
        (logged["val_top1"], logged["val_top5"], logged["val_point_acc"])
    assert "boxes" in res["protocol"]["point_acc"]  # found beside val/ (boxes/val), as the demo's data has them


@pytest.mark.slow
def test_coco_checkpoint_matches_training_validation(synth_root, tmp_path):
    import train_coco
    out, coco = tmp_path / "run", synth_root / "coco"
    train_coco.main(train_coco.get_args_parser().parse_args([
        "--coco-dir", str(coco), "--coco-ab", str(coco / "coco_ab_v1_0.json"), "--luab", "--model", "resnet18",
        "--img-size", "40", "--batch-size", "16", "--epochs", "1", "--workers", "0", "--print-freq", "1000",
        "--device", "cpu", "--output-dir", str(out)]))
    logged = _last_log_line(out)
    E.main(["--checkpoint", str(out / "checkpoint.pt"), "--coco", str(coco), "--no-coco-pxap", "--no-coco-context",
            "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "r.json")])
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["meta"]["img_size"] == 40 and "Resize((40, 40))" in res["protocol"]["coco_map"]
    assert res["coco_map"] == pytest.approx(logged["val_map"], abs=1e-9)
    assert res["coco_point_acc"] == logged["val_point_acc"]

# -----------------------------------------------------------------------------
# pictures

def test_click_accuracy_maps_hand_computed():
    box = np.array([[10.0, 10.0, 40.0, 40.0]])  # centre (25, 25) of a 100 x 100 image: cell (row 0, col 0) of 2x2
    recs = [{"click": (0.2, 0.2), "size": (100, 100), "boxes": box},   # hit; click in cell (0, 0)
            {"click": (0.8, 0.3), "size": (100, 100), "boxes": box},   # miss; click in cell (0, 1)
            {"click": (0.9, 0.9), "size": (100, 100),                  # largest box centre (75, 75): cell (1, 1)
             "boxes": np.array([[60.0, 60.0, 90.0, 90.0], [0.0, 0.0, 5.0, 5.0]])},  # hit
            {"click": None, "size": (100, 100), "boxes": box},          # no click: not counted
            {"click": (0.5, 0.5), "size": None, "boxes": None}]         # no box: not counted
    by_box, by_click = figures.click_accuracy_maps(recs, grid=2)
    assert by_box[0].tolist() == [[1, 0], [0, 1]] and by_box[1].tolist() == [[2, 0], [0, 1]]
    assert by_click[0].tolist() == [[1, 0], [0, 1]] and by_click[1].tolist() == [[1, 1], [0, 1]]


def test_figures_are_written_with_title_and_legend(fixture_root, tmp_path):
    (tmp_path / "ab.json").write_text(json.dumps([{"image_id": 10, "actionHistories": [
        {"actionType": "add", "iconType": "person", "pointTo": {"x": 0.25, "y": 0.2}}]}]))

    def draw(model, *flags):
        args = figures.get_args_parser().parse_args(["--out", str(tmp_path / "fig"), "--per-picture", "3",
                                                     "--device", "cpu", *flags])
        E.resolve_eval_geometry(args)
        args.device, args.label_space, args.model = torch.device("cpu"), None, "fake"
        return figures.draw_figures(model, args)

    m = draw(PaletteModel(num_points=1), "--imagenet-val", f"{fixture_root}/val", "--wsol-metadata",
             f"{fixture_root}/wsol_meta")
    coco = ["--coco", f"{fixture_root}/coco", "--coco-ab", str(tmp_path / "ab.json"), "--coco-train-split", "val2014"]
    n_i = draw(CocoFake(), *coco)
    assert [p.name for p in m + n_i] == ["fig_m_points_imagenet_val.png", "fig_n_points_coco_val.png",
                                         "fig_i_icons_coco.png"]
    # one row of 3 cells with 4 px gutters (592 x 200), then 17 px a text line at 592 // 7 = 84 characters: the
    # title wraps to 2 lines; the legend (images 5, 3, 4 are drawn; only image 3 has a WSOL box, and the centre
    # point is inside it: "... inside a box in 1 of the 1 images with boxes") to 3; plus 12 px of margins
    with Image.open(m[0]) as im:
        assert (im.width, im.height) == (3 * 192 + 4 * 4, 192 + 2 * 4 + 17 * (2 + 3) + 12)
    msg = _exit_message(lambda: draw(PaletteModel(num_points=1), *coco))  # an ImageNet model on COCO
    assert "Fig. N needs one point head per category (3); --checkpoint None has 1" in msg
    msg = _exit_message(lambda: draw(PaletteModel(), "--imagenet-val", f"{fixture_root}/val"))
    assert msg == "--checkpoint None predicts no point: Figures M and N draw predicted points"


def test_figures_tool_draws_fig_d_from_the_files(synth_dir, tmp_path, capsys):
    """tools/figures.py as a command, without a model: Fig. D from the synthetic ImageNet-AB XML and train boxes."""
    xml, boxes = f"{synth_dir}/imagenet_ab/train_xml", f"{synth_dir}/imagenet/boxes/train"
    figures.main(["--imagenet-ab-xml", xml, "--imagenet-train-boxes", boxes, "--out", str(tmp_path / "f")])
    assert capsys.readouterr().out.strip() == f"wrote {tmp_path / 'f' / 'fig_d_click_accuracy_maps.png'}"
    records, _ = analyses.imagenet_records(xml, boxes)
    (hits, n), _ = figures.click_accuracy_maps(records)
    with Image.open(tmp_path / "f" / "fig_d_click_accuracy_maps.png") as im:
        assert im.width == 2 * 8 * 56 + 3 * 4  # two 8 x 8 maps of 56 px cells, 4 px gutters
    assert n.sum() == sum(r["click"] is not None and r["boxes"] is not None for r in records) > 0
    msg = _exit_message(lambda: figures.main(["--coco-ab", str(tmp_path / "none.json"), "--out", str(tmp_path)]))
    assert msg == f"--coco-ab {tmp_path / 'none.json'}: no such file or directory"


def test_an_attentive_pooling_checkpoint_gets_every_metric(fixture_root, results, tmp_path):
    """A --pooling attentive ResNet-18 checkpoint (no point head: its point is the attention's centre of mass)
    is scored on every ImageNet-side benchmark, the same keys as a point-head model; with its zero-initialised
    (uniform) attention the point is the centre, so PointAcc equals the constant-centre palette model's."""
    models = pytest.importorskip("models")
    torch.manual_seed(0)
    net = models.create_model("resnet18", num_classes=1000, num_points=1, pooling="attentive")
    torch.save({"model": net.state_dict(), "meta": {"model": "resnet18", "num_classes": 1000, "num_points": 1,
                                                    "pooling": "attentive"}}, tmp_path / "attentive.pt")
    model = E.load_run_model(eval_args(fixture_root, ["--checkpoint", str(tmp_path / "attentive.pt"),
                                                      "--img-size", "64", "--resize", "73"]))
    assert model.pooling == "attentive" and model.point_head is None
    res = E.evaluate_all(model, eval_args(fixture_root, ["--img-size", "64", "--resize", "73"]))
    assert sorted(k for k in res if k not in ("meta", "seconds")) == \
        sorted(k for k in results if k not in ("meta", "seconds"))
    assert res["point_acc"] == results["point_acc"] and res["meta"]["point_head"] is True
