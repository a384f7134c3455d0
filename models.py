"""
The seven backbones of the LUAB paper, hand-written in plain PyTorch, with an optional point head.

- ResNet-18/50/101/152 (torchvision's v1.5: a Bottleneck strides on its 3x3 conv) and ViT-Ti/S/B with patch 16.
- Parameter names are torchvision's, so a torchvision `resnet50()` or `vit_b_16()` state dict loads with
  strict=True and gives the same logits. ViT-Ti/S use the same layout; utils.load_pretrained also reads
  DeiT/timm ViTs, and model_from_checkpoint rebuilds any model trained here from its checkpoint alone.
- LUAB's only addition is `point_head`: a linear layer on the L2-normalised penultimate features (see
  ImageClassifier.point_input) that regresses K normalised (x, y) points, origin top-left, x to the right,
  y down, in [0, 1]^2 of the network input. There is no sigmoid, so predictions may leave the unit square.
  It is trained next to the classifier and dropped at inference.
- The paper's other use of the clicks (appendix, Table D), for the ResNets: `pooling="attentive"` replaces the
  global average pool with a learned attention over the last feature map (ResNet.pool); its centre of mass is
  the predicted point, so no point head is needed. The click supervises it in one of two ways
  (ATTENTION_TARGETS): that point regressed to the click by the same loss, or the whole attention map pulled
  towards a small Gaussian at the click (attention_map_loss).
"""

import math
import os
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from utils import checkpoint_parts, load_pretrained, read_checkpoint, strip_wrapper_prefixes  # model_from_checkpoint

# -----------------------------------------------------------------------------
# shared tail: classifier + optional point head on the penultimate features

POINT_HEADS = ("normed", "plain")  # what the point head reads: ImageClassifier.point_input
POOLINGS = ("avg", "attentive")  # how a ResNet pools its last feature map: ResNet.pool
ATTENTION_TARGETS = ("centre-of-mass", "map")  # how the click supervises an attentive pool: ResNet.forward

class ImageClassifier(nn.Module):
    """Subclasses define pooled_features (x -> (features [B, D], points [B, K, 2] the pooling predicted, or
    None)), feature_map (x -> [B, D, h, w], what a CAM weighs) and classifier."""

    is_vit = False

    def _init_point_head(self, dim, num_points, point_head="normed"):
        # LUAB: the point head, a Linear from the penultimate features to K (x, y) points; None without points
        if point_head not in POINT_HEADS:
            raise ValueError(f"unknown point head {point_head!r}; choose from {', '.join(POINT_HEADS)}")
        self.num_points = num_points
        self.point_head_kind = point_head
        self.point_head = nn.Linear(dim, 2 * num_points) if num_points > 0 else None
        if self.point_head is not None and point_head != "plain":
            # start by predicting the image centre for every point: the first losses are those of the
            # centre baseline rather than of a random regressor, which kicks the SGD recipe less hard
            nn.init.zeros_(self.point_head.weight)
            nn.init.constant_(self.point_head.bias, 0.5)

    def point_input(self, feats):
        """LUAB: what the point head reads: [B, D] -> [B, D]. "normed" (default): the features divided by their L2
        norm, so one SGD step on the head moves its prediction for that image by exactly 2 x lr x lambda x
        dLoss/dpoint (weights and bias contribute 1 each), whatever the backbone, its width D and its feature
        scale. "plain": the paper's Linear on the raw features, PyTorch's default init; one step moves the point
        by (|f|^2 + 1) x lr x lambda x dLoss/dpoint, and |f|^2 ~ D for ReLU features, so under the ResNet SGD
        recipe the point loss overshoots for epochs. (No parameters here: both kinds have the same state dict.)"""
        return F.normalize(feats, dim=-1) if self.point_head_kind == "normed" else feats

    def forward(self, x, return_points=False):
        """x: [B, 3, H, W] -> logits [B, C], as any torchvision classifier.

        LUAB: with return_points=True -> (logits [B, C], points [B, K, 2]), points None without a point head.
        Training asks for both in one forward, so DDP sees (and syncs) the gradients of both heads; every
        other caller (evaluation, CAMs, export) gets plain logits and the head is not even run."""
        feats, pooled_points = self.pooled_features(x)
        logits = self.classifier(feats)
        if not return_points:
            return logits
        if pooled_points is not None:  # attentive pooling: the attention's centre of mass is the point
            return logits, pooled_points
        if self.point_head is None:
            return logits, None
        return logits, self.point_head(self.point_input(feats)).view(-1, self.num_points, 2)

