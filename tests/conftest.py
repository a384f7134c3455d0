"""Fixtures and helpers shared by several test files (`from conftest import ...`)."""

import argparse
import os
import subprocess
import sys

import pytest
import torch

import train_imagenet as T
from tools.synth import synth as write_synth


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """One small synthetic set in the released layouts (tools/synth.py, seed 0), written once per test session:
    4 classes x 8 train / 2 val ImageNet images with ImageNet-AB XML and ILSVRC boxes, 12 + 4 COCO images with
    COCO-AB. Read-only: a test that breaks files copies them first."""
    d = tmp_path_factory.mktemp("synth")
    write_synth(str(d), seed=0, n_classes=4, n_train=8, n_val=2, coco_train=12, coco_val=4)
    return str(d)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    write_synth(str(root), seed=0)
    return root


def base_args(synth, out, *extra):
    """A tiny, fast configuration: small images, few steps; every test adds its own flags."""
    return ["--data-dir", str(synth / "imagenet"), "--byproducts", str(synth / "imagenet_ab" / "train_xml"),
            "--output-dir", str(out), "--img-size", "32", "--batch-size", "16", "--workers", "0",
            "--print-freq", "1000", "--recipe", "resnet", "--lr", "0.05", "--weight-decay", "0",
            "--color-jitter", "0", *extra]


def run(argv):
    return T.main(T.get_args_parser().parse_args(argv))


def torchrun(nproc, argv, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(REPO, "train_imagenet.py"), *argv]
    res = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return res


def frozen_after_init_distributed(monkeypatch, script):
    """A Namespace class for script.main (train_imagenet or train_coco) whose instances refuse every attribute
    set once script.init_distributed has returned: the moment `args` is complete."""
    class FrozenArgs(argparse.Namespace):
        frozen = False  # a class attribute, so vars(args) (config.json, checkpoints) does not show it

        def __setattr__(self, name, value):
            if type(self).frozen:
                raise AttributeError(f"args.{name} set after init_distributed")
            super().__setattr__(name, value)

    real_init = script.init_distributed

    def init_then_freeze(args):
        real_init(args)
        FrozenArgs.frozen = True
    monkeypatch.setattr(script, "init_distributed", init_then_freeze)
    return FrozenArgs


def perturb_(model):
    """Make every parameter and BN statistic distinct, so a swapped or skipped key changes the output
    (fresh BNs are all 1/0 and torchvision's ViT head is all zeros)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model
