"""
Does LUAB reduce reliance on a spurious background? A CPU-scale Background Challenge (paper Table 2, issue 9).

    python benchmarks/spurious.py                       # 3 seeds x plain / random points / clicks, ~10 min on 2 cores
    python benchmarks/spurious.py --seeds 0 --epochs 3 --methods plain   # smoke run

1. Writes (once, into --data) `byproducts.synth_spurious`: the label is the object's shape; each class also owns
   a background that agrees with the label in training with probability --p; clicks mark the object. The object
   (shape + bright colour, 18-32 % of the side) is learnable; the background (muted colour + stripes, the whole
   image, inside every random crop) is the easier cue.
2. Trains train_imagenet.py in-process with one recipe, three ways: plain, --rand-points (a uniform point fixed
   per image, the paper's control) and --luab (the clicks), for every seed.
3. Evaluates each final model on mixed_same (true class's background) and mixed_rand (another class's
   background): top-1 and BG-gap = acc(mixed_same) - acc(mixed_rand) (evaluate.py's Background Challenge maths,
   on the synthetic classes directly, i.e. in9_accuracy with no 1000 -> 9 mapping). Lower gap = less shortcut.
Prints a table (mean +- std over seeds) and one JSON line.
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import byproducts  # noqa: E402
import evaluate  # noqa: E402
import train_imagenet  # noqa: E402
from models import create_model  # noqa: E402

METHODS = [("plain", []), ("random points", ["--rand-points"]), ("LUAB (clicks)", ["--luab"])]


def get_args_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="dataset folder (default: a cache folder keyed by the settings)")
    p.add_argument("--p", type=float, default=0.9, help="train background/label agreement")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--train", type=int, default=100, help="train images per class")
    p.add_argument("--test", type=int, default=30, help="images per class in each test split")
    p.add_argument("--size", type=int, default=32, help="image side (px), also the training resolution")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.2, help="at batch 256 (train_imagenet.py's --lr-base-batch)")
    p.add_argument("--point-weight", type=float, default=1.0, help="lambda")
    p.add_argument("--methods", nargs="+", default=[m for m, _ in METHODS], help="subset of the three rows")
    p.add_argument("--extra", default="", help="more train_imagenet.py flags, e.g. '--weight-decay 5e-4'")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: on a shared 2-core machine 2 OpenMP threads ran 5x slower)")
    p.add_argument("--out", default=None, help="where runs go (default: a temporary folder)")
    return p


def dataset(args):
    root = args.data or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "luab",
                                     f"spurious-p{args.p}-c{args.classes}-n{args.train}-t{args.test}-s{args.size}"
                                     f"-seed{args.data_seed}")
    if not os.path.exists(os.path.join(root, "spurious.json")):
        print(f"writing the spurious-background set to {root}", flush=True)
        byproducts.synth_spurious(root, p=args.p, seed=args.data_seed, n_classes=args.classes,
                                  n_train=args.train, n_val=args.test, size=args.size)
    return root


@torch.no_grad()
def split_accuracy(model, root, split, img_size, resize):
    ds = byproducts.ImageNetAB(os.path.join(root, "imagenet", split), points="none",
                               transform=byproducts.EvalTransform(size=img_size, resize=resize))
    loader = torch.utils.data.DataLoader(ds, batch_size=128, num_workers=0)
    logits = torch.cat([(lambda o: o[0] if isinstance(o, tuple) else o)(model(b[0])) for b in loader])
    return evaluate.in9_accuracy(logits.numpy(), np.array(ds.targets), in_to_in9=None)


def run_one(args, root, flags, seed, out_dir):
    argv = ["--data-dir", os.path.join(root, "imagenet"),
            "--byproducts", os.path.join(root, "imagenet_ab", "train_xml"),
            "--model", args.model, "--img-size", str(args.size), "--val-resize", str(args.size),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--sched", "cosine", "--point-weight", str(args.point_weight), "--seed", str(seed),
            "--color-jitter", "0",  # the resnet recipe's jitter would blur the colour cues this study is about
            "--workers", "0", "--print-freq", str(10 ** 6), "--eval-every", str(args.epochs),
            "--output-dir", out_dir] + flags + args.extra.split()
    targs = train_imagenet.get_args_parser().parse_args(argv)  # recipe: resnet, or deit for a ViT
    stats = train_imagenet.main(targs)
    ckpt = torch.load(os.path.join(out_dir, "checkpoint.pt"), map_location="cpu", weights_only=True)
    model = create_model(args.model, num_classes=args.classes, num_points=1 if flags else 0, img_size=args.size)
    model.load_state_dict(ckpt["model"])
    model.eval()
    same = split_accuracy(model, root, "mixed_same", args.size, args.size)
    rand = split_accuracy(model, root, "mixed_rand", args.size, args.size)
    return {"val": stats.get("val_top1"), "train_point_loss": stats.get("train_point_loss"), "mixed_same": same,
            "mixed_rand": rand, "bg_gap": evaluate.bgc_gap(same, rand)}


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    root = dataset(args)
    out = args.out or tempfile.mkdtemp(prefix="luab-spurious-")
    results = {}
    for name, flags in METHODS:
        if name not in args.methods:
            continue
        for seed in args.seeds:
            r = run_one(args, root, flags, seed, os.path.join(out, f"{name.split()[0].lower()}-seed{seed}"))
            print(f"== {name} seed {seed}: " + " ".join(f"{k} {v:.2f}" for k, v in r.items() if v is not None),
                  flush=True)
            results.setdefault(name, []).append(r)
    minutes = (time.perf_counter() - t0) / 60

    # ---------------------------------------------------------------------------------------------------
    # the table
    def ms(rows, k):
        v = np.array([r[k] for r in rows], np.float64)
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0

    print(f"\nspurious backgrounds: p={args.p}, {args.classes} classes x {args.train} train, {args.size} px, "
          f"{args.model}, {args.epochs} epochs, lambda={args.point_weight}, seeds {args.seeds} ({minutes:.1f} min)")
    print(f"| {'method':<14} | {'val (p)':>13} | {'mixed_same':>13} | {'mixed_rand':>13} | {'BG-gap (lower)':>14} |")
    print(f"|{'-' * 16}|{'-' * 15}:|{'-' * 15}:|{'-' * 15}:|{'-' * 16}:|")
    summary = {}
    for name, rows in results.items():
        summary[name] = {k: ms(rows, k) for k in ("val", "mixed_same", "mixed_rand", "bg_gap")}
        cells = [f"{m:5.1f} ± {s:4.1f}" for m, s in summary[name].values()]
        print(f"| {name:<14} | {cells[0]:>13} | {cells[1]:>13} | {cells[2]:>13} | {cells[3]:>14} |")
    print(json.dumps({"benchmark": "spurious", "settings": {k: v for k, v in vars(args).items() if k != "out"},
                      "minutes": round(minutes, 2), "summary": summary, "runs": results}))
    return summary


if __name__ == "__main__":
    main()
