"""
The GPU figures of PERFORMANCE.md in one command, and the first run of the speed paths on CUDA.

    python benchmarks/gpu_check.py --out gpu_check.json    # one CUDA device: at most --budget-s (480 s)
    python benchmarks/gpu_check.py --dry-run               # CPU, tiny sizes: all the plumbing in < 2 minutes

Four parts, in this order (--parts picks some). Every item is timed; one that fails, cannot run here, or would
start too late for the time budget is listed under "not run" with the reason, and the others still run.

  speed     short train_imagenet.py runs (--luab --model-ema, 3 steps, then --resume for a second epoch):
            --amp (resnet18, vit_tiny), --compile (resnet18), --amp --compile (vit_tiny), fp16 + GradScaler
            (resnet18) and the DeiT recipe (vit_tiny, Mixup/CutMix on the device, fused AdamW). Each is
            checked: finite losses, a checkpoint without `_orig_mod.` / `module.` keys that loads strictly
            into an uncompiled model, an EMA (decay 0) equal to the model, the resumed epoch logged: the
            checks of tests/test_speed.py, which runs these on CPU (the eager ones through --dry-run). Then
            a 2-process torchrun (NCCL, --compile --sync-bn) when there are 2 GPUs.
  model     model-bound training img/s of ResNet-50 and ViT-B/16 at 224 px, bf16, batch 128, from tensors
            already on the GPU, plain vs --luab (benchmarks/train_step.py's interleaved timing), eager; peak
            memory per step; achieved TFLOP/s (FLOPs of a step counted by torch.utils.flop_counter) and the
            model FLOP utilisation against the device's dense bf16 peak (BF16_PEAK_TFLOPS, or --peak-tflops).
  data      data-bound: real train_imagenet.py runs of ResNet-50 from ImageNet-sized synthetic JPEGs written
            to local disk, batch 128, every CPU core a DataLoader worker (train_step.py --loader): img/s and
            the share of the step spent waiting for data, plain vs --luab.
  compiled  the "model" timings under torch.compile (two compilations per model: the slowest part).

What does not fit in the budget is listed as "over the time budget": run those parts again with --parts.
The JSON (--out) is rewritten after every item, so a run cut short keeps what it measured; the scripts' own
output goes to the .log next to it; a table is printed at the end. --dry-run does all of it on CPU with
resnet18 / vit_tiny at 32 px and a few steps, except inductor's compilation (minutes of C++ builds on a small
CPU, which the slow tests do): the "speed" compile runs are listed as not run, the "compiled" timings use the
'eager' backend (graph capture only), the torchrun uses gloo without --compile --sync-bn.
"""

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.append(HERE)  # for train_step; last, so that `models` is the repository's, not benchmarks/models.py

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from tools.synth import synth  # noqa: E402
import train_imagenet as ti  # noqa: E402
import train_step  # noqa: E402
from models import create_model  # noqa: E402

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s from the vendors' data sheets; the first name contained
# in torch.cuda.get_device_name() wins. Another device: --peak-tflops.
BF16_PEAK_TFLOPS = [("H200 NVL", 835.5), ("H200", 989.4), ("H100 NVL", 835.5), ("H100 PCIe", 756.5),
                    ("H100", 989.4), ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.1), ("L4", 121.0)]

# (model, flags, what it needs besides a CPU): the slow tests run the CPU ones with the same checks
SPEED_RUNS = [
    ("resnet18", ["--amp", "--channels-last"], None),
    ("vit_tiny", ["--amp"], None),
    ("resnet18", ["--compile", "--channels-last"], "inductor"),
    ("vit_tiny", ["--amp", "--compile"], "inductor"),
    ("resnet18", ["--amp", "--amp-dtype", "float16"], "cuda"),        # fp16 autocast + GradScaler
    ("vit_tiny", ["--recipe", "deit", "--lr", "5e-4", "--amp"], None),  # Mixup/CutMix, AdamW, drop path
]

