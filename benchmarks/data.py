"""
Input-pipeline benchmark for byproducts.py, on synthetic data written to a temp dir.

    python benchmarks/data.py [--rounds 5] [--images 100] [--size 224]

1. ImageNet: items/s of ImageNetAB (points = clicks / random / none) against a plain
   torchvision.datasets.ImageFolder with the same decoding and the same RandomResizedCrop + flip + ToTensor +
   Normalize, at num_workers 0 and 2. Two baselines: ImageFolder with torchvision's own Compose, and
   ImageFolder with our TrainTransform called image-only (isolates what the dataset and the point maths add).
   Two more references: the official notebook's approach (parse the XML in __getitem__), and the same point
   maths done with torchvision.transforms.v2 KeyPoints.
2. COCO: CocoAB (80 points per image) against a plain COCO dataset (image + multi-hot target), same transform.
3. Two precise measurements that a loaded machine does not blur as much: a same-seed __getitem__ loop (torch
   reseeded per pass, so every dataset does the same image work) and the dataset overhead with decoding and image
   ops stubbed out (what ImageNetAB / CocoAB add per item, in us, and as a share of a real item's cost).
4. The index build rate (files/s) on ~20k XML files copied and varied from the synthetic ones.

Every configuration runs once per round, in a rotated order (interleaved, so drift in machine load hits all
alike); we report the median. Each measurement is a steady-state epoch (persistent workers, after a warm-up
epoch). Besides wall-clock items/s we report CPU microseconds per item (this process + its DataLoader workers,
from /proc), which is far less sensitive to other jobs on a shared machine.
Prints a table and one JSON line.
"""

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import numpy as np
import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets import ImageFolder

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import byproducts as bp  # noqa: E402
import utils  # noqa: E402
from tools.prepare import build_imagenet_index  # noqa: E402
from tools.synth import synth  # noqa: E402


# ----------------------------------------------------------------------------------------------------------------
# reference datasets

class NotebookXMLFolder(ImageFolder):
    """The official notebook's approach: parse the image's ImageNet-AB XML inside __getitem__ (last click)."""

    def __init__(self, root, xml_root, transform):
        super().__init__(root)
        self.xml_root, self.tf = xml_root, transform

    def __getitem__(self, i):
        path, label = self.samples[i]
        img = self.loader(path)
        wnid, name = path.split(os.sep)[-2:]
        xml = os.path.join(self.xml_root, wnid, os.path.splitext(name)[0] + ".xml")
        xs, ys = [], []
        if os.path.exists(xml):
            for md in ET.parse(xml).getroot().iter("metadata"):
                recs = md.findall("selectedRecord")
                if md.findtext("selected") == "True" and recs:
                    xs.append(float(recs[-1].findtext("x")))
                    ys.append(float(recs[-1].findtext("y")))
        pts = torch.tensor([[sum(xs) / len(xs), sum(ys) / len(ys)]]) if xs else torch.zeros(1, 2)
        img, pts, w = self.tf(img, pts, torch.tensor([1.0 if xs else 0.0]))
        return img, label, pts, w


class V2KeyPoints(Dataset):
    """ImageNetAB's samples and points, but crop / flip / tensor ops and point moves by transforms.v2 KeyPoints."""

    def __init__(self, ab, size):
        from torchvision import tv_tensors
        from torchvision.transforms import v2
        self.ab, self.size, self.KeyPoints = ab, size, tv_tensors.KeyPoints
        self.tf = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(), v2.ToImage(),
                              v2.ToDtype(torch.float32, scale=True), v2.Normalize(bp.IMAGENET_MEAN, bp.IMAGENET_STD)])

    def __len__(self):
        return len(self.ab)

    def __getitem__(self, i):
        path, label = self.ab.samples[i]
        img = bp.read_image(path)
        W, H = img.size
        kp = self.KeyPoints(self.ab.points[i] * torch.tensor([W, H]), canvas_size=(H, W))
        img, kp = self.tf(img, kp)
        pts = kp.as_subclass(torch.Tensor) / self.size  # note: v2 flips as x -> S - 1 - x (pixel indices)
        mask = self.ab.point_mask[i] * ((pts >= 0) & (pts <= 1)).all(1)
        return img, label, pts, mask


