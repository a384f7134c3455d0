"""train_imagenet.py on the synthetic ImageNet-format data (CPU): learning, DDP parity, resume, faults."""
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import models
import train_imagenet as T
import utils
from conftest import ENV, REPO, base_args, frozen_after_init_distributed, run, torchrun  # noqa: F401

def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]


# ---------------------------------------------------------------------------- pure pieces

def test_deit_lr_curve_is_deits_value_for_value():
    """DeiT (main.py + timm's CosineLRScheduler, stepped with lr_scheduler.step(epoch) after each epoch) at its
    defaults and batch 1024: peak 5e-4 x 1024 / 512 = 1e-3, warm-up 5 epochs from 1e-6, cosine over 300 epochs
    to 1e-5. Epoch e trains at timm's f(e - 1); the values below are worked out by hand from timm's formulas:
    warm-up f(t) = 1e-6 + t (1e-3 - 1e-6) / 5, cosine f(t) = 1e-5 + 0.5 (1e-3 - 1e-5) (1 + cos(pi t / 300))."""
    a = T.resolve_args(T.get_args_parser().parse_args(["--model", "vit_small"]), T.RECIPES)
    assert (a.recipe, a.epochs, a.batch_size, a.warmup_epochs, a.warmup_lr, a.min_lr) == \
        ("deit", 300, 1024, 5, 1e-6, 1e-5)
    peak = a.lr * a.batch_size / a.lr_base_batch
    assert peak == pytest.approx(1e-3)
    spe = 7  # steps per epoch: the LR is the same at every step of an epoch
    expected = {0: 1e-6, 1: 1e-6, 2: 2.008e-4, 3: 4.006e-4, 4: 6.004e-4, 5: 8.002e-4,
                6: 9.9932162e-4,   # f(5) = 1e-5 + 4.95e-4 (1 + cos(pi / 60)) = 1e-5 + 4.95e-4 x 1.99862953
                151: 5.05e-4,      # f(150) = 1e-5 + 4.95e-4 (1 + cos(pi / 2))
                299: 1.0108562e-5}  # f(298) = 1e-5 + 4.95e-4 (1 - cos(pi / 150)) = 1e-5 + 4.95e-4 x 2.19317e-4
    for epoch, lr in expected.items():
        assert [utils.lr_at(a, peak, epoch * spe + k, spe) for k in (0, spe - 1)] == pytest.approx([lr, lr], rel=1e-6)
    # the per-step variant: the same curve at fractional epochs, no one-epoch lag
    s = T.resolve_args(T.get_args_parser().parse_args(["--model", "vit_small", "--lr-update", "step"]), T.RECIPES)
    assert utils.lr_at(s, peak, 0, spe) == pytest.approx(1e-6)
    assert utils.lr_at(s, peak, 5 * spe, spe) == pytest.approx(9.9932162e-4)  # f(5) at the start of epoch 5: no lag
    assert utils.lr_at(s, peak, 1, 2) == pytest.approx(1e-6 + 0.5 * 1.998e-4)


def test_resnet_lr_is_torchvision_steplr():
    r = T.resolve_args(T.get_args_parser().parse_args(["--model", "resnet50"]), T.RECIPES)
    assert (r.recipe, r.opt, r.epochs, r.lr_base_batch, r.warmup_epochs) == ("resnet", "sgd", 100, 256, 0)
    assert [utils.lr_at(r, 0.1, e * 5, 5) for e in (0, 29, 30, 60, 99)] == pytest.approx([.1, .1, .01, .001, .0001])
    assert utils.lr_at(r, 0.1, 30 * 5 - 1, 5) == pytest.approx(0.1)  # the last step of epoch 29


def test_seeded_items_leave_the_main_process_rngs_alone():
    """With --workers 0 items are made in the main process; the model's RNG (drop-path) must not follow them."""
    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(2), random.random()

    items = utils.SeededItems(Noisy())
    torch.manual_seed(3)
    random.seed(3)
    a = [items[(i, 100 + i)] for i in range(4)]
    after = (torch.rand(3), random.random())
    torch.manual_seed(3)
    random.seed(3)
    assert torch.equal(after[0], torch.rand(3)) and after[1] == random.random()
    b = [items[(i, 100 + i)] for i in range(4)]  # and the items themselves depend only on their seed
    assert all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    torch.manual_seed(103 % 2**63)
    assert torch.equal(a[3][0], torch.rand(2))


