"""LUAB must act: the point head's parameterisation (what lambda means) and the per-epoch evidence that the head
learns and feeds the backbone (issue 12)."""
import json
import os

import pytest
import torch
import torch.nn as nn

import models
import train_imagenet as T
from tools.synth import synth_spurious


@pytest.mark.parametrize("kind", ["normed", "plain"])
def test_one_sgd_step_of_the_head_moves_its_point_by_lr_lambda_times(kind):
    """normed: the head reads u = f / |f|, so a step on (W, b) moves the prediction on the same image by
    lr x lambda x (|u|^2 + 1) x dL/dp = 2 lr lambda dL/dp, whatever the backbone; plain: by (|f|^2 + 1) instead."""
    torch.manual_seed(0)
    model = models.create_model("resnet18", num_classes=3, num_points=1, point_head=kind).eval()
    x = torch.randn(1, 3, 32, 32)
    lr, lam, c = 0.01, 7.0, torch.tensor([0.3, -0.2])
    opt = torch.optim.SGD(model.point_head.parameters(), lr=lr)
    before = model(x, return_points=True)[1].detach()
    (lam * (model(x, return_points=True)[1] * c).sum()).backward()  # dL/dp = lam * c
    opt.step()
    after = model(x, return_points=True)[1].detach()
    feats = model.pooled_features(x)[0].detach()
    gain = 2.0 if kind == "normed" else float(feats.pow(2).sum()) + 1.0
    torch.testing.assert_close(after - before, (-lr * lam * gain * c).view(1, 1, 2), rtol=1e-4, atol=1e-6)
    if kind == "normed":  # zero weights, bias 0.5: the untrained head answers the image centre
        torch.testing.assert_close(before, torch.full((1, 1, 2), 0.5))


def test_unknown_point_head_is_refused():
    with pytest.raises(ValueError, match="unknown point head 'scaledd'; choose from normed, plain"):
        models.create_model("resnet18", num_points=1, point_head="scaledd")


def _args(**kw):
    a = T.resolve_args(T.get_args_parser().parse_args(["--model", "resnet18", "--luab"]), T.RECIPES)
    a.device, a.point_loss = "cpu", "smoothl1"
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def test_centre_point_loss_is_the_loss_of_always_answering_the_centre():
    # targets (0.5, 0.5) and (0.9, 0.5) count, (0.1, 0.1) has weight 0: SmoothL1(0.4) = 0.5 * 0.4^2 = 0.08,
    # averaged over the 2 points that count -> 0.04, whatever the head predicted
    points = torch.tensor([[[0.5, 0.5]], [[0.9, 0.5]], [[0.1, 0.1]]])
    batch = [None, torch.tensor([0, 1, 2]), points, torch.tensor([[1.0], [1.0], [0.0]])]
    outputs = (torch.zeros(3, 3), torch.rand(3, 1, 2))
    assert T.centre_point_loss(_args(), T.imagenet_loss, outputs, batch).item() == pytest.approx(0.04)
    assert T.centre_point_loss(_args(), T.imagenet_loss, (torch.zeros(3, 3), None), batch).item() == 0.0  # plain run


class _Tiny(nn.Module):
    """backbone: one Linear; classifier and point head: Linears (both excluded from the share)."""

    def __init__(self):
        super().__init__()
        self.body, self.classifier, self.point_head = nn.Linear(4, 5), nn.Linear(5, 3), nn.Linear(5, 2)

    def forward(self, x, return_points=True):
        f = torch.relu(self.body(x))
        return self.classifier(f), self.point_head(f).view(-1, 1, 2)

