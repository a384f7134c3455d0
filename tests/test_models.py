"""models.py: shapes, gradients, parameter counts, torchvision parity and checkpoint loading.
Small inputs throughout (64 px ResNets, 32 px ViTs) except where a real 224 layout is the point."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

import models
from conftest import perturb_
import utils

RESNETS = ["resnet18", "resnet50", "resnet101", "resnet152"]
VITS = ["vit_tiny", "vit_small", "vit_base"]
ALL = RESNETS + VITS
WIDTH = {"resnet18": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048,
         "vit_tiny": 192, "vit_small": 384, "vit_base": 768}
PARAMS = {"resnet18": 11_689_512, "resnet50": 25_557_032, "resnet101": 44_549_160, "resnet152": 60_192_808,
          "vit_tiny": 5_717_416, "vit_small": 22_050_664, "vit_base": 86_567_656}

def small(name, **kw):
    """A model and an input batch small enough for CPU tests."""
    if name.startswith("vit"):
        return models.create_model(name, img_size=32, **kw), torch.randn(2, 3, 32, 32)
    return models.create_model(name, **kw), torch.randn(2, 3, 64, 64)

def n_params(model):
    return sum(p.numel() for p in model.parameters())

def assert_same_logits(a, b):
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())

# -----------------------------------------------------------------------------
# shapes, gradients, sizes

@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name):
    torch.manual_seed(0)
    model, x = small(name, num_classes=10)
    logits = model(x)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    F.cross_entropy(logits, torch.tensor([1, 2])).backward()
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("K", [1, 80])
def test_point_head(name, K):
    torch.manual_seed(0)
    model, x = small(name, num_classes=10, num_points=K)
    assert isinstance(model.point_head, torch.nn.Linear)
    assert model.point_head.in_features == WIDTH[name] and model.point_head.out_features == 2 * K
    logits, points = model(x, return_points=True)
    assert logits.shape == (2, 10) and points.shape == (2, K, 2)
    (F.cross_entropy(logits, torch.tensor([1, 2])) + F.smooth_l1_loss(points, torch.rand(2, K, 2))).backward()
    assert model.point_head.weight.grad.abs().sum() > 0 and model.classifier.weight.grad.abs().sum() > 0
    # the points are the head applied to the L2-normalised penultimate features, (x, y) per point
    model.eval()
    with torch.no_grad():
        feats = model.pooled_features(x)[0]
        logits, points = model(x, return_points=True)
        torch.testing.assert_close(model(x), logits, rtol=0, atol=0)  # without return_points: logits only
    torch.testing.assert_close(points, model.point_head(F.normalize(feats, dim=-1)).view(2, K, 2))

def test_output_convention_without_a_point_head():
    """model(x) is a torchvision classifier's call; return_points=True gives (logits, None) without a head."""
    model, x = small("resnet18", num_classes=10)
    model.eval()
    with torch.no_grad():
        logits, points = model(x, return_points=True)
        assert points is None and torch.equal(model(x), logits)

@pytest.mark.parametrize("name", ALL)
def test_parameter_counts(name):
    with torch.device("meta"):  # no memory, no init time
        plain = models.create_model(name)
        with_points = models.create_model(name, num_points=80)
    assert n_params(plain) == PARAMS[name]
    assert plain.point_head is None and plain.num_points == 0
    assert n_params(with_points) == PARAMS[name] + WIDTH[name] * 160 + 160
    assert plain.is_vit == name.startswith("vit")

@pytest.mark.parametrize("name", ["resnet50", "vit_tiny"])
def test_features_feature_map_classifier(name):
    torch.manual_seed(0)
    model, x = small(name, num_classes=10)
    model.eval()
    with torch.no_grad():
        (feats, pooled_point), fmap, logits = model.pooled_features(x), model.feature_map(x), model(x)
    assert pooled_point is None  # average pool / class token: the point head, not the pooling, gives points
    grid = 2  # 32 px / patch 16 for the ViT, 64 px / stride 32 for the ResNet
    assert feats.shape == (2, WIDTH[name]) and fmap.shape == (2, WIDTH[name], grid, grid)
    torch.testing.assert_close(model.classifier(feats), logits)
    assert model.classifier is (model.heads.head if model.is_vit else model.fc)
    assert "classifier" not in dict(model.named_modules())
    if not model.is_vit:  # ResNet: CAM averaged over the map is exactly the logit
        cam = torch.einsum("d,bdhw->bhw", model.classifier.weight[3], fmap)
        torch.testing.assert_close(cam.mean((1, 2)) + model.fc.bias[3], logits[:, 3])

