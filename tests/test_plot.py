"""Tests for drawing.py (nice ticks, the data -> pixel mapping) and tools/plot.py (curves from run folders, the
lambda sweep): the figures are checked in their pixels, where the data says each run's colour must be."""

import json
import math

import numpy as np
import pytest
from PIL import Image

import drawing as dr
from tools import plot


@pytest.mark.parametrize("lo, hi, kw, ticks", [
    (0, 1, {}, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),              # 1 / 5 = 0.2: mantissa 2 -> step 0.2
    (0.37, 0.91, {}, [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),        # 0.54 / 5 = 0.108: mantissa 1.08 < 1.5 -> 0.1
    (0, 16, {}, [0.0, 5.0, 10.0, 15.0]),                     # 3.2: mantissa 3.2 -> 5
    (2.2, 2.5, {}, [2.2, 2.25, 2.3, 2.35, 2.4, 2.45, 2.5]),  # 0.06: mantissa 6 -> 0.05
    (-1, 1, {}, [-1.0, -0.5, 0.0, 0.5, 1.0]),                # 0.4 -> 0.5
    (0, 100, {}, [0.0, 20.0, 40.0, 60.0, 80.0, 100.0]),
    (-0.1, 2.1, {"integer": True}, [0.0, 1.0, 2.0]),         # 0.44 -> 0.5, but epochs step by 1 at least
    (7, 7, {}, [7.0]),                                       # a flat range: step 1
])
def test_nice_ticks(lo, hi, kw, ticks):
    assert dr.nice_ticks(lo, hi, **kw) == ticks


def test_tick_labels_and_padding():
    assert [dr.tick_label(v, [2.2, 2.25]) for v in (2.2, 2.25)] == ["2.20", "2.25"]
    assert dr.tick_label(15.0, [0.0, 5.0]) == "15"
    assert dr.padded(0, 10) == (-0.6, 10.6) and dr.padded(3, 3) == (2.0, 4.0)


def test_axes_mapping():
    img = Image.new("RGB", (200, 200))
    ax = dr.Axes(img, (10, 20, 110, 120), (0, 10), (0, 50))
    assert ax.px(0, 0) == (10, 120) and ax.px(10, 50) == (110, 20) and ax.px(5, 25) == (60, 70)
    flipped = dr.Axes(img, (0, 0, 100, 100), (0, 1), (1, 0))  # image-like: y = 0 at the top
    assert flipped.px(0.25, 0.0) == (25, 0) and flipped.px(0.25, 1.0) == (25, 100)
    log = dr.Axes(img, (0, 0, 100, 100), (0, 99), (0, 1), xscale="log1p")  # log10(1 + x): 0, 1, 2 at x = 0, 9, 99
    assert [log.px(x, 0)[0] for x in (0, 9, 99)] == pytest.approx([0, 50, 100])
    with pytest.raises(ValueError, match="xscale"):
        dr.Axes(img, (0, 0, 1, 1), (0, 1), (0, 1), xscale="log")


def _run(folder, rows, config=None):
    folder.mkdir()
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def _has(a, xy, colour, r=1):
    """colour somewhere in the (2r+1)^2 pixels around float pixel xy (a 2-px line may fall on either side)."""
    x, y = round(xy[0]), round(xy[1])
    return bool((a[y - r:y + r + 1, x - r:x + r + 1] == colour).all(-1).any())


@pytest.fixture
def runs(tmp_path):
    """luab: 5 epochs, validation at epochs 1, 3, 4 only (eval every 2 and the last), a centre baseline;
    plain: points "none" in config.json, a point loss of 0 as plain runs log it, no point accuracy; bare: no
    config.json, a training loss and a point loss of 0 (so no point head either)."""
    luab = [{"epoch": e, "train_loss": 3.0 - 0.5 * e, "train_point_loss": 0.2 - 0.02 * e, "train_point_centre_loss": 0.25}
            for e in range(5)]
    for e, top1, acc in ((1, 20.0, 30.0), (3, 60.0, 50.0), (4, 70.0, 55.0)):
        luab[e].update(val_top1=top1, val_point_acc=acc, val_point_acc_centre=40.0)
    plain = [{"epoch": e, "train_loss": 3.2 - 0.4 * e, "train_point_loss": 0.0, "val_top1": 10.0 + 10 * e}
             for e in range(5)]
    plain.insert(1, {"epoch": 0, "train_loss": 3.4, "val_top1": 12.0})  # a repeated epoch: the later line counts
    return (_run(tmp_path / "r_luab", luab, {"points": "clicks", "point_weight": 5.0}),
            _run(tmp_path / "r_plain", plain, {"points": "none", "point_weight": 1.0}),
            _run(tmp_path / "bare", [{"epoch": e, "train_loss": 2.0 - e, "train_point_loss": 0.0} for e in (0, 1)]))


def test_curves_pixels(runs, tmp_path, capsys):
    out = tmp_path / "c.png"
    assert plot.main(["curves", *runs, "--out", str(out)]) == 0
    assert "panels train_loss, train_point_loss, val_top1, val_point_acc" in capsys.readouterr().out
    loaded = [plot.read_run(r) for r in runs]
    assert [plot.run_label(r) for r in loaded] == ["clicks, lambda=5", "plain", "bare"]
    axes = plot.draw_curves(loaded, str(tmp_path / "again.png"))
    assert list(axes) == ["train_loss", "train_point_loss", "val_top1", "val_point_acc"]  # nobody has val_map
    with Image.open(out) as im:
        a = np.asarray(im.convert("RGB"))
        assert im.size == (2 * plot.PANEL_SIZE[0], axes["val_point_acc"].box[3] + dr.MARGINS[3])
    assert (a == np.asarray(Image.open(tmp_path / "again.png").convert("RGB"))).all()
    blue, red, green = dr.PALETTE[:3]
    # markers: the pixel at each logged value has its run's colour
    assert (a[round(axes["val_top1"].px(3, 60.0)[1]), round(axes["val_top1"].px(3, 60.0)[0])] == blue).all()
    x, y = axes["train_loss"].px(0, 3.4)  # r_plain's repeated epoch 0: its second line (3.4), not 3.2
    assert (a[round(y), round(x)] == red).all() and not _has(a, axes["train_loss"].px(0, 3.2), red)
    x, y = axes["train_loss"].px(1, 1.0)
    assert (a[round(y), round(x)] == green).all()
    # epoch 2 has no validation: the line bridges epochs 1 and 3, through their midpoint (2, 40)
    assert _has(a, axes["val_top1"].px(2, 40.0), blue)
    assert _has(a, axes["train_point_loss"].px(0, 0.25), blue)  # the dashed centre baseline starts there
    assert _has(a, axes["val_point_acc"].px(1, 40.0), blue)  # val_point_acc_centre, dashed, from epoch 1
    assert not _has(a, axes["val_point_acc"].px(1, 30.0 + (40.0 - 30.0) / 2), blue, r=0)  # nothing between
    # a run without a metric, or without a point head, is simply absent from that panel
    for key in ("train_point_loss", "val_point_acc"):
        left, top, right, bottom = axes[key].box
        assert not (a[top:bottom, left:right] == red).all(-1).any()
        assert not (a[top:bottom, left:right] == green).all(-1).any()
    left, top, right, bottom = axes["train_loss"].box
    assert (a[top:bottom, left:right] == red).all(-1).any()


def test_curves_coco_map_over_present_classes(tmp_path, capsys):
    """A COCO run whose val set lacks some classes (val_map 20 over all 80, 50 over the 32 present) draws
    val_map_present; a run where every class is present (the two equal) is drawn at the same key; with no
    class absent anywhere the panel stays val_map."""
    absent = _run(tmp_path / "absent", [{"epoch": e, "train_loss": 1.0, "val_map": 20.0 + e,
                                         "val_map_present": 50.0 + e, "val_point_acc": 10.0 * e} for e in range(3)])
    full = _run(tmp_path / "full", [{"epoch": e, "train_loss": 1.0, "val_map": 30.0, "val_map_present": 30.0}
                                    for e in range(3)])
    out = tmp_path / "coco.png"
    assert plot.main(["curves", absent, full, "--out", str(out)]) == 0
    assert "panels train_loss, val_map_present, val_point_acc" in capsys.readouterr().out
    axes = plot.draw_curves([plot.read_run(absent), plot.read_run(full)], str(tmp_path / "again.png"))
    a = np.asarray(Image.open(out).convert("RGB"))
    blue, red = dr.PALETTE[:2]
    ax = axes["val_map_present"]
    assert ax.ylim[0] < 30.0 and ax.ylim[1] > 52.0  # spans the present-class values, not val_map's 20..22
    assert (a[round(ax.px(2, 52.0)[1]), round(ax.px(2, 52.0)[0])] == blue).all()
    assert (a[round(ax.px(1, 30.0)[1]), round(ax.px(1, 30.0)[0])] == red).all()
    assert plot.classes_absent([plot.read_run(absent)]) and not plot.classes_absent([plot.read_run(full)])
    assert list(plot.draw_curves([plot.read_run(full)], str(tmp_path / "f.png"))) == ["train_loss", "val_map"]


def test_curves_bad_input(runs, tmp_path):
    with pytest.raises(SystemExit, match="nowhere/log.jsonl: no such file"):
        plot.main(["curves", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.png")])
    with open(f"{runs[2]}/log.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(SystemExit, match=r"bare/log.jsonl:3: not a JSON object"):
        plot.read_run(runs[2])
    with pytest.raises(SystemExit, match="--labels: 1 labels for 2 runs"):
        plot.main(["curves", *runs[:2], "--labels", "one", "--out", str(tmp_path / "x.png")])
    empty = _run(tmp_path / "empty", [{"epoch": 0, "img_per_s": 5.0}])
    with pytest.raises(SystemExit, match="no run has any of train_loss"):
        plot.main(["curves", empty, "--out", str(tmp_path / "x.png")])


@pytest.fixture
def results(tmp_path):
    """clicks: lambda 1 over two seeds (bg_gap 10, 12: mean 11, sample std sqrt(2)) and lambda 5 once (8);
    none: lambda 0 over three seeds (14, 14, 17: mean 15, std sqrt(((-1)^2 + (-1)^2 + 2^2) / 2) = sqrt(3));
    one file without the metric."""
    folder = tmp_path / "res"
    folder.mkdir()
    recs = [("clicks", 1, 0, 10.0), ("clicks", 1, 1, 12.0), ("clicks", 5, 0, 8.0),
            ("none", 0, 0, 14.0), ("none", 0, 1, 14.0), ("none", 0, 2, 17.0)]
    for pts, lam, seed, gap in recs:
        (folder / f"{pts}{lam}_{seed}.json").write_text(json.dumps(
            {"run": f"{pts}{lam}_{seed}", "points": pts, "point_weight": lam, "seed": seed,
             "metrics": {"bg_gap": gap}}))
    (folder / "broken_run.json").write_text(json.dumps({"points": "clicks", "point_weight": 20, "metrics": {}}))
    extra = tmp_path / "extra.json"  # a file given next to the folder: clicks, lambda 5, a second seed
    extra.write_text(json.dumps({"points": "clicks", "point_weight": 5, "seed": 1, "metrics": {"bg_gap": 6.0}}))
    return str(folder), str(extra)


def test_sweep(results, tmp_path, capsys):
    groups, skipped = plot.sweep_points(plot.read_results(results[:1]), "point_weight", "metrics.bg_gap", "points")
    assert groups == {"clicks": [(1, 11.0, math.sqrt(2), 2), (5, 8.0, 0.0, 1)], "none": [(0, 15.0, math.sqrt(3), 3)]}
    assert [p.rsplit("/", 1)[1] for p in skipped] == ["broken_run.json"]
    out = tmp_path / "s.png"
    assert plot.main(["sweep", *results, "--xscale", "log1p", "--out", str(out)]) == 0
    assert "skipped 1 file(s)" in capsys.readouterr().out
    groups, _ = plot.sweep_points(plot.read_results(results), "point_weight", "metrics.bg_gap", "points")
    assert groups["clicks"][1] == (5, 7.0, math.sqrt(2), 2)  # 8 and 6 from the folder and the extra file
    ax = plot.draw_sweep(groups, str(tmp_path / "again.png"), "point_weight", "metrics.bg_gap", "points", "log1p")
    with Image.open(out) as im:
        a = np.asarray(im.convert("RGB"))
        assert im.size[0] == 640
    assert (a == np.asarray(Image.open(tmp_path / "again.png").convert("RGB"))).all()
    blue, red = dr.PALETTE[:2]  # groups sorted: clicks, none
    for colour, (x, y) in ((blue, (1, 11.0)), (blue, (5, 7.0)), (red, (0, 15.0))):
        px, py = ax.px(x, y)
        assert (a[round(py), round(px)] == colour).all()
    assert _has(a, ax.px(0, 15.0 + math.sqrt(3)), red) and _has(a, ax.px(0, 15.0 - math.sqrt(3)), red)  # caps
    assert _has(a, ax.px(3, (11.0 + 7.0) / 2), blue, r=0) is False  # log1p: the line's midpoint is not at x = 3
    u = (math.log10(2) + math.log10(6)) / 2  # the segment's midpoint in drawn units, x = 10^u - 1
    assert _has(a, ax.px(10 ** u - 1, 9.0), blue)


def test_sweep_bad_input(tmp_path):
    with pytest.raises(SystemExit, match="nothing.json: no such file or folder"):
        plot.main(["sweep", str(tmp_path / "nothing.json"), "--out", str(tmp_path / "x.png")])
    (tmp_path / "a.json").write_text(json.dumps({"points": "none", "metrics": {"val_top1": 1.0}}))
    with pytest.raises(SystemExit, match="no result has numbers at both --x point_weight and --y metrics.bg_gap"):
        plot.main(["sweep", str(tmp_path), "--out", str(tmp_path / "x.png")])
