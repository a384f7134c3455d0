"""
What LUAB costs per training step: one full step of train_imagenet.py (Mixup/CutMix when the recipe has it,
forward, task loss + point loss, backward, optimizer step) with --luab (point head, one click target + weight
per image) against the same step without it, per model. Same process, same weights, same batch, same random
draws, interleaved repeats, median. Target: LUAB / plain <= 1.02.

    python benchmarks/train_step.py                          # CPU: resnet18 resnet50 vit_tiny vit_small, batch 8
    python benchmarks/train_step.py --models all --repeats 15
    python benchmarks/train_step.py --device cuda            # GPU: resnet50 vit_base, bf16, eager and compiled, img/s
    python benchmarks/train_step.py --loader                 # data-wait share of a real train_imagenet.py run
    python benchmarks/train_step.py --loader --device cuda --loader-model resnet50 --workers 8

The step is train_imagenet's own (resolve_args with the model's recipe: SGD for ResNets, AdamW + Mixup/CutMix +
label smoothing + drop path for ViTs; build_model, build_optimizer, make_mix, then train_step with
imagenet_loss), so it measures the code people train with. On CUDA it also reports each
variant's peak memory per step. The loop's bookkeeping (LR set, loss sums, the log
line) is the same with and without LUAB and is left out. Besides wall-clock ms we report the process CPU time of
each step, and the LUAB delta measured in isolation (the network tail, classifier + CE with and without point
head + point loss, forward and backward, plus an optimizer step over the point head's two tensors; min over many
interleaved reps): on a loaded machine that is the figure to trust, the whole-step ratio the one to sanity-check.
On CPU torch runs one thread unless --threads says otherwise (see --help).

--loader writes the synthetic dataset (tools/synth.py, ImageNet-sized JPEGs) to a temp dir and runs
train_imagenet.main for two short epochs (--max-steps-per-epoch) with and without --luab; it reports the second
epoch's img/s and data_wait (the share of epoch time the loop spent waiting for the DataLoader), and the CPU
time of the main process per step and of the loader workers per image (wall time on a shared machine swings by
tens of percent from run to run; CPU time much less).
Prints a table and one JSON line.
"""

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from tools.synth import synth  # noqa: E402
import train_imagenet as ti  # noqa: E402
from models import MODEL_NAMES  # noqa: E402

CPU_MODELS = ["resnet18", "resnet50", "vit_tiny", "vit_small"]
GPU_MODELS = ["resnet50", "vit_base"]

# -----------------------------------------------------------------------------
# one training step, as train_imagenet.train_one_epoch does it


def training_args(name, device, batch_size, img_size, luab, amp):
    """train_imagenet's own flags and recipe for this model; --luab is the only difference between the two."""
    argv = ["--model", name, "--batch-size", str(batch_size), "--img-size", str(img_size), "--device", device]
    argv += ["--luab"] if luab else []
    argv += ["--amp"] if amp else []
    args = ti.resolve_args(ti.get_args_parser().parse_args(argv), ti.RECIPES)
    ti.init_distributed(args)  # one process: rank 0 of 1, and channels_last for ResNets on CUDA, as in a run
    return args


class Trainer:
    """Model + optimizer + mix of one variant (plain or LUAB), built by train_imagenet's own functions."""

    def __init__(self, name, args, num_classes, compile_, backend="inductor"):
        self.args = args
        torch.manual_seed(0)  # same backbone weights in both variants
        self.raw = ti.build_model(args, num_classes, num_points=1).train()  # a point head with --luab only
        self.optimizer, _ = ti.build_optimizer(args, self.raw)
        self.model = torch.compile(self.raw, backend=backend) if compile_ else self.raw
        self.mix = ti.make_mix(args, num_classes)

    def step(self, batch, seed):
        """batch = (images, labels, points [B, 1, 2], point_mask [B, 1]) on the device."""
        torch.manual_seed(seed)  # same drop-path masks in both variants
        if self.mix is not None:
            # A CPU generator: mix_batch draws one int from it with torch.randint on the CPU (see PERFORMANCE.md)
            batch = self.mix(batch, torch.Generator().manual_seed(seed))
        return ti.train_step(self.args, self.model, batch, self.optimizer, ti.imagenet_loss)[1]

    def resident_bytes(self):
        """Bytes this variant keeps on the device between steps: weights, buffers, gradients, optimizer state."""
        ts = list(self.raw.parameters()) + list(self.raw.buffers())
        ts += [p.grad for p in self.raw.parameters() if p.grad is not None]
        ts += [v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v)]
        return sum(t.numel() * t.element_size() for t in ts)