class PlainCoco(Dataset):
    """A plain COCO multi-label dataset: image + 80-class multi-hot target, no byproducts."""

    def __init__(self, image_dir, inst, transform):
        self.files = [os.path.join(image_dir, inst.images[i]["file_name"]) for i in inst.image_ids]
        self.targets = torch.from_numpy(np.stack([inst.target(i) for i in inst.image_ids]))
        self.tf = transform

    def __len__(self):
        return len(self.files)

    def __getitem__(self, i):
        return self.tf(bp.read_image(self.files[i])), self.targets[i]


# ----------------------------------------------------------------------------------------------------------------
# timing

_CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    """CPU seconds (user + system) of this process and of the given live worker processes."""
    t = time.process_time()
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        t += (int(fields[11]) + int(fields[12])) / _CLK  # utime, stime in clock ticks
    return t


def one_pass(ds, workers, batch):
    """Steady-state items/s and CPU us/item: persistent workers, one warm-up epoch, then one timed epoch.
    Workers are idle between epochs, so the CPU counters bracket exactly the timed epoch's work."""
    loader = DataLoader(ds, batch_size=batch, num_workers=workers, persistent_workers=workers > 0)
    if workers:
        for _ in loader:
            pass
    pids = [w.pid for w in loader._iterator._workers] if workers else []
    c0, t0 = cpu_seconds(pids), time.perf_counter()
    n = 0
    for b in loader:
        n += b[0].shape[0]
    seconds, cpu = time.perf_counter() - t0, cpu_seconds(pids) - c0
    del loader
    return n / seconds, cpu / n * 1e6


def run_suite(configs, workers_list, rounds, batch):
    res = {(name, w): ([], []) for name in configs for w in workers_list}
    names = list(configs)
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for w in workers_list:
            for name in order:
                ips, cpu = one_pass(configs[name], w, batch)
                res[name, w][0].append(ips)
                res[name, w][1].append(cpu)
        print(f"  round {r + 1}/{rounds} done", file=sys.stderr, flush=True)
    # median = typical; best (max items/s, min CPU) = the least disturbed run, the usual microbenchmark estimate
    return {k: {"items_per_s": statistics.median(v[0]), "items_per_s_best": max(v[0]),
                "cpu_us_per_item": statistics.median(v[1]), "cpu_us_per_item_best": min(v[1]),
                "items_per_s_all": [round(x, 1) for x in v[0]], "cpu_us_all": [round(x) for x in v[1]]}
            for k, v in res.items()}