def test_vit_img_size_and_drop_path():
    model = models.create_model("vit_tiny", img_size=64, drop_path=0.1)
    assert model.encoder.pos_embedding.shape == (1, 17, 192)
    rates = [blk.drop_path.p for blk in model.encoder.layers]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.1) and rates == sorted(rates)
    x = torch.randn(4, 3, 64, 64)
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))  # stochastic in training
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    with pytest.raises(ValueError, match="multiple"):
        models.create_model("vit_tiny", img_size=40)
    with pytest.raises(ValueError, match="drop_path"):
        models.create_model("resnet18", drop_path=0.1)
    with pytest.raises(ValueError, match="resnet34"):
        models.create_model("resnet34")

def test_vit_init_is_deit():
    torch.manual_seed(0)
    model = models.create_model("vit_small")
    head, qkv = model.heads.head.weight, model.encoder.layers[0].self_attention.in_proj_weight
    for w in (head, qkv, model.encoder.layers[5].mlp[3].weight, model.class_token, model.encoder.pos_embedding):
        assert abs(w.std().item() - 0.02) < 0.002
    assert model.heads.head.bias.abs().sum() == 0 and model.encoder.ln.weight.eq(1).all()

def test_channels_last_same_output():
    torch.manual_seed(0)
    model, x = small("resnet18")
    model.eval()
    with torch.no_grad():
        ref = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    assert_same_logits(out, ref)

def test_param_groups():
    model = models.create_model("vit_tiny", img_size=32, num_points=1)
    decay, no_decay = models.param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    ids = lambda g: {id(p) for p in g["params"]}
    assert len(ids(decay) | ids(no_decay)) == len(list(model.parameters())) and not ids(decay) & ids(no_decay)
    named = dict(model.named_parameters())
    for key in ["class_token", "encoder.pos_embedding", "conv_proj.bias", "encoder.ln.weight",
                "encoder.layers.encoder_layer_0.self_attention.in_proj_bias", "point_head.bias"]:
        assert id(named[key]) in ids(no_decay), key
    for key in ["conv_proj.weight", "encoder.layers.encoder_layer_0.self_attention.in_proj_weight",
                "encoder.layers.encoder_layer_0.mlp.0.weight", "heads.head.weight", "point_head.weight"]:
        assert id(named[key]) in ids(decay), key

# -----------------------------------------------------------------------------
# torchvision parity: strict load, same logits

@pytest.mark.parametrize("name", RESNETS)
def test_torchvision_resnet_parity(name):
    torch.manual_seed(0)
    ref = perturb_(getattr(torchvision.models, name)(weights=None)).eval()
    ours = models.create_model(name).eval()
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_same_logits(ours(x), ref(x))

def test_torchvision_vit_b_16_parity():
    torch.manual_seed(0)
    ref = perturb_(torchvision.models.vit_b_16(weights=None)).eval()
    ours = models.create_model("vit_base").eval()
    assert set(ours.state_dict()) == set(ref.state_dict()) and len(ref.state_dict()) == 152
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert_same_logits(ours(x), ref(x))

# -----------------------------------------------------------------------------
# load_pretrained

def to_deit(sd):
    """torchvision -> DeiT/timm key names, written independently of utils._VIT_RENAMES."""
    out = {}
    for k, v in sd.items():
        if k.startswith("encoder.layers.encoder_layer_"):
            n, rest = k[len("encoder.layers.encoder_layer_"):].split(".", 1)
            rest = {"ln_1.weight": "norm1.weight", "ln_1.bias": "norm1.bias",
                    "self_attention.in_proj_weight": "attn.qkv.weight", "self_attention.in_proj_bias": "attn.qkv.bias",
                    "self_attention.out_proj.weight": "attn.proj.weight", "self_attention.out_proj.bias": "attn.proj.bias",
                    "ln_2.weight": "norm2.weight", "ln_2.bias": "norm2.bias",
                    "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",
                    "mlp.3.weight": "mlp.fc2.weight", "mlp.3.bias": "mlp.fc2.bias"}[rest]
            out[f"blocks.{n}.{rest}"] = v
        else:
            out[{"class_token": "cls_token", "encoder.pos_embedding": "pos_embed",
                 "conv_proj.weight": "patch_embed.proj.weight", "conv_proj.bias": "patch_embed.proj.bias",
                 "encoder.ln.weight": "norm.weight", "encoder.ln.bias": "norm.bias",
                 "heads.head.weight": "head.weight", "heads.head.bias": "head.bias"}[k]] = v
    return out

