"""
Does LUAB reduce reliance on a spurious background? A CPU-scale Background Challenge (paper Table 2).

    python benchmarks/spurious.py                       # the README's study: 5 seeds x 3 methods + a lambda curve
    python benchmarks/spurious.py --seeds 0 --epochs 3 --methods plain --lambdas --out /tmp/smoke   # smoke run

1. Writes (once, into --data) `tools/synth.py`'s `synth_spurious`: the label is the object's shape; each class also owns
   a background that agrees with the label in training with probability --p; clicks mark the object. The object
   (shape + bright colour, 18-32 % of the side) is learnable; the background (muted colour + stripes, the whole
   image, inside every random crop) is the easier cue.
2. Trains train_imagenet.py in-process with its ResNet recipe (lambda = the recipe's point_weight unless
   --point-weight), three ways per seed: plain, --rand-points (a uniform point fixed per image, the paper's
   control) and --luab (the clicks); then LUAB at each of --lambdas on --curve-seeds (runs the first part
   already made are reused).
3. Evaluates each final model on mixed_same (true class's background) and mixed_rand (another class's
   background): top-1 and BG-gap = acc(mixed_same) - acc(mixed_rand) (evaluate.py's Background Challenge maths,
   on the synthetic classes directly, i.e. in9_accuracy with no 1000 -> 9 mapping). Lower gap = less shortcut.
   A point head is also scored on val: % of points inside the object's box (cx +- r, cy +- r) and the mean
   distance to the object's centre (% of the side), each next to what always answering the centre scores.

Every run writes <out>/<run>.json, {"run", "points", "point_weight", "seed", "metrics": {...}}, and is skipped
when that file exists, so an interrupted study continues where it stopped (<out>/settings.json records the
settings the runs were made with; other settings need another --out). At the end: <out>/summary.json
(mean +- std per method and per lambda, Welch's t-tests of the BG-gap) and the tables, printed.
"""

import argparse
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import byproducts  # noqa: E402
import evaluate  # noqa: E402
import train_imagenet  # noqa: E402
from models import model_from_checkpoint  # noqa: E402
from tools.synth import synth_spurious  # noqa: E402
from utils import UnpaddedDistributedSampler  # noqa: E402

METHODS = {"plain": ("none", []), "random points": ("random", ["--rand-points"]),
           "LUAB (clicks)": ("clicks", ["--luab"])}  # table row -> (points, train_imagenet.py flags)
TABLE = ("val_top1", "mixed_same", "mixed_rand", "bg_gap")


def add_study_args(p, size=32, out="runs/spurious"):
    """The flags of a study on this data (also benchmarks/attentive_pooling.py's): the set, the training, --out."""
    p.add_argument("--data", default=None, help="dataset folder (default: a cache folder keyed by the settings)")
    p.add_argument("--p", type=float, default=0.9, help="train background/label agreement")
    p.add_argument("--classes", type=int, default=6)
    p.add_argument("--train", type=int, default=100, help="train images per class")
    p.add_argument("--test", type=int, default=30, help="images per class in each test split")
    p.add_argument("--size", type=int, default=size, help="image side (px), also the training resolution")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="training seeds of the table")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.2, help="at batch 256 (train_imagenet.py's --lr-base-batch)")
    p.add_argument("--extra", default="", help="more train_imagenet.py flags, e.g. '--point-head plain'")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: on a shared 2-core machine 2 OpenMP threads ran 5x slower)")
    p.add_argument("--out", default=out, help="one JSON per run and summary.json go here")
    return p


def get_args_parser():
    p = add_study_args(argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0]))
    p.add_argument("--point-weight", type=float, default=None, help="lambda of the table (default: the recipe's)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), help="subset of the table's three rows")
    p.add_argument("--lambdas", type=float, nargs="*", default=[0, 1, 5, 20, 50, 100],
                   help="the LUAB lambda curve (none: no curve)")
    p.add_argument("--curve-seeds", type=int, nargs="+", default=[0, 1, 2])
    return p


def cached_data(args, name, marker, what, write):
    """The dataset folder: --data, else <cache>/luab/<name>; write(root) fills it first unless <root>/<marker>
    exists (the file its writer makes last)."""
    root = args.data or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "luab", name)
    if not os.path.exists(os.path.join(root, marker)):
        print(f"writing {what} to {root}", flush=True)
        write(root)
    return root