def table(title, res, workers_list, baselines):
    print(f"\n{title}")
    head = f"{'dataset':<22}{'w':>2}{'items/s med':>12}{'best':>7}{'CPU us/item med':>16}{'best':>6}"
    for b in baselines:
        head += f" | vs {b}: wall{'CPU':>6}{'CPUmed':>7}"
    print(head)
    ratios = {}
    for (name, w), v in sorted(res.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        line = (f"{name:<22}{w:>2}{v['items_per_s']:>12.1f}{v['items_per_s_best']:>7.0f}"
                f"{v['cpu_us_per_item']:>16.0f}{v['cpu_us_per_item_best']:>6.0f}")
        for b in baselines:
            base = res[b, w]
            r = {"wall_best": v["items_per_s_best"] / base["items_per_s_best"],  # > 1: faster than the baseline
                 "cpu_best": base["cpu_us_per_item_best"] / v["cpu_us_per_item_best"],  # > 1: cheaper
                 "wall_median": v["items_per_s"] / base["items_per_s"],
                 "cpu_median": base["cpu_us_per_item"] / v["cpu_us_per_item"]}
            ratios[f"{name} / {b} / w{w}"] = {k: round(x, 4) for k, x in r.items()}
            line += f" | {' ' * (len(b) + 4)}{r['wall_best']:.3f}{r['cpu_best']:>6.3f}{r['cpu_median']:>7.3f}"
        print(line)
    return ratios


class _CropOnly:
    """TrainTransform's random draws and point maths without the image work (for the overhead measurement)."""

    def __init__(self, t):
        self.t = t

    def __call__(self, img, points=None, point_mask=None):
        W, H = img.size
        top, left, h, w = T.RandomResizedCrop.get_params(img, self.t.scale, self.t.ratio)
        flip = bool(torch.rand(1) < self.t.hflip)
        if points is None:
            return img
        return (img, *bp._crop_points(points, point_mask, W, H, top, left, h, w, flip))


def getitem_loop(configs, repeats, seed_each_pass=True):
    """CPU us per ds[i] over the whole dataset, in this process, min over interleaved repeats. torch is reseeded
    before each pass, so every dataset draws the same crops and flips: identical image work."""
    res = {k: [] for k in configs}
    for r in range(repeats):
        for name, ds in configs.items():
            torch.manual_seed(r)
            t0 = time.process_time()
            for i in range(len(ds)):
                ds[i]
            res[name].append((time.process_time() - t0) / len(ds) * 1e6)
    return {k: {"cpu_us_min": min(v), "cpu_us_median": statistics.median(v)} for k, v in res.items()}


def stubbed_overhead(root, ab, coco_args, inst, repeats=7):
    """Per-item CPU of the dataset machinery alone: decoding replaced by a constant image and the transform by its
    random draws + point maths, so what is left is exactly what a byproduct dataset adds to a plain one."""
    from PIL import Image
    img = Image.new("RGB", (120, 100))
    real_loader = utils.read_image
    utils.read_image = bp.read_image = lambda path: img  # ImageReader calls utils', the plain datasets bp's
    try:
        stub = _CropOnly(ab.transform)
        folder = ImageFolder(root, loader=lambda path: img, transform=stub)
        ab_s = bp.ImageNetAB(root, clicks=dict(zip(ab.keys, ab.points[:, 0].tolist())), transform=stub)
        plain = PlainCoco(coco_args[0], inst, stub)
        plain.files = [""] * len(plain.files)
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bp.BadInputWarning)
            coco_s = bp.CocoAB(*coco_args, transform=stub)
        return getitem_loop({"ImageFolder": folder, "ImageNetAB clicks": ab_s, "plain COCO": plain,
                             "CocoAB clicks": coco_s}, repeats)
    finally:
        utils.read_image = bp.read_image = real_loader


# ----------------------------------------------------------------------------------------------------------------
# index build rate