def test_repeated_aug_sampler_covers_and_separates_copies():
    n, world, reps = 10, 3, 3
    per_rank = [list(utils.RepeatedAugSampler(n, r, world, reps, seed=1)) for r in range(world)]
    assert all(len(p) == math.ceil(n / world) for p in per_rank)
    # the three copies of an image go to three different ranks with three different seeds
    first = [p[0] for p in per_rank]
    assert len({i for i, _ in first}) == 1 and len({s for _, s in first}) == 3
    plain = list(utils.RepeatedAugSampler(n, 0, 1, 1, seed=1))
    assert sorted(i for i, _ in plain) == list(range(n))
    s = utils.RepeatedAugSampler(n, 0, 1, 1, seed=1)
    s.set_epoch(1)
    assert [i for i, _ in s] != [i for i, _ in plain]


def test_point_loss_masks_and_averages_over_points_that_count():
    pred = torch.tensor([[[0.5, 0.5]], [[0.0, 0.0]], [[0.9, 0.1]]])
    target = torch.tensor([[[0.5, 0.7]], [[1.0, 1.0]], [[0.9, 0.1]]])
    w = torch.tensor([[1.0], [0.0], [1.0]])
    # sample 0: smooth-l1(0.2) = 0.5*0.04 = 0.02; sample 1 masked; sample 2: 0 -> mean over 2 points
    assert T.point_loss(pred, target, w).item() == pytest.approx(0.01)
    assert T.point_loss(pred, target, w, "mse").item() == pytest.approx(0.02)
    # mixed targets [B, J, K, 2]: weights lam, 1 - lam
    mixed = torch.stack([target, torch.zeros_like(target)], 1)
    wm = torch.stack([w * 0.75, w * 0.25], 1)
    want = (0.75 * 0.02 + 0.25 * (0.125 + 0.125) + 0.75 * 0 + 0.25 * (0.405 + 0.005)) / 2.0
    assert T.point_loss(pred, mixed, wm).item() == pytest.approx(want)
    assert T.point_loss(pred, target, torch.zeros_like(w)).item() == 0.0
    # beta 0.1: |0.2| >= beta is in the linear zone, 0.2 - 0.05 = 0.15, mean over the 2 points that count
    assert T.point_loss(pred, target, w, beta=0.1).item() == pytest.approx(0.075)
    # --attention-target map: pred is the attention's scores [B, 1, h, w]; the same masked mean of each click's KL
    scores = torch.randn(3, 1, 2, 2)
    kl = models.attention_map_loss(scores, target, sigma=0.2)  # [3, 1]
    assert T.point_loss(scores, target, w, sigma=0.2).item() == pytest.approx((kl[0, 0] + kl[2, 0]).item() / 2)
    klm = models.attention_map_loss(scores, mixed, sigma=0.2)  # [3, 2, 1]
    assert T.point_loss(scores, mixed, wm, sigma=0.2).item() == pytest.approx((klm * wm).sum().item() / 2)


def test_checkpoint_survives_sigkill_during_save(tmp_path):
    """Kill a process that does nothing but save checkpoints, at random moments, many times."""
    path = tmp_path / "checkpoint.pt"
    code = ("import sys, torch, utils\n"
            "i = 0\n"
            "while True:\n"
            "    utils.save_checkpoint({'model': {'w': torch.full((2_000_000,), float(i))}, 'epoch': i}, sys.argv[1])\n"
            "    i += 1\n")
    for delay in (0.3, 0.45, 0.6, 0.75, 0.9):
        p = subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, env=ENV)
        while not path.exists():
            time.sleep(0.02)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        ckpt = torch.load(path, weights_only=True)
        assert torch.all(ckpt["model"]["w"] == ckpt["epoch"])


# ---------------------------------------------------------------------------- training runs

@pytest.fixture(scope="module")
def three_runs(synth, tmp_path_factory):
    logs = {}
    for mode, flags in {"plain": [], "luab": ["--luab"], "rand": ["--rand-points"]}.items():
        out = tmp_path_factory.mktemp(mode)
        run(base_args(synth, out, "--model", "resnet18", "--epochs", "6", "--batch-size", "32", "--lr", "0.2",
                      "--lr-step", "5", "--point-weight", "10",
                      "--val-boxes", str(synth / "imagenet" / "boxes" / "val"), *flags))
        logs[mode] = read_log(out)
    return logs


