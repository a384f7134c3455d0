"""The speed flags on CPU: --amp (bf16 autocast), --compile (inductor), --channels-last, fused optimisers, the
CUDA-only flags' errors, --compile under a 2-process gloo torchrun, and benchmarks/gpu_check.py's plumbing."""
import copy
import json
import os
import sys

import pytest
import torch

import train_imagenet as T
from models import create_model
from conftest import REPO, base_args, run, torchrun

sys.path.append(os.path.join(REPO, "benchmarks"))  # last: benchmarks/models.py must not shadow models.py
import gpu_check  # noqa: E402


def cpu_args(*argv):
    args = T.resolve_args(T.get_args_parser().parse_args(["--device", "cpu", *argv]), T.RECIPES)
    args.rank, args.world_size = 0, 1
    return args


@pytest.mark.parametrize("model", ["resnet18", "vit_tiny"])
def test_bf16_autocast_leaves_the_losses_in_fp32(model):
    """--amp on CPU: the model's outputs come out bf16, the classification and point losses are fp32, with hard
    labels and with the soft labels and two-target points of Mixup/CutMix (the DeiT recipe)."""
    torch.manual_seed(0)
    net = create_model(model, num_classes=10, num_points=1, img_size=32)
    g = torch.Generator().manual_seed(0)
    batch = [torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 3]), torch.rand(4, 1, 2, generator=g),
             torch.tensor([[1.0], [0.0], [1.0], [1.0]])]
    for recipe in ("resnet", "deit"):
        args = cpu_args("--model", model, "--recipe", recipe, "--amp", "--luab")
        mix = T.make_mix(args, 10)
        b = batch if mix is None else mix(batch, torch.Generator().manual_seed(1))
        assert b[1].dim() == (1 if recipe == "resnet" else 2) and b[2].dim() == (3 if recipe == "resnet" else 4)
        with T.autocast(args):
            logits, points = net(b[0], return_points=True)
        assert logits.dtype == points.dtype == torch.bfloat16
        loss_cls, loss_pt = T.imagenet_loss(args, (logits, points), b)
        assert loss_cls.dtype == loss_pt.dtype == torch.float32
    with T.autocast(cpu_args("--model", model)):  # without --amp: no autocast
        assert net(batch[0]).dtype == torch.float32


def test_speed_flags_resolve_on_cpu():
    args = cpu_args("--model", "resnet50")
    T.resolve_speed_flags(args)
    assert args.channels_last is False  # on by default only on CUDA
    args = cpu_args("--model", "resnet50", "--channels-last")
    T.resolve_speed_flags(args)
    assert args.channels_last is True
    with pytest.raises(SystemExit, match="--amp-dtype float16 needs CUDA"):
        T.resolve_speed_flags(cpu_args("--amp", "--amp-dtype", "float16"))
    with pytest.raises(SystemExit, match="--sync-bn needs CUDA"):
        T.resolve_speed_flags(cpu_args("--sync-bn"))


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_fused_optimizer_on_cpu_matches_the_per_parameter_loop(opt, monkeypatch):
    args = cpu_args("--model", "resnet18", "--opt", opt, "--lr", "0.01", "--batch-size", "256",
                    "--lr-base-batch", "256", "--weight-decay", "0.05")
    torch.manual_seed(0)
    nets = [create_model("resnet18", num_classes=10, num_points=1, img_size=32)]
    nets.append(copy.deepcopy(nets[0]))
    start = copy.deepcopy(nets[0].state_dict())
    fused, _ = T.build_optimizer(args, nets[0])
    monkeypatch.setattr(T, "has_fused", lambda opt_class, device: False)
    loop, _ = T.build_optimizer(args, nets[1])
    assert fused.defaults["fused"] is True and not loop.defaults["fused"]  # torch >= 2.4 has CPU fused kernels
    g = torch.Generator().manual_seed(0)
    for _ in range(3):  # the same gradients for both: no feedback through the weights into the gradients
        grads = [torch.randn(p.shape, generator=g) for p in nets[0].parameters()]
        for net, o in zip(nets, (fused, loop)):
            for p, grad in zip(net.parameters(), grads):
                p.grad = grad.clone()
            o.step()
    for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
        torch.testing.assert_close(p, q)
        assert not torch.equal(p, start[name]), name  # every parameter was updated