def index_rate(src_xml_root, tmp, n_files, workers_list):
    srcs, _ = bp._list_xml(src_xml_root)
    texts = [open(p).read() for p in srcs]
    root = os.path.join(tmp, "big_xml", "train_xml")
    for i in range(n_files):
        wnid, stem = f"n{9000000 + i // 500:08d}", f"n{9000000 + i // 500:08d}_{i}"
        d = os.path.join(root, wnid)
        if i % 500 == 0:
            os.makedirs(d, exist_ok=True)
        t = texts[i % len(texts)]
        with open(os.path.join(d, stem + ".xml"), "w") as f:  # vary the id so no two files are identical
            f.write(re.sub(r"<imageID>[^<]*</imageID>", f"<imageID>{wnid}/{stem}</imageID>", t))
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs) / n_files
    out = {}
    for w in workers_list:
        best = None
        for _ in range(2):
            r0 = [resource.getrusage(k) for k in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            st = build_imagenet_index(root, os.path.join(tmp, "big.npz"), workers=w, progress=False)
            r1 = [resource.getrusage(k) for k in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
            # pool workers are joined when the scan ends, so RUSAGE_CHILDREN holds their CPU time
            cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in zip(r0, r1))
            assert st["files"] == n_files and st["bad"] == 0, st
            if best is None or st["files_per_s"] > best[0]["files_per_s"]:
                best = (st, cpu)
        st, cpu = best
        out[w] = {"files_per_s": round(st["files_per_s"]), "per_worker": round(st["files_per_s"] / w),
                  "seconds": round(st["seconds"], 2), "files_per_cpu_s": round(n_files / cpu)}
    return out, size


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 allow_abbrev=False)
    ap.add_argument("--rounds", type=int, default=3, help="DataLoader rounds (each config once per round)")
    ap.add_argument("--repeats", type=int, default=5, help="passes of the same-seed __getitem__ loop")
    ap.add_argument("--images", type=int, default=100, help="ImageNet train images per class (10 classes)")
    ap.add_argument("--coco-images", type=int, default=300)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--index-files", type=int, default=20000)
    ap.add_argument("--keep", default=None, help="write the data here and keep it (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # workers=0 runs in this process: one thread, like a DataLoader worker
    tmp = args.keep or tempfile.mkdtemp(prefix="luab_bench_")
    n_cpu = len(os.sched_getaffinity(0))
    try:
        t0 = time.perf_counter()
        synth(tmp, seed=0, n_classes=10, n_train=args.images, n_val=1, coco_train=args.coco_images, coco_val=1)
        print(f"synthetic data: {time.perf_counter() - t0:.1f}s in {tmp}; {n_cpu} CPUs; torch {torch.__version__}",
              file=sys.stderr)
        root, xml = os.path.join(tmp, "imagenet", "train"), os.path.join(tmp, "imagenet_ab", "train_xml")
        idx, _, _ = bp.ClickIndex.from_xml(xml)
        tt = bp.TrainTransform(size=args.size)
        tv = T.Compose([T.RandomResizedCrop(args.size), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(bp.IMAGENET_MEAN, bp.IMAGENET_STD)])
        ab = bp.ImageNetAB(root, clicks=idx, transform=tt)
        inet = {
            "folder+torchvision": ImageFolder(root, transform=tv),
            "folder+TrainTransform": ImageFolder(root, transform=tt),
            "AB clicks": ab,
            "AB random": bp.ImageNetAB(root, point_source="random", transform=tt),
            "AB none": bp.ImageNetAB(root, point_source="none", transform=tt),
            "notebook XML/item": NotebookXMLFolder(root, xml, tt),
            "v2 KeyPoints": V2KeyPoints(ab, args.size),
        }
        workers = [0, 2]
        print(f"ImageNet: {len(ab)} images, {args.rounds} rounds", file=sys.stderr)
        r_in = run_suite(inet, workers, args.rounds, args.batch)
        c = os.path.join(tmp, "coco")
        inst = bp.read_coco_instances(os.path.join(c, "annotations", "instances_train2014.json"))
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bp.BadInputWarning)  # synth's deliberate duplicate record
            coco = {"coco plain": PlainCoco(os.path.join(c, "train2014"), inst, tt),
                    "CocoAB clicks": bp.CocoAB(os.path.join(c, "train2014"), inst, os.path.join(c, "coco_ab_v1_0.json"),
                                               transform=tt)}
        print(f"COCO: {len(coco['coco plain'])} images", file=sys.stderr)
        r_co = run_suite(coco, workers, args.rounds, args.batch)
        print(f"index: writing {args.index_files} XML files", file=sys.stderr)
        r_ix, avg_bytes = index_rate(xml, tmp, args.index_files, sorted({1, n_cpu}))

        ratios = table(f"ImageNet ({len(ab)} images, {args.size}px, RRC+flip+ToTensor+Normalize, {args.rounds} rounds; "
                       "ratios: wall = items/s over the baseline's, CPU = baseline CPU/item over ours; > 1 = faster)",
                       r_in, workers, ["folder+TrainTransform", "folder+torchvision"])
        ratios.update(table("COCO", r_co, workers, ["coco plain"]))
        print("same-seed __getitem__ loop / stubbed overhead", file=sys.stderr)
        loop = getitem_loop({k: inet[k] for k in ("folder+torchvision", "folder+TrainTransform", "AB clicks",
                                                  "AB random", "AB none")} | coco, args.repeats)
        stub = stubbed_overhead(root, ab, (os.path.join(c, "train2014"), inst, os.path.join(c, "coco_ab_v1_0.json")),
                                inst, args.repeats + 2)
        print(f"\nsame-seed __getitem__ loop, workers=0 (torch reseeded per pass: every dataset draws the same crops, "
              f"so the image work is identical); CPU us/item, min / median of {args.repeats} interleaved passes")
        for name, ref in (("folder+torchvision", "folder+TrainTransform"), ("folder+TrainTransform", None),
                          ("AB clicks", "folder+TrainTransform"), ("AB random", "folder+TrainTransform"),
                          ("AB none", "folder+TrainTransform"), ("coco plain", None), ("CocoAB clicks", "coco plain")):
            v = loop[name]
            rel = "" if ref is None else f"   {100 * (v['cpu_us_min'] / loop[ref]['cpu_us_min'] - 1):+.1f}% vs {ref}"
            print(f"  {name:<22}{v['cpu_us_min']:8.0f}{v['cpu_us_median']:8.0f}{rel}")
        over_in = stub["ImageNetAB clicks"]["cpu_us_min"] - stub["ImageFolder"]["cpu_us_min"]
        over_co = stub["CocoAB clicks"]["cpu_us_min"] - stub["plain COCO"]["cpu_us_min"]
        base_in, base_co = loop["folder+TrainTransform"]["cpu_us_min"], loop["coco plain"]["cpu_us_min"]
        print(f"\ndataset overhead with decoding and image ops stubbed out (same random draws, real point maths), "
              f"min of {args.repeats + 2}:\n  ImageNetAB {stub['ImageNetAB clicks']['cpu_us_min']:.1f} vs ImageFolder "
              f"{stub['ImageFolder']['cpu_us_min']:.1f} us/item: +{over_in:.1f} us = {100 * over_in / base_in:.2f}% of a real "
              f"plain item ({base_in:.0f} us)\n  CocoAB (80 points) {stub['CocoAB clicks']['cpu_us_min']:.1f} vs plain "
              f"{stub['plain COCO']['cpu_us_min']:.1f} us/item: +{over_co:.1f} us = {100 * over_co / base_co:.2f}% ({base_co:.0f} us)")
        over = {"imagenet_us": over_in, "imagenet_pct": 100 * over_in / base_in, "coco_us": over_co,
                "coco_pct": 100 * over_co / base_co, "stubbed": stub, "same_seed_loop": loop}
        print(f"\nindex build ({args.index_files} files, {avg_bytes:.0f} B each, page cache warm):")
        for w, v in r_ix.items():
            print(f"  {w} worker(s): {v['files_per_s']:,} files/s wall ({v['per_worker']:,}/s per worker, {v['seconds']}s); "
              f"{v['files_per_cpu_s']:,} files per CPU-second (incl. listing, pool start, saving)")
        print(json.dumps({"imagenet": {f"{k[0]}/w{k[1]}": v for k, v in r_in.items()},
                          "coco": {f"{k[0]}/w{k[1]}": v for k, v in r_co.items()},
                          "ratios": ratios, "overhead": over, "index": r_ix, "index_avg_bytes": round(avg_bytes),
                          "cpus": n_cpu, "size": args.size, "rounds": args.rounds, "torch": torch.__version__}))
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