@pytest.mark.slow
def test_plain_luab_rand_learn(three_runs):
    for mode, log in three_runs.items():
        assert log[-1]["train_loss"] < 0.85 * log[0]["train_loss"], (mode, log)
        assert log[-1]["val_top1"] >= 40, (mode, log)  # 10 classes: chance is 10%
    luab, rand = three_runs["luab"], three_runs["rand"]
    assert luab[-1]["train_point_loss"] < 0.85 * luab[0]["train_point_loss"]
    # clicks are predictable from the image, random points only by memorising each image
    assert max(e["train_point_loss"] for e in luab[1:]) < min(e["train_point_loss"] for e in rand[1:])
    assert luab[-1]["val_point_acc"] > rand[-1]["val_point_acc"] + 10
    assert three_runs["plain"][-1]["train_point_loss"] == 0.0
    assert "val_point_acc" not in three_runs["plain"][-1]  # no point head, nothing to localise


def test_args_are_not_changed_after_init_distributed(synth, tmp_path, monkeypatch):
    """`args` is complete once init_distributed has run: a LUAB run (with EMA, best.pt, checkpoints) trains and
    saves with an args object that refuses every attribute set from then on."""
    FrozenArgs = frozen_after_init_distributed(monkeypatch, T)
    args = T.get_args_parser().parse_args(base_args(synth, tmp_path, "--model", "resnet18", "--luab", "--epochs",
                                                    "1", "--max-steps-per-epoch", "1", "--model-ema"),
                                          namespace=FrozenArgs())
    stats = T.main(args)
    assert FrozenArgs.frozen and [e["epoch"] for e in read_log(tmp_path)] == [0] and read_log(tmp_path)[0] == stats
    with pytest.raises(AttributeError, match="args.device set after init_distributed"):
        args.device = "cpu"


def test_luab_reports_point_localisation(synth, tmp_path):
    stats = run(base_args(synth, tmp_path, "--model", "vit_tiny", "--recipe", "resnet", "--epochs", "1",
                          "--luab", "--val-boxes", str(synth / "imagenet" / "boxes" / "val"),
                          "--max-steps-per-epoch", "3"))
    # the same numbers as evaluate.py computes from the checkpoint alone (its geometry and the boxes beside val/)
    import evaluate as E
    E.main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--imagenet-val", str(synth / "imagenet" / "val"),
            "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "eval.json")])
    res = json.loads((tmp_path / "eval.json").read_text())
    assert (res["in1k"], res["point_acc"]) == (stats["val_top1"], stats["val_point_acc"])
    assert res["counts"]["point_acc"] == res["counts"]["in1k"]  # every val image has a box file


def test_deit_recipe_runs_with_mixup_cutmix_and_points(synth, tmp_path):
    stats = run(base_args(synth, tmp_path, "--model", "vit_tiny", "--recipe", "deit", "--epochs", "1",
                          "--lr", "5e-4", "--luab", "--max-steps-per-epoch", "3", "--model-ema"))
    assert math.isfinite(stats["train_loss"]) and stats["train_point_loss"] > 0
    assert "ema_val_top1" in stats


@pytest.mark.slow
def test_two_processes_match_one(synth, tmp_path):
    """Same global batch, same samples and augmentations: 2 gloo processes = 1 process."""
    flags = ["--model", "vit_tiny", "--recipe", "resnet", "--epochs", "1", "--max-steps-per-epoch", "4",
             "--luab", "--drop-path", "0"]
    torchrun(1, base_args(synth, tmp_path / "one", *flags))
    torchrun(2, base_args(synth, tmp_path / "two", *flags))
    one, two = read_log(tmp_path / "one")[0], read_log(tmp_path / "two")[0]
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    assert two["train_point_loss"] == pytest.approx(one["train_point_loss"], rel=1e-4)
    w1, w2 = weights(tmp_path / "one"), weights(tmp_path / "two")
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_distributed_validation_equals_single_process(synth, tmp_path):
    data = tmp_path / "imagenet"
    shutil.copytree(synth / "imagenet", data)
    val_files = sorted((data / "val").rglob("*.JPEG"))
    val_files[0].unlink()  # an odd number of val images: 2 ranks cannot split it evenly
    assert (len(val_files) - 1) % 2 == 1
    run(base_args(synth, tmp_path / "m", "--data-dir", str(data), "--model", "resnet18", "--epochs", "1",
                  "--luab", "--max-steps-per-epoch", "2"))
    ckpt = str(tmp_path / "m" / "checkpoint.pt")
    outs = []
    for n in (1, 2):
        res = torchrun(n, base_args(synth, tmp_path / f"e{n}", "--data-dir", str(data), "--model", "resnet18",
                                    "--luab", "--eval-only", "--pretrained", ckpt, "--batch-size", "6",
                                    "--val-boxes", str(synth / "imagenet" / "boxes" / "val")))
        outs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert outs[0] == outs[1]