def make_batch(batch_size, img_size, num_classes, device, channels_last):
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, img_size, img_size, generator=g)
    labels = torch.randint(0, num_classes, (batch_size,), generator=g)
    points = torch.rand(batch_size, 1, 2, generator=g)
    weights = (torch.rand(batch_size, 1, generator=g) < 0.85).float()  # ~ the clicks that survive the crop
    images = images.to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return [images, labels.to(device), points.to(device), weights.to(device)]


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_pair(trainers, batch, device, warmup, repeats, steps):
    """Interleaved timing: every round runs `steps` steps of each variant, the order alternating per round.
    Returns per variant the lists of wall and CPU ms per step (warm-up rounds dropped)."""
    res = {k: {"wall": [], "cpu": []} for k in trainers}
    for r in range(warmup + repeats):
        order = list(trainers) if r % 2 == 0 else list(trainers)[::-1]
        for k in order:
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            for s in range(steps):
                trainers[k].step(batch, seed=1000 * r + s)  # same mode / lam / masks for both variants
            sync(device)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if r >= warmup:
                res[k]["wall"].append(1000 * wall / steps)
                res[k]["cpu"].append(1000 * cpu / steps)
    return res


# -----------------------------------------------------------------------------
# the LUAB delta in isolation: what the point head, the point loss and two more parameters add


def isolated_delta_us(luab, batch, reps=200):
    """Min us of the network tail (classifier + task loss [+ point head + point loss], forward + backward) with
    and without the LUAB part, on the real penultimate features' shape, interleaved; plus one optimizer step
    over the point head's weight and bias alone (an upper bound: in the real step they join the existing
    parameter loop, without a second call's fixed cost)."""
    args, model = luab.args, luab.raw
    dev = args.device
    B = batch[0].shape[0]
    feats = torch.randn(B, model.num_features, device=dev)
    cls, head = model.classifier, model.point_head
    if luab.mix is not None:  # the targets the real step sees after Mixup/CutMix (points [B, 2, 1, 2])
        targets = luab.mix(batch, torch.Generator().manual_seed(1))[1:]
    else:
        targets = batch[1:]

    def tail(with_points):
        # the model's own forward() with the backbone replaced by the identity, and the point head removed
        # for the plain variant: whatever forward() does after the features is what gets timed
        model.point_head = head if with_points else None
        f = feats.detach().requires_grad_()
        with ti.autocast(args):
            out = model(f * 1.0, return_points=True)  # a non-leaf, so the two heads' gradients are summed as in the real graph
        loss_cls, loss_pt = ti.imagenet_loss(args, out, [None, *targets])
        (loss_cls + args.point_weight * loss_pt).backward()
        cls.weight.grad = cls.bias.grad = head.weight.grad = head.bias.grad = None

    model.pooled_features = lambda x: (x, None)  # what forward() reads the features from (models.py)

    opt, _ = ti.build_optimizer(args, head)
    grads = [torch.randn_like(p) * 1e-3 for p in head.parameters()]
    times = {"plain": [], "luab": [], "opt": []}
    for r in range(reps):
        for k in (("plain", "luab") if r % 2 else ("luab", "plain")):
            sync(dev)
            t0 = time.perf_counter()
            tail(k == "luab")
            sync(dev)
            times[k].append(time.perf_counter() - t0)
        with torch.no_grad():
            p0 = [p.clone() for p in head.parameters()]
        for p, g in zip(head.parameters(), grads):
            p.grad = g
        sync(dev)
        t0 = time.perf_counter()
        opt.step()
        sync(dev)
        times["opt"].append(time.perf_counter() - t0)
        with torch.no_grad():  # keep the head where it was
            for p, q in zip(head.parameters(), p0):
                p.copy_(q)
    del model.pooled_features
    model.point_head = head
    m = {k: 1e6 * min(v) for k, v in times.items()}
    return {"tail_plain_us": m["plain"], "tail_luab_us": m["luab"], "opt_point_head_us": m["opt"],
            "delta_us": m["luab"] - m["plain"] + m["opt"]}


def peak_step_mib(trainers, key, batch):
    """Peak device memory of one step of trainers[key], in MiB: the allocator's peak during the step minus
    what the other variants keep resident (both variants live on the device for the interleaved timing)."""
    others = sum(t.resident_bytes() for k, t in trainers.items() if k != key)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    trainers[key].step(batch, seed=0)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - others) / 2**20


