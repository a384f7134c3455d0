"""
LUAB on COCO 2014: multi-label classification (80 classes) plus one point head per class, supervised by where
the COCO-AB annotators dropped each class icon.

    torchrun --nproc_per_node=8 train_coco.py --coco-dir /data/coco --coco-ab coco_ab_v1_0.json --luab
    torchrun --nproc_per_node=8 train_coco.py --coco-dir /data/coco --rand-points     # the paper's control
    torchrun --nproc_per_node=8 train_coco.py --coco-dir /data/coco                  # plain BCE training
    python train_coco.py --demo                                                       # CPU demo, synthetic data

The training machinery (DDP, the loop, AMP, compile, checkpoints, exact resume, log.jsonl) is train_imagenet.py's
`fit`; this file only says what is different on COCO:
  - the objective: BCE over the 80 classes + point_weight (lambda) x SmoothL1 on each present class's own
    head output, averaged over the image's classes that have an icon still inside the crop, then over images;
  - the data: COCO instances for the labels (a class whose icon left the crop keeps label 1, its point gets
    weight 0), COCO-AB icon positions for the points, the paper's COCO recipe with a raised RRC minimum scale;
  - the optimiser: AdamP (Heo et al., ICLR'21), which the paper uses for COCO;
  - validation: mAP over the 80 classes on val2014 (images with >= 1 annotation), and the point head's
    per-class localisation, both exact under DDP and computed as evaluate.py's COCO protocol.
"""
import argparse
import math
import os
import random

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import byproducts
import evaluate
import train_imagenet
from train_imagenet import add_training_args, autocast, fit, init_distributed, point_loss, resolve_args
import utils
from utils import log

# -----------------------------------------------------------------------------
# The paper's COCO recipe (appendix F). Epochs, warm-up, batch, image size, AdamP and "RRC with a raised minimum
# scale + random erasing" are the paper's; the text lost the learning rate, weight decay, RRC minimum, erasing
# probability and the lambdas, so those are documented defaults here, each a flag:
#   lr 1e-3, weight decay 1e-2: AdamP's own README example (clovaai/AdamP);
#   min_scale 0.5: an assumption ("raised" from 0.08; a multi-label crop should keep most of the scene);
#   re_prob 0.25: the erasing probability of the paper's ImageNet (DeiT) recipe;
#   color_jitter 0.4: the official COCO-AB dataloader notebook (ColorJitter(0.4, 0.4, 0.4));
#   min_lr 1e-5: DeiT's; drop_path 0 (ResNets have none; try 0.1 for ViTs).
# LUAB: point_weight "by-backbone" is the paper's rule ("small lambda works well with the small backbone network,
# and large lambda is more effective for larger backbone networks"), resolved in resolve_coco_args. Its values
# were lost. Under AdamP lambda sets the point loss's share of the backbone's gradient: ResNet-18's 1 gives about 1
# (benchmarks/coco_context.py: 0.49 at 0.5, 1.05 at 1, 6.3 at 5); the larger backbones' 4 is unmeasured.

RECIPES = {
    "coco": dict(epochs=100, batch_size=128, opt="adamp", lr=1e-3, lr_base_batch=128, momentum=0.9,
                 weight_decay=1e-2, sched="cosine", lr_step=30, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5,
                 lr_update="epoch", label_smoothing=0.0, randaugment="none", mixup=0.0, cutmix=0.0, re_prob=0.25,
                 drop_path=0.0, repeated_aug=1, interpolation="bilinear", min_scale=0.5, color_jitter=0.4,
                 point_weight="by-backbone", point_lr=10.0),
}

DEFAULTS = {**train_imagenet.DEFAULTS, "output_dir": "runs/coco"}


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="LUAB training on COCO 2014 (+ COCO-AB byproducts)", add_help=add_help,
                                allow_abbrev=False, formatter_class=utils.HelpFormatter,
                                epilog=utils.recipes_epilog(RECIPES) + "\n  by-backbone: lambda 1 for resnet18 and "
                                "vit_tiny, 4 for the larger backbones")
    g = p.add_argument_group("COCO data")
    g.add_argument("--coco-dir", help="COCO 2014 root: train2014/, val2014/, annotations/instances_*2014.json")
    g.add_argument("--coco-ab", help="the COCO-AB JSON (coco_ab_v1_0.json); needed by --luab")
    g.add_argument("--icon-rule", choices=["final-add", "final-position"], default="final-add",
                   help="which icon position is a class's point: its last 'add' (the paper) or where it finally rests")
    g.add_argument("--min-scale", type=float, help="RandomResizedCrop minimum area scale (recipe)")
    add_training_args(p, recipes=RECIPES, defaults=DEFAULTS, optimizers=OPTIMIZERS)
    return p