@pytest.mark.slow
def test_resume_after_sigkill_reproduces_uninterrupted_run(synth, tmp_path):
    flags = ["--model", "resnet18", "--epochs", "4", "--luab", "--max-steps-per-epoch", "3"]

    def script(out, *extra):  # every run in its own process with the same thread count: bitwise comparable
        return [sys.executable, os.path.join(REPO, "train_imagenet.py"), *base_args(synth, out, *flags, *extra)]
    subprocess.run(script(tmp_path / "full"), cwd=REPO, env=ENV, check=True, capture_output=True)
    out = tmp_path / "cut"
    p = subprocess.Popen(script(out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = out / "log.jsonl"
    while p.poll() is None and not (log.exists() and len(log.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)  # somewhere in epoch 2, or while saving it
    p.wait()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] < 3
    subprocess.run(script(out, "--resume"), cwd=REPO, env=ENV, check=True, capture_output=True)
    assert [e["epoch"] for e in read_log(out)] == [0, 1, 2, 3]
    w_full, w_cut = weights(tmp_path / "full"), weights(out)
    for k in w_full:
        torch.testing.assert_close(w_cut[k], w_full[k], rtol=0, atol=0)


# ---------------------------------------------------------------------------- clear errors before work

def test_clear_errors(synth, tmp_path):
    with pytest.raises(SystemExit, match="--data-dir"):
        run(base_args(synth, tmp_path, "--data-dir", str(tmp_path / "nope"), "--luab"))
    xml = tmp_path / "other_xml" / "n99999999"
    xml.mkdir(parents=True)
    src = next((synth / "imagenet_ab" / "train_xml").rglob("n*.xml"))
    shutil.copy(src, xml / "n99999999_1.xml")
    with pytest.raises(SystemExit, match="matches no image"):
        run(base_args(synth, tmp_path, "--byproducts", str(tmp_path / "other_xml"), "--luab"))
    run(base_args(synth, tmp_path / "r18", "--model", "resnet18", "--epochs", "1", "--max-steps-per-epoch", "1"))
    with pytest.raises(SystemExit, match="resnet18"):
        run(base_args(synth, tmp_path / "r18", "--model", "resnet50", "--epochs", "2", "--resume"))
    with pytest.raises(SystemExit, match="pretrained"):
        run(base_args(synth, tmp_path / "x", "--model", "vit_tiny", "--pretrained",
                      str(tmp_path / "r18" / "checkpoint.pt"), "--epochs", "1"))


def test_readme_recipe_table_is_the_code():
    """Every cell of the README's recipe table equals the recipe value in the code ("—": not in that recipe), and
    every recipe key has a row, so the documentation and RECIPES cannot drift apart."""
    import train_coco
    recipes = {**T.RECIPES, **train_coco.RECIPES}
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    table = text.split("<!-- recipes:begin -->")[1].split("<!-- recipes:end -->")[0].strip().splitlines()
    names = [c.strip() for c in table[0].strip("|").split("|")][1:5]
    assert names == ["resnet", "deit", "vit", "coco"]
    seen = set()
    for row in table[2:]:
        cells = [c.strip() for c in row.strip("|").split("|")]
        key = cells[0].split("`")[1].lstrip("-").replace("-", "_")
        seen.add(key)
        for name, cell in zip(names, cells[1:5]):
            if cell == "—":
                assert key not in recipes[name], (key, name)
            elif isinstance(recipes[name][key], str):
                assert cell == recipes[name][key], (key, name)
            else:
                assert float(cell) == recipes[name][key], (key, name)
    assert seen == set().union(*recipes.values())


# ---------------------------------------------------------------------------- the run folder and the user's run

def tiny(synth, out, *extra):
    return base_args(synth, out, "--model", "resnet18", "--epochs", "2", "--max-steps-per-epoch", "2", *extra)


def test_demo_is_a_preset_that_explicit_flags_override():
    demo = {"data_dir": "D", "byproducts": "B", "model": "resnet18", "points": "clicks", "img_size": 48,
            "epochs": 16, "lr": 0.2, "workers": 2, "output_dir": "runs/demo"}
    parse = T.get_args_parser().parse_args
    a = T.resolve_args(parse(["--demo"]), T.RECIPES, T.DEFAULTS, demo)
    assert (a.model, a.points, a.img_size, a.epochs, a.lr, a.output_dir) == ("resnet18", "clicks", 48, 16, 0.2,
                                                                            "runs/demo")
    assert (a.recipe, a.momentum, a.val_resize) == ("resnet", 0.9, 55)  # the rest from the recipe, then derived
    a = T.resolve_args(parse(["--demo", "--points", "none", "--model", "resnet50", "--workers", "0", "--epochs",
                              "3", "--output-dir", "o"]), T.RECIPES, T.DEFAULTS, demo)
    assert (a.model, a.points, a.workers, a.epochs, a.output_dir, a.img_size) == ("resnet50", "none", 0, 3, "o", 48)
    assert T.resolve_args(parse(["--demo", "--rand-points"]), T.RECIPES, T.DEFAULTS, demo).points == "random"
    a = T.resolve_args(parse([]), T.RECIPES)  # no preset: the documented defaults
    assert (a.model, a.points, a.img_size, a.output_dir, a.workers) == \
        ("resnet50", "none", 224, "runs/imagenet", utils.default_workers())
    assert (a.point_weight, a.point_lr) == (20.0, 1.0)  # the recipe's value, not a generic default
    with pytest.raises(SystemExit):  # argparse: two different point modes
        parse(["--luab", "--points", "random"])
    with pytest.raises(SystemExit):
        parse(["--model", "resnet5"])


def test_run_folder_explains_itself(synth, tmp_path):
    out = tmp_path / "run"
    stats = run(tiny(synth, out, "--luab"))
    assert sorted(os.listdir(out)) == ["best.pt", "checkpoint.pt", "config.json", "log.jsonl"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["args"]["model"] == "resnet18" and cfg["args"]["points"] == "clicks" and cfg["args"]["lr"] == 0.05
    assert cfg["meta"]["classes"] == sorted(os.listdir(synth / "imagenet" / "train"))
    assert set(cfg["versions"]) == {"python", "torch", "torchvision", "numpy", "pillow"}
    assert "git" in cfg and cfg["world_size"] == 1
    log = read_log(out)
    assert [e["epoch"] for e in log] == [0, 1] and log[-1] == stats
    assert log[0]["lr"] == 0.05 * 16 / 256 and log[1]["elapsed_s"] >= log[0]["elapsed_s"] > 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["log"] == log and ckpt["meta"]["num_points"] == 1
    best = torch.load(out / "best.pt", weights_only=True)
    top = max(range(2), key=lambda e: (log[e]["val_top1"], -e))  # the first epoch with the highest top-1
    assert best["epoch"] == top and best["best"]["value"] == log[top]["val_top1"]


def test_used_folder_is_refused_resume_continues_overwrite_replaces(synth, tmp_path):
    out = tmp_path / "run"
    run(tiny(synth, out))
    before = (out / "log.jsonl").read_text()
    with pytest.raises(SystemExit, match=r"is not empty .*--resume.*--overwrite"):
        run(tiny(synth, out))
    assert (out / "log.jsonl").read_text() == before
    assert run(tiny(synth, out, "--resume")) == read_log(out)[-1]  # finished: says so, trains nothing
    assert (out / "log.jsonl").read_text() == before
    run(tiny(synth, out, "--resume", "--epochs", "3"))  # a longer run continues it
    assert [e["epoch"] for e in read_log(out)] == [0, 1, 2]
    run(tiny(synth, out, "--overwrite", "--epochs", "1"))
    assert [e["epoch"] for e in read_log(out)] == [0]


@pytest.mark.slow
def test_finished_resume_prints_and_exits_zero(synth, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, os.path.join(REPO, "train_imagenet.py"), *tiny(synth, out, "--epochs", "1")]
    subprocess.run(argv, cwd=REPO, env=ENV, check=True, capture_output=True)
    res = subprocess.run(argv + ["--resume"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert res.returncode == 0 and "holds a finished run (epoch 1 of 1): nothing to train" in res.stdout


def test_failed_first_save_leaves_no_log_line_and_resume_starts(synth, tmp_path, monkeypatch):
    """A save that dies (here: a full disk while writing the first checkpoint) leaves a log that agrees with the
    checkpoint (none: no line), no temporary file, one line naming the error; --resume then simply starts."""
    import errno
    out = tmp_path / "run"
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        f.write(b"x" * 100)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:  # what torch.save raises on ENOSPC: a RuntimeError whose context is the OSError
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(SystemExit) as e:
        run(tiny(synth, out))
    assert str(e.value).startswith(f"cannot write {out}") and "No space left on device; no previous version" in \
        str(e.value)
    assert sorted(os.listdir(out)) == ["config.json", "log.jsonl"] and read_log(out) == []
    monkeypatch.setattr(torch, "save", real_save)
    (out / "checkpoint.pt.tmp.99999").write_bytes(b"left by a save killed mid-write")
    run(tiny(synth, out, "--resume"))  # no checkpoint yet: the run starts; the stale temporary file is removed
    assert [e["epoch"] for e in read_log(out)] == [0, 1]
    assert not any(".tmp." in f for f in os.listdir(out))


def test_unwritable_output_dir_is_refused_before_training(synth, tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SystemExit, match=r"--output-dir .*file/run: .*choose a folder you can write to"):
        run(tiny(synth, tmp_path / "file" / "run"))


@pytest.mark.slow
def test_ctrl_c_prints_one_line_and_exits_130(synth, tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, os.path.join(REPO, "train_imagenet.py"),
            *base_args(synth, out, "--model", "resnet18", "--epochs", "50", "--workers", "2")]
    p = subprocess.Popen(argv, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while p.poll() is None and not (out / "checkpoint.pt").exists():
        time.sleep(0.05)
    time.sleep(0.5)
    p.send_signal(signal.SIGINT)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 130, stderr[-2000:]
    lines = [line for line in (stdout + stderr).splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "Traceback" not in stdout + stderr, stdout[-2000:] + stderr[-2000:]
    done = read_log(out)
    assert lines[0].startswith("interrupted at epoch ") and lines[0].endswith(
        f"; last checkpoint: epoch {done[-1]['epoch']} in {out / 'checkpoint.pt'}; continue with --resume")
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == done[-1]["epoch"]
    assert not any(".tmp." in f for f in os.listdir(out))


def test_eval_only_of_a_headless_checkpoint_refuses_point_metrics(synth, tmp_path):
    run(tiny(synth, tmp_path / "plain", "--epochs", "1"))
    with pytest.raises(SystemExit, match="has no point head: .* --points none"):
        run(tiny(synth, tmp_path / "e", "--luab", "--eval-only", "--pretrained", str(tmp_path / "plain" / "best.pt")))
    stats = run(tiny(synth, tmp_path / "e", "--eval-only", "--pretrained", str(tmp_path / "plain" / "best.pt")))
    assert stats["val_top1"] == read_log(tmp_path / "plain")[-1]["val_top1"] and "val_point_acc" not in stats
    assert not (tmp_path / "e").exists()  # evaluating writes nothing


def _children(pid):
    kids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    return kids


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds torchrun's workers through /proc")
def test_torchrun_restart_after_a_killed_worker_equals_the_uninterrupted_run(synth, tmp_path):
    """The documented fault-tolerant launch: torchrun --max-restarts=N ... --resume. One worker is SIGKILLed
    after the first checkpoint; torchrun restarts both, they resume, and the final weights are the same as
    those of a run that was never interrupted. Upstream flakiness: a restarted gloo group sometimes hangs while
    forming (both workers wait in _create_gloo_process_group, past any timeout); then, as a user would, the
    same command is launched again (at most twice), and it too must end with the uninterrupted run's weights."""
    flags = ["--model", "resnet18", "--epochs", "4", "--max-steps-per-epoch", "6", "--luab", "--resume",
             "--dist-timeout", "1"]
    torchrun(2, base_args(synth, tmp_path / "full", *flags))
    out = tmp_path / "cut"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=3",
           os.path.join(REPO, "train_imagenet.py"), *base_args(synth, out, *flags)]
    outputs, relaunches = [], 0
    for attempt in range(3):
        with open(tmp_path / f"out{attempt}.txt", "w+") as f:
            p = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
            if attempt == 0:
                while p.poll() is None and not (out / "checkpoint.pt").exists():
                    time.sleep(0.02)
                workers = _children(p.pid)
                assert workers, "no worker found"
                os.kill(workers[-1], signal.SIGKILL)
            last, t_last = None, time.time()
            while p.poll() is None and time.time() - t_last < 120:  # no new checkpoint for 2 min: hung
                time.sleep(1)
                now = (out / "checkpoint.pt").stat().st_mtime if (out / "checkpoint.pt").exists() else None
                if now != last:
                    last, t_last = now, time.time()
            if p.poll() is None:  # the workers run in sessions of their own: kill them, then torchrun
                for pid in _children(p.pid):
                    os.kill(pid, signal.SIGKILL)
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                relaunches += 1
            f.seek(0)
            outputs.append(f.read())
        if p.returncode == 0:
            break
    print(f"relaunches after a hung restart: {relaunches}")
    assert p.returncode == 0, outputs[-1][-3000:]
    assert "resumed from" in "".join(outputs), outputs[-1][-3000:]  # the restart did happen, and resumed
    assert [e["epoch"] for e in read_log(out)] == [0, 1, 2, 3]
    w_full, w_cut = weights(tmp_path / "full"), weights(out)
    for k in w_full:
        torch.testing.assert_close(w_cut[k], w_full[k], rtol=0, atol=0)

def test_colour_jitter_follows_the_recipe_and_leaves_points_alone(synth, tmp_path):
    """resnet: ColorJitter 0.4 (brightness = contrast = saturation, hue 0); deit: none, since RandAugment is on
    (as timm); the jitter changes pixels, never the point target or its weight."""
    parse = T.get_args_parser().parse_args
    common = ["--data-dir", str(synth / "imagenet"), "--byproducts", str(synth / "imagenet_ab" / "train_xml"),
              "--luab", "--img-size", "32"]
    resnet, _ = T.build_datasets(T.resolve_args(parse(common + ["--model", "resnet18"]), T.RECIPES))
    j = resnet.transform.jitter
    assert (j.brightness, j.contrast, j.saturation, j.hue) == ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), None)
    deit, _ = T.build_datasets(T.resolve_args(parse(common + ["--model", "vit_tiny"]), T.RECIPES))
    assert deit.transform.jitter is None and deit.transform.randaugment is not None
    plain, _ = T.build_datasets(T.resolve_args(parse(common + ["--model", "resnet18", "--color-jitter", "0"]),
                                               T.RECIPES))
    for i in (0, 5, 9):
        torch.manual_seed(i)
        a = resnet[i]
        torch.manual_seed(i)
        b = plain[i]
        assert torch.equal(a[2], b[2]) and torch.equal(a[3], b[3]) and not torch.equal(a[0], b[0])


def test_the_docstring_lists_every_luab_place_and_each_is_marked():
    """train_imagenet's docstring is the map of LUAB's delta: every numbered place names functions or classes
    that exist in the file it names, and each of them carries a "LUAB" mark in its source."""
    import importlib
    import inspect
    import re
    doc = T.__doc__
    count = int(re.search(r"LUAB in (\d+) places", doc).group(1))
    items = re.findall(r"^ {2}(\d+)\. (\w+)\.py: (.*?)(?=^ {2}\d+\. |^\S)", doc, flags=re.M | re.S)
    assert [int(n) for n, _, _ in items] == list(range(1, count + 1))
    for n, module, text in items:
        mod = importlib.import_module(module)
        found = []
        for name in dict.fromkeys(re.findall(r"[A-Za-z_][\w.]*", text)):
            obj = mod
            for part in name.split("."):
                obj = getattr(obj, part, None)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                found.append(name)
                assert "LUAB" in inspect.getsource(obj), f"{module}.{name} (place {n}) has no LUAB mark"
        assert found, f"place {n} names nothing that exists in {module}.py: {text!r}"


# ---------------------------------------------------------------------------- flags and LUAB's knobs

def test_abbreviated_flags_are_refused():
    """allow_abbrev=False: `--epoch 2` is not silently --epochs (nor --epoch-anything) in either training script,
    and every argparse parser of the repository is built that way (its subparsers too)."""
    import re
    import train_coco
    for parser in (T.get_args_parser(), train_coco.get_args_parser()):
        with pytest.raises(SystemExit):
            parser.parse_args(["--epoch", "2"])
        assert parser.parse_args(["--epochs", "2"]).epochs == 2
    files = [os.path.join(d, f) for d in (REPO, os.path.join(REPO, "tools"), os.path.join(REPO, "benchmarks"))
             for f in sorted(os.listdir(d)) if f.endswith(".py")]
    calls = 0
    for path in files:
        with open(path) as f:
            text = f.read()
        for call in re.findall(r"(?:ArgumentParser|\.add_parser)\((?:[^()]|\([^()]*\))*\)", text):
            calls += 1
            assert "allow_abbrev=False" in call, (path, call[:80])
    assert calls >= 15


def test_set_lr_is_the_one_place_of_the_point_heads_lr():
    """The point head's parameters get groups of their own (optimizer_groups), and set_lr gives them the
    scheduled LR x --point-lr (the DeiT recipe: 10), every other group the scheduled LR."""
    args = T.resolve_args(T.get_args_parser().parse_args(["--model", "resnet18", "--luab", "--device", "cpu"]),
                          T.RECIPES, preset={"recipe": "deit"})
    args.world_size = 1
    model = T.create_model("resnet18", num_classes=10, num_points=1)
    optimizer, peak = T.build_optimizer(args, model)
    assert peak == pytest.approx(5e-4 * 1024 / 512)
    T.set_lr(args, optimizer, 0.002)
    head = {id(p) for p in model.point_head.parameters()}
    for g in optimizer.param_groups:
        in_head = all(id(p) in head for p in g["params"])
        assert g["point_head"] == in_head and g["lr"] == pytest.approx(0.02 if in_head else 0.002)
    assert sum(len(g["params"]) for g in optimizer.param_groups if g["point_head"]) == 2  # weight and bias


def test_head_condition_tells_an_idle_head_from_an_outweighed_one(capsys):
    """The decision on real log lines (epoch 3 of three demo runs, OMP_NUM_THREADS=1): before epoch 3, or with
    the point loss below 0.9 x the centre's, nothing to report; above it, a gradient share below 1 is an idle head
    (raise lambda), a share of 1 or more means the point term already dominates the backbone (lower lambda or
    raise the head's LR), where the old warning advised raising lambda in both cases."""
    # `--demo --point-weight 1 --epochs 6`: the head idles at the centre
    idle = {"epoch": 3, "train_point_vs_centre": 0.9814446906721341, "point_grad_share": 0.0016009628307074308}
    # `--demo --model vit_tiny --point-weight 50 --epochs 6`: the point loss swamps the backbone, the head overshoots
    outweighed = {"epoch": 3, "train_point_vs_centre": 1.854529033472135, "point_grad_share": 2.3523573875427246}
    # `--demo` (lambda 20), its last epoch: the head learns
    learning = {"epoch": 15, "train_point_vs_centre": 0.4032, "point_grad_share": 0.959}
    assert [T.head_condition(s) for s in (idle, outweighed, learning)] == ["idle", "outweighed", None]
    assert T.head_condition({**outweighed, "epoch": 2}) is None  # too early to tell
    assert T.head_condition({**idle, "train_point_vs_centre": 0.9}) is None  # the threshold itself is not idle
    assert T.head_condition({k: v for k, v in idle.items() if k != "point_grad_share"}) == "idle"  # --compile
    # once when a condition starts, once when it ends, never in between
    log = [{**idle, "epoch": e} for e in range(6)] + [{**outweighed, "epoch": e} for e in (6, 7)] + \
        [{**learning, "epoch": e} for e in (8, 9)]
    for n in range(1, len(log) + 1):
        T.report_head(log[:n])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] + ":" + line.split(":")[1] for line in lines] == [
        "warning: epoch 3", "note: epoch 6", "warning: epoch 6", "note: epoch 8"]
    assert lines[0].endswith("raise --point-weight (point loss 0.98 x centre, gradient share 0.0016)")
    assert lines[1] == "note: epoch 6: the point head is no longer idle (point loss 1.85 x centre, gradient share 2.35)"
    assert lines[2].endswith("lower --point-weight or raise --point-lr (point loss 1.85 x centre, gradient share 2.35)")
    assert lines[3] == ("note: epoch 8: the point head is no longer outweighed (point loss 0.40 x centre, "
                        "gradient share 0.959)")
