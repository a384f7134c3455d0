"""train_imagenet.py on the synthetic ImageNet-format data (CPU): learning, DDP parity, resume, faults."""
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

import byproducts
import train_imagenet as T

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    byproducts.synth(str(root), seed=0)
    return root


def base_args(synth, out, *extra):
    """A tiny, fast configuration: small images, few steps; every test adds its own flags."""
    return ["--data-dir", str(synth / "imagenet"), "--byproducts", str(synth / "imagenet_ab" / "train_xml"),
            "--output-dir", str(out), "--img-size", "32", "--batch-size", "16", "--workers", "0",
            "--print-freq", "1000", "--recipe", "resnet", "--lr", "0.05", "--weight-decay", "0", *extra]


def run(argv):
    return T.main(T.get_args_parser().parse_args(argv))


def read_log(out):
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(out):
    return torch.load(os.path.join(out, "checkpoint.pt"), weights_only=True)["model"]


def torchrun(nproc, argv, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(REPO, "train_imagenet.py"), *argv]
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


# ---------------------------------------------------------------------------- pure pieces

def test_lr_schedule():
    a = T.resolve_args(T.get_args_parser().parse_args(["--model", "vit_tiny", "--epochs", "10",
                                                       "--warmup-epochs", "2", "--min-lr", "0"]), T.RECIPES)
    assert a.recipe == "deit" and a.opt == "adamw" and a.repeated_aug == 3
    lr = [T.lr_at(a, 1.0, s, 10) for s in range(100)]
    assert lr[0] == pytest.approx(1 / 20) and lr[19] == pytest.approx(1.0)  # linear warm-up over 20 steps
    assert lr[20] == pytest.approx(1.0) and lr[60] == pytest.approx(0.5)     # cosine: half way at epoch 6
    assert all(x >= y for x, y in zip(lr[20:], lr[21:]))
    r = T.resolve_args(T.get_args_parser().parse_args(["--model", "resnet50"]), T.RECIPES)
    assert (r.recipe, r.opt, r.epochs, r.lr_base_batch) == ("resnet", "sgd", 100, 256)
    assert [T.lr_at(r, 0.1, e * 5, 5) for e in (0, 29, 30, 60, 99)] == pytest.approx([.1, .1, .01, .001, .0001])


def test_repeated_aug_sampler_covers_and_separates_copies():
    n, world, reps = 10, 3, 3
    per_rank = [list(T.RepeatedAugSampler(n, r, world, reps, seed=1)) for r in range(world)]
    assert all(len(p) == math.ceil(n / world) for p in per_rank)
    # the three copies of an image go to three different ranks with three different seeds
    first = [p[0] for p in per_rank]
    assert len({i for i, _ in first}) == 1 and len({s for _, s in first}) == 3
    plain = list(T.RepeatedAugSampler(n, 0, 1, 1, seed=1))
    assert sorted(i for i, _ in plain) == list(range(n))
    s = T.RepeatedAugSampler(n, 0, 1, 1, seed=1)
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


def test_checkpoint_survives_sigkill_during_save(tmp_path):
    """Kill a process that does nothing but save checkpoints, at random moments, many times."""
    path = tmp_path / "checkpoint.pt"
    code = ("import sys, torch, train_imagenet as T\n"
            "i = 0\n"
            "while True:\n"
            "    T.save_checkpoint({'model': {'w': torch.full((2_000_000,), float(i))}, 'epoch': i}, sys.argv[1])\n"
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


def test_luab_reports_point_localisation(synth, tmp_path):
    stats = run(base_args(synth, tmp_path, "--model", "vit_tiny", "--recipe", "resnet", "--epochs", "1",
                          "--luab", "--val-boxes", str(synth / "imagenet" / "boxes" / "val"),
                          "--max-steps-per-epoch", "3"))
    assert 0.0 <= stats["val_point_acc"] <= 100.0 and 0.0 <= stats["val_top1"] <= 100.0


def test_deit_recipe_runs_with_mixup_cutmix_and_points(synth, tmp_path):
    stats = run(base_args(synth, tmp_path, "--model", "vit_tiny", "--recipe", "deit", "--epochs", "1",
                          "--lr", "5e-4", "--luab", "--max-steps-per-epoch", "3", "--model-ema"))
    assert math.isfinite(stats["train_loss"]) and stats["train_point_loss"] > 0
    assert "ema_val_top1" in stats


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