def check_loads(src, sd_or_path, x, **create_kw):
    """Load into a fresh model of the same kind and compare eval outputs with the source model."""
    torch.manual_seed(123)  # a different init than src
    dst = models.create_model(src.name, **create_kw)
    notes = utils.load_pretrained(dst, sd_or_path)
    src.eval(), dst.eval()
    with torch.no_grad():
        (a, a_points), (b, b_points) = src(x, return_points=True), dst(x, return_points=True)
    if a_points is not None and b_points is not None:  # both have a point head: same points too
        torch.testing.assert_close(b_points, a_points, rtol=0, atol=0)
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    return dst, notes

def named(name, **kw):
    """A perturbed model that remembers its name, the source of a checkpoint."""
    torch.manual_seed(0)
    model = perturb_(models.create_model(name, **kw))
    model.name = name
    return model

def test_load_deit_checkpoint_into_vit_tiny(tmp_path):
    src = named("vit_tiny")
    deit = to_deit(src.state_dict())
    assert len(deit) == 152 and "blocks.11.attn.qkv.weight" in deit and "pos_embed" in deit
    torch.save({"model": deit, "epoch": 299}, tmp_path / "deit_tiny.pth")
    check_loads(src, tmp_path / "deit_tiny.pth", torch.randn(1, 3, 224, 224))

def test_load_old_torchvision_mlp_names():
    src = named("vit_tiny", img_size=32)
    old = {k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2."): v
           for k, v in src.state_dict().items()}
    assert "encoder.layers.encoder_layer_0.mlp.linear_1.weight" in old
    check_loads(src, old, torch.randn(2, 3, 32, 32), img_size=32)

@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_load_wrapper_prefixes(prefix):
    src = named("resnet18", num_classes=10)
    sd = {prefix + k: v for k, v in src.state_dict().items()}
    check_loads(src, sd, torch.randn(2, 3, 64, 64), num_classes=10)

def test_load_own_training_checkpoint_with_point_head(tmp_path):
    src = named("resnet18", num_classes=10, num_points=1)
    ckpt = {"model": {"_orig_mod." + k: v for k, v in src.state_dict().items()},
            "optimizer": {"state": {}, "param_groups": []}, "epoch": 3, "args": {"lr": 0.1}}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    dst, notes = check_loads(src, tmp_path / "ckpt.pt", torch.randn(2, 3, 64, 64), num_classes=10, num_points=1)
    assert notes == []
    torch.testing.assert_close(dst.point_head.weight, src.point_head.weight)
    # the head is dropped at inference: a plain classifier ignores it, with a note
    _, notes = check_loads(src, tmp_path / "ckpt.pt", torch.randn(2, 3, 64, 64), num_classes=10)
    assert len(notes) == 2 and all("point_head" in n for n in notes)

