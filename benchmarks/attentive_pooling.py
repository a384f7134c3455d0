"""
Attentive pooling (the paper's Table D): which reading of "the clicks as ground-truth attention" helps? A CPU study
on benchmarks/spurious.py's synthetic Background Challenge.

    python benchmarks/attentive_pooling.py     # 8 rows x 5 seeds at 64 px, ~55 min; tables in runs/attentive_pooling/
    python benchmarks/attentive_pooling.py --seeds 0 --epochs 2 --out /tmp/smoke     # smoke run

The paper gives the attentive pool one sentence ("ground-truth attention for a weighted pooling ... amplifies the
features corresponding to the point coordinates"). train_imagenet.py --pooling attentive has two readings of it
(--attention-target): the attention's centre of mass regressed to the click (LUAB's point loss), or the attention
map itself pulled towards a Gaussian at the click (models.attention_map_loss, a KL divergence). Each row trains
ResNet-18 as spurious.py does (its ResNet recipe, 12 epochs, cosine, batch 32) and is scored the same way:

  plain                          average pool, no clicks
  average pool + point head      LUAB as the paper's main method, lambda = the recipe's 20
  attentive, no clicks           the attention learns from the classification loss alone
  attentive, centre of mass      lambda 20 (the same loss and scale as the point head's)
  attentive, centre of mass, 100 the same at lambda 100 (a gradient share of about 3, as the map's at lambda 5)
  attentive, map                 lambda 1, 5 and 20 (a KL of up to log(h w), 20-100x a SmoothL1 on [0, 1]
                                 coordinates: lambda 1 gives about the gradient share the centre of mass gets at 20)

At 64 px ResNet-18's last feature map is 2 x 2 (at spurious.py's 32 px it is one cell, and attention is moot).
Welch's t-tests compare each row with the average pool + point head on BG-gap and val top-1, and the two readings
with each other at matched gradient shares (MATCHED).
Every run writes <out>/<run>.json and is skipped when it exists, as in spurious.py.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from spurious import RUN_SETTINGS, add_study_args, dataset, mean_std, print_tests, reuse_or_run, run_one, start, \
    table, welch_tests  # noqa: E402

ATTENTIVE = ["--luab", "--pooling", "attentive", "--attention-target"]
ROWS = {  # table row -> (run name, points, train_imagenet.py flags, lambda)
    "plain": ("plain", "none", [], 0.0),
    "average pool + point head": ("avg-head", "clicks", ["--luab"], 20.0),
    "attentive, no clicks": ("att-plain", "none", ["--pooling", "attentive"], 0.0),
    "attentive, centre of mass": ("att-com", "clicks", ATTENTIVE + ["centre-of-mass"], 20.0),
    "attentive, centre of mass, λ 100": ("att-com100", "clicks", ATTENTIVE + ["centre-of-mass"], 100.0),
    "attentive, map, λ 1": ("att-map1", "clicks", ATTENTIVE + ["map"], 1.0),
    "attentive, map, λ 5": ("att-map5", "clicks", ATTENTIVE + ["map"], 5.0),
    "attentive, map, λ 20": ("att-map20", "clicks", ATTENTIVE + ["map"], 20.0),
}
BASELINE = "average pool + point head"
# the two readings at about the same gradient share (0.5, and 3-4): the reading, not the strength, differs
MATCHED = [("attentive, map, λ 1", "attentive, centre of mass"),
           ("attentive, map, λ 5", "attentive, centre of mass, λ 100")]


def get_args_parser():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    add_study_args(p, size=64, out="runs/attentive_pooling")
    p.add_argument("--rows", nargs="+", default=list(ROWS), help="subset of the table's rows")
    return p


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; choose from {list(ROWS)}")
    t0, root = start(args, dataset, RUN_SETTINGS)
    rows = {}
    for row in args.rows:
        key, points, flags, lam = ROWS[row]
        rows[row] = [reuse_or_run(args.out, f"{key}-seed{seed}",
                                  lambda: run_one(args, root, f"{key}-seed{seed}", points, flags, lam, seed),
                                  lambda m: " ".join(f"{k} {v:.3g}" for k, v in m.items()))
                     for seed in args.seeds]
    pairs = [(row, BASELINE) for row in rows if row != BASELINE] + MATCHED
    tests = welch_tests(rows, [(f"{a} vs {b}", a, b) for a, b in pairs], ("bg_gap", "val_top1"))
    minutes = (time.perf_counter() - t0) / 60
    print(f"\nattentive pooling on spurious backgrounds: p={args.p}, {args.classes} classes x {args.train} train, "
          f"{args.size} px, {args.model}, {args.epochs} epochs {args.extra} ({minutes:.1f} min this call)")
    print(table(f"\nseeds {args.seeds}:", list(rows.items())))
    print_tests(tests)
    summary = {"benchmark": "attentive_pooling", "settings": vars(args),
               "table": {row: {k: mean_std(rs, k) for k in rs[0]["metrics"]} for row, rs in rows.items() if rs},
               "welch": tests}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


if __name__ == "__main__":
    main()