# -----------------------------------------------------------------------------
# ResNet

def conv3x3(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)

def conv1x1(cin, cout, stride=1):
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity  # in place, as torchvision: one activation-sized buffer less per block
        return self.relu(out)

class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)  # v1.5: stride here, not in conv1 (+0.5% top-1, torchvision)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)

def make_stage(block, inplanes, planes, num_blocks, stride):
    """One `layerN`: the first block changes resolution/width (through `downsample`), the rest keep it."""
    outplanes = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != outplanes:
        downsample = nn.Sequential(conv1x1(inplanes, outplanes, stride), nn.BatchNorm2d(outplanes))
    blocks = [block(inplanes, planes, stride, downsample)]
    blocks += [block(outplanes, planes) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)

class ResNet(ImageClassifier):

    def __init__(self, block, layers, num_classes=1000, num_points=0, point_head="normed", pooling="avg",
                 attention_target="centre-of-mass"):
        super().__init__()
        if pooling not in POOLINGS or attention_target not in ATTENTION_TARGETS:
            raise ValueError(f"unknown pooling {pooling!r} or attention target {attention_target!r}; choose from "
                             f"{', '.join(POOLINGS)} and {', '.join(ATTENTION_TARGETS)}")
        if pooling == "attentive" and num_points > 1:
            raise ValueError("attentive pooling predicts one point (ImageNet's click), not num_points > 1")
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        widths = [64, 128, 256, 512]
        inplanes = 64
        for i, (planes, n) in enumerate(zip(widths, layers)):
            setattr(self, f"layer{i + 1}", make_stage(block, inplanes, planes, n, stride=1 if i == 0 else 2))
            inplanes = planes * block.expansion
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)  # PyTorch's default Linear init, as torchvision
        self.num_features = inplanes
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.pooling, self.attention_target = pooling, attention_target
        # LUAB (appendix, Table D): a 1x1 conv scores every cell of the last feature map; zero-initialised, the
        # softmax of the scores is uniform and the pool is exactly the average pool (torchvision's model)
        self.attention = nn.Conv2d(inplanes, 1, 1) if pooling == "attentive" else None
        if self.attention is not None:
            nn.init.zeros_(self.attention.weight)
            nn.init.zeros_(self.attention.bias)
        self._init_point_head(inplanes, num_points if pooling == "avg" else 0, point_head)
        self.num_points = num_points

    @property
    def classifier(self):
        return self.fc

    def attention_scores(self, fmap):
        """[B, D, h, w] -> the attention's logits [B, 1, h, w] (float32); the 1x1 conv reads each cell's features
        as the point head reads the pooled ones (point_input: L2-normalised by default, for the same reason)."""
        return self.attention(F.normalize(fmap, dim=1) if self.point_head_kind == "normed" else fmap).float()

    def attention_map(self, fmap):
        """[B, D, h, w] -> attention [B, h, w]: a softmax over the h x w cells (sums to 1 per image)."""
        return self.attention_scores(fmap).flatten(1).softmax(dim=1).view(-1, *fmap.shape[2:])

    def pool(self, fmap):
        """LUAB (appendix): the last feature map [B, D, h, w] -> (features [B, D], points [B, 1, 2] or None).

        "avg": the global average pool; no point. "attentive" (the paper's point-guided pooling): features =
        sum over cells of attention x cell feature; point = the attention's centre of mass, cell (i, j) sitting
        at ((j + 0.5) / w, (i + 0.5) / h) of the input, in the point head's normalised frame. The click
        supervises it as attention_target says: "centre-of-mass" regresses that point to the click with LUAB's
        point loss; "map" pulls the attention towards a Gaussian at the click (attention_map_loss), so then in
        training mode the second output is the attention's scores [B, 1, h, w], what that loss reads. The
        classifier sees features gathered where the annotator clicked; at test time the prediction alone pools.
        Images without a click (mask 0) leave the attention to the classifier's loss."""
        if self.attention is None:
            return torch.flatten(self.avgpool(fmap), 1), None
        scores = self.attention_scores(fmap)                            # [B, 1, h, w]
        att = scores.flatten(1).softmax(dim=1).view(-1, *fmap.shape[2:])  # [B, h, w], as attention_map
        feats = torch.einsum("bdhw,bhw->bd", fmap.float(), att).to(fmap.dtype)
        if self.training and self.attention_target == "map":
            return feats, scores
        ys, xs = cell_centres(*att.shape[1:], att)
        point = torch.stack([(att.sum(1) * xs).sum(1), (att.sum(2) * ys).sum(1)], dim=1)
        return feats, point.view(-1, 1, 2)

    def feature_map(self, x):
        """x: [B, 3, H, W] -> last stage output [B, D, H/32, W/32] (what CAM weighs with fc.weight)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pooled_features(self, x):
        """x -> (pooled features [B, D], point [B, 1, 2] or None): the global average pool, or the attentive pool."""
        return self.pool(self.feature_map(x))

def cell_centres(h, w, like):
    """The centres of an h x w grid's cells in normalised input coordinates: (ys [h], xs [w])."""
    return [(torch.arange(n, device=like.device, dtype=torch.float32) + 0.5) / n for n in (h, w)]