def resolve_coco_args(args, preset=None):
    """train_imagenet.resolve_args with the COCO recipe, then the recipe's lambda rule (unless --point-weight)."""
    args = resolve_args(args, RECIPES, DEFAULTS, preset)
    if args.point_weight == "by-backbone":  # LUAB: the paper's rule, small lambda for small backbones
        args.point_weight = 1.0 if args.model in ("resnet18", "vit_tiny") else 4.0
    return args


# -----------------------------------------------------------------------------
# AdamP

class AdamP(torch.optim.Optimizer):
    """AdamP: Heo, Chun, Oh, Han, Yun, Kim, Uh, Ha, "AdamP: Slowing Down the Slowdown for Momentum Optimizers on
    Scale-invariant Weights", ICLR 2021 (the LUAB paper's optimiser for COCO). Adam with decoupled weight decay;
    for a weight whose gradient is nearly orthogonal to it (scale invariant, e.g. a conv before BatchNorm), the
    radial component of the update is removed, per output channel if that view qualifies, else per layer, and
    its weight decay is multiplied by wd_ratio. The maths of the authors' clovaai/AdamP; the one difference is
    that all the "is it scale invariant?" tests of a step are read back with a single host-device sync."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, delta=0.1, wd_ratio=0.1,
                 nesterov=False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, delta=delta,
                                      wd_ratio=wd_ratio, nesterov=nesterov))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else torch.enable_grad()(closure)()
        todo, tests = [], []
        for group in self.param_groups:
            (beta1, beta2), eps = group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad, state = p.grad, self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2 ** state["step"])).add_(eps)
                update = (beta1 * m + (1 - beta1) * grad if group["nesterov"] else m) / denom
                todo.append((p, group, update, state["step"]))
                for rows in ((p.shape[0], 1) if p.dim() > 1 else ()):  # per output channel, per layer
                    g, w = grad.reshape(rows, -1), p.reshape(rows, -1)
                    # |cos(grad, p)| as F.cosine_similarity, without its full-size temporaries (3x faster on CPU)
                    cos = (g * w).sum(1).abs() / (g.norm(dim=1).clamp(min=eps) * w.norm(dim=1).clamp(min=eps))
                    tests.append(cos.max() < group["delta"] / math.sqrt(w.shape[1]))
        invariant = iter(torch.stack(tests).tolist() if tests else [])
        for p, group, update, step in todo:
            decay = group["lr"] * group["weight_decay"]
            if p.dim() > 1:
                per_channel, per_layer = next(invariant), next(invariant)
                if per_channel or per_layer:  # drop the radial part of the update: it would only grow |p|
                    rows = p.shape[0] if per_channel else 1
                    unit = p.reshape(rows, -1) / p.reshape(rows, -1).norm(dim=1, keepdim=True).add_(group["eps"])
                    u = update.reshape(rows, -1)
                    update = (u - unit * (unit * u).sum(1, keepdim=True)).view_as(p)
                    decay *= group["wd_ratio"]
            p.mul_(1 - decay).add_(update, alpha=-group["lr"] / (1 - group["betas"][0] ** step))
        return loss


# --opt -> optimiser class: train_imagenet's, and AdamP; train_imagenet.build_optimizer gives each the same
# parameter groups (no decay on norms, biases, class token, position embedding; the point heads at lr x
# --point-lr) and the same linearly scaled LR
OPTIMIZERS = {"adamp": AdamP, **train_imagenet.OPTIMIZERS}


# -----------------------------------------------------------------------------
# Data

def build_datasets(args):
    """Train: COCO-AB on train2014 (labels from the instances, points per args.points). Val: evaluate.py's COCO
    set (val2014 images with >= 1 annotation, Resize((S, S)), sorted by image id), so the numbers logged here
    are the numbers evaluate.py reports."""
    paths = {k: os.path.join(args.coco_dir or "", *k.split("/")) for k in
             ("train2014", "val2014", "annotations/instances_train2014.json", "annotations/instances_val2014.json")}
    missing = [k for k, v in paths.items() if not os.path.exists(v)]
    if not args.coco_dir or missing:
        raise SystemExit(f"--coco-dir must contain {', '.join(paths)} (got {args.coco_dir!r}; missing {missing})")
    if args.label_smoothing:
        raise SystemExit("--label-smoothing is not used by the COCO BCE objective")
    records = None
    clicked_only = args.points == "random" and args.rand_points_on == "clicked"
    if args.points == "clicks" or clicked_only:
        if not args.coco_ab or not os.path.isfile(args.coco_ab):
            raise SystemExit(f"{'--luab' if args.points == 'clicks' else '--rand-points-on clicked'} needs --coco-ab, "
                             f"the COCO-AB JSON (got {args.coco_ab!r})")
        try:
            records = byproducts.read_coco_ab(args.coco_ab, strict=args.strict_data)
        except byproducts.BadInput as e:
            raise SystemExit(f"error: {e}")
    train_tf = byproducts.TrainTransform(
        size=args.img_size, scale=(args.min_scale, 1.0), hflip=0.5, interpolation=args.interpolation,
        randaugment=None if args.randaugment in (None, "none") else args.randaugment,
        color_jitter=args.color_jitter, re_prob=args.re_prob)
    try:
        train = byproducts.CocoAB(paths["train2014"], paths["annotations/instances_train2014.json"], records,
                                  point_source="clicks" if clicked_only else args.points, icon_rule=args.icon_rule,
                                  transform=train_tf, data_fraction=args.data_fraction, seed=args.seed,
                                  strict=args.strict_data)
    except byproducts.BadInput as e:
        raise SystemExit(f"error: {e}")
    if clicked_only:
        byproducts.random_points_where_clicked(train, args.seed)
    if records is not None and not set(records) & set(train.image_ids):
        raise SystemExit(f"--coco-ab {args.coco_ab!r} has no record for any train image (wrong file?)")
    val = evaluate.CocoEvalSet(paths["val2014"], paths["annotations/instances_val2014.json"], size=args.img_size,
                               interpolation=args.interpolation)
    val.reader.strict = args.strict_data  # a broken val image: an error, not a NaN counted wrong
    if train.instances.cat_ids != val.category_ids:
        raise SystemExit("instances_train2014.json and instances_val2014.json have different categories")
    return train, val


# -----------------------------------------------------------------------------
# Objective

def coco_loss(args, outputs, batch):
    """(BCE over the classes, LUAB point loss). targets [B, C] multi-hot (or mixed); point_mask [B, K] (or
    [B, 2, K] after Mixup/CutMix) is 0 for absent classes, classes without an icon and icons outside the crop."""
    _, targets, points, point_mask = batch
    logits, pred_points = outputs
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets)
    if pred_points is None:  # plain training: the model has no point head
        return bce, logits.new_zeros(())
    # LUAB: the paper's "mean of the SmoothL1 losses for every class present in the image": each image's
    # points share a total weight of 1, and point_loss then averages over the images that have any point
    n_points = (point_mask > 0).flatten(1).sum(1).clamp(min=1)
    per_image = point_mask / n_points.view(-1, *[1] * (point_mask.dim() - 1))
    return bce, point_loss(pred_points, points, per_image, args.point_loss, args.smoothl1_beta)


# -----------------------------------------------------------------------------
# Validation

def coco_metrics(logits, targets, points=None, sizes=None, boxes=None):
    """logits [N, C] (only the order matters), targets [N, C] multi-hot -> {"val_map": mAP % over all C classes
    (evaluate.py / ASL: a class without positives counts 0), "val_map_present": over the classes with a positive}.
    With points [N, C, 2] (normalised in the Resize((S, S)) input, so pixel = (x * W, y * H)), sizes [N, 2] (W, H)
    and boxes (per image {class: [M, 4] x0, y0, x1, y1 pixels}): "val_point_acc", % of (image, present class)
    pairs whose predicted point of that class lies inside one of the image's GT boxes of that class."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets) > 0
    mean_ap, ap = evaluate.mean_average_precision(logits, targets)
    present = targets.any(0)
    stats = {"val_map": mean_ap, "val_map_present": float(ap[present].mean()) if present.any() else float("nan")}
    if points is not None:
        img, cls = np.nonzero(targets)
        px = evaluate.eval_points_to_original(np.asarray(points)[img, cls], np.asarray(sizes)[img], resize=None)
        stats["val_point_acc"] = evaluate.point_in_box_accuracy(px, [boxes[i].get(c) for i, c in zip(img, cls)])
    return stats


