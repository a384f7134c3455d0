"""
Which COCO context reading detects context reliance? A CPU-scale study with a planted co-occurrence (Tables 6, 7).

    python benchmarks/coco_context.py                          # step 1, then step 2 (5 seeds each)
    python benchmarks/coco_context.py --steps 1 --seeds 0 --epochs 3 --out /tmp/smoke      # smoke run

1. Writes (once, into --data) COCO-format data in the layout train_coco.py and evaluate.py read (instances with
   polygon masks, COCO-AB icon histories, tools/synth.py's drawing and record writers): class A ("skis": small,
   striped) and class B ("person": large) among three distractor classes (0-2 per image, independent of A, B).
     planted/  training set where A appears with B in --cooccur of A's images; B also appears alone;
     control/  the same marginal rates of A (--p-a) and B (--p-b), drawn independently;
     both share one val set of four equal kinds: A and B together, A alone, B alone, neither.
   <data>/composition.json counts each set's kinds (and the planted co-occurrence rate it reached).
2. Trains train_coco.py (one subprocess per run, OMP_NUM_THREADS = --threads): plain on both sets (step 1);
   random points and LUAB on the planted set (step 2), and LUAB at each --variants setting (lambda, point-lr)
   on --variant-seeds. A LUAB run also logs its point head: the gradient share of the point term, and the
   first epoch its point loss falls below 0.9 x that of always answering the centre (log.jsonl).
3. Scores each final model with evaluate.py's COCO functions: mAP over the classes present in val, AP of A and B
   over the val images where they occur apart (A alone, B alone, neither: a model that reads B to say A loses
   here), and every context reading of evaluate.context_bias (diff, drop, flip; o random and worst case), over
   all qualifying pairs (what evaluate.py reports) and over A's pairs only ("a_*": the planted dependency;
   a model with no A pair above --ctx-thr has no a_* value, and the means are over the seeds that have one).

Step 1 asks which reading moves, and which way, when a model has learned to read B as evidence of A: plain on
planted against plain on control, Welch's t-test per reading. Step 2 asks whether the points change that.
Every run writes <out>/<run>.json and is skipped when it exists (<out>/settings.json pins the settings); the
end writes <out>/summary.json (mean +- std, the t-tests) and prints the tables.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.append(os.path.join(REPO, "benchmarks"))  # after the root: benchmarks/models.py is no models.py
import evaluate  # noqa: E402
from byproducts import COCO_NAME_TO_ID  # noqa: E402
from tools.coco_masks import annotation_mask  # noqa: E402
from spurious import cached_data, mean_std, reuse_or_run, start, welch  # noqa: E402
from tools.synth import _background, _coco_ab_record, _jpeg, _paint, _shape_polygons, _supercategory  # noqa: E402

# class name -> (shape, look (tools/synth.py's palette colour and texture index), radius range as a fraction of
# the side). A is small and so harder to see than B, which makes B the easier cue for A in the planted set.
A, B = "skis", "person"
CLASSES = {A: ("bar", 7, (0.12, 0.16)), B: ("hexagon", 8, (0.20, 0.26)),
           "dog": ("disk", 2, (0.12, 0.17)), "cake": ("triangle", 3, (0.12, 0.17)),
           "potted plant": ("star", 1, (0.12, 0.17))}
DISTRACTORS = [c for c in CLASSES if c not in (A, B)]
KINDS = ("together", "a_alone", "b_alone", "neither")  # which of A, B an image holds
METHODS = {"plain": [], "random points": ["--rand-points"], "LUAB": ["--luab"]}  # table row -> train_coco.py flags
READINGS = ("diff", "drop", "flip")


def get_args_parser():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None, help="dataset folder (default: a cache folder keyed by the settings)")
    p.add_argument("--train", type=int, default=320, help="training images per set")
    p.add_argument("--val", type=int, default=40, help="val images per kind (4 kinds)")
    p.add_argument("--p-a", type=float, default=0.4, help="share of training images with A (both sets)")
    p.add_argument("--p-b", type=float, default=0.5, help="share of training images with B (both sets)")
    p.add_argument("--cooccur", type=float, default=0.95, help="planted: share of A's training images with B")
    p.add_argument("--size", type=int, default=64, help="image side (px)")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, nargs="+", default=[1, 2], choices=[1, 2])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--img-size", type=int, default=48, help="training and evaluation input (px)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-2, help="AdamP, at batch 128 (train_coco.py's --lr-base-batch)")
    p.add_argument("--variants", nargs="*", default=["5:10", "1:30", "0.5:10"], metavar="LAMBDA:POINT_LR",
                   help="step 2: LUAB also at these (--point-weight, --point-lr) settings (none: no variants)")
    p.add_argument("--variant-seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of the variants")
    p.add_argument("--extra", default="", help="more train_coco.py flags for every run")
    p.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of the trainings and torch threads here")
    p.add_argument("--out", default="runs/coco_context", help="one JSON per run and summary.json go here")
    return p


# -----------------------------------------------------------------------------
# data

def composition(n, p_a, p_b, cooccur=None):
    """Image counts per kind for n training images: A in round(n p_a), B in round(n p_b); with cooccur the
    planted set (A with B in round(cooccur x #A) images), else A and B independent (#together = #A #B / n)."""
    n_a, n_b = round(n * p_a), round(n * p_b)
    together = round(cooccur * n_a) if cooccur is not None else round(n_a * n_b / n)
    if together > n_b or n_a + n_b - together > n:
        raise SystemExit(f"--p-a {p_a}, --p-b {p_b}, --cooccur {cooccur} do not fit in {n} images")
    return {"together": together, "a_alone": n_a - together, "b_alone": n_b - together,
            "neither": n - n_a - n_b + together}


def kind_list(counts, rng):
    kinds = [k for k in KINDS for _ in range(counts[k])]
    rng.shuffle(kinds)
    return kinds


def _place(rng, S, placed, radius):
    """A centre for a new object of `radius` px inside the S x S image, apart from the objects placed (up to 200
    tries; then the best of them)."""
    best, best_gap = None, -np.inf
    for _ in range(200):
        c = rng.uniform(radius, S - radius, 2)
        gap = min([np.hypot(*(c - q)) - r - radius for q, r in placed], default=np.inf)
        if gap >= 1:
            return c
        if gap > best_gap:
            best, best_gap = c, gap
    return best


def write_image(rng, S, names):
    """Draw the named objects (A and B first, so distractors never cover them) on a textured S x S background.
    -> (image float32 [S, S, 3], [(name, polygon [[x, y], ...], mask bool [S, S])])."""
    canvas, placed, objects = _background(rng, S, S), [], []
    for name in names:
        shape, look, (lo, hi) = CLASSES[name]
        r = rng.uniform(lo, hi) * S
        c = _place(rng, S, placed, r)
        placed.append((c, r))
        outer, _ = _shape_polygons(shape, c[0], c[1], r, rng.uniform(0, 2 * np.pi))
        outer = np.clip(outer, 0, S - 1e-3)
        mask = _paint(canvas, rng, look, outer, None, S, S)
        objects.append((name, outer, mask))
    return canvas, objects


def write_split(root, split, kinds, seed, S, with_ab):
    """One COCO split: <root>/<split>2014/*.jpg, annotations/instances_<split>2014.json (+ coco_ab_v1_0.json)."""
    cats = [{"id": cid, "name": name, "supercategory": _supercategory(name)}
            for name, cid in sorted(COCO_NAME_TO_ID.items(), key=lambda kv: kv[1])]
    images, anns, records = [], [], []
    for n, kind in enumerate(kinds):
        rng = np.random.default_rng([seed, split == "train", n])
        iid = 1 + n
        names = [A] * (kind in ("together", "a_alone")) + [B] * (kind in ("together", "b_alone"))
        k = int(rng.integers(1 if kind == "neither" else 0, 3))
        names += [str(d) for d in rng.choice(DISTRACTORS, k, replace=False)]
        canvas, objects = write_image(rng, S, names)
        fname = f"COCO_{split}2014_{iid:012d}.jpg"
        _jpeg(os.path.join(root, f"{split}2014", fname), canvas)
        images.append({"id": iid, "width": S, "height": S, "file_name": fname, "license": 1, "kind": kind})
        centres = []
        for name, outer, mask in objects:
            seg = [[round(float(v), 2) for v in outer.ravel()]]
            m = annotation_mask(seg, S, S)
            ys, xs = np.nonzero(m)
            anns.append({"id": len(anns) + 1, "image_id": iid, "category_id": COCO_NAME_TO_ID[name],
                         "bbox": [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1),
                                  float(ys.max() - ys.min() + 1)],
                         "area": float(m.sum()), "iscrowd": 0, "segmentation": seg})
            centres.append((name, xs.mean() + 0.5, ys.mean() + 0.5))
        if with_ab:
            records.append(_coco_ab_record(rng, iid, S, S, centres, n))
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"instances_{split}2014.json"), "w") as f:
        json.dump({"info": {"description": "planted co-occurrence, synthetic"}, "licenses": [{"id": 1}],
                   "images": images, "annotations": anns, "categories": cats}, f)
    if with_ab:
        with open(os.path.join(root, "coco_ab_v1_0.json"), "w") as f:
            json.dump(records, f)