def attention_map_loss(scores, points, sigma=0.1):
    """LUAB, attentive pooling's "map" reading: KL(target || attention) per click, 0 when the attention is the
    target. scores [B, 1, h, w] (the attention's logits, ResNet.pool); points [B, 1, 2] or [B, J, 1, 2]
    (normalised clicks, J after Mixup/CutMix) -> [B, 1] or [B, J, 1]. The target is a Gaussian of std `sigma`
    (a fraction of the image side) centred on the click, over the cells, normalised to sum 1."""
    h, w = scores.shape[-2:]
    ys, xs = cell_centres(h, w, scores)
    d2 = (points[..., :1] - xs.repeat(h)) ** 2 + (points[..., 1:] - ys.repeat_interleave(w)) ** 2  # [.., 1, hw]
    log_target = (-d2.float() / (2 * sigma ** 2)).log_softmax(-1)
    log_att = scores.flatten(1).log_softmax(-1).view(-1, *[1] * (points.dim() - 2), h * w)
    return (log_target.exp() * (log_target - log_att)).sum(-1)

# -----------------------------------------------------------------------------
# Vision Transformer

class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch for a whole sample, rescale the survivors (DeiT uses 0.1)."""

    def __init__(self, p=0.0):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"p={self.p}"

class SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameter names, with F.scaled_dot_product_attention doing the work."""

    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))  # rows: q, k, v (same as timm's qkv)
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x):
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)      # [B, N, 3D]
        qkv = qkv.unflatten(-1, (3, self.num_heads, -1)).permute(2, 0, 3, 1, 4)  # [3, B, heads, N, D/heads]
        y = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])   # [B, heads, N, D/heads]
        return self.out_proj(y.transpose(1, 2).flatten(2))            # [B, N, D]

class EncoderBlock(nn.Module):
    """Pre-norm transformer block, torchvision names (ln_1, self_attention, ln_2, mlp)."""

    def __init__(self, dim, num_heads, drop_path=0.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = SelfAttention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        # The no-op Dropouts are kept so the two Linears are mlp.0 and mlp.3, as in torchvision.
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(0.0),
                                 nn.Linear(4 * dim, dim), nn.Dropout(0.0))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.self_attention(self.ln_1(x)))
        return x + self.drop_path(self.mlp(self.ln_2(x)))

