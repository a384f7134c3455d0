"""
Run one training command over the values of a flag and several seeds, then tabulate and plot the results.

    python tools/sweep.py --vary point-weight=0,5,20 --seeds 0 1 2 --out runs/lambda -- \\
        python train_imagenet.py --demo --epochs 8
    ... --group points=random,clicks     a second factor: one line per value in the figure (the paper's Fig. L)
    ... --print                          only print the commands of the runs still to do (for a cluster)
    ... --summarize                      run nothing; tabulate the runs that have finished

Every run gets the command after `--` plus `--<flag> <value> [--<group flag> <value>] --seed <k> --output-dir
<run folder> --resume`, one run after another, in the folders <out>/<flag>=<value>/seed<k> (with --group:
<out>/<group flag>=<value>/<flag>=<value>/seed<k>). Values are passed verbatim (points takes none, random,
clicks). A run is finished when its log.jsonl has the last epoch its config.json asks for (train_imagenet.py
and train_coco.py write both); finished runs are skipped, unfinished ones continue from their checkpoint
(--resume), so an interrupted sweep is continued by the same command. A run folder that holds a run of another
command (other flags, another --epochs) is refused: one folder, one command.

The results: each run's last log.jsonl line. summary.md has one row per value (and group value) and one column
per --metric (default: the script's best-checkpoint key, val_map if the runs have it, else val_top1, then the
other val_* metrics), each mean ± sample standard deviation (ddof 1, as papers report) over the seeds, and n;
summary.json has every numeric key of the last lines; summary.png draws the first --metric against the values,
one line per group value, with ±1 std bars (tools/plot.py's sweep figure).
"""

import argparse
import json
import math
import os
import shlex
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools import plot  # noqa: E402

BEST_KEYS = ("val_map", "val_top1")  # what best.pt is chosen by: train_coco.py, train_imagenet.py
SET_BY_SWEEP = ("output-dir", "seed", "resume", "overwrite")


def parse_factor(text, option):
    """"point-weight=0,5,20" -> ("point-weight", ["0", "5", "20"]); SystemExit naming the option when malformed."""
    flag, _, values = text.partition("=")
    flag, values = flag.strip().lstrip("-"), [v.strip() for v in values.split(",")]
    if not flag or not all(values) or len(set(values)) != len(values):
        raise SystemExit(f"{option} {text!r}: write FLAG=V1,V2,... with distinct values, e.g. point-weight=0,5,20")
    return flag, values


def check_command(command, flags):
    """The base command must leave the flags the sweep sets to the sweep."""
    if not command:
        raise SystemExit("give the training command after --, e.g. -- python train_imagenet.py --demo")
    for flag in flags:
        if any(t == f"--{flag}" or t.startswith(f"--{flag}=") for t in command):
            raise SystemExit(f"the command after -- has --{flag}: the sweep sets it for every run (remove it)")


def plan(args, command):
    """[(group value or None, value, seed, run folder, command)] in the order they run."""
    runs = []
    for g in args.group[1] if args.group else [None]:
        for v in args.vary[1]:
            folder = os.path.join(args.out, *([f"{args.group[0]}={g}"] if args.group else []), f"{args.vary[0]}={v}")
            for k in args.seeds:
                run = os.path.join(folder, f"seed{k}")
                extra = [f"--{args.vary[0]}", v] + ([f"--{args.group[0]}", g] if args.group else [])
                runs.append((g, v, k, run, command + extra + ["--seed", str(k), "--output-dir", run, "--resume"]))
    return runs


def run_state(folder, command):
    """(state, run) of a run folder: "new" (no log.jsonl), "started" or "finished" (its log has the last epoch
    config.json asks for); run is tools/plot.py's read_run. SystemExit when config.json records another command."""
    if not os.path.isfile(os.path.join(folder, "log.jsonl")):
        return "new", None
    run = plot.read_run(folder)
    config = run["config"]
    recorded = config.get("command") or []
    # config.json keeps the script's name and its arguments; ours has the launcher (python, torchrun) in front
    script = next((i for i, t in enumerate(command) if recorded and os.path.basename(t) == recorded[0]), None)
    if script is not None and command[script + 1:] != recorded[1:]:
        raise SystemExit(f"{folder} holds a run of another command ({shlex.join(recorded)}): use another --out, "
                         "or remove that folder")
    epochs = config.get("args", {}).get("epochs")
    done = run["epochs"] and isinstance(epochs, int) and max(run["epochs"]) + 1 >= epochs
    return ("finished" if done else "started"), run


