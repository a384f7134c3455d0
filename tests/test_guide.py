"""docs/luab_in_your_script.md: its python blocks run, train, and compute what this repository's code computes."""
import argparse
import copy
import os
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision

import byproducts
import models
import train_imagenet
from tools.synth import synth

GUIDE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "luab_in_your_script.md")
with open(GUIDE, encoding="utf-8") as f:
    TEXT = f.read()
BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, re.S)
SETUP, GROUPS, LOOP = BLOCKS[-3:]  # the script's set-up, the head's parameter group, the training loop


def replace_once(src, old, new):
    assert src.count(old) == 1, f"the guide no longer contains {old!r}"
    return src.replace(old, new)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth(str(root), seed=0)
    return root / "imagenet" / "train", root / "imagenet_ab" / "train_xml"


@pytest.fixture(scope="module")
def guide(data):
    """The namespace of the guide's blocks run in order, the set-up on the synthetic data."""
    train_dir, xml_root = data
    ns = {"__name__": "guide"}
    for block in BLOCKS[:-3]:
        exec(block, ns)
    setup = replace_once(SETUP, '"/data/imagenet/train"', repr(str(train_dir)))
    with warnings.catch_warnings():  # the set-up's num_workers=8 is for a real machine; the test never iterates it
        warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
        exec(replace_once(setup, '"imagenet_ab_v1_0/train_xml"', repr(str(xml_root))), ns)
    return ns


def test_page_shape():
    assert len(BLOCKS) == 7
    for module, name in re.findall(r"\b(byproducts|train_imagenet)\.(?!py\b)(\w+)", TEXT):  # names the prose cites
        assert hasattr({"byproducts": byproducts, "train_imagenet": train_imagenet}[module], name), name


def test_clicks_equal_the_projects(guide, data):
    """load_clicks gives ImageNetAB's click for every image that has one, and nothing for the others."""
    train_dir, xml_root = data
    ds = byproducts.ImageNetAB(str(train_dir), clicks=str(xml_root))
    clicks = guide["load_clicks"](str(xml_root))
    has = ds.point_mask[:, 0] > 0
    assert sorted(clicks) == sorted(k for k, h in zip(ds.keys, has) if h)
    assert 0 < len(clicks) < len(ds)
    ours = torch.tensor([clicks[k] for k, h in zip(ds.keys, has) if h], dtype=torch.float32)
    assert torch.equal(ours, ds.points[has, 0])


def test_crop_and_flip_equal_the_projects(guide, data):
    """Seeded alike (the project seeds torch's RNG per item, train_imagenet.SeededItems), the guide's dataset and
    transform give ImageNetAB + TrainTransform's image, point and mask, item for item."""
    train_dir, xml_root = data
    project = byproducts.ImageNetAB(str(train_dir), clicks=str(xml_root),
                                    transform=byproducts.TrainTransform(size=64))
    clicks = {k: tuple(p.tolist()) for k, p, m in zip(project.keys, project.points[:, 0], project.point_mask[:, 0])
              if m > 0}  # the project's float32 clicks, so that both maps start from the same numbers
    ours = guide["ClickImageFolder"](str(train_dir), clicks, guide["CropFlipWithPoint"](64))
    assert len(ours) == len(project)
    cut_away = 0
    for i in range(len(ours)):
        torch.manual_seed(1000 + i)
        img_p, label_p, pts_p, mask_p = project[i]
        torch.manual_seed(1000 + i)
        img, label, pts, mask = ours[i]
        assert label == label_p
        assert torch.equal(img, img_p)
        if project.point_mask[i, 0] > 0:  # an image without a click has no target to move (its value is unused)
            assert torch.equal(pts, pts_p[0]), (i, pts, pts_p)
        assert torch.equal(mask, mask_p[0]), (i, mask, mask_p)
        cut_away += int(project.point_mask[i, 0] > 0 and mask == 0)
    assert cut_away > 0  # the out-of-crop rule was exercised