def val_geometry(val):
    """(sizes [N, 2] (W, H), per image {class: [M, 4] GT boxes in pixels}) of the val images: what the point
    localisation needs, computed once per run."""
    return np.array([[im["width"], im["height"]] for im in val.images], np.float64), \
        [val.boxes(i) for i in range(len(val))]


@torch.no_grad()
def evaluate_coco(args, model, loader, geometry=None):
    """Predict this rank's share of the val set, gather everything by dataset index (every image counted once
    whatever the world size), then coco_metrics on every rank; geometry = val_geometry(val) for a point head."""
    model.eval()
    with_points = geometry is not None
    logits, *points = evaluate.predict(model, loader, args.device, lambda: autocast(args), args.channels_last,
                                       points=with_points)
    # a broken val image is a NaN input, so its logits rank last for every class (counted wrong)
    broken = {"val_broken_images": loader.dataset.reader.counts(all_ranks=True)["broken_images"]}
    if not with_points:
        return {**coco_metrics(logits.numpy(), loader.dataset.targets), **broken}
    return {**coco_metrics(logits.numpy(), loader.dataset.targets, points[0].numpy(), *geometry), **broken}


# -----------------------------------------------------------------------------
# Demo

def demo_preset():
    """The --demo preset: a small LUAB run on the synthetic COCO-format data (shared with train_imagenet's demo:
    60 train / 20 val images, 6 of the 80 classes) on CPU; explicit flags win; lambda is the recipe's."""
    coco = os.path.join(utils.demo_data_dir(), "coco")
    return dict(coco_dir=coco, coco_ab=os.path.join(coco, "coco_ab_v1_0.json"), model="resnet18", points="clicks",
                img_size=48, epochs=60, batch_size=16, lr=1e-2, warmup_epochs=2, print_freq=20, eval_every=5,
                workers=min(2, utils.default_workers()), output_dir="runs/demo_coco")