def final_line(run):
    return run["epochs"][max(run["epochs"])]


def aggregate(finished, metrics, xs):
    """finished: [(group value, value, seed, folder, read_run)]; xs: {value: x it is drawn at}. Returns
    {metric: {group value: [(x, mean, std, n)]}} from tools/plot.py's sweep_points (sample std, ddof 1)."""
    records = [(folder, {"x": xs[v], "group": g, "last": final_line(run)}) for g, v, _, folder, run in finished]
    return {m: plot.sweep_points(records, "x", f"last.{m}", "group")[0] for m in metrics}


def fmt(mean, std, n):
    """"45.0 ± 1.4": decimals by the mean's size (1 from 10 up, 2 from 1, else 3 significant digits); the std
    with as many; no ± for a single run (std None)."""
    a = abs(mean)
    d = 1 if a >= 10 else 2 if a >= 1 or a == 0 else 2 - math.floor(math.log10(a))
    return f"{mean:.{d}f}" + (f" ± {std:.{d}f}" if n > 1 else "")


def summarize(args, command, runs):
    """Tabulate and plot the finished runs into <out>/summary.{md,json,png}; returns the markdown."""
    finished = []
    for g, v, k, folder, cmd in runs:
        state, run = run_state(folder, cmd)
        if state == "finished":
            finished.append((g, v, k, folder, run))
    missing = [r[3] for r in runs if r[3] not in {f[3] for f in finished}]
    if not finished:
        raise SystemExit(f"sweep: no finished run under {args.out} yet ({len(runs)} planned)")
    numeric = sorted({k for *_, run in finished for k, v in final_line(run).items()
                      if k != "epoch" and plot.is_number(v)})
    if args.metric:
        metrics = args.metric
        unknown = [m for m in metrics if m not in numeric]
        if unknown:
            raise SystemExit(f"--metric {', '.join(unknown)}: not in the runs' last log lines; they have "
                             + ", ".join(numeric))
    else:
        best = next((k for k in BEST_KEYS if k in numeric), numeric[0])
        metrics = [best] + [k for k in numeric if k.startswith("val_") and k != best
                            and not k.endswith("_broken_images")]  # counts, not metrics
    values = args.vary[1]
    numeric_x = all(_float(v) is not None for v in values)
    xs = {v: _float(v) if numeric_x else float(i) for i, v in enumerate(values)}  # categories at 0, 1, 2, ...
    cells = aggregate(finished, numeric, xs)
    rows = []
    for g in args.group[1] if args.group else [None]:
        for v in values:
            row = {"group": g, "value": v, "runs": [f[3] for f in finished if f[:2] == (g, v)], "metrics": {}}
            row["n"] = len(row["runs"])
            for m in numeric:
                for x, mean, std, n in cells[m].get(str(g), []):
                    if x == xs[v]:
                        row["metrics"][m] = {"mean": mean, "std": std if n > 1 else None, "n": n}
            rows.append(row)

    def cell(row, m):
        s = row["metrics"].get(m)
        if s is None:
            return "–"
        return fmt(s["mean"], s["std"], s["n"]) + (f" (n={s['n']})" if s["n"] != row["n"] else "")

    head = ([args.group[0]] if args.group else []) + [args.vary[0], "n"] + metrics
    lines = [f"Sweep of --{args.vary[0]}" + (f" and --{args.group[0]}" if args.group else "")
             + f", seeds {' '.join(map(str, args.seeds))}: each run's last epoch, mean ± sample std (ddof=1) "
             f"over seeds, n runs; command: `{shlex.join(command)}`", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * (len(head) - len(metrics)) + "---:|" * len(metrics)]
    for r in rows:
        lines.append("| " + " | ".join(([r["group"]] if args.group else []) + [r["value"], str(r["n"])]
                                       + [cell(r, m) for m in metrics]) + " |")
    if missing:
        lines += ["", f"not finished ({len(missing)}): " + ", ".join(missing)]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump({"vary": args.vary[0], "values": values, "group": args.group[0] if args.group else None,
                   "group_values": args.group[1] if args.group else None, "seeds": args.seeds,
                   "command": command, "std": "sample standard deviation (ddof=1) over seeds; null for n = 1",
                   "columns": metrics, "rows": rows, "missing": missing}, f, indent=1)
    plot.draw_sweep(cells[metrics[0]], os.path.join(args.out, "summary.png"), f"--{args.vary[0]}", metrics[0],
                    args.group[0] if args.group else None, args.xscale,
                    f"{metrics[0]} vs {args.vary[0]} (mean ± std over seeds)",
                    None if numeric_x else (lambda x: values[int(x)]))
    return md


