"""tools/sweep.py: run folders per value and seed, skipping finished runs, and the mean ± sample-std table."""

import json
import math
import os
import shlex
import statistics
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import drawing as dr
from tools import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = ["python", "train_imagenet.py", "--demo"]


def fake_run(out, seed, value, lines, epochs=2, flag="point-weight", group=None):
    """A run folder as train_imagenet.py leaves it: config.json (resolved epochs, the command the sweep gives
    it) and log.jsonl (one line per epoch)."""
    folder = os.path.join(out, *([f"{group[0]}={group[1]}"] if group else []), f"{flag}={value}", f"seed{seed}")
    os.makedirs(folder)
    extra = [f"--{flag}", value] + ([f"--{group[0]}", group[1]] if group else [])
    command = ["train_imagenet.py", *BASE[2:], *extra, "--seed", str(seed), "--output-dir", folder, "--resume"]
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({"args": {"epochs": epochs}, "command": command}, f)
    with open(os.path.join(folder, "log.jsonl"), "w") as f:
        f.writelines(json.dumps({"epoch": e, **line}) + "\n" for e, line in enumerate(lines))
    return folder


def test_table_is_mean_and_sample_std_of_the_last_lines(tmp_path, capsys):
    out = str(tmp_path)
    first = {"val_top1": 99.0, "val_loss": 9.0}  # epoch 0 of every run: never the one aggregated
    fake_run(out, 0, "0", [first, {"val_top1": 10.0, "val_loss": 0.05, "val_broken_images": 0}])
    fake_run(out, 1, "0", [first, {"val_top1": 14.0, "val_loss": 0.07, "val_broken_images": 0}])
    unfinished = fake_run(out, 2, "0", [first])  # 1 of its 2 epochs: not counted, listed
    for seed, top1 in enumerate((20.0, 30.0, 40.0)):
        extra = {"val_loss": 0.5} if seed < 2 else {}  # one run without val_loss: that cell has its own n
        fake_run(out, seed, "5", [first, {"val_top1": top1, "val_broken_images": 0, **extra}])
    argv = ["--vary", "point-weight=0,5", "--seeds", "0", "1", "2", "--out", out, "--summarize", "--", *BASE]
    assert sweep.main(argv) == 0
    # val_top1: (10, 14) -> 12 ± sqrt(8) = 2.83; (20, 30, 40) -> 30 ± 10. val_loss: (0.05, 0.07) -> 0.06 ±
    # sqrt(2e-4) = 0.0141 and (0.5, 0.5) -> 0.500 ± 0.000 (3 significant digits below 1), over 2 of the 3 runs
    expected = [
        "Sweep of --point-weight, seeds 0 1 2: each run's last epoch, mean ± sample std (ddof=1) over seeds, n runs; "
        "command: `python train_imagenet.py --demo`",
        "",
        "| point-weight | n | val_top1 | val_loss |",
        "|---|---|---:|---:|",
        "| 0 | 2 | 12.0 ± 2.8 | 0.0600 ± 0.0141 |",
        "| 5 | 3 | 30.0 ± 10.0 | 0.500 ± 0.000 (n=2) |",
        "",
        f"not finished (1): {unfinished}",
    ]
    md = (tmp_path / "summary.md").read_text()
    assert md.splitlines() == expected and capsys.readouterr().out.startswith(md)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["columns"] == ["val_top1", "val_loss"] and summary["missing"] == [unfinished]
    zero, five = summary["rows"]
    assert (zero["value"], zero["n"], five["n"]) == ("0", 2, 3)
    assert zero["metrics"]["val_top1"] == {"mean": 12.0, "std": pytest.approx(math.sqrt(8), rel=1e-12), "n": 2}
    assert five["metrics"]["val_top1"] == {"mean": 30.0, "std": 10.0, "n": 3}
    assert five["metrics"]["val_loss"] == {"mean": 0.5, "std": 0.0, "n": 2}
    assert zero["metrics"]["val_broken_images"] == {"mean": 0.0, "std": 0.0, "n": 2}  # in the JSON, not the table
    assert Image.open(tmp_path / "summary.png").size[0] == 640


def test_group_and_categorical_values_one_line_per_group(tmp_path):
    """--vary points=none,random (not numbers: drawn at 0, 1 with their names) and --group, one run each."""
    out = str(tmp_path)
    for g, top1 in (("a", (50.0, 60.0)), ("b", (70.0, 72.0))):
        for v, t in zip(("none", "random"), top1):
            fake_run(out, 0, v, [{"val_top1": t}], epochs=1, flag="points", group=("lr", g))
    assert sweep.main(["--vary", "points=none,random", "--group", "lr=a,b", "--out", out, "--metric", "val_top1",
                       "--summarize", "--", *BASE]) == 0
    assert (tmp_path / "summary.md").read_text().splitlines()[2:] == [
        "| lr | points | n | val_top1 |", "|---|---|---|---:|",
        "| a | none | 1 | 50.0 |", "| a | random | 1 | 60.0 |", "| b | none | 1 | 70.0 |", "| b | random | 1 | 72.0 |"]
    rows = json.loads((tmp_path / "summary.json").read_text())["rows"]
    assert rows[0]["metrics"]["val_top1"] == {"mean": 50.0, "std": None, "n": 1}
    a = np.asarray(Image.open(tmp_path / "summary.png").convert("RGB"))
    for colour in dr.PALETTE[:2]:  # both groups drawn, in the first two colours
        assert (a == colour).all(-1).sum() > 100