def test_point_grad_share_is_the_ratio_of_backbone_gradient_norms():
    torch.manual_seed(0)
    m, x, y, pts = _Tiny(), torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]), torch.rand(6, 1, 2)

    def losses():
        logits, pred = m(x)
        return nn.functional.cross_entropy(logits, y), T.point_loss(pred, pts, torch.ones(6, 1))

    def body_grad_norm(loss):
        m.zero_grad()
        loss.backward()
        return torch.cat([m.body.weight.grad.flatten(), m.body.bias.grad]).norm()

    cls, pt = losses()
    share = T.point_grad_share(m, 3.0, cls, pt)
    want = body_grad_norm(3.0 * losses()[1]) / body_grad_norm(losses()[0])
    assert share == pytest.approx(want.item(), rel=1e-5)


# ---------------------------------------------------------------------------- trainings (slow)

@pytest.fixture(scope="module")
def spurious(tmp_path_factory):
    """The study's data (benchmarks/spurious.py defaults: 6 classes x 100 train images, 32 px, p = 0.9)."""
    root = tmp_path_factory.mktemp("spurious")
    synth_spurious(str(root), p=0.9, seed=0, n_classes=6, n_train=100, n_val=30, size=32)
    return root


def _train(root, out, *flags):
    argv = ["--data-dir", str(root / "imagenet"), "--byproducts", str(root / "imagenet_ab" / "train_xml"),
            "--model", "resnet18", "--img-size", "32", "--val-resize", "32", "--batch-size", "32",
            "--workers", "0", "--print-freq", "1000000", "--output-dir", str(out), "--luab",
            "--color-jitter", "0", *flags]  # as the study: jitter would blur the synthetic colour cues
    T.main(T.get_args_parser().parse_args(argv))
    with open(os.path.join(out, "log.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_an_idle_head_is_reported(spurious, tmp_path, capsys):
    """lambda = 0 and no weight decay: the head never leaves the centre, so its loss is the baseline's exactly,
    its gradient share is 0, and from epoch IDLE_HEAD_EPOCHS on the run says so."""
    log = _train(spurious, tmp_path, "--point-weight", "0", "--weight-decay", "0", "--epochs", "4",
                 "--max-steps-per-epoch", "2", "--eval-every", "4")
    assert [e["train_point_vs_centre"] for e in log] == [1.0] * 4
    assert [e["point_grad_share"] for e in log] == [0.0] * 4
    warnings = [line for line in capsys.readouterr().out.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: epoch 3: the point head is still at the centre")


@pytest.mark.slow
@pytest.mark.parametrize("recipe, flags, max_vs_centre, min_share", [
    # the study's ResNet recipe (SGD, cosine), 6 epochs. Measured: point loss 0.52 x centre, share 1.16 at the
    # end; lambda 5: 0.95 x and 0.10, lambda 1: 0.98 x and 0.016 (the head idles at the centre)
    ("resnet", ["--epochs", "6", "--lr", "0.2", "--sched", "cosine"], 0.8, 0.2),
    # the DeiT recipe (AdamW, RandAugment, Mixup/CutMix, label smoothing, 3 repeats), shortened: 1 warm-up epoch
    # of 10, lr 8e-3 x 32/512 = 5e-4 as DeiT's per-image rate. ResNet-18, not a ViT: on 32 px images a ViT-Ti
    # did not learn positions in this budget at any lambda or head LR tried. Measured (2026-12-05): 0.87 x centre,
    # share 0.82 after 10 epochs (0.90 x after 8, once RandAugment masked points it pushes off the canvas);
    # earlier, with the head at the backbone's LR (--point-lr 1): 0.97 x and 0.16, and lambda 5 then 0.98 x, 0.03.
    ("deit", ["--epochs", "10", "--warmup-epochs", "1", "--lr", "8e-3", "--drop-path", "0"], 0.9, 0.3),
])
def test_luab_acts_under_the_recipe_defaults(spurious, tmp_path, recipe, flags, max_vs_centre, min_share):
    """With the recipe's default lambda and head LR the head leaves the centre baseline and feeds the backbone."""
    log = _train(spurious, tmp_path, "--recipe", recipe, "--eval-every", "100", *flags)
    assert log[-1]["train_point_vs_centre"] < max_vs_centre, log[-1]
    assert log[-1]["point_grad_share"] > min_share, log[-1]