# -----------------------------------------------------------------------------
# the speed paths: a short run, its resume, and what its output folder says


def train_argv(data_root, out, model, *flags):
    """A few steps of train_imagenet.py with the point head and an EMA that equals the model (decay 0)."""
    return ["--data-dir", os.path.join(data_root, "imagenet"), "--output-dir", str(out), "--model", model,
            "--byproducts", os.path.join(data_root, "imagenet_ab", "train_xml"), "--luab",
            "--img-size", "32", "--batch-size", "8", "--workers", "0", "--print-freq", "1000", "--recipe", "resnet",
            "--lr", "0.05", "--max-steps-per-epoch", "3", "--model-ema", "--model-ema-decay", "0", *flags]


def inspect_run(out):
    """What a finished run left in `out`: logged epochs and losses, checkpoint keys with a wrapper prefix
    (torch.compile's `_orig_mod.`, DDP's `module.`), whether the weights load strictly into a fresh,
    uncompiled model built from the checkpoint's meta block, and whether the EMA equals the model."""
    with open(os.path.join(out, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    ckpt = torch.load(os.path.join(out, "checkpoint.pt"), map_location="cpu", weights_only=True)
    sd, ema, meta = ckpt["model"], ckpt.get("ema") or {}, ckpt["meta"]
    fresh = create_model(meta["model"], num_classes=meta["num_classes"], num_points=meta["num_points"],
                         img_size=meta["img_size"])
    try:
        fresh.load_state_dict(sd, strict=True)
        loads = True
    except RuntimeError:
        loads = False
    losses = [e["train_loss"] for e in log] + [e["train_point_loss"] for e in log]
    return {"epochs": [e["epoch"] for e in log], "train_loss": [e["train_loss"] for e in log],
            "finite": all(math.isfinite(x) for x in losses), "checkpoint_epoch": ckpt["epoch"],
            "wrapper_keys": [k for k in [*sd, *ema] if "_orig_mod." in k or k.startswith("module.")],
            "loads_uncompiled": loads,
            "ema_equals_model": bool(ema) and ema.keys() == sd.keys() and all(torch.equal(ema[k], sd[k]) for k in sd)}


def speed_run(data_root, out, model, flags, device="cpu"):
    """Epoch 0 (3 steps), then --resume for epoch 1, both in this process; inspect_run's facts plus the number
    of graphs torch.compile captured over both runs (one per run when the model compiles without a break)."""
    argv = train_argv(data_root, out, model, "--device", device, *flags)
    graphs = counters["stats"]["unique_graphs"]
    for extra in (["--epochs", "1"], ["--epochs", "2", "--resume"]):
        torch._dynamo.reset()  # compile as a fresh process would (dynamo's caches outlive a run)
        ti.main(ti.get_args_parser().parse_args(argv + extra))
    return {**inspect_run(out), "graphs_compiled": counters["stats"]["unique_graphs"] - graphs}


def torchrun(nproc, argv, timeout=600):
    """train_imagenet.py under `torchrun --standalone`; raises with the output's tail if it fails."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(REPO, "train_imagenet.py"), *argv]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    print(res.stdout, res.stderr)  # into the log
    if res.returncode != 0:
        raise RuntimeError(f"torchrun exited with {res.returncode}: {(res.stdout + res.stderr)[-500:]}")
    return res


def speed_ok(facts):
    return (facts["finite"] and facts["epochs"] == [0, 1] and facts["checkpoint_epoch"] == 1
            and not facts["wrapper_keys"] and facts["loads_uncompiled"] and facts["ema_equals_model"])


# -----------------------------------------------------------------------------
# model FLOP utilisation


def flops_per_image(name, img_size, device):
    """FLOPs of one training image (forward + backward, point head on), counted on a batch of 2 with bf16
    autocast (BatchNorm needs 2): every layer of these models works per sample, so a batch costs B times this."""
    from torch.utils.flop_counter import FlopCounterMode
    model = create_model(name, num_classes=1000, num_points=1, img_size=img_size).to(device)
    x = torch.randn(2, 3, img_size, img_size, device=device)
    with FlopCounterMode(display=False) as fc:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            logits, points = model(x, return_points=True)
        (logits.float().sum() + points.float().sum()).backward()
    return fc.get_total_flops() / 2


def bf16_peak_tflops(a, device):
    """(peak TFLOP/s or None, why not)"""
    if a.peak_tflops:
        return a.peak_tflops, None
    if not device.startswith("cuda"):
        return None, "no bf16 peak for a CPU (give --peak-tflops)"
    name = torch.cuda.get_device_name()
    for key, peak in BF16_PEAK_TFLOPS:
        if key in name:
            return peak, None
    return None, f"no dense bf16 peak known for {name!r}: give --peak-tflops from its data sheet"


# -----------------------------------------------------------------------------
# the runner: budget, errors, JSON after every item


class Report:
    def __init__(self, a, device):
        self.a, self.t0 = a, time.perf_counter()
        self.log_path = os.path.splitext(a.out)[0] + ".log"
        self.log = open(self.log_path, "w")
        dev_name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
        self.data = dict(device=device, device_name=dev_name, dry_run=a.dry_run, torch=torch.__version__,
                         cpus=len(os.sched_getaffinity(0)), gpus=torch.cuda.device_count(),
                         load_start=os.getloadavg(), budget_s=a.budget_s, speed=[], model=[], data=[], compiled=[],
                         not_run=[])

    def elapsed(self):
        return time.perf_counter() - self.t0

    def not_run(self, part, item, why):
        self.data["not_run"].append({"part": part, "item": item, "why": why})
        print(f"  not run: {part} {item}: {why}", flush=True)
        self.save()

    def run(self, part, item, estimate_s, fn):
        """fn() -> a dict appended to data[part], or None when the item fails or does not fit the budget.
        estimate_s: what the item takes on a GPU machine (a tenth of it is assumed for the tiny --dry-run)."""
        estimate_s = estimate_s / 10 if self.a.dry_run else estimate_s
        if self.elapsed() + estimate_s > self.a.budget_s:
            return self.not_run(part, item, f"over the time budget ({self.elapsed():.0f} s used, about "
                                            f"{estimate_s:.0f} s more needed, --budget-s {self.a.budget_s:.0f}): "
                                            f"run it with --parts {part}")
        print(f"[{self.elapsed():4.0f} s] {part}: {item}", flush=True)
        t0 = time.perf_counter()
        try:
            with contextlib.redirect_stdout(self.log):
                print(f"\n===== {part}: {item}", flush=True)
                res = fn()
        except (Exception, SystemExit) as e:  # one broken item must not hide the figures of the others
            traceback.print_exc(file=self.log)
            self.log.flush()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            last = (str(e).strip().splitlines() or [""])[-1]
            return self.not_run(part, item, f"failed: {type(e).__name__}: {last} (traceback in the log)")
        res = {"item": item, **res, "seconds": round(time.perf_counter() - t0, 1), "load": os.getloadavg()[0]}
        self.data[part].append(res)
        self.save()
        return res

    def save(self):
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        with open(self.a.out, "w") as f:
            json.dump(self.data, f, indent=1)


# -----------------------------------------------------------------------------
# the parts


def part_speed(rep, a, device, tmp):
    data_root = os.path.join(tmp, "synth")
    synth(data_root, seed=0)  # 400 small JPEGs, a few seconds
    for model, flags, needs in SPEED_RUNS:
        item = f"{model} {' '.join(flags)}"
        if needs == "cuda" and not device.startswith("cuda"):
            rep.not_run("speed", item, "CUDA only")
        elif needs == "inductor" and a.dry_run:
            rep.not_run("speed", item, "inductor compilation left to the slow tests on CPU (--dry-run)")
        else:
            out = tempfile.mkdtemp(dir=tmp)
            facts = rep.run("speed", item, 60 if needs == "inductor" else 15,
                            lambda: speed_run(data_root, out, model, flags, device))
            if facts is not None:
                facts["ok"] = speed_ok(facts)
                rep.save()
    # DDP: NCCL needs one GPU per process; --dry-run checks the same plumbing with gloo on CPU
    if device.startswith("cuda") and torch.cuda.device_count() < 2:
        return rep.not_run("speed", "torchrun 2 processes", f"NCCL needs 2 GPUs, this machine has "
                                                            f"{torch.cuda.device_count()}")
    flags = ["--amp", "--compile", "--sync-bn"] if device.startswith("cuda") else []
    out = tempfile.mkdtemp(dir=tmp)
    argv = train_argv(data_root, out, "resnet18", "--epochs", "1", *flags)  # each process takes cuda:LOCAL_RANK

    def ddp():
        torchrun(2, argv)
        facts = inspect_run(out)
        return {**facts, "ok": facts["finite"] and facts["epochs"] == [0] and not facts["wrapper_keys"]
                and facts["loads_uncompiled"] and facts["ema_equals_model"]}
    rep.run("speed", f"torchrun 2 processes resnet18 {' '.join(flags)}".strip(), 90, ddp)


def part_model(rep, a, device, compiled):
    cuda = device.startswith("cuda")
    names = ["resnet18", "vit_tiny"] if a.dry_run else ["resnet50", "vit_base"]
    img, bs = (32, 4) if a.dry_run else (224, a.batch_size)
    peak, why = bf16_peak_tflops(a, device)
    for name in names:
        argv = ["--device", "cuda" if cuda else "cpu", "--models", name, "--img-size", str(img), "--batch-size",
                str(bs), "--amp", "--compile", "on" if compiled else "off"]
        argv += (["--repeats", "2", "--warmup", "1", "--steps-per-sample", "1", "--delta-reps", "5",
                  "--compile-backend", "eager"] if a.dry_run else
                 ["--repeats", "5", "--warmup", "2", "--steps-per-sample", "5", "--delta-reps", "50"])

        def measure():
            (r,) = train_step.step_mode(train_step.build_parser().parse_args(argv))
            r = {k: r[k] for k in ("model", "compile", "plain_ms", "luab_ms", "plain_img_s", "luab_img_s", "ratio",
                                   "paired_ratio", "delta_pct") + (("plain_peak_mib", "luab_peak_mib") if cuda else ())}
            r["tflops"] = flops_per_image(name, img, device) * r["plain_img_s"] / 1e12
            r["mfu"] = r["tflops"] / peak if peak else None
            return r
        res = rep.run("compiled" if compiled else "model", f"{name} {img} px batch {bs}"
                      f"{' compiled' if compiled else ''}", 150 if compiled else 30, measure)
        if res is not None and why:
            res["mfu_why_not"] = why
    if why and not any(r["item"] == "MFU" for r in rep.data["not_run"]):
        rep.not_run("model", "MFU", why)


def part_data(rep, a, device):
    cuda = device.startswith("cuda")
    workers = len(os.sched_getaffinity(0))
    argv = (["--loader", "--device", "cuda" if cuda else "cpu", "--workers", str(workers), "--amp",
             "--loader-rounds", "1"])
    argv += (["--loader-model", "resnet18", "--loader-img-size", "32", "--batch-size", "8", "--loader-steps", "2"]
             if a.dry_run else
             ["--loader-model", "resnet50", "--loader-img-size", "224", "--batch-size", str(a.batch_size),
              "--loader-steps", "10"])

    def measure():
        s = train_step.loader_mode(train_step.build_parser().parse_args(argv))
        return {"workers": workers, "plain": s["plain"], "luab": s["luab"]}
    rep.run("data", f"{'resnet18 32' if a.dry_run else 'resnet50 224'} px, {workers} workers", 120, measure)


def print_table(d):
    print(f"\n{d['device_name']} ({d['device']}), torch {d['torch']}, {d['cpus']} CPUs, "
          f"{'DRY RUN (tiny sizes: plumbing, not figures) ' if d['dry_run'] else ''}{d['elapsed_s']:.0f} s, "
          f"load at start {d['load_start'][0]:.2f}")
    if d["speed"]:
        print(f"\n{'speed path':<52}{'ok':>4}{'loss':>8}{'graphs':>7}{'s':>6}")
        for r in d["speed"]:
            print(f"{r['item']:<52}{'yes' if r['ok'] else 'NO':>4}{r['train_loss'][-1]:>8.3f}"
                  f"{r.get('graphs_compiled', '-'):>7}{r['seconds']:>6.0f}")
    rows = d["model"] + d["compiled"]
    if rows:
        print(f"\n{'model-bound (bf16)':<34}{'plain img/s':>12}{'LUAB img/s':>11}{'LUAB/plain':>11}"
              f"{'peak MiB':>9}{'TFLOP/s':>8}{'MFU':>6}")
        for r in rows:
            mib = f"{r['plain_peak_mib']:.0f}" if "plain_peak_mib" in r else "-"
            mfu = f"{100 * r['mfu']:.0f}%" if r["mfu"] is not None else "-"
            print(f"{r['item']:<34}{r['plain_img_s']:>12.1f}{r['luab_img_s']:>11.1f}{r['ratio']:>11.3f}"
                  f"{mib:>9}{r['tflops']:>8.2f}{mfu:>6}")
    for r in d["data"]:
        print(f"\ndata-bound ({r['item']}): plain {r['plain']['img_per_s']:.1f} img/s, data wait "
              f"{100 * r['plain']['data_wait']:.1f}%; LUAB {r['luab']['img_per_s']:.1f} img/s, data wait "
              f"{100 * r['luab']['data_wait']:.1f}%")
    if d["not_run"]:
        print("\nnot run:")
        for r in d["not_run"]:
            print(f"  {r['part']} {r['item']}: {r['why']}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the plumbing")
    p.add_argument("--parts", nargs="+", choices=["speed", "model", "data", "compiled"],
                   default=["speed", "model", "data", "compiled"])
    p.add_argument("--out", default="gpu_check.json", help="the JSON; the log goes next to it (.log)")
    p.add_argument("--budget-s", type=float, help="start no item that would end after this (default 480; "
                                                  "120 with --dry-run)")
    p.add_argument("--batch-size", type=int, default=128, help="of the model- and data-bound timings")
    p.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, when not in BF16_PEAK_TFLOPS")
    a = p.parse_args(argv)
    a.budget_s = a.budget_s or (120 if a.dry_run else 480)
    if not a.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run it on a GPU machine, or check the plumbing with --dry-run")
    device = "cpu" if a.dry_run else "cuda"
    if not a.dry_run:
        torch.cuda.set_device(0)
    else:
        torch.set_num_threads(1)  # as train_step.py on CPU: steadier on a small shared machine
    rep = Report(a, device)
    tmp = tempfile.mkdtemp(prefix="luab_gpu_check_")  # local disk (TMPDIR)
    try:
        if "speed" in a.parts:
            part_speed(rep, a, device, tmp)
        if "model" in a.parts:
            part_model(rep, a, device, compiled=False)
        if "data" in a.parts:
            part_data(rep, a, device)
        if "compiled" in a.parts:
            part_model(rep, a, device, compiled=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        rep.save()
        rep.log.close()
    print_table(rep.data)
    print(f"\nJSON: {a.out}, log: {rep.log_path}")
    return rep.data


if __name__ == "__main__":
    main()