def test_two_training_steps_match_the_projects_loss_and_groups(guide):
    """Two steps of the guide's loop give the weights that the project's point_loss and optimizer_groups give."""
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(guide["train_set"], batch_size=8, shuffle=True)
    batches = [b for _, b in zip(range(2), loader)]
    assert any(b[3].min() == 0 for b in batches) and all(b[3].max() == 1 for b in batches)
    model = guide["model"]
    reference = copy.deepcopy(model)

    exec(GROUPS, guide)
    lr, lam, point_lr, optimizer = guide["lr"], guide["lam"], guide["point_lr"], guide["optimizer"]
    assert lam == 20.0 and point_lr == 1.0  # the ResNet recipe's
    steps = []
    optimizer.register_step_post_hook(lambda *_: steps.append(1))
    guide.update(loader=batches, epochs=1)
    exec(LOOP, guide)
    assert len(steps) == 2

    args = argparse.Namespace(opt="sgd", weight_decay=1e-4, point_lr=point_lr)
    ref_opt = torch.optim.SGD(train_imagenet.optimizer_groups(args, reference), lr=lr, momentum=0.9,
                              weight_decay=1e-4)
    train_imagenet.set_lr(args, ref_opt, lr)  # the head's groups at lr x point_lr, as the epoch loop sets them
    for images, labels, points, masks in batches:
        logits, pred = reference(images)
        loss = F.cross_entropy(logits, labels) + 20.0 * train_imagenet.point_loss(
            pred.view(-1, 1, 2), points.view(-1, 1, 2), masks.view(-1, 1))
        ref_opt.zero_grad()
        loss.backward()
        ref_opt.step()
    trained, expected = model.state_dict(), reference.state_dict()
    assert trained.keys() == expected.keys()
    for k in trained:
        assert torch.equal(trained[k], expected[k]), k
    assert model.point_head.weight.abs().sum() > 0  # the head left its initial centre

    net = guide["plain_classifier"](model).eval()
    plain = torchvision.models.resnet18(num_classes=len(guide["train_set"].classes))
    plain.load_state_dict(net.state_dict())
    plain.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(plain(batches[0][0]), model(batches[0][0])[0])


def test_point_loss_equals_the_projects(guide, tmp_path):
    """Also through the all_reduce branch (a one-process gloo group), and with weighted masks."""
    g = torch.Generator().manual_seed(0)
    pred, target = torch.rand(16, 2, generator=g) * 1.4 - 0.2, torch.rand(16, 2, generator=g)
    mask = torch.tensor([1.0, 0.0, 0.5, 1.0] * 4)

    def both():
        return guide["point_loss"](pred, target, mask), train_imagenet.point_loss(
            pred.view(-1, 1, 2), target.view(-1, 1, 2), mask.view(-1, 1))
    ours, theirs = both()
    assert torch.equal(ours, theirs)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        ours, theirs = both()
    finally:
        torch.distributed.destroy_process_group()
    assert torch.equal(ours, theirs)
    assert torch.equal(guide["point_loss"](pred, target, torch.zeros(16)), torch.zeros(()))


def test_head_group_learns_at_lr_times_point_lr(guide):
    """The head's group, as the guide builds it, is optimizer_groups' point-head group at lr x point_lr."""
    ns = dict(guide)
    exec(replace_once(GROUPS, "lam, point_lr = 20.0, 1.0", "lam, point_lr = 20.0, 10.0"), ns)
    rest, head = ns["optimizer"].param_groups
    args = argparse.Namespace(opt="sgd", weight_decay=1e-4, point_lr=10.0)
    groups = train_imagenet.optimizer_groups(args, ns["model"])
    assert [g["point_head"] for g in groups] == [False, True]
    opt = torch.optim.SGD(groups, lr=ns["lr"])
    train_imagenet.set_lr(args, opt, ns["lr"])
    assert [g["lr"] for g in opt.param_groups] == [ns["lr"], ns["lr"] * 10.0]
    assert [id(p) for p in head["params"]] == [id(p) for p in groups[1]["params"]] \
        == [id(p) for p in models.point_parameters(ns["model"])]
    assert [id(p) for p in rest["params"]] == [id(p) for p in groups[0]["params"]]
    assert head["lr"] == ns["lr"] * 10.0 == 1.0 and rest["lr"] == ns["lr"] == 0.1