def test_bad_sweeps_are_refused_in_one_line(tmp_path):
    out = str(tmp_path)
    with pytest.raises(SystemExit, match=r"give the training command after --"):
        sweep.main(["--vary", "point-weight=0,5", "--out", out])
    with pytest.raises(SystemExit, match=r"the command after -- has --seed: the sweep sets it"):
        sweep.main(["--vary", "point-weight=0,5", "--out", out, "--", *BASE, "--seed", "3"])
    with pytest.raises(SystemExit, match=r"the command after -- has --point-weight"):
        sweep.main(["--vary", "point-weight=0,5", "--out", out, "--", *BASE, "--point-weight=1"])
    with pytest.raises(SystemExit, match=r"--vary 'point-weight=0,0': write FLAG=V1,V2,... with distinct values"):
        sweep.main(["--vary", "point-weight=0,0", "--out", out, "--", *BASE])
    with pytest.raises(SystemExit, match=r"--group point-weight: the same flag as --vary"):
        sweep.main(["--vary", "point-weight=0,5", "--group", "point-weight=1", "--out", out, "--", *BASE])
    folder = fake_run(out, 0, "0", [{"val_top1": 1.0}], epochs=1)
    with pytest.raises(SystemExit, match=rf"{folder} holds a run of another command .*use another --out"):
        sweep.main(["--vary", "point-weight=0", "--out", out, "--print", "--", *BASE, "--epochs", "3"])
    with pytest.raises(SystemExit, match=r"--metric val_map: not in the runs' last log lines; they have val_top1"):
        sweep.main(["--vary", "point-weight=0", "--out", out, "--summarize", "--metric", "val_map", "--", *BASE])


@pytest.mark.slow
def test_tiny_demo_sweep_runs_skips_and_prints(tmp_path):
    """2 values x 2 seeds of the demo cut to 1 epoch of 2 steps at 32 px (about 6 s a run)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(tmp_path / "cache"))  # the demo data goes here
    out = str(tmp_path / "sweep")
    train = [sys.executable, "train_imagenet.py", "--demo", "--epochs", "1", "--max-steps-per-epoch", "2",
             "--img-size", "32", "--workers", "0", "--print-freq", "1000"]

    def run_sweep(*own):
        res = subprocess.run([sys.executable, "tools/sweep.py", "--vary", "point-weight=0,20", *own, "--out", out,
                              "--", *train], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res

    assert "sweep: 4 runs, 0 finished (skipped), 4 to run" in run_sweep("--seeds", "0", "1").stdout
    summary = json.loads(open(os.path.join(out, "summary.json")).read())
    md = open(os.path.join(out, "summary.md")).read().splitlines()
    assert summary["columns"][0] == "val_top1" and "val_point_acc" in summary["columns"]
    for row, line in zip(summary["rows"], md[4:]):
        last = []
        for seed in (0, 1):
            with open(os.path.join(out, f"point-weight={row['value']}", f"seed{seed}", "log.jsonl")) as f:
                last.append(json.loads(f.read().splitlines()[-1]))
        cells = [f"{row['value']}", "2"]
        for m in summary["columns"]:
            mean, std = statistics.mean(r[m] for r in last), statistics.stdev(r[m] for r in last)
            assert row["metrics"][m]["mean"] == pytest.approx(mean, rel=1e-12, abs=1e-12)
            assert row["metrics"][m]["std"] == pytest.approx(std, rel=1e-12, abs=1e-12)
            cells.append(sweep.fmt(mean, std, 2))
        assert line == "| " + " | ".join(cells) + " |"
    ckpts = [os.path.join(out, f"point-weight={v}", f"seed{k}", "checkpoint.pt") for v in ("0", "20") for k in (0, 1)]
    before = [os.stat(p).st_mtime_ns for p in ckpts]
    again = run_sweep("--seeds", "0", "1")
    assert "sweep: 4 runs, 4 finished (skipped), 0 to run" in again.stdout and "[1/" not in again.stdout
    assert [os.stat(p).st_mtime_ns for p in ckpts] == before  # nothing trained again
    printed = run_sweep("--seeds", "0", "1", "2", "--print")
    assert printed.stderr == "# 4 of 6 runs finished; the other 2:\n"
    assert printed.stdout.splitlines() == [
        shlex.join(train + ["--point-weight", v, "--seed", "2", "--output-dir",
                          os.path.join(out, f"point-weight={v}", "seed2"), "--resume"]) for v in ("0", "20")]
    assert not os.path.exists(os.path.join(out, "point-weight=0", "seed2"))