def write_data(root, n_train=320, n_val=40, p_a=0.4, p_b=0.5, cooccur=0.95, size=64, seed=0):
    """The two training sets and their shared val set (module docstring), written into a temporary folder and
    renamed when complete. -> the composition dict written to <root>/composition.json."""
    tmp = f"{root}.tmp{os.getpid()}"
    comp = {}
    for name, rate in (("planted", cooccur), ("control", None)):
        counts = composition(n_train, p_a, p_b, rate)
        write_split(os.path.join(tmp, name), "train", kind_list(counts, np.random.default_rng([seed, 1])), seed,
                    size, with_ab=True)
        write_split(os.path.join(tmp, name), "val", [k for k in KINDS for _ in range(n_val)], seed, size,
                    with_ab=False)
        comp[name] = {**counts, "b_given_a": counts["together"] / max(1, counts["together"] + counts["a_alone"]),
                      "a_given_b": counts["together"] / max(1, counts["together"] + counts["b_alone"])}
    comp["val"] = {k: n_val for k in KINDS}
    with open(os.path.join(tmp, "composition.json"), "w") as f:
        json.dump(comp, f, indent=1)
    os.makedirs(os.path.dirname(os.path.abspath(root)), exist_ok=True)
    os.rename(tmp, root)
    return comp