# -----------------------------------------------------------------------------

def main(args):
    args = resolve_coco_args(args, demo_preset() if args.demo else None)
    init_distributed(args)
    utils.sigterm_as_ctrl_c()  # as train_imagenet: SIGTERM ends the run as Ctrl-C does
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    train_set, val_set = build_datasets(args)
    num_classes = train_set.instances.num_classes
    geometry = val_geometry(val_set) if args.points != "none" else None
    try:  # LUAB: one point target (head output) per class
        stats = fit(args, train_set, val_set, [c["name"] for c in train_set.instances.categories], num_classes,
                    coco_loss, lambda model, loader: evaluate_coco(args, model, loader, geometry),
                    optimizers=OPTIMIZERS, multi_label=True, best_key="val_map")
    finally:
        if args.distributed:
            dist.destroy_process_group()
    if args.demo and "val_map" in stats:  # what the numbers mean here: random scores, a head that says "centre"
        t = val_set.targets
        rng = np.random.default_rng(0)
        chance = np.mean([coco_metrics(rng.random(t.shape), t)["val_map_present"] for _ in range(100)])
        centre = coco_metrics(t, t, np.full(t.shape + (2,), 0.5), *geometry)["val_point_acc"] if geometry else None
        log(f"demo: val mAP {stats['val_map']:.1f} over all {num_classes} classes (only {int(t.any(0).sum())} "
            f"occur in the synthetic val set; the others score 0), {stats['val_map_present']:.1f} over the "
            f"classes that occur (random scores: {chance:.1f} on average)" + (
                f"; point localisation {stats['val_point_acc']:.1f}% of (image, class) pairs (always "
                f"predicting the image centre: {centre:.1f}%)" if geometry and "val_point_acc" in stats else ""))
    return stats


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except byproducts.BadInput as e:  # --strict-data: one line, also when a DataLoader worker raised it
        raise SystemExit(f"error: {byproducts.error_line(e)}")
