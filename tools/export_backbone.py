"""
Export a ResNet trained here as a plain torchvision state dict, for detection transfer (the paper's Table 3).

    python tools/export_backbone.py runs/r50_luab/checkpoint.pt --out r50_luab_tv.pth [--drop-fc]

The input is one of our checkpoints (checkpoint.pt or best.pt: {"model": state dict, "meta": {...}}) or a bare
torchvision-style state dict. The output is the state dict of `torchvision.models.<arch>()`, nothing else:
- the point head is dropped: it is LUAB's training-only head, and no detector has a place for it;
- the classifier `fc` is kept when it is 1000-way, so the file loads with strict=True into
  torchvision.models.resnet50() (which is how torchvision's detection builders load a backbone file), and
  dropped with --drop-fc or when it has another number of classes (detectors ignore it either way).
Parameter names are already torchvision's (models.py), so nothing is renamed; wrapper prefixes (DDP's
`module.`, torch.compile's `_orig_mod.`) are stripped on reading. ResNet-18/50/101/152 only: detection transfer
in the paper is ResNet-50 with Mask R-CNN, and a ViT has no FPN backbone in torchvision's detection models.

Using the file with torchvision's detection reference scripts (README, "Detection transfer"): their
`--weights-backbone ResNet50_Weights.IMAGENET1K_V1` builds the backbone with frozen BatchNorm and 3 trainable
stages (the usual protocol) and loads torch.hub's cached copy of that enum's file when one exists, without
hashing it; put this file there, under its file name, in a TORCH_HOME of its own.
"""

import argparse
import os
import re
import sys

import torch
import torchvision

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import models  # noqa: E402
import utils  # noqa: E402

RESNETS = {  # (Bottleneck blocks?, blocks in layer3) -> architecture: enough to tell our four ResNets apart
    (False, 2): "resnet18", (True, 6): "resnet50", (True, 23): "resnet101", (True, 36): "resnet152"}
VIT_KEYS = ("conv_proj.", "class_token", "cls_token", "patch_embed.", "encoder.layers.", "blocks.0.")
FC = ("fc.weight", "fc.bias")


def infer_arch(state_dict):
    """The ResNet a state dict (torchvision names) belongs to, from its block type and layer3 depth; None when
    it is none of RESNETS."""
    keys = {utils.strip_wrapper_prefixes(k) for k in state_dict}
    blocks = {m.group(1) for k in keys if (m := re.match(r"layer3\.(\d+)\.conv1\.weight$", k))}
    return RESNETS.get(("layer1.0.conv3.weight" in keys, len(blocks)))


def hub_file_name(arch):
    """The file name torch.hub caches the arch's IMAGENET1K_V1 weights under (resnet50 -> resnet50-0676ba61.pth):
    where torchvision's builders look before downloading."""
    url = torchvision.models.get_model_weights(arch)["IMAGENET1K_V1"].url
    return os.path.basename(url)


def export_backbone(checkpoint, out, drop_fc=False, arch=None):
    """Read `checkpoint` (a path: ours or a bare state dict), write the torchvision state dict to `out`
    (atomically: a temporary file renamed). Returns (arch, fc kept?, notes: one line per head dropped or kept).
    Raises ValueError with a one-line message for a ViT, an unknown architecture or a file that does not fit."""
    ckpt = utils.read_checkpoint(checkpoint)
    try:
        sd, meta = utils.checkpoint_parts(ckpt)
    except ValueError as e:
        raise ValueError(f"{checkpoint} {e}") from None
    keys = {utils.strip_wrapper_prefixes(k): k for k in sd}
    arch = arch or meta.get("model") or infer_arch(sd)
    if str(arch).startswith("vit") or any(k.startswith(VIT_KEYS) for k in keys):
        raise ValueError(f"{checkpoint} is a ViT: detection transfer (the paper's Table 3) is done with "
                         "ResNet-50; export a ResNet checkpoint")
    if arch not in RESNETS.values():
        raise ValueError(f"{checkpoint}: not one of {', '.join(RESNETS.values())} (its keys match none; "
                         "pass --model if the file is one)")
    notes = []
    has_fc = all(k in keys for k in FC)
    num_classes = sd[keys["fc.weight"]].shape[0] if has_fc else 1000
    # LUAB: a model without a point head; load_pretrained ignores the file's point head and checks every other
    # key and shape, so what is written is exactly what the checkpoint trained
    model = models.create_model(arch, num_classes=num_classes)
    utils.load_pretrained(model, sd)
    state = model.state_dict()
    n_point = sum(k.startswith("point_head.") for k in keys)
    if n_point:
        notes.append(f"dropped point_head ({n_point} tensors): LUAB's training-only head")
    if not has_fc or drop_fc or num_classes != 1000:
        why = ("the checkpoint has none" if not has_fc else "--drop-fc" if drop_fc
               else f"{num_classes} classes, not ImageNet's 1000")
        notes.append(f"dropped fc ({why}): load the file with strict=False, missing keys fc.weight, fc.bias")
        for k in FC:
            del state[k]
    else:
        notes.append(f"kept fc (1000 classes): the file loads with strict=True into torchvision.models.{arch}()")
    # the claim above, checked: torchvision's own model takes the file
    result = getattr(torchvision.models, arch)(weights=None).load_state_dict(state, strict=False)
    if result.unexpected_keys or set(result.missing_keys) - set(FC):
        raise ValueError(f"{checkpoint}: the export does not fit torchvision.models.{arch} ({result})")
    utils.save_checkpoint(state, out)  # atomic: a temporary file, fsynced and renamed
    return arch, "fc.weight" in state, notes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("checkpoint", help="our checkpoint.pt / best.pt, or a bare torchvision state dict")
    ap.add_argument("--out", required=True, help="the torchvision state dict to write (.pth)")
    ap.add_argument("--drop-fc", action="store_true", help="leave the 1000-way classifier out too")
    ap.add_argument("--model", choices=sorted(RESNETS.values()),
                    help="the architecture (default: the checkpoint's meta, else read from its keys)")
    args = ap.parse_args(argv)
    try:
        arch, fc_kept, notes = export_backbone(args.checkpoint, args.out, args.drop_fc, args.model)
    except (OSError, ValueError) as e:
        raise SystemExit(f"export_backbone: {e}")
    print(f"wrote {args.out}: torchvision {arch} state dict; " + "; ".join(notes))
    if arch == "resnet50" and fc_kept:  # torchvision's builder loads the enum's file with strict=True
        print(f"torchvision detection references: copy it to $TORCH_HOME/hub/checkpoints/{hub_file_name(arch)} "
              "(a TORCH_HOME of its own) and pass --weights-backbone ResNet50_Weights.IMAGENET1K_V1")
    return 0


if __name__ == "__main__":
    sys.exit(main())
