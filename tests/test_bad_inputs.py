"""Bad inputs (issue 16): every loader reads images through byproducts.read_image / ImageReader, converts modes
faithfully or refuses them by name, counts broken files (in DataLoader workers too), and every refusal is one
line naming the file and the fix. Fixtures are tiny files written here; expected values are worked out in the
comments."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader

import byproducts as bp
import evaluate as E
import train_coco
import train_imagenet
from tools import analyses, prepare
from tools.synth import SYNTH_WNIDS
from tools.synth import synth as write_synth

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN_RGB = (124, 116, 104)  # round(255 * IMAGENET_MEAN): what a broken image and transparent pixels become


def jpeg(path, size=(40, 30)):
    """A noise JPEG: its scan data dominates the file, so cutting it keeps the header (the size) intact."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, quality=95)
    return str(path)


def truncate(path, keep=0.5):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: int(len(data) * keep)])
    return str(path)


def ab_xml(path, click=(0.5, 0.5), orig=(40, 30)):
    """A minimal ImageNet-AB file: one selected entry with one click on an image of size orig."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(f"<annotation><metadata><originalImageHeight>{orig[1]}</originalImageHeight><originalImageWidth>"
                f"{orig[0]}</originalImageWidth><selected>True</selected><selectedRecord><time>1</time>"
                f"<x>{click[0]}</x><y>{click[1]}</y></selectedRecord></metadata></annotation>")


def pixels(img):
    """The RGB pixels of a PIL image, row-major, as tuples."""
    return [tuple(int(v) for v in p) for p in np.asarray(img.convert("RGB")).reshape(-1, 3)]


def caught(record):
    return [str(w.message) for w in record if issubclass(w.category, bp.BadInputWarning)]


# ---------------------------------------------------------------------------------------------------------------
# image modes: converted faithfully, or refused by name; never a silent white image

def _save(path, img, fmt):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, format=fmt)
    return str(path)


def _rgba(mode, pixels):
    img = Image.new(mode, (len(pixels), 1))
    img.putdata(pixels)
    return img


def _palette_with_transparency():
    img = Image.new("P", (2, 1))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)  # index 0 red (transparent below), index 1 green
    img.putdata([0, 1])
    img.info["transparency"] = 0
    return img


# (name, image, file format, expected RGB pixels). Every file is saved under a .JPEG name, as the issue's
# 16-bit PNG was: PIL identifies the content, not the extension.
MODES = [
    # 16-bit gray: v -> (v + 128) // 257, so 40000 -> 40128 // 257 = 156 (PIL's own convert gives 255, white)
    ("I;16 png", Image.fromarray(np.array([[0, 40000, 65535]], np.uint16)), "PNG",
     [(0, 0, 0), (156, 156, 156), (255, 255, 255)]),
    ("I tiff", Image.fromarray(np.array([[0, 40000, 65535]], np.int32)), "TIFF",
     [(0, 0, 0), (156, 156, 156), (255, 255, 255)]),
    # CMYK -> (255 - C)(255 - K) / 255 per channel: (100, 50, 0, 20) -> 155 * 235 / 255 = 142.8 -> 143, 189, 235
    ("CMYK tiff", Image.new("CMYK", (1, 1), (100, 50, 0, 20)), "TIFF", [(143, 189, 235)]),
    # alpha 0: the mean pixel shows through; alpha 255: the colour itself
    ("P + transparency", _palette_with_transparency(), "PNG", [MEAN_RGB, (0, 255, 0)]),
    ("LA", _rgba("LA", [(200, 0), (200, 255)]), "PNG", [MEAN_RGB, (200, 200, 200)]),
    ("RGBA", _rgba("RGBA", [(10, 20, 30, 0), (10, 20, 30, 255)]), "PNG", [MEAN_RGB, (10, 20, 30)]),
    ("L", Image.new("L", (1, 1), 77), "PNG", [(77, 77, 77)]),
    ("1", Image.new("1", (1, 1), 1), "PNG", [(255, 255, 255)]),
]


@pytest.mark.parametrize("name,img,fmt,want", MODES, ids=[m[0] for m in MODES])
def test_modes_convert_faithfully(tmp_path, name, img, fmt, want):
    path = _save(tmp_path / "n1" / "n1_0.JPEG", img, fmt)
    out = bp.read_image(path)
    assert out.mode == "RGB" and pixels(out) == want
    # the same pixels in training (ImageNetAB), evaluation (evaluate.ImageList) and COCO: one reader
    ds = bp.ImageNetAB(str(tmp_path), point_source="none")
    assert pixels(ds[0][0]) == want and ds.problem_counts() == {"broken_images": 0, "bad_records": 0}
    assert pixels(E.ImageList([path], lambda im: im).load(0)) == want


@pytest.mark.parametrize("img,fmt,match", [
    (Image.fromarray(np.full((2, 2), 300.5, np.float32)), "TIFF", "mode F"),        # PIL: all white
    (Image.fromarray(np.array([[0, 70000]], np.int32)), "TIFF", r"mode I with values 0\.\.70000"),
])
def test_modes_without_an_8bit_form_are_refused_by_name(tmp_path, img, fmt, match):
    path = _save(tmp_path / "x.JPEG", img, fmt)
    with pytest.raises(bp.BadImage, match=match) as e:
        bp.read_image(path)
    assert e.value.kind == "unsupported-mode" and "x.JPEG" in str(e.value) and e.value.size == img.size
    # in a dataset: the broken-image policy, never the white image PIL's convert would give
    reader = bp.ImageReader(1)
    with pytest.warns(bp.BadInputWarning, match="unsupported-mode: .*x.JPEG"):
        out = reader.read(0, path)
    assert out.size == img.size and set(pixels(out)) == {MEAN_RGB} and reader.failed(0)


# ---------------------------------------------------------------------------------------------------------------
# broken files: counted (across DataLoader workers), named once, mean pixel / NaN, strict raises

@pytest.fixture
def broken_tree(tmp_path):
    """train-style tree: n1/n1_0 good, n1/n1_1 truncated (header intact: 40 x 30), n1/n1_2 zero bytes."""
    root = tmp_path / "train"
    jpeg(root / "n1" / "n1_0.JPEG")
    truncate(jpeg(root / "n1" / "n1_1.JPEG"))
    (root / "n1" / "n1_2.JPEG").write_bytes(b"")
    clicks = {f"n1/n1_{k}": (0.5, 0.5) for k in range(3)}
    return str(root), clicks


def test_broken_images_counted_in_workers_and_named_once(broken_tree):
    root, clicks = broken_tree
    ds = bp.ImageNetAB(root, clicks=clicks, transform=bp.EvalTransform(size=16, resize=16))
    batches = list(DataLoader(ds, batch_size=3, num_workers=2))  # the workers find them; the parent counts
    assert torch.cat([b[3] for b in batches]).flatten().tolist() == [1.0, 0.0, 0.0]
    assert ds.problem_counts() == {"broken_images": 2, "bad_records": 0}
    # training policy: the mean pixel, which normalises to (124 / 255 - 0.485) / 0.229 = 0.0073 etc.
    mean = (torch.tensor(MEAN_RGB) / 255 - torch.tensor(bp.IMAGENET_MEAN)) / torch.tensor(bp.IMAGENET_STD)
    assert torch.allclose(batches[0][0][2], mean[:, None, None].expand(3, 16, 16), atol=1e-6)
    # the flags are per dataset: the workers already named both files, so the parent warns no more
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        ds[1], ds[2]
    assert caught(rec) == []
    fresh = bp.ImageNetAB(root, clicks=clicks)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            img, _, _, w = fresh[1]
    assert len(caught(rec)) == 1 and "n1_1.JPEG" in caught(rec)[0] and "truncated" in caught(rec)[0]
    assert img.size == (40, 30) and set(pixels(img)) == {MEAN_RGB} and w.item() == 0.0  # header's size
    with pytest.warns(bp.BadInputWarning, match="n1_2.JPEG"):
        assert fresh[2][0].size == (32, 32)  # zero bytes: no header, the fallback size


def test_strict_data_raises_one_line_even_from_a_worker(broken_tree):
    root, clicks = broken_tree
    ds = bp.ImageNetAB(root, clicks=clicks, transform=bp.EvalTransform(size=16, resize=16), strict=True)
    with pytest.raises(bp.BadImage) as e:
        list(DataLoader(ds, batch_size=3, num_workers=1))
    assert "Traceback" in str(e.value)  # what DataLoader re-raises: the worker's traceback in the text
    line = bp.error_line(e.value)
    assert "\n" not in line and line.startswith("unreadable-image: ") and "n1_1.JPEG" in line


def test_evaluate_counts_a_truncated_val_jpeg_wrong(tmp_path):
    """evaluate.py's IN-val: two images of class 0, the second truncated. The fake model answers class 0 for any
    real image, so in1k = 1 right / 2 = 50.0 exactly: the broken one is a NaN input, hence a wrong answer."""
    val = tmp_path / "val" / E.wnids("imagenet")[0]
    jpeg(val / "a.JPEG")
    truncate(jpeg(val / "b.JPEG"))

    class ClassZero(nn.Module):
        is_vit, point_head = False, None

        def __init__(self):
            super().__init__()
            self.classifier = nn.Linear(1, 1000)

        def forward(self, x):
            return torch.zeros(len(x), 1000).index_fill_(1, torch.tensor([0]), 1.0) + 0 * x.mean((1, 2, 3))[:, None]

    args = E.get_args_parser().parse_args(["--imagenet-val", str(tmp_path / "val"), "--img-size", "16", "--resize",
                                           "16", "--workers", "2", "--device", "cpu", "--batch-size", "2",
                                           "--cocc-hole", "8"])  # the hole leaves NaN pixels around it
    res = E.evaluate_all(ClassZero(), args)
    assert res["in1k"] == 50.0 and res["cocc"] == 50.0
    assert res["counts"]["imagenet_val_broken_images"] == 1 and res["counts"]["in1k"] == 2


@pytest.fixture(scope="module")
def synth(synth_dir):  # the shared synthetic set (conftest.py) as a Path
    return Path(synth_dir)


def test_coco_val_zero_byte_image_is_a_counted_nan(synth, tmp_path):
    import shutil
    coco = tmp_path / "coco"
    shutil.copytree(synth / "coco", coco)
    ds = E.CocoEvalSet(coco / "val2014", coco / "annotations" / "instances_val2014.json", size=16)
    (coco / "val2014" / ds.images[1]["file_name"]).write_bytes(b"")
    xs = torch.cat([b[0] for b in DataLoader(ds, batch_size=2, num_workers=2)])
    assert xs.shape == (len(ds), 3, 16, 16)
    assert [bool(torch.isnan(x).all()) for x in xs] == [i == 1 for i in range(len(ds))]
    assert ds.reader.counts() == {"broken_images": 1, "size_mismatches": 0}


# ---------------------------------------------------------------------------------------------------------------
# datasets: empty classes; click index sizes

def test_empty_class_folders_refused_unless_allowed(tmp_path):
    jpeg(tmp_path / "n1" / "n1_0.JPEG")
    (tmp_path / "n2").mkdir()
    (tmp_path / "n3" / "sub").mkdir(parents=True)
    with pytest.raises(bp.BadInput, match=r"2 class folder\(s\) without images: n2, n3; .*--allow-empty-classes"):
        bp.ImageNetAB(str(tmp_path), point_source="none")
    with pytest.warns(bp.BadInputWarning, match="empty-class x2: n2 .*n3"):
        ds = bp.ImageNetAB(str(tmp_path), point_source="none", allow_empty_classes=True)
    assert ds.classes == ["n1", "n2", "n3"] and len(ds) == 1 and ds.problem_counts()["bad_records"] == 0


@pytest.mark.parametrize("empty_in", ["train", "val"])
def test_training_refuses_empty_classes_in_one_line(tmp_path, empty_in):
    for split in ("train", "val"):
        jpeg(tmp_path / split / "n1" / "n1_0.JPEG")
        (tmp_path / split / "n2").mkdir()
        if split != empty_in:
            jpeg(tmp_path / split / "n2" / "n2_0.JPEG")
    argv = ["--data-dir", str(tmp_path), "--model", "resnet18"]
    args = train_imagenet.resolve_args(train_imagenet.get_args_parser().parse_args(argv), train_imagenet.RECIPES)
    with pytest.raises(SystemExit) as e:
        train_imagenet.build_datasets(args)
    msg = str(e.value)
    assert "\n" not in msg and os.path.join(str(tmp_path), empty_in) in msg and "n2" in msg
    assert "--allow-empty-classes" in msg
    args.allow_empty_classes = True
    train, val = train_imagenet.build_datasets(args)
    assert train.classes == val.classes == ["n1", "n2"]


def test_index_records_sizes_and_the_dataset_checks_them(tmp_path):
    """n1_0 was clicked on a 40 x 30 image (its JPEG's size); n1_1's XML says 500 x 375: an index of other
    images. Built index -> weights [1, 0], one bad record named once, also when workers meet it."""
    for k in range(2):
        jpeg(tmp_path / "img" / "n1" / f"n1_{k}.JPEG")
    ab_xml(tmp_path / "xml" / "n1" / "n1_0.xml", (0.5, 0.25), orig=(40, 30))
    ab_xml(tmp_path / "xml" / "n1" / "n1_1.xml", (0.5, 0.25), orig=(500, 375))
    prepare.build_imagenet_index(str(tmp_path / "xml"), str(tmp_path / "i.npz"), workers=1, progress=False)
    idx = bp.load_imagenet_index(str(tmp_path / "i.npz"))
    assert idx.has_sizes and idx.sizes.tolist() == [[40, 30], [500, 375]]
    ds = bp.ImageNetAB(str(tmp_path / "img"), clicks=str(tmp_path / "i.npz"),
                       transform=bp.EvalTransform(size=16, resize=16))
    weights = torch.cat([b[3] for b in DataLoader(ds, batch_size=2, num_workers=2)]).flatten().tolist()
    assert weights == [1.0, 0.0] and ds.problem_counts() == {"broken_images": 0, "bad_records": 1}
    fresh = bp.ImageNetAB(str(tmp_path / "img"), clicks=idx)
    with pytest.warns(bp.BadInputWarning, match=r"size-mismatch: .*n1_1.JPEG is 40x30 but .* 500x375"):
        assert fresh[1][3].item() == 0.0
    with pytest.raises(bp.BadInput, match="size-mismatch"):
        bp.ImageNetAB(str(tmp_path / "img"), clicks=idx, strict=True)[1]
    # the XML root scanned by the dataset itself carries the sizes too
    with pytest.warns(bp.BadInputWarning, match="size-mismatch"):
        assert bp.ImageNetAB(str(tmp_path / "img"), clicks=str(tmp_path / "xml"))[1][3].item() == 0.0


def test_index_of_another_dataset_does_not_pass_silently(synth, tmp_path):
    """The issue's case: an index built from other images with the same file names (synth seed 1 vs 0: same
    names, sizes drawn anew). Every click whose recorded size differs from the opened image gets weight 0."""
    other = tmp_path / "other"
    write_synth(str(other), seed=1, n_classes=2, n_train=4, n_val=1, coco_train=0, coco_val=0)
    prepare.build_imagenet_index(str(other / "imagenet_ab"), str(tmp_path / "other.npz"), workers=1, progress=False)
    ds = bp.ImageNetAB(str(synth / "imagenet" / "train"), clicks=str(tmp_path / "other.npz"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bp.BadInputWarning)
        items = [ds[i] for i in range(len(ds))]
    idx = bp.load_imagenet_index(str(tmp_path / "other.npz"))
    sizes = {k: tuple(s) for k, s in zip((k.decode() for k in idx.keys), idx.sizes.tolist())}
    mismatched = [k for k, (img, *_) in zip(ds.keys, items) if k in idx and img.size != sizes[k]]
    assert len(mismatched) == ds.num_point_targets  # every click of the other set is caught (all sizes differ)
    assert ds.problem_counts()["bad_records"] == ds.num_point_targets and sum(it[3].item() for it in items) == 0


def test_old_index_without_sizes_warns_once_and_still_works(tmp_path):
    jpeg(tmp_path / "img" / "n1" / "n1_0.JPEG")
    old = tmp_path / "v1.npz"
    with open(old, "wb") as f:  # what index-imagenet wrote before sizes were recorded
        np.savez(f, format=np.array("luab-imagenet-ab-index-v1"), keys=np.array([b"n1/n1_0"]),
                 points=np.array([[0.5, 0.25]], np.float32), status=np.array([bp.CLICK], np.uint8))
    with pytest.warns(bp.BadInputWarning, match=r"old click index \(luab-imagenet-ab-index-v1\) without image "
                                                r"sizes.*rebuild it") as rec:
        ds = bp.ImageNetAB(str(tmp_path / "img"), clicks=str(old))
    assert len(caught(rec)) == 1
    assert ds[0][3].item() == 1.0 and ds[0][2].tolist() == [[0.5, 0.25]]  # no size to check: the click counts


# ---------------------------------------------------------------------------------------------------------------
# messages

@pytest.mark.parametrize("content,says", [
    (json.dumps([{"image_id": 1, "actionHistories": []}]), "a JSON file (a COCO-AB file? that one goes to "
                                                           "train_coco.py --coco-ab)"),
    ("<annotation></annotation>", "an XML file"),
    ("", "empty"),
])
def test_a_non_index_file_as_byproducts_says_what_it_is(tmp_path, content, says):
    p = tmp_path / "clicks.npz"
    p.write_text(content)
    with pytest.raises(bp.BadInput) as e:
        bp.load_imagenet_index(str(p))
    msg = str(e.value)
    assert e.value.kind == "not-an-index" and says in msg and "index-imagenet" in msg and "pickle" not in msg
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with pytest.raises(bp.BadInput, match="numpy file without the index arrays"):
        bp.load_imagenet_index(str(tmp_path / "arr.npy"))


def test_byproducts_flag_gives_one_line(tmp_path):
    jpeg(tmp_path / "train" / "n1" / "n1_0.JPEG")
    jpeg(tmp_path / "val" / "n1" / "n1_0.JPEG")
    (tmp_path / "coco_ab_v1_0.json").write_text("[]")
    r = subprocess.run([sys.executable, "train_imagenet.py", "--data-dir", str(tmp_path), "--luab", "--byproducts",
                        str(tmp_path / "coco_ab_v1_0.json"), "--model", "resnet18", "--device", "cpu"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert "coco_ab_v1_0.json is a JSON file" in r.stderr and "allow_pickle" not in r.stderr


def test_non_numeric_click_keeps_its_text(tmp_path):
    ab_xml(tmp_path / "n1" / "n1_0.xml", ("12,5%", 0.5))
    with pytest.raises(bp.BadInput, match=r"x='12,5%' y=0\.5"):
        bp.imagenet_click(bp.read_imagenet_ab_xml(str(tmp_path / "n1" / "n1_0.xml")))
    st = prepare.build_imagenet_index(str(tmp_path), str(tmp_path / "i.npz"), workers=1, progress=False)
    assert "x='12,5%'" in st["problems"] and "nan" not in st["problems"]


def test_val_boxes_missing_path_says_missing(tmp_path):
    args = SimpleNamespace(val_boxes=str(tmp_path / "nope"))
    with pytest.raises(SystemExit, match=r"--val-boxes: missing-path: .*nope does not exist"):
        train_imagenet.val_point_boxes(args, None)


# ---------------------------------------------------------------------------------------------------------------
# checkpoints that would run code: refused by every entry point that loads one

class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this creates the marker file
        return (open, (self.marker, "w"))


def _entry_points(synth, out, evil):
    inet, coco = str(synth / "imagenet"), str(synth / "coco")
    tiny = ["--model", "resnet18", "--img-size", "32", "--batch-size", "4", "--workers", "0", "--device", "cpu",
            "--output-dir", str(out)]
    parse_in, parse_co = train_imagenet.get_args_parser().parse_args, train_coco.get_args_parser().parse_args
    return {
        "train_imagenet --pretrained": lambda: train_imagenet.main(
            parse_in(["--data-dir", inet, "--pretrained", evil, *tiny])),
        "train_imagenet --resume": lambda: train_imagenet.main(parse_in(["--data-dir", inet, "--resume", *tiny])),
        "train_coco --pretrained": lambda: train_coco.main(parse_co(["--coco-dir", coco, "--pretrained", evil, *tiny])),
        "evaluate --checkpoint": lambda: E.main(["--checkpoint", evil, "--device", "cpu", "--imagenet-val",
                                                 inet + "/val"]),
        "analyses draw --checkpoint": lambda: analyses.main(
            ["draw", "imagenet", "--xml-root", str(synth / "imagenet_ab"), "--images", inet + "/train", "--out",
             str(out / "pics"), "--model", "resnet18", "--checkpoint", evil]),
    }


@pytest.mark.parametrize("entry", ["train_imagenet --pretrained", "train_imagenet --resume",
                                   "train_coco --pretrained", "evaluate --checkpoint", "analyses draw --checkpoint"])
def test_a_code_running_checkpoint_is_refused(synth, tmp_path, entry):
    marker = tmp_path / "pwned"
    out = tmp_path / "run"
    out.mkdir()
    evil = str(out / "checkpoint.pt")  # also what --resume finds
    torch.save({"model": {"fc.weight": torch.zeros(1)}, "x": _Payload(str(marker))}, evil)
    with pytest.raises(SystemExit) as e:
        _entry_points(synth, out, evil)[entry]()
    msg = str(e.value)
    assert not marker.exists()
    assert "\n" not in msg and "refused" in msg and "checkpoint.pt" in msg and "(io.open)" in msg, msg


# ---------------------------------------------------------------------------------------------------------------
# trainings: broken images do not stop an epoch, and the counts reach log.jsonl

@pytest.mark.slow
def test_training_logs_broken_images_and_survives_a_zero_byte_coco_val_image(synth, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(synth / "imagenet", data / "imagenet")
    shutil.copytree(synth / "coco", data / "coco")
    truncate(str(data / "imagenet" / "train" / SYNTH_WNIDS[0] / f"{SYNTH_WNIDS[0]}_0.JPEG"))
    (data / "imagenet" / "val" / SYNTH_WNIDS[1] / f"{SYNTH_WNIDS[1]}_val_0.JPEG").write_bytes(b"")
    val_coco = sorted((data / "coco" / "val2014").iterdir())
    val_coco[0].write_bytes(b"")
    common = ["--model", "resnet18", "--img-size", "32", "--batch-size", "4", "--workers", "1", "--device", "cpu",
              "--epochs", "1", "--max-steps-per-epoch", "1", "--print-freq", "1000", "--warmup-epochs", "0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", bp.BadInputWarning)
        train_imagenet.main(train_imagenet.get_args_parser().parse_args(
            ["--data-dir", str(data / "imagenet"), "--output-dir", str(tmp_path / "in"), *common]))
        train_coco.main(train_coco.get_args_parser().parse_args(
            ["--coco-dir", str(data / "coco"), "--output-dir", str(tmp_path / "co"), "--rand-points", *common]))
    (line_in,) = [json.loads(x) for x in (tmp_path / "in" / "log.jsonl").read_text().splitlines()]
    (line_co,) = [json.loads(x) for x in (tmp_path / "co" / "log.jsonl").read_text().splitlines()]
    # one step of 4 of the 32 train images need not meet the truncated one: only validation's count is exact
    assert line_in["val_broken_images"] == 1 and line_in["train_bad_records"] == 0
    assert line_co["val_broken_images"] == 1 and "val_map" in line_co
    assert (tmp_path / "co" / "checkpoint.pt").exists() and (tmp_path / "in" / "checkpoint.pt").exists()
