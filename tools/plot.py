"""
Figures from training runs and result files (PNG), drawn with Pillow by drawing.py (no matplotlib).

    python tools/plot.py curves runs/luab runs/rand runs/plain --out curves.png [--labels LUAB random plain]
    python tools/plot.py sweep results/ --x point_weight --y metrics.bg_gap --group points --xscale log1p --out s.png

curves: the paper's Fig. 8 / 10. Each run folder's log.jsonl (one JSON object per epoch, as train_imagenet.py and
train_coco.py write it) gives one coloured line per run in every panel (training loss, point loss, val top-1 or
mAP, val point localisation) that some run has values for; a run without a metric is left out of that panel,
and epochs without a value (validation every N epochs) are bridged. A repeated epoch (an old resumed log) counts
with its last line. Dashed, in each run's colour: always answering the image centre (its point loss, and its
localisation, val_point_acc_centre). COCO: when some class has no positive in val (val_map != val_map_present,
e.g. the synthetic demo set), the mAP panel draws val_map_present, the mean over the classes present, and its
title says so. Labels: --labels, else "points, lambda" from the run's config.json, else the folder name.

sweep: a lambda sweep drawn like the paper's Fig. L (a COCO ablation). Result JSONs {"run", "points",
"point_weight", "seed", "metrics": {...}} (files, or folders: every *.json inside) give one line per --group
value: at each --x value the mean of --y over the records there (seeds), with +-1 sample standard deviation bars
(none for a single record).
"""

import argparse
import glob
import json
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import drawing as dr  # noqa: E402

# one panel per log key, in this order: (log key, title, y-axis label, key drawn dashed in the same colour: the
# same quantity for always answering the image centre)
PANELS = (
    ("train_loss", "training loss", "loss (task + lambda x point)", None),
    ("train_point_loss", "point loss", "SmoothL1 (train)", "train_point_centre_loss"),
    ("val_top1", "validation top-1", "top-1 (%)", None),
    ("val_map", "validation mAP", "mAP (%)", None),
    ("val_point_acc", "point localisation (val)", "point inside a GT box (%)", "val_point_acc_centre"),
)
# the mAP panel when some class has no positive in val: train_coco.py's mean over the classes that have one
MAP_PRESENT = ("val_map_present", "validation mAP, classes present in val only", "mAP (%)", None)
PANEL_SIZE = (430, 300)  # px per panel, margins included


def is_number(v):
    """A finite int or float (not a bool): what a log value must be to be drawn or tabulated."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_run(folder):
    """A run folder -> {"name", "config", "epochs": {epoch: log line}}; SystemExit naming the file when log.jsonl
    is missing or a line is not a JSON object with an "epoch"."""
    path = os.path.join(folder, "log.jsonl")
    if not os.path.isfile(path):
        raise SystemExit(f"{path}: no such file (curves wants run folders written by train_imagenet.py / "
                         "train_coco.py)")
    epochs = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                epochs[int(row["epoch"])] = row  # a later line of the same epoch (a resumed run) wins
            except (ValueError, TypeError, KeyError):
                raise SystemExit(f"{path}:{n}: not a JSON object with an 'epoch' (fix or remove that line)")
    config = {}
    if os.path.isfile(os.path.join(folder, "config.json")):
        with open(os.path.join(folder, "config.json")) as f:
            try:
                config = json.load(f)
            except ValueError:
                raise SystemExit(f"{os.path.join(folder, 'config.json')}: not JSON (fix or remove it)")
    return {"name": os.path.basename(os.path.normpath(folder)), "config": config, "epochs": epochs}


def _config(run):
    """The resolved flags of config.json: the file itself, or its "args" entry when it has one."""
    c = run["config"] if isinstance(run["config"], dict) else {}
    return c.get("args", c) if isinstance(c.get("args"), dict) else c


def run_label(run):
    """"clicks, lambda=5" from config.json's points / point_weight ("plain" for points none), else the folder name."""
    c = _config(run)
    if "points" not in c:
        return run["name"]
    if c["points"] == "none":
        return "plain"
    return f"{c['points']}, lambda={c['point_weight']:g}" if is_number(c.get("point_weight")) else str(c["points"])


def has_points(run):
    """False for a run without a point head: its config.json says points "none", or (a log without config.json)
    its train_point_loss is 0 at every epoch, which is what a plain run logs."""
    c = _config(run)
    if "points" in c:
        return c["points"] != "none"
    return any(row.get("train_point_loss", 1) != 0 for row in run["epochs"].values())