def dataset(args):
    return cached_data(args, f"spurious-p{args.p}-c{args.classes}-n{args.train}-t{args.test}-s{args.size}"
                             f"-seed{args.data_seed}", "spurious.json", "the spurious-background set",
                       lambda root: synth_spurious(root, p=args.p, seed=args.data_seed, n_classes=args.classes,
                                                   n_train=args.train, n_val=args.test, size=args.size))


@torch.no_grad()
def predict(model, root, split, size):
    """Logits [N, C], points [N, 2] or None, and the dataset of one split (eval crop = the whole image)."""
    ds = byproducts.ImageNetAB(os.path.join(root, "imagenet", split), point_source="none",
                               transform=byproducts.EvalTransform(size=size, resize=size))
    loader = torch.utils.data.DataLoader(ds, batch_size=128, sampler=UnpaddedDistributedSampler(ds))
    logits, *points = evaluate.predict(model, loader, "cpu", points=True)  # points: [] without a point head
    return logits, (points[0][:, 0].numpy() if points else None), ds


def point_scores(points, objects):
    """points [N, 2] and objects [N, 3] = (cx, cy, r), all normalised by the side -> (% of points inside the
    object's box cx +- r, cy +- r; mean distance to the object's centre in % of the side)."""
    d = points - objects[:, :2]
    inside = (np.abs(d) <= objects[:, 2:]).all(1)
    return 100.0 * float(inside.mean()), 100.0 * float(np.hypot(d[:, 0], d[:, 1]).mean())


def run_one(args, root, name, points, flags, lam, seed):
    """Train one model, score it, write <out>/<name>.json (the checkpoints are deleted: ~90 MB per run)."""
    out_dir = os.path.join(args.out, name)
    argv = ["--data-dir", os.path.join(root, "imagenet"),
            "--byproducts", os.path.join(root, "imagenet_ab", "train_xml"),
            "--model", args.model, "--img-size", str(args.size), "--val-resize", str(args.size),
            "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
            "--sched", "cosine", "--seed", str(seed),
            "--color-jitter", "0",  # the resnet recipe's jitter would blur the colour cues this study is about
            "--lr-update", "step",  # the cosine evaluated at every step, as the study's runs were made
            "--workers", "0", "--print-freq", str(10 ** 6),
            "--eval-every", str(args.epochs), "--output-dir", out_dir] + flags + args.extra.split()
    if points != "none":
        argv += ["--point-weight", str(lam)]
    targs = train_imagenet.get_args_parser().parse_args(argv)  # recipe: resnet, or deit for a ViT
    train_imagenet.main(targs)
    model, _, _ = model_from_checkpoint(os.path.join(out_dir, "checkpoint.pt"))  # its head, pooling, classes
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    m = {k: log[-1][k] for k in ("val_top1", "train_point_loss", "train_point_centre_loss",
                                 "train_point_vs_centre", "point_grad_share") if k in log[-1]}
    if "point_grad_share" in log[-1]:
        m["point_grad_share_mean"] = float(np.mean([e["point_grad_share"] for e in log]))
    for split in ("mixed_same", "mixed_rand"):
        logits, _, ds = predict(model, root, split, args.size)
        m[split] = evaluate.in9_accuracy(logits.numpy(), np.array(ds.targets), in_to_in9=None)
    m["bg_gap"] = evaluate.bgc_gap(m["mixed_same"], m["mixed_rand"])
    _, pts, ds = predict(model, root, "val", args.size)
    if pts is not None:
        with open(os.path.join(root, "spurious.json")) as f:
            geometry = {r[0]: r[3:6] for r in json.load(f)["images"]["val"]}
        objects = np.array([geometry[k] for k in ds.keys], np.float64)
        m["point_acc"], m["point_dist"] = point_scores(pts, objects)
        m["point_acc_centre"], m["point_dist_centre"] = point_scores(np.full_like(pts, 0.5), objects)
    result = {"run": name, "points": points, "point_weight": lam if points != "none" else 0.0, "seed": seed,
              "metrics": m}
    for ckpt in ("checkpoint.pt", "best.pt"):
        if os.path.exists(os.path.join(out_dir, ckpt)):
            os.remove(os.path.join(out_dir, ckpt))
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