def profile_step(trainer, batch, steps=3, rows=15):
    """torch.profiler table (self CPU time) of a few steps of one variant."""
    from torch.profiler import ProfilerActivity, profile
    cuda = trainer.args.device.startswith("cuda")
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for s in range(steps):
            trainer.step(batch, seed=s)
        sync(trainer.args.device)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


# -----------------------------------------------------------------------------
# modes


def step_mode(a):
    device, cuda = a.device, a.device == "cuda"
    names = a.models or (GPU_MODELS if cuda else CPU_MODELS)
    names = list(MODEL_NAMES) if names == ["all"] else names
    batch_size = a.batch_size or (128 if cuda else 8)
    steps = a.steps_per_sample or (10 if cuda else 1)
    repeats = a.repeats or (10 if cuda else 7)
    warmup = a.warmup if a.warmup is not None else (3 if cuda else 2)
    amp = cuda if a.amp is None else a.amp
    compiles = {"off": [False], "on": [True], "both": [False, True]}[a.compile or ("both" if cuda else "off")]
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    print(f"torch {torch.__version__}, device {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if cuda else ''}, {torch.get_num_threads()} threads, "
          f"batch {batch_size}, {a.img_size} px, {a.num_classes} classes, amp {'bf16' if amp else 'off'}, "
          f"{repeats} timed rounds x {steps} step(s) after {warmup} warm-up, load {os.getloadavg()[0]:.2f}",
          flush=True)
    results = []
    for name in names:
        for comp in compiles:
            trainers = {k: Trainer(name, training_args(name, device, batch_size, a.img_size, k == "luab", amp),
                                   a.num_classes, comp, a.compile_backend) for k in ("plain", "luab")}
            args = trainers["plain"].args
            batch = make_batch(batch_size, a.img_size, a.num_classes, device, args.channels_last)
            t = time_pair(trainers, batch, device, warmup, repeats, steps)
            med = {k: {m: statistics.median(v[m]) for m in ("wall", "cpu")} for k, v in t.items()}
            paired = statistics.median(l / p for l, p in zip(t["luab"]["wall"], t["plain"]["wall"]))
            delta = isolated_delta_us(trainers["luab"], batch, reps=a.delta_reps)
            best_plain = min(t["plain"]["wall"])
            r = dict(model=name, recipe=args.recipe, opt=args.opt, mix=trainers["plain"].mix is not None,
                     compile=comp, plain_ms=med["plain"]["wall"], luab_ms=med["luab"]["wall"],
                     ratio=med["luab"]["wall"] / med["plain"]["wall"], paired_ratio=paired,
                     cpu_ratio=med["luab"]["cpu"] / med["plain"]["cpu"],
                     plain_img_s=batch_size / med["plain"]["wall"] * 1000,
                     luab_img_s=batch_size / med["luab"]["wall"] * 1000,
                     delta_us=delta["delta_us"], delta_pct=100 * delta["delta_us"] / (1000 * best_plain),
                     delta=delta, spread_pct=100 * (max(t["plain"]["wall"]) / best_plain - 1),
                     plain_all=[round(x, 1) for x in t["plain"]["wall"]],
                     luab_all=[round(x, 1) for x in t["luab"]["wall"]])
            if cuda:
                r.update({f"{k}_peak_mib": peak_step_mib(trainers, k, batch) for k in trainers})
            results.append(r)
            print(f"  {name}{' compiled' if comp else ''}: plain {r['plain_ms']:.1f} ms, LUAB {r['luab_ms']:.1f} ms, "
                  f"ratio {r['ratio']:.3f} (paired {paired:.3f}, CPU {r['cpu_ratio']:.3f}), isolated delta "
                  f"{r['delta_us']:.0f} us = {r['delta_pct']:.2f}%; plain spread max/min {r['spread_pct']:.0f}%",
                  flush=True)
            if a.profile:
                for k in ("plain", "luab"):
                    print(f"\nprofile: {name} {k}, {3} steps\n{profile_step(trainers[k], batch)}", flush=True)
            del trainers, batch

    print(f"\nLUAB step overhead ({device}, batch {batch_size}, {a.img_size} px; ratio = LUAB / plain, median of "
          f"{repeats} interleaved rounds; delta = isolated LUAB cost as a share of the fastest plain step)")
    print(f"{'model':<10}{'recipe':>7}{'comp':>5}{'plain ms':>10}{'LUAB ms':>10}{'img/s':>8}{'LUAB img/s':>11}"
          f"{'ratio':>7}{'paired':>7}{'CPU':>7}{'delta us':>9}{'delta %':>8}{'<=2%':>5}")
    for r in results:
        ok = r["delta_pct"] <= 2 and r["paired_ratio"] <= 1.02
        print(f"{r['model']:<10}{r['recipe']:>7}{'yes' if r['compile'] else 'no':>5}{r['plain_ms']:>10.1f}"
              f"{r['luab_ms']:>10.1f}{r['plain_img_s']:>8.1f}{r['luab_img_s']:>11.1f}{r['ratio']:>7.3f}"
              f"{r['paired_ratio']:>7.3f}{r['cpu_ratio']:>7.3f}{r['delta_us']:>9.0f}{r['delta_pct']:>8.3f}"
              f"{'yes' if ok else 'NO':>5}")
    print(json.dumps(dict(mode="step", device=device, threads=torch.get_num_threads(), batch_size=batch_size,
                          img_size=a.img_size, num_classes=a.num_classes, amp=amp, repeats=repeats,
                          steps_per_sample=steps, torch=torch.__version__, load=os.getloadavg(),
                          results=[{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                                   for r in results])))
    return results


_CLK = os.sysconf("SC_CLK_TCK")


def worker_cpu_s(pids):
    """CPU seconds (user + system) of live DataLoader worker processes, from /proc."""
    t = 0.0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        t += (int(fields[11]) + int(fields[12])) / _CLK
    return t


def with_cpu_counters(train_one_epoch):
    """train_one_epoch, plus the CPU seconds of the main process and of the (persistent) loader workers over the
    epoch: far less sensitive than wall time to the other jobs of a shared machine. Workers only exist from the
    second epoch on, which is the one we report."""
    def wrapped(args, model, loader, *rest, **kw):
        it = getattr(loader, "_iterator", None)
        pids = [w.pid for w in it._workers] if it is not None and loader.num_workers else []
        c0, w0 = time.process_time(), worker_cpu_s(pids)
        stats = train_one_epoch(args, model, loader, *rest, **kw)
        stats["main_cpu_s"], stats["worker_cpu_s"] = time.process_time() - c0, worker_cpu_s(pids) - w0
        return stats
    return wrapped


def loader_mode(a):
    """data_wait of a real train_imagenet.py run (DataLoader workers, real JPEG decoding and TrainTransform)."""
    cuda = a.device == "cuda"
    model = a.loader_model or ("resnet50" if cuda else "resnet18")
    img = a.loader_img_size or (224 if cuda else 112)
    bs = a.batch_size or (256 if cuda else 32)
    steps = a.loader_steps
    n_train = -(-(steps * bs) // 10) + 1  # images per class for `steps` full batches over 10 classes
    tmp = tempfile.mkdtemp(prefix="luab_loader_")
    try:
        t0 = time.perf_counter()
        synth(tmp, seed=0, n_classes=10, n_train=n_train, n_val=2, coco_train=1, coco_val=1,
              size=(a.synth_min, a.synth_max))
        print(f"synthetic data: {10 * n_train} train JPEGs of {a.synth_min}-{a.synth_max} px in "
              f"{time.perf_counter() - t0:.0f}s; load {os.getloadavg()[0]:.2f}", flush=True)
        results = []
        for r in range(a.loader_rounds):
            for luab in ((False, True) if r % 2 == 0 else (True, False)):
                argv = ["--data-dir", os.path.join(tmp, "imagenet"), "--model", model, "--img-size", str(img),
                        "--batch-size", str(bs), "--workers", str(a.workers), "--epochs", "2",
                        "--max-steps-per-epoch", str(steps), "--eval-every", "1000", "--print-freq", "1000000",
                        "--output-dir", os.path.join(tmp, f"run{r}{int(luab)}"), "--device", a.device]
                argv += ["--luab", "--byproducts", os.path.join(tmp, "imagenet_ab", "train_xml")] if luab else []
                argv += ["--amp"] if (cuda if a.amp is None else a.amp) else []
                argv += ["--compile"] if a.compile == "on" else []
                log, original = io.StringIO(), ti.train_one_epoch
                ti.train_one_epoch = with_cpu_counters(original)
                try:
                    with contextlib.redirect_stdout(log):
                        stats = ti.main(ti.get_args_parser().parse_args(argv))  # the second epoch's stats
                finally:
                    ti.train_one_epoch = original
                res = dict(luab=luab, round=r, img_per_s=stats["img_per_s"], data_wait=stats["data_wait"],
                           epoch_time_s=stats["epoch_time_s"], step_ms=1000 * stats["epoch_time_s"] / steps,
                           main_cpu_ms_per_step=1000 * stats["main_cpu_s"] / steps,
                           worker_cpu_ms_per_item=1000 * stats["worker_cpu_s"] / (steps * bs))
                results.append(res)
                print(f"  round {r + 1} {'LUAB ' if luab else 'plain'}: {res['img_per_s']:.1f} img/s, "
                      f"{res['step_ms']:.0f} ms/step, data wait {100 * res['data_wait']:.1f}%, main CPU "
                      f"{res['main_cpu_ms_per_step']:.0f} ms/step, workers' CPU {res['worker_cpu_ms_per_item']:.2f} "
                      f"ms/item; load {os.getloadavg()[0]:.2f}", flush=True)
        print(f"\nreal train_imagenet.py run ({a.device}, {model}, {img} px, batch {bs}, {a.workers} workers, "
              f"second of two {steps}-step epochs; median of {a.loader_rounds} rounds)")
        print(f"{'variant':<8}{'img/s':>8}{'ms/step':>9}{'data wait %':>13}{'main CPU ms/step':>18}"
              f"{'workers CPU ms/item':>21}")
        summary = {}
        keys = ("img_per_s", "step_ms", "data_wait", "main_cpu_ms_per_step", "worker_cpu_ms_per_item")
        for luab in (False, True):
            rs = [x for x in results if x["luab"] == luab]
            s = {k: statistics.median(x[k] for x in rs) for k in keys}
            summary["luab" if luab else "plain"] = s
            print(f"{'LUAB' if luab else 'plain':<8}{s['img_per_s']:>8.1f}{s['step_ms']:>9.0f}"
                  f"{100 * s['data_wait']:>13.1f}{s['main_cpu_ms_per_step']:>18.0f}{s['worker_cpu_ms_per_item']:>21.2f}")
        p, l = summary["plain"], summary["luab"]
        summary["luab_over_plain"] = {k: l[k] / p[k] for k in ("step_ms", "main_cpu_ms_per_step",
                                                               "worker_cpu_ms_per_item")}
        print("LUAB / plain: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["luab_over_plain"].items()))
        print(json.dumps(dict(mode="loader", device=a.device, model=model, img_size=img, batch_size=bs,
                              workers=a.workers, steps=steps, threads=torch.get_num_threads(),
                              cpus=len(os.sched_getaffinity(0)), torch=torch.__version__, load=os.getloadavg(),
                              summary=summary, runs=results)))
        return summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--models", nargs="+", choices=list(MODEL_NAMES) + ["all"],
                   help=f"default: {' '.join(CPU_MODELS)} on cpu, {' '.join(GPU_MODELS)} on cuda; 'all' = all seven")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--batch-size", type=int, help="default 8 on cpu, 128 on cuda (--loader: 32 / 256)")
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--repeats", type=int, help="timed rounds (default 7 on cpu, 10 on cuda)")
    p.add_argument("--warmup", type=int, help="untimed rounds first (default 2 on cpu, 3 on cuda)")
    p.add_argument("--steps-per-sample", type=int, help="steps per timed sample (default 1 on cpu, 10 on cuda)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="bf16 autocast (default: on for cuda)")
    p.add_argument("--compile", choices=["off", "on", "both"], help="torch.compile (default: both on cuda, off on cpu)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the step timings ('eager': graph capture only, a plumbing check)")
    p.add_argument("--threads", type=int,
                   help="torch threads (default 1 on cpu: on a small shared machine OpenMP barriers wait for "
                        "descheduled threads, which makes 2-thread timings both slower and far noisier; "
                        "torch's default on cuda)")
    p.add_argument("--delta-reps", type=int, default=200, help="reps of the isolated-delta measurement")
    p.add_argument("--profile", action="store_true", help="print a torch.profiler table per model and variant")
    g = p.add_argument_group("--loader: data wait in a real train_imagenet.py run")
    g.add_argument("--loader", action="store_true")
    g.add_argument("--loader-model", help="default resnet18 on cpu, resnet50 on cuda")
    g.add_argument("--loader-img-size", type=int, help="default 112 on cpu, 224 on cuda")
    g.add_argument("--loader-steps", type=int, default=20, help="steps per epoch (two epochs, the second timed)")
    g.add_argument("--loader-rounds", type=int, default=2, help="plain / LUAB runs each, alternating")
    g.add_argument("--workers", type=int, default=2)
    g.add_argument("--synth-min", type=int, default=300, help="synthetic JPEG side range (ImageNet is ~400 x 350)")
    g.add_argument("--synth-max", type=int, default=500)
    return p


def main():
    a = build_parser().parse_args()
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if a.threads or a.device == "cpu":
        torch.set_num_threads(a.threads or 1)
    loader_mode(a) if a.loader else step_mode(a)


if __name__ == "__main__":
    main()
