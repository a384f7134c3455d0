"""tools/export_backbone.py: our ResNet checkpoints as torchvision state dicts for detection transfer (Table 3).
CPU, 64 px inputs; the Mask R-CNN models are only built and loaded, never run."""

import os

import pytest
import torch
import torchvision
from torchvision.models.detection import maskrcnn_resnet50_fpn

import models
from conftest import perturb_  # distinct weights and BN statistics, so a skipped key shows
from tools import export_backbone as eb


@pytest.fixture(scope="module")
def r50(tmp_path_factory):
    """A LUAB ResNet-50 (point head, 1000 classes) saved as train_imagenet.py saves it, and its export."""
    d = tmp_path_factory.mktemp("r50")
    model = perturb_(models.create_model("resnet50", num_points=1)).eval()
    ckpt = d / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "meta": {"model": "resnet50", "num_classes": 1000, "num_points": 1},
                "epoch": 0}, ckpt)
    out = d / "r50_tv.pth"
    arch, fc_kept, notes = eb.export_backbone(ckpt, out)
    assert (arch, fc_kept) == ("resnet50", True)
    assert notes == ["dropped point_head (2 tensors): LUAB's training-only head",
                     "kept fc (1000 classes): the file loads with strict=True into torchvision.models.resnet50()"]
    assert sorted(os.listdir(d)) == ["checkpoint.pt", "r50_tv.pth"]  # no temporary file left
    return model, torch.load(out, weights_only=True), out


def test_export_loads_strict_into_torchvision_resnet50_with_our_logits(r50):
    model, sd, _ = r50
    assert not any(k.startswith("point_head.") for k in sd) and sd["fc.weight"].shape == (1000, 2048)
    tv = torchvision.models.resnet50(weights=None)
    tv.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = model.classifier(model.pooled_features(x)[0])
        assert torch.equal(tv.eval()(x), ours)


def test_export_fits_mask_rcnn_backbone_body(r50):
    """maskrcnn_resnet50_fpn's backbone.body is an IntermediateLayerGetter up to layer4: no avgpool, no fc."""
    _, sd, _ = r50
    body = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None).backbone.body
    result = body.load_state_dict(sd, strict=False)
    assert set(result.unexpected_keys) == {"fc.weight", "fc.bias"} and result.missing_keys == []
    assert torch.equal(body.layer3[2].conv2.weight, sd["layer3.2.conv2.weight"])


def test_torch_home_route_of_the_readme_gives_mask_rcnn_our_backbone(r50, tmp_path, monkeypatch):
    """The README's recipe for torchvision's detection references: the export in a private TORCH_HOME under the
    enum's file name; --weights-backbone ResNet50_Weights.IMAGENET1K_V1 then loads it (no download: this machine
    has no network) into a frozen-BN backbone with 3 trainable stages, the usual protocol."""
    _, sd, out = r50
    assert eb.hub_file_name("resnet50") == "resnet50-0676ba61.pth"
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    os.symlink(out, tmp_path / "hub" / "checkpoints" / "resnet50-0676ba61.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    body = maskrcnn_resnet50_fpn(weights=None, weights_backbone=torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
                                 num_classes=91).backbone.body
    assert torch.equal(body.conv1.weight, sd["conv1.weight"])
    assert isinstance(body.layer2[0].bn1, torchvision.ops.FrozenBatchNorm2d)
    assert torch.equal(body.layer2[0].bn1.running_var, sd["layer2.0.bn1.running_var"])
    trainable = sorted({n.split(".")[0] for n, p in body.named_parameters() if p.requires_grad})
    assert trainable == ["layer2", "layer3", "layer4"]


def test_fc_dropped_when_not_1000_way_or_asked(tmp_path, capsys):
    model = perturb_(models.create_model("resnet18", num_classes=10, num_points=1))
    torch.save({"model": model.state_dict(), "meta": {"model": "resnet18", "num_classes": 10}}, tmp_path / "c.pt")
    assert eb.main([str(tmp_path / "c.pt"), "--out", str(tmp_path / "a.pth")]) == 0
    assert capsys.readouterr().out == (
        f"wrote {tmp_path / 'a.pth'}: torchvision resnet18 state dict; dropped point_head (2 tensors): LUAB's "
        "training-only head; dropped fc (10 classes, not ImageNet's 1000): load the file with strict=False, "
        "missing keys fc.weight, fc.bias\n")
    sd = torch.load(tmp_path / "a.pth", weights_only=True)
    result = torchvision.models.resnet18(weights=None).load_state_dict(sd, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == []
    # a bare torchvision state dict (no meta: the architecture is read from its keys), classifier dropped on request
    tv = torchvision.models.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    arch, fc_kept, notes = eb.export_backbone(tmp_path / "tv.pth", tmp_path / "b.pth", drop_fc=True)
    assert (arch, fc_kept) == ("resnet18", False) and notes[0].startswith("dropped fc (--drop-fc)")
    sd = torch.load(tmp_path / "b.pth", weights_only=True)
    assert sd.keys() == tv.state_dict().keys() - {"fc.weight", "fc.bias"}
    assert all(torch.equal(sd[k], v) for k, v in tv.state_dict().items() if k in sd)


@pytest.mark.parametrize("arch", ["resnet50", "resnet101", "resnet152"])
def test_architecture_read_from_keys(arch):
    assert eb.infer_arch({"module." + k: v for k, v in models.create_model(arch).state_dict().items()}) == arch


def test_vit_and_foreign_files_are_refused_in_one_line(tmp_path):
    vit = models.create_model("vit_tiny", img_size=32)
    torch.save({"model": vit.state_dict(), "meta": {"model": "vit_tiny"}}, tmp_path / "vit.pt")
    with pytest.raises(SystemExit, match=r"^export_backbone: .*vit\.pt is a ViT: detection transfer .* ResNet-50"):
        eb.main([str(tmp_path / "vit.pt"), "--out", str(tmp_path / "x.pth")])
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match=r"other\.pt: not one of resnet18, resnet50, resnet101, resnet152"):
        eb.main([str(tmp_path / "other.pt"), "--out", str(tmp_path / "x.pth")])
    with pytest.raises(SystemExit, match=r"checkpoint not found: .*missing\.pt"):
        eb.main([str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x.pth")])
    assert not os.path.exists(tmp_path / "x.pth")