def test_model_from_checkpoint_rebuilds_what_the_meta_describes(tmp_path):
    """Self-describing: architecture, classes, points, point-head kind and ViT input size come from "meta"; a
    bare state dict needs the name and reads classes / points from the heads' shapes."""
    src = named("vit_tiny", num_classes=7, num_points=3, img_size=48, point_head="plain")
    meta = {"model": "vit_tiny", "num_classes": 7, "num_points": 3, "img_size": 48, "point_head": "plain"}
    torch.save({"model": src.state_dict(), "meta": meta, "epoch": 2}, tmp_path / "c.pt")
    model, got, notes = models.model_from_checkpoint(tmp_path / "c.pt")
    assert (got, notes, model.training) == (meta, [], False)
    assert (model.img_size, model.num_points, model.point_head_kind, model.classifier.out_features) == \
        (48, 3, "plain", 7)
    x = torch.randn(2, 3, 48, 48)
    src.eval()
    with torch.no_grad():
        for a, b in zip(model(x, return_points=True), src(x, return_points=True)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    bare = named("resnet18", num_classes=5, num_points=2).state_dict()
    model, got, _ = models.model_from_checkpoint(bare, "resnet18")
    assert (got, model.classifier.out_features, model.num_points) == ({}, 5, 2)
    with pytest.raises(ValueError, match=r"^does not say which architecture it holds \(no meta\): pass --model"):
        models.model_from_checkpoint(bare)
    with pytest.raises(ValueError, match=r"^does not fit --model resnet50 \(5 classes, 2 points\): checkpoint "
                                         r"does not fit ResNet"):
        models.model_from_checkpoint(bare, "resnet50")

def test_missing_point_head_is_fine():
    src = named("vit_tiny", img_size=32)
    torch.manual_seed(5)
    dst = models.create_model("vit_tiny", img_size=32, num_points=80)
    fresh = dst.point_head.weight.clone()
    notes = utils.load_pretrained(dst, src.state_dict())
    assert any("point_head.weight" in n for n in notes)
    torch.testing.assert_close(dst.point_head.weight, fresh)
    torch.testing.assert_close(dst.class_token, src.class_token)

@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_dropped_classifier_keeps_fresh_init(name):
    """train_coco removes a 1000-class head before loading an ImageNet checkpoint into an 80-class model."""
    src, head = named(name, img_size=32), ("heads.head." if name.startswith("vit") else "fc.")
    backbone = {k: v for k, v in src.state_dict().items() if not k.startswith(head)}
    torch.manual_seed(5)
    dst = models.create_model(name, num_classes=80, img_size=32)
    fresh = dst.classifier.weight.clone()
    notes = utils.load_pretrained(dst, backbone)
    assert sorted(notes) == sorted(f"{head}{p} is not in the checkpoint: kept its fresh initialisation"
                                   for p in ("weight", "bias"))
    torch.testing.assert_close(dst.classifier.weight, fresh)
    x = torch.randn(2, 3, 32, 32)
    src.eval(), dst.eval()
    with torch.no_grad():
        torch.testing.assert_close(dst.pooled_features(x)[0], src.pooled_features(x)[0], rtol=0, atol=0)
    half = {**backbone, head + "weight": dst.classifier.weight.detach().clone()}  # bias alone missing: an error
    with pytest.raises(ValueError, match=f"missing key '{head}bias'"):
        utils.load_pretrained(dst, half)

def test_old_checkpoint_without_num_batches_tracked():
    src = named("resnet18")
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    check_loads(src, sd, torch.randn(2, 3, 64, 64))

def test_wrong_shape_names_the_key():
    src = models.create_model("resnet18", num_classes=1000)
    with pytest.raises(ValueError, match=r"'fc\.weight'.*\[1000, 512\].*\[10, 512\]"):
        utils.load_pretrained(models.create_model("resnet18", num_classes=10), src.state_dict())
    vit = models.create_model("vit_tiny", img_size=224).state_dict()
    with pytest.raises(ValueError, match=r"'encoder\.pos_embedding'"):
        utils.load_pretrained(models.create_model("vit_tiny", img_size=32), vit)
    with pytest.raises(ValueError, match=r"'point_head\.weight'"):
        utils.load_pretrained(models.create_model("resnet18", num_points=80),
                               models.create_model("resnet18", num_points=1).state_dict())

def test_unknown_and_missing_keys_are_named():
    sd = models.create_model("resnet18").state_dict()
    with pytest.raises(ValueError, match=r"unexpected key 'fc2\.weight'"):
        utils.load_pretrained(models.create_model("resnet18"), {**sd, "fc2.weight": torch.zeros(1)})
    del sd["layer3.1.bn2.running_var"]
    with pytest.raises(ValueError, match=r"missing key 'layer3\.1\.bn2\.running_var'"):
        utils.load_pretrained(models.create_model("resnet18"), sd)
    with pytest.raises(ValueError, match=r"unexpected key 'conv1\.weight'"):  # a ResNet file into a ViT
        utils.load_pretrained(models.create_model("vit_tiny", img_size=32), sd)

def test_corrupt_and_missing_files_name_the_path(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match="garbage.pth"):
        utils.load_pretrained(models.create_model("resnet18"), bad)
    good = tmp_path / "truncated.pth"
    torch.save(models.create_model("resnet18").state_dict(), good)
    good.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.pth"):
        utils.load_pretrained(models.create_model("resnet18"), str(good))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        utils.load_pretrained(models.create_model("resnet18"), tmp_path / "nope.pth")

# -----------------------------------------------------------------------------
# attentive (point-guided) pooling

def test_attentive_pooling_starts_as_the_average_pool_and_loads_torchvision():
    """Zero-initialised attention is uniform: the model is torchvision's ResNet, whose weights load."""
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    perturb_(tv)
    model = models.create_model("resnet18", num_points=1, pooling="attentive")
    notes = utils.load_pretrained(model, tv.state_dict())
    assert sorted(notes) == [f"attention.{p} is not in the checkpoint: kept its fresh initialisation"
                             for p in ("bias", "weight")]
    assert model.point_head is None and model.num_points == 1
    tv.eval(), model.eval()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        logits, points = model(x, return_points=True)
        torch.testing.assert_close(logits, tv(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(points, torch.full((2, 1, 2), 0.5))  # uniform attention: the centre

def test_attentive_point_is_the_attention_centre_of_mass():
    """A hand-set attention on a 4 x 4 map: all mass on cell (row 0, col 3) -> point (3.5 / 4, 0.5 / 4)."""
    model = models.create_model("resnet18", num_points=1, pooling="attentive").eval()
    fmap = torch.zeros(1, 512, 4, 4)
    fmap[0, 0, 0, 3] = 1.0       # channel 0 marks the cell
    fmap[0, 1] = 2.0             # channel 1 is 2 everywhere
    with torch.no_grad():
        model.attention.weight.zero_()
        model.attention.weight[0, 0] = 100.0  # score 100 on the marked cell, 0 elsewhere
        feats, point = model.pool(fmap)
    torch.testing.assert_close(point, torch.tensor([[[0.875, 0.125]]]), rtol=0, atol=1e-6)
    torch.testing.assert_close(feats[0, :2], torch.tensor([1.0, 2.0]), rtol=0, atol=1e-6)

def test_attention_moves_toward_a_planted_click():
    """Regressing the attention's centre of mass to a click at (0.85, 0.15) with LUAB's SmoothL1 (lambda 20):
    10 SGD steps take the point from the centre to within 0.15 of the click, the attention onto the click's
    quarter of the 4 x 4 map (which holds 1/4 of it when uniform). (The attention reads L2-normalised cell
    features, whose scores move by at most lr x |gradient|: hence lr 1 on these random features.)"""
    torch.manual_seed(0)
    model = models.create_model("resnet18", num_classes=2, num_points=1, pooling="attentive")
    x = torch.randn(2, 3, 128, 128)                     # 4 x 4 feature map
    click = torch.tensor([0.85, 0.15]).expand(2, 1, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model.eval()  # BatchNorm statistics fixed: only the regression moves the weights
    with torch.no_grad():
        start = (model(x, return_points=True)[1] - click).norm(dim=-1).mean().item()
    for _ in range(10):
        _, points = model(x, return_points=True)
        loss = 20 * F.smooth_l1_loss(points, click)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        _, points = model(x, return_points=True)
        att = model.attention_map(model.feature_map(x))  # [2, 4, 4]
    assert start == pytest.approx(0.4950, abs=1e-4)  # |(0.35, -0.35)|: uniform attention answers the centre
    assert (points - click).norm(dim=-1).mean().item() < 0.15
    assert att[:, :2, 2:].sum((1, 2)).mean().item() > 0.85

def test_attentive_checkpoint_rebuilds_itself(tmp_path):
    src = models.create_model("resnet18", num_classes=3, num_points=1, pooling="attentive")
    with torch.no_grad():
        src.attention.weight.normal_()
    torch.save({"model": src.state_dict(), "meta": {"model": "resnet18", "num_classes": 3, "num_points": 1}},
               tmp_path / "c.pt")  # no "pooling" in the meta: the attention's weights say it
    model, _, notes = models.model_from_checkpoint(tmp_path / "c.pt")
    assert model.pooling == "attentive" and notes == []
    torch.testing.assert_close(model.attention.weight, src.attention.weight, rtol=0, atol=0)
    with pytest.raises(ValueError, match="only implemented for the ResNets"):
        models.create_model("vit_tiny", pooling="attentive")

# the "map" reading: the attention map itself against a Gaussian at the click

def test_attention_map_loss_is_the_kl_to_a_gaussian_at_the_click():
    """On a 2 x 2 map (cells centred at 0.25 / 0.75), a click at (0.25, 0.75) with sigma 0.25: the target gives
    cell (row 1, col 0) weight 1, its two neighbours exp(-2), the far cell exp(-4); the loss is KL(target || att),
    0 for att = target, and for uniform scores KL(target || uniform)."""
    w = torch.tensor([math.exp(-2), math.exp(-4), 1.0, math.exp(-2)])  # cells in row-major order
    target = w / w.sum()
    click = torch.tensor([[[0.25, 0.75]]])
    uniform = torch.zeros(1, 1, 2, 2)
    want = (target * (target * 4).log()).sum()
    torch.testing.assert_close(models.attention_map_loss(uniform, click, sigma=0.25), want.view(1, 1))
    exact = target.log().view(1, 1, 2, 2) + 3.0  # logits of the target (a shift changes nothing)
    assert models.attention_map_loss(exact, click, sigma=0.25).abs().item() < 1e-6
    mixed = torch.stack([click, torch.tensor([[[0.75, 0.25]]])], dim=1)  # [B, J, 1, 2] after Mixup/CutMix
    per_target = models.attention_map_loss(exact, mixed, sigma=0.25)
    assert per_target.shape == (1, 2, 1) and per_target[0, 0].abs().item() < 1e-6 and per_target[0, 1].item() > 1

def test_the_map_reading_trains_on_scores_and_evaluates_with_the_point():
    """In training mode --attention-target map returns the attention's scores (what its loss reads); in eval mode
    the same model returns the centre of mass, as the other reading; checkpoints say which reading trained."""
    model = models.create_model("resnet18", num_points=1, pooling="attentive", attention_target="map")
    x = torch.randn(2, 3, 128, 128)
    assert model.train()(x, return_points=True)[1].shape == (2, 1, 4, 4)
    torch.testing.assert_close(model.eval()(x, return_points=True)[1], torch.full((2, 1, 2), 0.5))
    with pytest.raises(ValueError, match="attention target 'peak'"):
        models.create_model("resnet18", pooling="attentive", attention_target="peak")
    for name in ("resnet18", "vit_tiny"):  # the map target without an attentive pool would be silently unread
        with pytest.raises(ValueError, match="'map' supervises an attentive pool: add pooling='attentive'"):
            models.create_model(name, num_points=1, attention_target="map")

def test_the_map_reading_puts_the_attention_on_a_planted_click():
    """10 SGD steps (lr 1, as above) of attention_map_loss (lambda 1) toward a click at (0.85, 0.15) on a 4 x 4
    map put most of the attention on the click's cell (row 0, col 3), which holds 1/16 of it when uniform, and
    the centre of mass near the click."""
    torch.manual_seed(0)
    model = models.create_model("resnet18", num_classes=2, num_points=1, pooling="attentive", attention_target="map")
    x = torch.randn(2, 3, 128, 128)
    click = torch.tensor([0.85, 0.15]).expand(2, 1, 2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model.eval()  # BatchNorm statistics fixed; the scores are read from the pool directly
    for _ in range(10):
        scores = model.attention_scores(model.feature_map(x))
        loss = models.attention_map_loss(scores, click).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        att = model.attention_map(model.feature_map(x))
        _, points = model(x, return_points=True)
    assert att[:, 0, 3].mean().item() > 0.7
    assert (points - click).norm(dim=-1).mean().item() < 0.1

def test_attention_target_round_trips_through_a_checkpoint(tmp_path):
    src = models.create_model("resnet18", num_classes=3, num_points=1, pooling="attentive", attention_target="map")
    torch.save({"model": src.state_dict(), "meta": {"model": "resnet18", "num_classes": 3, "num_points": 1,
                                                    "pooling": "attentive", "attention_target": "map"}}, tmp_path / "c.pt")
    model, _, _ = models.model_from_checkpoint(tmp_path / "c.pt")
    assert (model.pooling, model.attention_target) == ("attentive", "map")

def test_the_attention_reads_normalised_cell_features_as_the_point_head():
    """--point-head normed (default): a cell's score ignores its feature norm, so rescaling cells leaves the
    attention as it was; --point-head plain scores the raw features."""
    torch.manual_seed(0)
    fmap, scale = torch.rand(2, 512, 3, 3), torch.rand(2, 1, 3, 3) * 5 + 0.1
    for kind, same in (("normed", True), ("plain", False)):
        model = models.create_model("resnet18", num_points=1, pooling="attentive", point_head=kind)
        torch.nn.init.normal_(model.attention.weight)
        a, b = model.attention_map(fmap), model.attention_map(fmap * scale)
        assert torch.allclose(a, b, atol=1e-6) == same, kind