def dataset(args):
    return cached_data(args, f"coco-context-n{args.train}-v{args.val}-a{args.p_a}-b{args.p_b}-c{args.cooccur}"
                             f"-s{args.size}-seed{args.data_seed}", "composition.json",
                       "the planted / control COCO sets",
                       lambda root: write_data(root, args.train, args.val, args.p_a, args.p_b, args.cooccur, args.size,
                                               args.data_seed))


# -----------------------------------------------------------------------------
# scoring

def apart_ap(logits, targets, kinds, k):
    """AP (%) of class index k over the val images that do not hold A and B together."""
    keep = np.asarray(kinds) != "together"
    return 100.0 * evaluate.average_precision(logits[keep, k], targets[keep, k])


def readings(ctx, thr, classes=None):
    """ctx [N, C, 4] of evaluate.context_scores (NaN where no pair) -> {reading_o: value} for o in (random,
    worst), over the pairs of `classes` (indices; None: all), and the number of pairs."""
    c = ctx if classes is None else ctx[:, classes]
    c = c.reshape(-1, 4)
    c = c[~np.isnan(c[:, 0])]
    out = {"pairs": len(c)}
    for o, col in (("random", 1), ("worst", 2)):
        for name, v in evaluate.context_bias(c[:, 0], c[:, col], c[:, 3], thr).items():
            out[f"{name}_{o}"] = v
    return out