def test_channels_last_on_cpu(synth, tmp_path):
    args = T.get_args_parser().parse_args(base_args(synth, tmp_path, "--model", "resnet18", "--luab", "--epochs",
                                                    "1", "--max-steps-per-epoch", "1", "--channels-last"))
    stats = T.main(args)
    assert torch.isfinite(torch.tensor(stats["train_loss"]))
    # the weights trained (and were saved, strides and all) in NHWC
    conv1 = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["model"]["conv1.weight"]
    assert conv1.is_contiguous(memory_format=torch.channels_last)
    images = T.to_device(args, [torch.randn(2, 3, 32, 32)])[0]
    assert images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()


# The eager speed runs of gpu_check.SPEED_RUNS (--amp, --channels-last, the DeiT recipe) run in the dry-run test
# below with the same checks; the compiled ones here. Inductor builds C++ for 1-2 minutes per model on 2 cores,
# so the CPU suite compiles two: a ViT with --amp --compile in one process, a ResNet with --compile under DDP.

@pytest.mark.slow
def test_amp_compile_run_trains_resumes_and_saves_plain_weights(synth, tmp_path):
    """3 steps + --resume for a second epoch: finite losses, an EMA (decay 0) equal to the model, a checkpoint
    without `_orig_mod.` keys that loads strictly into an uncompiled model, one graph per run (no graph break)."""
    facts = gpu_check.speed_run(str(synth), tmp_path, "vit_tiny", ["--amp", "--compile"])
    assert gpu_check.speed_ok(facts) and facts["graphs_compiled"] == 2, facts


@pytest.mark.slow
def test_compile_under_two_process_gloo_torchrun_resumes(synth, tmp_path):
    argv = gpu_check.train_argv(str(synth), tmp_path, "resnet18", "--compile", "--channels-last")
    torchrun(2, argv + ["--epochs", "1"])
    torchrun(2, argv + ["--epochs", "2", "--resume"])  # a run that restarted would log epochs [0, 0, 1]
    facts = gpu_check.inspect_run(tmp_path)
    assert gpu_check.speed_ok(facts), facts


@pytest.mark.slow
def test_gpu_check_dry_run_runs_every_part(tmp_path, capsys):
    threads = torch.get_num_threads()
    try:
        d = gpu_check.main(["--dry-run", "--out", str(tmp_path / "g.json"), "--budget-s", "100000"])
    finally:
        torch.set_num_threads(threads)
    assert [r["item"] for r in d["speed"]] == [
        "resnet18 --amp --channels-last", "vit_tiny --amp", "vit_tiny --recipe deit --lr 5e-4 --amp",
        "torchrun 2 processes resnet18"]
    assert all(r["ok"] for r in d["speed"]) and [r.get("graphs_compiled") for r in d["speed"]] == [0, 0, 0, None]
    assert [r["item"] for r in d["model"]] == ["resnet18 32 px batch 4", "vit_tiny 32 px batch 4"]
    assert [r["item"] for r in d["compiled"]] == ["resnet18 32 px batch 4 compiled", "vit_tiny 32 px batch 4 compiled"]
    assert all(r["tflops"] > 0 and r["mfu"] is None for r in d["model"] + d["compiled"])
    assert len(d["data"]) == 1 and 0 <= d["data"][0]["luab"]["data_wait"] < 1
    assert [(r["part"], r["item"]) for r in d["not_run"]] == [
        ("speed", "resnet18 --compile --channels-last"), ("speed", "vit_tiny --amp --compile"),
        ("speed", "resnet18 --amp --amp-dtype float16"), ("model", "MFU")]
    with open(tmp_path / "g.json") as f:
        assert json.load(f)["not_run"] == d["not_run"]
    out = capsys.readouterr().out
    assert "model-bound (bf16)" in out and "not run:" in out and "CUDA only" in out