def series(run, key):
    """(epochs, values) of key in run, epochs without a finite number skipped; nothing for a point metric of a
    run without a point head (has_points)."""
    if "point" in key and not has_points(run):
        return [], []
    pts = [(e, row[key]) for e, row in sorted(run["epochs"].items()) if is_number(row.get(key))]
    return [e for e, _ in pts], [v for _, v in pts]


def classes_absent(runs):
    """True when some run logged a val mAP over all classes that differs from the one over the classes present
    in val (train_coco.py's val_map, val_map_present): some class has no positive there and scores 0."""
    return any(is_number(row.get("val_map")) and is_number(row.get("val_map_present"))
               and abs(row["val_map"] - row["val_map_present"]) > 1e-9 for r in runs for row in r["epochs"].values())


def draw_curves(runs, out, labels=None, title="Training curves"):
    """One panel per PANELS key that some run has (the mAP panel as MAP_PRESENT when classes_absent), two
    columns; saves a PNG at out. Returns {key drawn: Axes} (the pixel mapping of each panel, for tests and for
    drawing more on top)."""
    labels = list(labels) if labels else [run_label(r) for r in runs]
    if len(labels) != len(runs):
        raise SystemExit(f"--labels: {len(labels)} labels for {len(runs)} runs (give one per run folder)")
    dup = {s for s in labels if labels.count(s) > 1}  # two runs of the same config: name the folders too
    labels = [f"{s} ({r['name']})" if s in dup else s for s, r in zip(labels, runs)]
    absent = classes_absent(runs)
    panels = [MAP_PRESENT if absent and p[0] == "val_map" else p for p in PANELS]
    panels = [p for p in panels if any(series(r, p[0])[0] for r in runs)]
    if not panels:
        raise SystemExit("curves: no run has any of " + ", ".join(p[0] for p in PANELS) + " in its log.jsonl")
    colours = [dr.PALETTE[i % len(dr.PALETTE)] for i in range(len(runs))]
    items = [(s, c, "line") for s, c in zip(labels, colours)]
    if any(series(r, p[3])[0] for p in panels if p[3] for r in runs):
        items.append(("dashed: always predicting the image centre", dr.GREY, "dashed"))
    cols = 1 if len(panels) == 1 else 2
    rows = math.ceil(len(panels) / cols)
    (pw, ph), (ml, mt, mr, mb) = PANEL_SIZE, dr.MARGINS
    img, y0 = dr.canvas(cols * pw, rows * ph, title, items)
    axes = {}
    for i, (key, name, ylabel, dashed_key) in enumerate(panels):
        lines = [(series(r, key), series(r, dashed_key) if dashed_key else ([], []), c) for r, c in zip(runs, colours)]
        xs = [e for (a, b, _) in lines for e in a[0] + b[0]]
        ys = [v for (a, b, _) in lines for v in a[1] + b[1]]
        x, y = (i % cols) * pw, y0 + (i // cols) * ph
        ax = dr.Axes(img, (x + ml, y + mt, x + pw - mr, y + ph - mb), dr.padded(min(xs), max(xs), 0.04),
                     dr.padded(min(ys), max(ys)))
        ax.frame(name, "epoch", ylabel, xticks=dr.nice_ticks(*ax.xlim, integer=True))
        for solid, dash, colour in lines:
            ax.line(*dash, colour, kind=None, dash=True)
            ax.line(*solid, colour, kind="dot" if len(solid[0]) <= 50 else None)  # 100s of markers: a smear
        axes[key] = ax
    img.save(out)
    return axes


def read_results(paths):
    """Result JSON files, or folders of them (every *.json inside, sorted) -> [(path, record)]."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(glob.glob(os.path.join(p, "*.json")))
            if not found:
                raise SystemExit(f"{p}: a folder without *.json files")
            files += found
        elif os.path.isfile(p):
            files.append(p)
        else:
            raise SystemExit(f"{p}: no such file or folder")
    records = []
    for f in files:
        with open(f) as fh:
            try:
                records.append((f, json.load(fh)))
            except ValueError:
                raise SystemExit(f"{f}: not JSON (fix or remove it)")
    return records


def lookup(record, dotted):
    """record["a"]["b"] for "a.b"; None when a part is missing."""
    for part in dotted.split("."):
        if not isinstance(record, dict) or part not in record:
            return None
        record = record[part]
    return record


def sweep_points(records, x, y, group):
    """{group value: [(x, mean y, std y, n), ...] sorted by x} and the files skipped (x or y not a number).
    std is the sample standard deviation (ddof 1) over the n records at that x, 0 when n = 1."""
    cells, skipped = {}, []
    for path, r in records:
        xv, yv = lookup(r, x), lookup(r, y)
        if not (is_number(xv) and is_number(yv)):
            skipped.append(path)
            continue
        cells.setdefault(str(lookup(r, group)), {}).setdefault(xv, []).append(yv)
    return {g: [(xv, float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
                for xv, v in sorted(d.items())] for g, d in sorted(cells.items())}, skipped


def draw_sweep(groups, out, x, y, group, xscale="linear", title=None, xtick_label=None):
    """One line per group (mean, +-std bars) against x; x ticks at the x values present, labelled
    xtick_label(x) (default f"{x:g}"). group None: a single line, no legend. Returns the Axes."""
    colours = {g: dr.PALETTE[i % len(dr.PALETTE)] for i, g in enumerate(groups)}
    items = [(f"{group}={g}", colours[g], "line") for g in groups] if group else []
    (ml, mt, mr, mb), (w, h) = dr.MARGINS, (640, 420)
    img, y0 = dr.canvas(w, h, title or f"{y} vs {x} (mean ± std over seeds)", items)
    pts = [p for v in groups.values() for p in v]
    xs = sorted({p[0] for p in pts})
    lo, hi = min(p[1] - p[2] for p in pts), max(p[1] + p[2] for p in pts)
    xlim = dr.padded(xs[0], xs[-1], 0.05)
    if xscale == "log1p":  # pad in drawn (log) units, and never below x = -1 where log10(1 + x) ends
        f, g = (lambda v: math.log10(1 + v)), (lambda u: 10 ** u - 1)
        xlim = tuple(g(u) for u in dr.padded(f(xs[0]), f(xs[-1]), 0.05))
    ax = dr.Axes(img, (ml, y0 + mt, w - mr, y0 + h - mb), xlim, dr.padded(lo, hi), xscale)
    ax.frame(None, x + (" (log scale: log10(1 + x))" if xscale == "log1p" else ""), y, xticks=xs,
             xtick_labels=[xtick_label(v) if xtick_label else f"{v:g}" for v in xs])
    for g, v in groups.items():
        for xv, m, s, _ in v:
            if s > 0:
                ax.errorbar(xv, m, s, colours[g])
        ax.line([p[0] for p in v], [p[1] for p in v], colours[g])
    img.save(out)
    return ax


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curves", help="training curves of run folders (log.jsonl)", allow_abbrev=False)
    c.add_argument("runs", nargs="+", metavar="RUN_DIR")
    c.add_argument("--out", required=True, help="PNG file")
    c.add_argument("--labels", nargs="+", help="one legend label per run (default: config.json or folder name)")
    c.add_argument("--title", default="Training curves", help="figure title (default: %(default)s)")
    s = sub.add_parser("sweep", help="a metric against a varied value (e.g. lambda) from result JSONs",
                       allow_abbrev=False)
    s.add_argument("results", nargs="+", metavar="RESULT", help="result JSON files or folders of them")
    s.add_argument("--x", default="point_weight",
                   help="the varied key, a dotted path into each JSON (default: %(default)s)")
    s.add_argument("--y", default="metrics.bg_gap", help="the metric, a dotted path (default: %(default)s)")
    s.add_argument("--group", default="points", help="one line per value of this key (default: %(default)s)")
    s.add_argument("--xscale", default="linear", choices=("linear", "log1p"),
                   help="log1p: x drawn at log10(1 + x), for lambda in {0, 1, 5, 20, 50}")
    s.add_argument("--out", required=True, help="PNG file")
    s.add_argument("--title", help="figure title (default: 'Y vs X (mean ± std over seeds)')")
    args = ap.parse_args(argv)
    if args.cmd == "curves":
        runs = [read_run(d) for d in args.runs]
        axes = draw_curves(runs, args.out, args.labels, args.title)
        print(f"wrote {args.out}: {len(runs)} runs, panels " + ", ".join(axes))
        return 0
    groups, skipped = sweep_points(read_results(args.results), args.x, args.y, args.group)
    if skipped:
        print(f"skipped {len(skipped)} file(s) without a number at {args.x} and {args.y}: " + ", ".join(skipped))
    if not groups:
        raise SystemExit(f"sweep: no result has numbers at both --x {args.x} and --y {args.y}")
    draw_sweep(groups, args.out, args.x, args.y, args.group, args.xscale, args.title)
    print(f"wrote {args.out}: groups " + ", ".join(f"{g} ({len(v)} x values)" for g, v in groups.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