def score(checkpoint, val_root, threads):
    """Every metric of one trained model on the shared val set (module docstring, step 3)."""
    eargs = evaluate.get_args_parser().parse_args(
        ["--checkpoint", checkpoint, "--coco", val_root, "--workers", "0", "--batch-size", "64", "--device", "cpu",
         "--no-coco-pxap"])
    torch.set_num_threads(threads)
    model = evaluate.prepare(evaluate.load_run_model(eargs), eargs)
    inst = os.path.join(val_root, "annotations", "instances_val2014.json")
    ds = evaluate.CocoEvalSet(os.path.join(val_root, "val2014"), inst, eargs.coco_size)
    with open(inst) as f:
        kind_of = {im["id"]: im["kind"] for im in json.load(f)["images"]}
    kinds = [kind_of[im["id"]] for im in ds.images]
    logits, *points = evaluate.predict_set(model, ds, eargs, None, points=eargs.has_points)
    _, ctx = evaluate.coco_mask_pass(model, eargs, ds, logits)
    logits, ctx = logits.numpy(), ctx.numpy()
    a, b = (ds.category_ids.index(COCO_NAME_TO_ID[n]) for n in (A, B))
    present = ds.targets.any(0)
    _, ap = evaluate.mean_average_precision(logits, ds.targets)
    m = {"map": float(ap[present].mean()), "ap_a_apart": apart_ap(logits, ds.targets, kinds, a),
         "ap_b_apart": apart_ap(logits, ds.targets, kinds, b)}
    probs = 1 / (1 + np.exp(-logits))
    for kind in ("together", "a_alone", "b_alone"):  # the mean sigmoid of A on each kind of val image
        m[f"s_a_{kind}"] = 100.0 * float(probs[np.asarray(kinds) == kind, a].mean())
    m.update({f"all_{k}": v for k, v in readings(ctx, eargs.ctx_thr).items()})
    m.update({f"a_{k}": v for k, v in readings(ctx, eargs.ctx_thr, [a]).items()})
    if points:
        h = evaluate.coco_point_hits(ds, points[0].numpy())
        m["point_acc"] = 100.0 * float(h[h >= 0].mean())
        m["point_acc_centre"] = 100.0 * float(evaluate.coco_point_hits(ds, np.full_like(points[0].numpy(), 0.5))[
            h >= 0].mean())
    return m


def head_log(log):
    """From a LUAB run's log.jsonl rows: the gradient share of the point term (mean over epochs, last) and the
    first epoch whose point loss is below 0.9 x the centre's (the head beats always answering the centre)."""
    share = [e["point_grad_share"] for e in log if "point_grad_share" in e]
    vs = [e["train_point_vs_centre"] for e in log if "train_point_vs_centre" in e]
    if not vs:
        return {}
    beats = next((e["epoch"] for e in log if e.get("train_point_vs_centre", 1.0) < 0.9), None)
    out = {"point_vs_centre_last": vs[-1], "head_beats_centre_epoch": float(beats if beats is not None else len(log))}
    if share:
        out.update(grad_share_mean=float(np.mean(share)), grad_share_last=share[-1])
    return out


# -----------------------------------------------------------------------------
# runs