# -----------------------------------------------------------------------------
# statistics, written out (no scipy at run time)

def student_t_sf2(t, df):
    """Two-sided p-value P(|T| >= |t|) of Student's t with df (> 0, any real) degrees of freedom:
    I_x(df/2, 1/2) with x = df / (df + t^2), the regularised incomplete beta function by its continued
    fraction (Numerical Recipes' betacf, modified Lentz)."""
    x, a, b = df / (df + t * t), df / 2.0, 0.5
    if x <= 0.0 or x >= 1.0:
        return float(x >= 1.0)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below this point: use I_x(a,b) = 1 - I_1-x(b,a)
        return 1.0 - _beta_reg(1.0 - x, b, a)
    return _beta_reg(x, a, b)


def _beta_reg(x, a, b, eps=1e-15, tiny=1e-300):
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return front * f


def welch(a, b):
    """Welch's unequal-variance t-test of mean(a) - mean(b): (t, Welch-Satterthwaite df, two-sided p)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return float("nan"), float("nan"), float("nan")
    t = (a.mean() - b.mean()) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(t), float(df), float(student_t_sf2(float(t), float(df)))


def welch_tests(rows, pairs, metrics=("bg_gap",)):
    """Welch's t-test of each metric for each (name, a, b) of `pairs` whose rows a and b both hold 2 or more runs:
    {f"{metric} {name}": {"t", "df", "p"}}; print_tests prints them."""
    tests = {}
    for name, a, b in pairs:
        if len(rows.get(a) or []) > 1 and len(rows.get(b) or []) > 1:
            for metric in metrics:
                t, df, p = welch([r["metrics"][metric] for r in rows[a]], [r["metrics"][metric] for r in rows[b]])
                tests[f"{metric} {name}"] = {"t": t, "df": df, "p": p}
    return tests


def print_tests(tests):
    for name, r in tests.items():
        print(f"Welch t-test, {name}: t = {r['t']:.2f}, df = {r['df']:.1f}, p = {r['p']:.3g}")


def mean_std(rows, key):
    v = np.array([r["metrics"][key] for r in rows if key in r["metrics"]], np.float64)
    if len(v) == 0:
        return None
    return [float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0]


def table(title, labelled_rows):
    """A markdown table, mean +- std over the runs of each row; a point head's scores next to the centre's."""
    def cell(rows, k, digits=1):
        ms = mean_std(rows, k)
        return "–" if ms is None else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"
    lines = [title, "| run | seeds | val (p) | mixed_same | mixed_rand | BG-gap ↓ | point in box % (centre) | "
                    "point dist % (centre) | point loss / centre | grad share |", "|---|" + "---:|" * 9]
    for label, rows in labelled_rows:
        centre = {k: mean_std(rows, k + "_centre") for k in ("point_acc", "point_dist")}
        pts = [f"{cell(rows, k)} ({centre[k][0]:.1f})" if centre[k] else "–" for k in centre]
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(
            [cell(rows, k) for k in TABLE] + pts + [cell(rows, "train_point_vs_centre", 2),
                                                        cell(rows, "point_grad_share_mean", 2)]) + " |")
    return "\n".join(lines)


RUN_SETTINGS = ("p", "classes", "train", "test", "size", "data_seed", "model", "epochs", "batch_size", "lr", "extra")


def check_settings(args, keys=RUN_SETTINGS):
    """Runs are reused by name, so one --out folder must only ever hold runs of one set of training settings
    (the attributes `keys` of args)."""
    path, mine = os.path.join(args.out, "settings.json"), {k: getattr(args, k) for k in keys}
    if os.path.exists(path):
        with open(path) as f:
            theirs = json.load(f)
        if theirs != mine:
            diff = ", ".join(f"{k}: {theirs.get(k)!r} there, {mine[k]!r} now" for k in mine if theirs.get(k) != mine[k])
            raise SystemExit(f"--out {args.out} holds runs made with other settings ({diff}); pass another --out")
    else:
        with open(path, "w") as f:
            json.dump(mine, f, indent=1)


def start(args, dataset, keys):
    """A study's first steps: torch threads, its data (dataset(args) -> root), the --out folder and its pinned
    settings (check_settings). -> (start time, data root)."""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    root = dataset(args)
    os.makedirs(args.out, exist_ok=True)
    check_settings(args, keys)
    return t0, root


def reuse_or_run(out, name, run, describe):
    """<out>/<name>.json if a finished run wrote it, else run() (which writes it) after removing what a run
    killed half-way left in <out>/<name>/; prints "== name: describe(metrics)" for a new run."""
    path = os.path.join(out, name + ".json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    if os.path.isdir(os.path.join(out, name)):
        shutil.rmtree(os.path.join(out, name))
    result = run()
    print(f"== {name}: {describe(result['metrics'])}", flush=True)
    return result


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    t0, root = start(args, dataset, RUN_SETTINGS)
    recipe = train_imagenet.RECIPES["deit" if args.model.startswith("vit") else "resnet"]
    lam = recipe["point_weight"] if args.point_weight is None else args.point_weight
    todo = [(m, args.seeds, [lam]) for m in args.methods] + [("LUAB (clicks)", args.curve_seeds, args.lambdas)]
    runs = {}
    for method, seeds, lams in todo:
        points, flags = METHODS[method]
        for w in lams:
            for seed in seeds:
                name = f"{points}-seed{seed}" if points == "none" else f"{points}-lambda{w:g}-seed{seed}"
                if name not in runs:
                    runs[name] = reuse_or_run(args.out, name, lambda: run_one(args, root, name, points, flags, w, seed),
                                              lambda m: " ".join(f"{k} {v:.3g}" for k, v in m.items()))
    minutes = (time.perf_counter() - t0) / 60

    def select(points, w, seeds):
        return [r for r in runs.values() if r["points"] == points and r["seed"] in seeds
                and (points == "none" or r["point_weight"] == w)]

    rows = {m: select(METHODS[m][0], lam, args.seeds) for m in args.methods}
    curve = {w: select("clicks", w, args.curve_seeds) for w in args.lambdas}
    tests = welch_tests(rows, [(f"LUAB vs {other}", "LUAB (clicks)", other) for other in ("plain", "random points")])
    settings = dict(vars(args))
    means = lambda rs: {k: mean_std(rs, k) for k in rs[0]["metrics"]}  # noqa: E731
    print(f"\nspurious backgrounds: p={args.p}, {args.classes} classes x {args.train} train, {args.size} px, "
          f"{args.model}, {args.epochs} epochs, lambda={lam:g} {args.extra} ({minutes:.1f} min this call)")
    print(table(f"\nseeds {args.seeds}:", list(rows.items())))
    print_tests(tests)
    if args.lambdas:
        print(table(f"\nLUAB lambda curve, seeds {args.curve_seeds}:",
                    [(f"λ = {w:g}", rs) for w, rs in curve.items()]))
    summary = {"benchmark": "spurious", "settings": settings, "point_weight": lam,
               "table": {m: means(rs) for m, rs in rows.items() if rs},
               "welch": tests,
               "lambda_curve": {f"{w:g}": means(rs) for w, rs in curve.items() if rs},
               "runs": sorted(runs)}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    if args.lambdas:
        figure = os.path.join(args.out, "lambda_curve.png")
        draw_lambda_curve([r for r in runs.values() if r["seed"] in args.curve_seeds], figure)
        print(f"lambda curve: {figure}")
    return summary


def draw_lambda_curve(results, path):
    """BG-gap against lambda, mean +- std over seeds, one line per points mode, drawn like the paper's Fig. L (a
    COCO ablation). Plain training sits at lambda 0, the random-point control at its lambda."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
    import plot
    groups, _ = plot.sweep_points([(r["run"], r) for r in results], "point_weight", "metrics.bg_gap", "points")
    plot.draw_sweep(groups, path, "lambda (--point-weight)", "BG-gap (mixed_same - mixed_rand, %)", "points",
                    xscale="log1p", title="Spurious backgrounds: BG-gap against lambda (lower = less shortcut)")


if __name__ == "__main__":
    main()