class Encoder(nn.Module):

    def __init__(self, seq_len, dim, depth, num_heads, drop_path=0.0):
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_len, dim))
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # linear decay 0 -> drop_path, as DeiT
        self.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", EncoderBlock(dim, num_heads, rates[i])) for i in range(depth)))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(x + self.pos_embedding))

class VisionTransformer(ImageClassifier):

    is_vit = True

    def __init__(self, dim, num_heads, depth=12, num_classes=1000, num_points=0, drop_path=0.0,
                 img_size=224, patch_size=16, point_head="normed"):
        super().__init__()
        if img_size % patch_size != 0:
            raise ValueError(f"img_size {img_size} is not a multiple of the patch size {patch_size}")
        self.patch_size = patch_size
        self.img_size = img_size
        self.num_features = dim
        self.conv_proj = nn.Conv2d(3, dim, patch_size, stride=patch_size)
        self.class_token = nn.Parameter(torch.empty(1, 1, dim))
        self.encoder = Encoder((img_size // patch_size) ** 2 + 1, dim, depth, num_heads, drop_path)
        self.heads = nn.Sequential(OrderedDict(head=nn.Linear(dim, num_classes)))
        # DeiT's init: trunc-normal(.02) on every Linear (head included; torchvision zeroes its head)
        # and on the two embeddings. conv_proj gets a truncated LeCun normal, torchvision's choice
        # (and timm's jax-style init); DeiT itself left PyTorch's default conv init there.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, SelfAttention):  # raw Parameters, but timm's qkv is a Linear
                nn.init.trunc_normal_(m.in_proj_weight, std=0.02)
                nn.init.zeros_(m.in_proj_bias)
        fan_in = 3 * patch_size * patch_size
        nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1.0 / fan_in))
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.trunc_normal_(self.class_token, std=0.02)
        nn.init.trunc_normal_(self.encoder.pos_embedding, std=0.02)
        self._init_point_head(dim, num_points, point_head)

    @property
    def classifier(self):
        return self.heads.head

    def tokens(self, x):
        """x: [B, 3, img_size, img_size] -> all tokens after the final LayerNorm [B, 1 + h*w, D]."""
        x = self.conv_proj(x).permute(0, 2, 3, 1).flatten(1, 2)  # [B, h*w, D], row-major patches; a view if NHWC
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x)

    def pooled_features(self, x):
        """x -> (the class token after the final LayerNorm [B, D], None: no point)."""
        return self.tokens(x)[:, 0], None

    def feature_map(self, x):
        """x -> patch tokens after the final LayerNorm on the patch grid [B, D, H/16, W/16]."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return self.tokens(x)[:, 1:].transpose(1, 2).unflatten(2, (h, w))

# -----------------------------------------------------------------------------
# the seven models

_CONFIGS = {
    "resnet18": dict(block=BasicBlock, layers=(2, 2, 2, 2)),
    "resnet50": dict(block=Bottleneck, layers=(3, 4, 6, 3)),
    "resnet101": dict(block=Bottleneck, layers=(3, 4, 23, 3)),
    "resnet152": dict(block=Bottleneck, layers=(3, 8, 36, 3)),
    "vit_tiny": dict(dim=192, num_heads=3),   # DeiT-Ti
    "vit_small": dict(dim=384, num_heads=6),  # DeiT-S
    "vit_base": dict(dim=768, num_heads=12),  # ViT-B/16 = DeiT-B
}
MODEL_NAMES = tuple(_CONFIGS)

def is_vit_name(name):
    """Whether a model name is one of the ViTs (for choices made before the model exists; else model.is_vit)."""
    return name.startswith("vit")

def create_model(name, num_classes=1000, num_points=0, drop_path=0.0, img_size=224, point_head="normed",
                 pooling="avg", attention_target="centre-of-mass"):
    """A backbone by name (MODEL_NAMES); num_points=K > 0 adds the point head, which reads the features as
    `point_head` (POINT_HEADS, see ImageClassifier.point_input) says. img_size only matters for ViTs.
    pooling="attentive" (ResNets, K <= 1): the attention's centre of mass is the point, no point head; the click
    supervises it as attention_target (ATTENTION_TARGETS) says."""
    if name not in _CONFIGS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    if attention_target != "centre-of-mass" and pooling != "attentive":  # else nothing would read it
        raise ValueError(f"attention target {attention_target!r} supervises an attentive pool: add pooling='attentive'")
    if is_vit_name(name):
        if pooling != "avg":
            raise ValueError(f"pooling {pooling!r} is only implemented for the ResNets")
        return VisionTransformer(**_CONFIGS[name], num_classes=num_classes, num_points=num_points,
                                 drop_path=drop_path, img_size=img_size, point_head=point_head)
    if drop_path:
        raise ValueError("drop_path is only implemented for the ViTs")
    return ResNet(**_CONFIGS[name], num_classes=num_classes, num_points=num_points, point_head=point_head,
                  pooling=pooling, attention_target=attention_target)

def point_parameters(model):
    """LUAB's own parameters in any module: its point head's and an attentive pool's attention; [] for a plain
    classifier (or a module that has neither, such as a bare layer)."""
    heads = [getattr(model, "point_head", None), getattr(model, "attention", None)]
    return [p for m in heads if m is not None for p in m.parameters()]

def param_groups(model, weight_decay):
    """AdamW groups with DeiT's rule: no decay on 1-D params (norms), biases, class_token and pos_embedding.
    (torchvision's ResNet recipe decays everything: pass model.parameters() to SGD there.)"""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.endswith((".bias", "class_token", "pos_embedding"))
        (no_decay if skip else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]

# -----------------------------------------------------------------------------
# rebuilding a trained model from its checkpoint (reading and loading weights: utils.py)

def model_from_checkpoint(path_or_ckpt, name=None, num_classes=None, num_points=None, img_size=None):
    """The one way to rebuild a trained model: a path (or read_checkpoint's result) -> (model in eval mode,
    meta, notes).

    Architecture, classes, point head and input size come from the checkpoint's meta; the arguments override
    them and are needed only for files that do not describe themselves (a torchvision / DeiT state dict:
    `name`; classes and points are then read from the heads' shapes). Raises ValueError (one line, to follow
    the file's name) when the file does not say or does not fit; `notes` are load_pretrained's remarks about
    the heads (e.g. a classifier absent from the file kept its fresh initialisation)."""
    ckpt = read_checkpoint(path_or_ckpt) if isinstance(path_or_ckpt, (str, os.PathLike)) else path_or_ckpt
    sd, meta = checkpoint_parts(ckpt)
    name = name or meta.get("model")
    if name is None:
        raise ValueError(f"does not say which architecture it holds (no meta): pass --model ({', '.join(MODEL_NAMES)})")
    if name not in MODEL_NAMES:
        raise ValueError(f"names an unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    if num_points is None:
        head = [v.shape[0] // 2 for k, v in sd.items() if k.endswith("point_head.weight")]
        num_points = meta.get("num_points", head[0] if head else 0)
    if num_classes is None:
        rows = [v.shape[0] for k, v in sd.items() if k.endswith(("fc.weight", "heads.head.weight", "head.weight"))
                and "point_head" not in k]
        num_classes = meta.get("num_classes") or (rows[0] if rows else 1000)
    attentive = any(strip_wrapper_prefixes(k) == "attention.weight" for k in sd)  # older files name no pooling
    pooling = meta.get("pooling") or ("attentive" if attentive else "avg")
    model = create_model(name, num_classes=num_classes, num_points=num_points,
                         img_size=img_size or meta.get("img_size") or 224, point_head=meta.get("point_head", "normed"),
                         pooling=pooling, attention_target=meta.get("attention_target", "centre-of-mass"))
    try:
        notes = load_pretrained(model, sd)
    except ValueError as e:
        raise ValueError(f"does not fit --model {name} ({num_classes} classes, {num_points} points): {str(e)[:300]}; "
                         "pass the --model (and --num-classes) it was trained with") from None
    return model.eval(), meta, notes