def run_one(args, root, name, train_set, flags, seed):
    """Train one model (train_coco.py in a subprocess), score it, write <out>/<name>.json (checkpoints deleted)."""
    out_dir = os.path.join(args.out, name)
    coco = os.path.join(root, train_set)
    cmd = [sys.executable, os.path.join(REPO, "train_coco.py"), "--coco-dir", coco,
           "--coco-ab", os.path.join(coco, "coco_ab_v1_0.json"), "--model", args.model,
           "--img-size", str(args.img_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--lr", str(args.lr), "--warmup-epochs", "2", "--seed", str(seed), "--workers", "0",
           "--print-freq", str(10 ** 6), "--eval-every", str(args.epochs), "--output-dir", out_dir,
           *flags, *args.extra.split()]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(os.path.join(args.out, name + ".train.log"), "w") as f:
        rc = subprocess.run(cmd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"training {name} failed (exit {rc}); see {os.path.join(args.out, name + '.train.log')}")
    minutes = (time.perf_counter() - t0) / 60
    with open(os.path.join(out_dir, "log.jsonl")) as f:
        log = [json.loads(line) for line in f]
    m = {**score(os.path.join(out_dir, "checkpoint.pt"), coco, args.threads), **head_log(log),
         "train_minutes": minutes}
    result = {"run": name, "train_set": train_set, "flags": flags, "seed": seed, "metrics": m}
    for f in ("checkpoint.pt", "best.pt"):
        os.remove(os.path.join(out_dir, f))
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump(result, f, indent=1)
    return result


RUN_SETTINGS = ("train", "val", "p_a", "p_b", "cooccur", "size", "data_seed", "model", "img_size", "epochs",
                "batch_size", "lr", "extra")


def variant_flags(v):
    lam, lr = v.split(":")
    return ["--luab", "--point-weight", lam, "--point-lr", lr], f"LUAB λ {lam}, point-lr {lr}"


def plan(args):
    """[(row label, run-name prefix, train set, flags, seeds)] in the order they run: step 1 first (usable
    alone), the LUAB variants last."""
    rows = []
    if 1 in args.steps:
        rows += [("plain, planted", "planted-plain", "planted", [], args.seeds),
                 ("plain, control", "control-plain", "control", [], args.seeds)]
    if 2 in args.steps:
        if 1 not in args.steps:
            rows.append(("plain, planted", "planted-plain", "planted", [], args.seeds))
        rows += [(f"{m}, planted", "planted-" + m.replace(" ", "-"), "planted", f, args.seeds)
                 for m, f in METHODS.items() if m != "plain"]
        for v in args.variants:
            flags, label = variant_flags(v)
            rows.append((label + ", planted", f"planted-luab-w{v.replace(':', '-lr')}", "planted", flags,
                         args.variant_seeds))
    return rows


# -----------------------------------------------------------------------------
# tables

def cell(rows, key, digits=1):
    ms = mean_std(rows, key)
    return "–" if ms is None else f"{ms[0]:.{digits}f} ± {ms[1]:.{digits}f}"


def table(title, labelled, keys, headers, digits=1):
    lines = [title, "| run | seeds | " + " | ".join(headers) + " |", "|---|---:|" + "---:|" * len(keys)]
    for label, rows in labelled:
        lines.append(f"| {label} | {len(rows)} | " + " | ".join(cell(rows, k, digits) for k in keys) + " |")
    return "\n".join(lines)


def tests(x, y, keys):
    out = {}
    for k in keys:
        a = [r["metrics"][k] for r in x if k in r["metrics"]]
        b = [r["metrics"][k] for r in y if k in r["metrics"]]
        if len(a) > 1 and len(b) > 1:
            t, df, p = welch(a, b)
            out[k] = {"diff": float(np.mean(a) - np.mean(b)), "t": t, "df": df, "p": p}
    return out


def tests_table(title, comparisons, keys):
    """One row per metric, one column per comparison: mean difference (Welch's p)."""
    lines = [title, "| metric | " + " | ".join(comparisons) + " |", "|---|" + "---:|" * len(comparisons)]
    for k in keys:
        cells = [f"{r[k]['diff']:+.1f} ({r[k]['p']:.2g})" if k in r else "–" for r in comparisons.values()]
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


SCORE_KEYS = ("map", "ap_a_apart", "ap_b_apart", "s_a_together", "s_a_a_alone", "s_a_b_alone")
CTX_KEYS = tuple(f"{s}_{r}_{o}" for s in ("all", "a") for o in ("random", "worst") for r in READINGS)
HEAD_KEYS = ("point_acc", "point_acc_centre", "head_beats_centre_epoch", "point_vs_centre_last",
             "grad_share_mean", "grad_share_last")


def describe(m):
    return f"({m['train_minutes']:.1f} min) " + " ".join(
        f"{k} {m[k]:.3g}" for k in SCORE_KEYS + CTX_KEYS + HEAD_KEYS if k in m)


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    t0, root = start(args, dataset, RUN_SETTINGS)
    rows = plan(args)
    runs = {}
    for label, prefix, train_set, flags, seeds in rows:
        for seed in seeds:
            name = f"{prefix}-seed{seed}"
            runs[name] = reuse_or_run(args.out, name, lambda: run_one(args, root, name, train_set, flags, seed),
                                      describe)
    for r in runs.values():  # a metric without a value (NaN: e.g. no A pair qualified) is left out of the means
        r["metrics"] = {k: v for k, v in r["metrics"].items() if v == v}
    by_label = {label: [runs[f"{prefix}-seed{s}"] for s in seeds] for label, prefix, _, _, seeds in rows}
    with open(os.path.join(root, "composition.json")) as f:
        comp = json.load(f)
    print(f"\nCOCO context reliance, planted co-occurrence: A = {A!r} with B = {B!r} in "
          f"{100 * comp['planted']['b_given_a']:.0f} % of A's planted training images (control: "
          f"{100 * comp['control']['b_given_a']:.0f} %), {args.train} train images, {args.img_size} px, {args.model}, "
          f"{args.epochs} epochs, seeds {args.seeds} ({(time.perf_counter() - t0) / 60:.1f} min this call)")
    labelled = list(by_label.items())
    heads = ["mAP", "AP(A) apart", "AP(B) apart", "s_A together", "s_A A alone", "s_A B alone"]
    print(table("\nscores (%; s_A = mean sigmoid of A):", labelled, SCORE_KEYS, heads))
    for scope, what in (("all", "all qualifying pairs, as evaluate.py reports"), ("a", "A's pairs only")):
        keys = [f"{scope}_{r}_{o}" for o in ("random", "worst") for r in READINGS]
        print(table(f"\ncontext readings, {what}:", labelled, keys + [f"{scope}_pairs"],
                    [f"{r} ({o})" for o in ("random", "worst") for r in READINGS] + ["pairs"]))
    summary = {"benchmark": "coco_context", "settings": dict(vars(args)), "composition": comp,
               "table": {label: {k: mean_std(rs, k) for k in rs[0]["metrics"]} for label, rs in labelled},
               "welch": {}, "runs": sorted(runs)}
    pairs = [("plain: planted - control", "plain, planted", "plain, control")]
    pairs += [(f"{label.removesuffix(', planted')} - plain", label, "plain, planted")
              for label, _, _, flags, _ in rows if flags]
    pairs += [("LUAB - random points", "LUAB, planted", "random points, planted")]
    for title, x, y in pairs:
        if x in by_label and y in by_label:
            summary["welch"][title] = tests(by_label[x], by_label[y], SCORE_KEYS + CTX_KEYS)
    if summary["welch"]:
        print(tests_table("\nWelch's t-tests: mean difference (two-sided p); step 1 is the first column",
                          summary["welch"], SCORE_KEYS + CTX_KEYS))
    luab = [(label, rs) for label, rs in labelled if "LUAB" in label or "random" in label]
    if luab:
        print(table("\npoint heads (point_acc: % of (image, class) points inside a box of the class; centre: always "
                    "(0.5, 0.5)):", luab, HEAD_KEYS, digits=2,
                    headers=["point acc", "centre", "beats centre at epoch", "point loss / centre",
                             "grad share (mean)", "(last)"]))
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