def _float(v):
    try:
        return float(v) if math.isfinite(float(v)) else None
    except ValueError:
        return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    own, command = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(allow_abbrev=False, usage="%(prog)s --vary FLAG=V1,V2,... [options] -- COMMAND ...",
                                 description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vary", required=True, metavar="FLAG=V1,V2,...", type=lambda s: parse_factor(s, "--vary"),
                    help="the flag to vary and its values, e.g. point-weight=0,5,20")
    ap.add_argument("--group", metavar="FLAG=V1,V2,...", type=lambda s: parse_factor(s, "--group"),
                    help="a second factor, one figure line per value, e.g. points=random,clicks")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds of every value (default: 0)")
    ap.add_argument("--out", required=True, help="the sweep folder: run folders, summary.md/.json/.png")
    ap.add_argument("--metric", nargs="+", help="the table's columns, the first one drawn (default: see below)")
    ap.add_argument("--xscale", choices=("linear", "log1p"), default="linear",
                    help="log1p: values drawn at log10(1 + x), for lambda in {0, 1, 5, 20, 50}")
    what = ap.add_mutually_exclusive_group()
    what.add_argument("--print", action="store_true", help="print the commands of the runs still to do, run none")
    what.add_argument("--summarize", action="store_true", help="run nothing; tabulate the finished runs")
    args = ap.parse_args(own)
    if args.group and args.group[0] == args.vary[0]:
        raise SystemExit(f"--group {args.group[0]}: the same flag as --vary; group by another flag")
    check_command(command, SET_BY_SWEEP + (args.vary[0],) + ((args.group[0],) if args.group else ()))
    runs = plan(args, command)
    todo = [r for r in runs if run_state(r[3], r[4])[0] != "finished"]
    if args.print:
        print(f"# {len(runs) - len(todo)} of {len(runs)} runs finished; the other {len(todo)}:", file=sys.stderr)
        for *_, cmd in todo:
            print(shlex.join(cmd))
        return 0
    if not args.summarize:
        print(f"sweep: {len(runs)} runs, {len(runs) - len(todo)} finished (skipped), {len(todo)} to run", flush=True)
        for i, (_, _, _, folder, cmd) in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {folder}: {shlex.join(cmd)}", flush=True)
            child = subprocess.Popen(cmd)
            try:
                code = child.wait()
            except KeyboardInterrupt:  # the run got the Ctrl-C too: let it end its own way (one line, exit 130)
                child.wait()
                print(f"sweep: interrupted in {folder}; the same command continues the sweep", file=sys.stderr)
                raise SystemExit(130) from None
            if code != 0:
                raise SystemExit(f"sweep: {folder} failed (exit {code}); fix it and run the same sweep again "
                                 "(finished runs are skipped, this one continues from its checkpoint)")
            if run_state(folder, cmd)[0] != "finished":
                raise SystemExit(f"sweep: {folder}: the command exited 0 without finishing its epochs (an "
                                 "--eval-only or a capped run?); the sweep needs training runs")
    md = summarize(args, command, runs)
    print(md, end="")
    print(f"wrote {', '.join(os.path.join(args.out, f) for f in ('summary.md', 'summary.json', 'summary.png'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
