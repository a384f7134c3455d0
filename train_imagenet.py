"""
LUAB on ImageNet: supervised training plus a point-regression head supervised by the ImageNet-AB clicks.

    torchrun --nproc_per_node=8 train_imagenet.py --data-dir /data/imagenet --byproducts ab_index.npz --luab
    torchrun --nproc_per_node=8 train_imagenet.py --model vit_small --luab ...   # DeiT recipe for ViTs
    python train_imagenet.py --demo                                              # CPU demo on synthetic data

Plain DDP, no framework; without --luab / --rand-points a plain ResNet / DeiT training script. It reads top to
bottom: recipes and flags (resolve_args; init_distributed completes `args`, which nothing changes afterwards) ->
data -> model -> objective -> optimiser -> train_step -> the epoch loop (train_one_epoch, fit) -> validation ->
demo -> main. Machinery that is not LUAB's (the run folder, sampler, LR curve, EMA) is in utils.py. train_coco.py
reuses all of it and only says what COCO does differently.

LUAB in 9 places (each marked "LUAB:" in the code); everything else is ordinary supervised training:
  1. models.py: ImageClassifier._init_point_head - the point head, a Linear to K (x, y) points that starts by
     answering the image centre
  2. models.py: ImageClassifier.point_input - the head reads the L2-normalised penultimate features
  3. models.py: ImageClassifier.forward - return_points=True gives (logits, points) in one forward pass
  4. byproducts.py: the point targets - imagenet_click and coco_points (which click / icon position counts),
     ImageNetAB and CocoAB (a point and a point_mask per sample), TrainTransform and RandAugment (points move
     with the crop, flip and geometric ops; a point that leaves the crop is masked), mix_batch (points
     through Mixup/CutMix), random_points_where_clicked (the random-point control)
  5. train_imagenet.py: build_model - a point head only with --luab / --rand-points
  6. train_imagenet.py: point_loss - masked SmoothL1, averaged over the points that count in the global batch
  7. train_imagenet.py: train_step - loss = task loss + point_weight (lambda) x point loss
  8. train_imagenet.py: optimizer_groups and set_lr - the point head's parameters learn at lr x --point-lr
  9. train_coco.py: coco_loss and main - one point head output per class, averaged over each image's classes
The appendix's other use of the clicks (--pooling attentive, ResNets; Table D) replaces 1-3 with one place:
  models.py: ResNet.pool - a learned attention pools the last feature map; the click supervises its centre of
  mass, or the map itself (--attention-target map: attention_map_loss)
lambda and the head's LR per recipe: RECIPES (point_weight, point_lr; COCO's in train_coco.RECIPES). The evidence
that the head learns (train_point_vs_centre, point_grad_share, val_point_acc next to the centre's) is measured in
train_one_epoch and evaluate_imagenet, and judged by head_condition; it changes no weight.

Multi-node: torchrun's own launch, e.g. `torchrun --nnodes=2 --node_rank=R --master_addr=HOST
--nproc_per_node=8 train_imagenet.py ...`. `--batch-size` is always the *global* batch.
"""
import argparse
import json
import os
import random
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import byproducts
import evaluate
import utils
from utils import RepeatedAugSampler, SeededItems, UnpaddedDistributedSampler, all_reduce_sum, has_fused, log, \
    make_loader, resolve_speed_flags, to_device
from models import ATTENTION_TARGETS, MODEL_NAMES, POINT_HEADS, POOLINGS, attention_map_loss, create_model, \
    is_vit_name, load_pretrained, param_groups, point_parameters, read_checkpoint

# -----------------------------------------------------------------------------
# Recipes and flags. Every recipe value is a flag default; any flag given on the command line wins. The README's
# recipe table has the same values and their sources (a test keeps the two equal).

RECIPES = {
    # The paper's "standard 100-epochs setup" for ResNets: torchvision's ResNet V1 recipe (x0.1 at epochs 30, 60,
    # 90) plus the "basic strategy"'s ColorJitter at timm's strength 0.4. LUAB: lambda (point_weight) 20, and the
    # head at the backbone's LR (point_lr 1): under SGD lambda x lr is already the head's step size.
    "resnet": dict(epochs=100, batch_size=256, opt="sgd", lr=0.1, lr_base_batch=256, momentum=0.9,
                   weight_decay=1e-4, sched="step", lr_step=30, warmup_epochs=0, warmup_lr=0.0, min_lr=0.0,
                   lr_update="epoch", label_smoothing=0.0, randaugment="none", color_jitter=0.4, mixup=0.0,
                   cutmix=0.0, re_prob=0.0, drop_path=0.0, repeated_aug=1, interpolation="bilinear",
                   point_weight=20.0, point_lr=1.0),
    # DeiT's main.py defaults, which the paper used "with default settings" (its colour jitter is inactive under
    # RandAugment). LUAB: under AdamW a weight moves by about lr per step whatever lambda: the head gets lr x 10.
    "deit": dict(epochs=300, batch_size=1024, opt="adamw", lr=5e-4, lr_base_batch=512, momentum=0.9,
                 weight_decay=0.05, sched="cosine", lr_step=30, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5,
                 lr_update="epoch", label_smoothing=0.1, randaugment="rand-m9-mstd0.5-inc1", color_jitter=0.3,
                 mixup=0.8, cutmix=1.0, re_prob=0.25, drop_path=0.1, repeated_aug=3, interpolation="bicubic",
                 point_weight=20.0, point_lr=10.0),
    # The appendix's "primitive" ViT setup (Table 2's ViT rows): the DeiT codebase without RandAugment, stochastic
    # depth, random erasing, Mixup and CutMix, at "learning rate 1e-3 and weight decay 0.3" (1e-3 read as DeiT's
    # --lr, scaled by batch/512); everything else DeiT's default (colour jitter 0.3 active: no RandAugment).
    "vit": dict(epochs=300, batch_size=1024, opt="adamw", lr=1e-3, lr_base_batch=512, momentum=0.9,
                weight_decay=0.3, sched="cosine", lr_step=30, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5,
                lr_update="epoch", label_smoothing=0.1, randaugment="none", color_jitter=0.3, mixup=0.0,
                cutmix=0.0, re_prob=0.0, drop_path=0.0, repeated_aug=3, interpolation="bicubic",
                point_weight=20.0, point_lr=10.0),
}

# The flags that are neither recipe values nor optional: an explicit flag > the --demo preset > the recipe > these.
DEFAULTS = dict(model="resnet50", points="none", img_size=224, print_freq=50, output_dir="runs/imagenet")


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="LUAB training on ImageNet (+ ImageNet-AB byproducts)",
                                add_help=add_help, allow_abbrev=False, formatter_class=utils.HelpFormatter,
                                epilog=utils.recipes_epilog(RECIPES))
    g = p.add_argument_group("ImageNet data")
    g.add_argument("--data-dir", help="ImageNet root with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    g.add_argument("--byproducts", help="ImageNet-AB click index (tools/prepare.py index-imagenet) or XML root")
    g.add_argument("--val-boxes", help="ILSVRC box XMLs of the val images: the point head's localisation accuracy")
    g.add_argument("--allow-empty-classes", action="store_true", help="keep class folders without images")
    add_training_args(p, recipes=RECIPES, defaults=DEFAULTS, optimizers=OPTIMIZERS)
    return p


def add_training_args(p, recipes, defaults, optimizers):
    """The flags every training script shares; `optimizers` is the script's {--opt: class} table. A flag whose
    value comes from a preset defaults to None (resolve_args fills it). The README explains them at length."""
    p.add_argument("--model", choices=MODEL_NAMES, help=f"backbone (default: {defaults['model']})")
    p.add_argument("--recipe", choices=list(recipes), help="hyper-parameter preset, listed below (default: "
                   + ("resnet for ResNets, deit for ViTs)" if "deit" in recipes else f"{next(iter(recipes))})"))
    g = p.add_argument_group("data")
    g.add_argument("--data-fraction", type=float, default=1.0, help="train on this fraction of the train set")
    g.add_argument("--img-size", type=int, help=f"training / validation resolution (default: {defaults['img_size']})")
    g.add_argument("--val-resize", type=int, help="resize before the val centre crop (default: img-size / 0.875)")
    g.add_argument("--workers", type=int, help=f"loader workers per process (default: {utils.default_workers()} here)")
    g.add_argument("--strict-data", action="store_true", help="bad records and broken images are errors, not skips")
    g = p.add_argument_group("LUAB")
    x = g.add_mutually_exclusive_group()  # three spellings of one choice
    x.add_argument("--points", choices=["clicks", "random", "none"], help="the point targets (default: none)")
    x.add_argument("--luab", dest="points", action="store_const", const="clicks", help="= --points clicks (the paper)")
    x.add_argument("--rand-points", dest="points", action="store_const", const="random", help="= --points random")
    g.add_argument("--rand-points-on", choices=["all", "clicked"], default="all", help="which images get random points")
    g.add_argument("--point-weight", type=float, help="lambda, the point loss's weight (recipe)")
    g.add_argument("--point-lr", type=float, help="the point head's LR as a multiple of the scheduled LR (recipe)")
    g.add_argument("--point-head", choices=list(POINT_HEADS), default="normed", help="what the point head reads")
    g.add_argument("--pooling", choices=list(POOLINGS), default="avg", help="ResNets: attentive = point-guided pooling")
    g.add_argument("--attention-target", choices=list(ATTENTION_TARGETS), default="centre-of-mass",
                   help="--pooling attentive: what the click supervises (models.ResNet.pool)")
    g.add_argument("--attention-sigma", type=float, default=0.1, help="the map target's std (a fraction of the side)")
    g.add_argument("--point-loss", choices=["smoothl1", "mse"], default="smoothl1", help="per-point loss")
    g.add_argument("--smoothl1-beta", type=float, default=1.0, help="SmoothL1's quadratic-to-linear switch")
    g = p.add_argument_group("optimisation (recipe: the defaults come from --recipe)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="GLOBAL batch size over all processes")
    g.add_argument("--opt", choices=list(optimizers))
    g.add_argument("--lr", type=float, help="LR at a global batch of --lr-base-batch, scaled linearly to --batch-size")
    g.add_argument("--lr-base-batch", type=int)
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--sched", choices=["step", "cosine"])
    g.add_argument("--lr-step", type=int, help="step schedule: x0.1 every this many epochs")
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--warmup-lr", type=float, help="LR of the first warm-up epoch (DeiT's --warmup-lr)")
    g.add_argument("--min-lr", type=float)
    g.add_argument("--lr-update", choices=["epoch", "step"], help="set the LR once per epoch (as DeiT) or every step")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--randaugment", help="timm-style config, e.g. 'rand-m9-mstd0.5-inc1', or 'none'")
    g.add_argument("--color-jitter", type=float, help="brightness = contrast = saturation jitter, without RandAugment")
    g.add_argument("--mixup", type=float, help="Mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float, help="CutMix alpha (0 = off)")
    g.add_argument("--re-prob", type=float, help="random erasing probability")
    g.add_argument("--drop-path", type=float, help="stochastic depth rate (ViT)")
    g.add_argument("--repeated-aug", type=int, help="repeated augmentation: copies of each image per epoch")
    g.add_argument("--interpolation", choices=["bilinear", "bicubic"])
    g.add_argument("--clip-grad", type=float, default=0.0, help="max grad norm (0 = off)")
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (saved, evaluated too)")
    g.add_argument("--model-ema-decay", type=float, default=0.99996)
    utils.add_run_args(p, defaults)  # speed and run folder flags


def resolve_args(args, recipes, defaults=DEFAULTS, preset=None):
    """Fill every flag left unset from `preset` (a dict, e.g. the demo's), then the recipe, then `defaults`: an
    explicit flag always wins. (init_distributed completes `args`.)"""
    for k, v in (preset or {}).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.model is None:
        args.model = defaults["model"]
    if args.recipe is None:
        args.recipe = ("deit" if is_vit_name(args.model) else "resnet") if "deit" in recipes else next(iter(recipes))
    for k, v in {**defaults, **recipes[args.recipe]}.items():  # the recipe's value wins over a default
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.workers is None:
        args.workers = utils.default_workers()
    if args.val_resize is None:
        args.val_resize = int(round(args.img_size / 0.875))  # the usual 0.875 test crop ratio
    return args


def init_distributed(args):
    """What torchrun and the machine decide: the process group, args.rank, world_size, local_rank, distributed,
    device, then the speed flags. After this `args` is complete and nothing changes it."""
    args.rank, args.world_size, args.device = utils.init_distributed(args.device, args.dist_timeout)
    args.local_rank = int(os.environ.get("LOCAL_RANK", 0))
    args.distributed = args.world_size > 1
    if args.batch_size % args.world_size:
        raise SystemExit(f"--batch-size {args.batch_size} (global) must be divisible by {args.world_size} processes")
    resolve_speed_flags(args)


# -----------------------------------------------------------------------------
# Data. The sampler (utils.RepeatedAugSampler) owns all data randomness, so crops do not depend on the number of
# workers or processes and a resumed run sees exactly the data the uninterrupted run would have seen.

def build_datasets(args):
    for d in ("train", "val"):
        if not args.data_dir or not os.path.isdir(os.path.join(args.data_dir, d)):
            raise SystemExit(f"--data-dir must contain {d}/<wnid>/*.JPEG (got {args.data_dir!r})")
    clicked_only = args.points == "random" and args.rand_points_on == "clicked"
    if (args.points == "clicks" or clicked_only) and not args.byproducts:
        raise SystemExit(f"{'--luab' if args.points == 'clicks' else '--rand-points-on clicked'} needs --byproducts "
                         "(an index from `tools/prepare.py index-imagenet` or the XML root)")
    if args.byproducts and not os.path.exists(args.byproducts):
        raise SystemExit(f"--byproducts {args.byproducts!r} does not exist")
    train_tf = byproducts.TrainTransform(
        size=args.img_size, hflip=0.5, interpolation=args.interpolation,
        randaugment=None if args.randaugment in (None, "none") else args.randaugment,
        color_jitter=args.color_jitter, re_prob=args.re_prob)
    val_tf = byproducts.EvalTransform(size=args.img_size, resize=args.val_resize, interpolation=args.interpolation)
    try:  # a refused index, an empty class folder, --strict-data: one line naming the file
        train = byproducts.ImageNetAB(os.path.join(args.data_dir, "train"),
                                      clicks=args.byproducts if args.points == "clicks" or clicked_only else None,
                                      point_source="clicks" if clicked_only else args.points, transform=train_tf,
                                      data_fraction=args.data_fraction, seed=args.seed, strict=args.strict_data,
                                      allow_empty_classes=args.allow_empty_classes)
        # validation counts a broken image wrong (a NaN input), as evaluate.py does
        val = byproducts.ImageNetAB(os.path.join(args.data_dir, "val"), point_source="none", transform=val_tf,
                                    strict=args.strict_data, allow_empty_classes=args.allow_empty_classes,
                                    broken="nan")
    except byproducts.BadInput as e:
        raise SystemExit(f"error: {e}")
    if clicked_only:
        byproducts.random_points_where_clicked(train, args.seed)
    if train.classes != val.classes:
        raise SystemExit("train/ and val/ have different class folders")
    if (args.points == "clicks" or clicked_only) and train.num_point_targets == 0:
        raise SystemExit(f"--byproducts {args.byproducts!r} matches no image of {args.data_dir}/train "
                         "(wrong file, or keys not of the form wnid/stem?)")
    return train, val


def val_point_boxes(args, val):
    """For each val image, its GT boxes normalised to [0, 1] of the image or None, and the (W, H) sizes."""
    if not args.val_boxes:
        return None
    try:
        boxes = byproducts.load_boxes(args.val_boxes)
    except byproducts.BadInput as e:
        raise SystemExit(f"--val-boxes: {e}")
    boxes, sizes = evaluate.image_boxes([path for path, _ in val.samples], val.keys, boxes)
    if not any(b is not None for b in boxes):
        raise SystemExit(f"--val-boxes {args.val_boxes!r} matches no val image")
    return boxes, sizes


# -----------------------------------------------------------------------------
# Model

def build_model(args, num_classes, num_points):
    """The backbone on args.device, from --pretrained if given. LUAB: with --luab / --rand-points it gets a point
    head regressing `num_points` (x, y) per image (ImageNet 1, COCO one per class); --points none: no head."""
    try:
        model = create_model(args.model, num_classes=num_classes, num_points=num_points if args.points != "none" else 0,
                             drop_path=args.drop_path, img_size=args.img_size, point_head=args.point_head,
                             pooling=args.pooling, attention_target=args.attention_target)
    except ValueError as e:  # e.g. --pooling attentive with a ViT or with COCO's 80 points
        raise SystemExit(f"--model {args.model} --pooling {args.pooling}: {e}")
    if args.pretrained:  # fine-tuning: a classifier / point head of another size keeps its fresh initialisation
        try:
            notes = load_pretrained(model, args.pretrained, drop_mismatched_heads=True)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--pretrained {args.pretrained}: {e}")
        log(f"initialised from {args.pretrained}" + (f" ({'; '.join(notes)})" if notes else ""))
        if args.eval_only and model.point_head is not None and any(
                n.startswith("point_head.") and "not in the checkpoint" in n for n in notes):
            raise SystemExit(f"--pretrained {args.pretrained} has no point head: its point accuracy cannot be "
                             "measured; evaluate it with --points none")
    if args.sync_bn and args.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(args.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


# -----------------------------------------------------------------------------
# Objective: the task loss, and LUAB's point loss

def point_loss(pred, points, point_mask, kind="smoothl1", beta=1.0, sigma=0.1):
    """LUAB: masked point regression, averaged over the points that count in the *global* batch.

    pred [B, K, 2]; points [B, K, 2] or [B, J, K, 2] (J targets per sample after Mixup/CutMix); point_mask the
    same without the last dim: 0 where a point does not count (no byproduct, or it left the crop), else its
    weight (1, or the mixing weight after Mixup/CutMix). Dividing by the global mask sum (times world size,
    because DDP averages gradients) makes the loss and its gradients identical for any number of processes.
    --attention-target map: pred is the attention's scores [B, 1, h, w], a point's loss attention_map_loss."""
    if pred.dim() == 4:
        per_point = attention_map_loss(pred, points, sigma)  # [B, (J,) 1]
    else:
        pred = (pred.unsqueeze(1) if points.dim() == 4 else pred).float().expand_as(points)
        per_point = (F.smooth_l1_loss(pred, points, reduction="none", beta=beta) if kind == "smoothl1"
                     else F.mse_loss(pred, points, reduction="none")).sum(-1)  # [B, (J,) K]
    denom = all_reduce_sum(point_mask.sum().detach().clone())
    world = utils.get_world_size()
    return (per_point * point_mask).sum() * world / denom.clamp(min=1e-6)


def imagenet_loss(args, outputs, batch):
    """(cross-entropy, LUAB point loss) of outputs = (logits [B, C], points [B, 1, 2] or None) on batch =
    (images, labels [B] or soft [B, C] after Mixup/CutMix, points [B, 1, 2] or [B, 2, 1, 2], point_mask)."""
    logits, pred_points = outputs
    _, targets, points, point_mask = batch
    if targets.dim() == 1:
        loss_task = F.cross_entropy(logits.float(), targets, label_smoothing=args.label_smoothing)
    else:  # soft targets: their cross-entropy
        loss_task = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    if pred_points is None:
        return loss_task, torch.zeros((), device=logits.device)
    return loss_task, point_loss(pred_points, points, point_mask, args.point_loss, args.smoothl1_beta,
                                 args.attention_sigma)


def make_mix(args, num_classes, multi_label=False):
    """Mixup/CutMix with the points carried along (byproducts.mix_batch), or None when both are off: mix(batch,
    generator) -> batch. Labels become label-smoothed one-hot vectors first; multi-hot ones are mixed as they are."""
    if not (args.mixup > 0 or args.cutmix > 0):
        return None

    def mix(batch, generator):
        images, targets, points, point_mask = batch
        if not multi_label:
            targets = F.one_hot(targets, num_classes).float()
            targets = targets * (1 - args.label_smoothing) + args.label_smoothing / num_classes
        return list(byproducts.mix_batch(images, targets, points, point_mask, mixup_alpha=args.mixup,
                                         cutmix_alpha=args.cutmix, generator=generator))
    return mix


# -----------------------------------------------------------------------------
# Optimiser (LUAB: the point head's learning rate); the LR curve is utils.lr_at, a pure function of the step

def optimizer_groups(args, model):
    """Parameter groups: DeiT's no-decay rule for the Adam family (models.param_groups); for SGD one group,
    torchvision's ResNet recipe decays every parameter (BN and biases included). LUAB: the point head's
    parameters go into groups of their own ("point_head": True), which set_lr runs at lr x --point-lr."""
    groups = param_groups(model, args.weight_decay) if args.opt != "sgd" else \
        [{"params": list(model.parameters()), "weight_decay": args.weight_decay}]
    head = {id(p) for p in point_parameters(model)}
    out = []
    for g in groups:
        for in_head in (False, True):
            params = [p for p in g["params"] if (id(p) in head) == in_head]
            if params:
                out.append({**g, "params": params, "point_head": in_head})  # LUAB
    return out


def set_lr(args, optimizer, lr):
    """The scheduled LR into every group. LUAB: the point head's at lr x --point-lr (under the Adam family a weight
    moves by about lr per step whatever lambda, and at the backbone's lr the head barely leaves the centre)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * args.point_lr if g["point_head"] else lr


# --opt -> optimiser class; train_coco.py adds AdamP to its copy of this table
OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def build_optimizer(args, model, optimizers=OPTIMIZERS):
    """optimizers[args.opt] on optimizer_groups, at the linearly scaled LR -> (optimizer, that peak LR). Fused
    (one kernel per parameter does the whole update) where this torch has it for the device."""
    lr = args.lr * args.batch_size / args.lr_base_batch
    opt_class = optimizers[args.opt]
    kwargs = {"momentum": args.momentum} if args.opt == "sgd" else {}
    if has_fused(opt_class, args.device):
        kwargs["fused"] = True
    return opt_class(optimizer_groups(args, model), lr=lr, weight_decay=args.weight_decay, **kwargs), lr


# -----------------------------------------------------------------------------
# One training step

def autocast(args):
    """The context the forward pass runs in: with --amp, autocast to --amp-dtype. Only the model runs inside it:
    losses and metrics are computed outside in fp32, so the numbers reported do not depend on --amp."""
    return utils.autocast(args.device, args.amp_dtype if args.amp else None)


def point_grad_share(model, point_weight, loss_task, loss_point):
    """LUAB at work on this process's batch: ||d(lambda x point loss)/d backbone|| / ||d(task loss)/d backbone||
    over the backbone parameters of the unwrapped `model` (heads excluded); two extra backward passes."""
    heads = {id(p) for p in [*model.classifier.parameters(), *point_parameters(model)]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in heads]

    def norm(loss):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return torch.sqrt(sum(g.float().pow(2).sum() for g in grads if g is not None))
    return (norm(point_weight * loss_point) / norm(loss_task).clamp(min=1e-12)).item()


def train_step(args, model, batch, optimizer, loss_fn, scaler=None, grad_share_of=None):
    """One optimisation step on a batch on the device (mixed): forward under autocast, the task and point losses,
    their LUAB sum, backward (scaled by the fp16 GradScaler if given), clip (--clip-grad), step. `model` runs the
    step (DDP / compiled wrapper or the model); grad_share_of, the unwrapped model, asks for point_grad_share on
    this batch. Returns (outputs = (logits, points or None), task loss, point loss (detached), share or None)."""
    with autocast(args):
        outputs = model(batch[0], return_points=True)  # LUAB: (logits, points), points None without a head
    loss_task, loss_point = loss_fn(args, outputs, batch)
    loss = loss_task + args.point_weight * loss_point  # LUAB: the whole change to the objective
    share = None
    if grad_share_of is not None and outputs[1] is not None:
        share = point_grad_share(grad_share_of, args.point_weight, loss_task, loss_point)
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        scaler.unscale_(optimizer)  # clipping sees the true gradients
    if args.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return outputs, loss_task.detach(), loss_point.detach(), share


# -----------------------------------------------------------------------------
# The epoch loop, and LUAB's evidence: is the head beating the centre, and how hard does it push the backbone?

def centre_point_loss(args, loss_fn, outputs, batch):
    """The point loss that always predicting the image centre would get on this batch's targets: the level an
    idle point head stays at. 0 for a plain run."""
    if outputs[1] is None:
        return torch.zeros((), device=args.device)
    return loss_fn(args, (outputs[0].detach(), torch.full_like(outputs[1].detach(), 0.5)), batch)[1]


def train_one_epoch(args, model, loader, epoch, steps_per_epoch, optimizer, peak_lr, loss_fn, mix=None,
                    scaler=None, ema=None, train_model=None, progress=None):
    """One pass over `loader` (at most --max-steps-per-epoch steps) of train_step -> the epoch's mean losses,
    throughput, data wait. `model` is the unwrapped model, train_model its DDP / compiled wrapper (default: model).
    LUAB runs also log the centre's point loss on the same targets, the ratio, and point_grad_share of the first
    batch. progress (a dict) gets the current step, for the message of an interrupted run."""
    train_model = model if train_model is None else train_model
    train_model.train()
    steps = len(loader) if not args.max_steps_per_epoch else min(len(loader), args.max_steps_per_epoch)
    sums = torch.zeros(4, device=args.device)  # loss, point loss, centre-baseline point loss, number of steps
    grad_share, has_head = None, args.points != "none"  # point targets: points predicted (head or attentive pool)
    timer, it = utils.StepTimer(epoch, args.epochs, steps, args.batch_size, args.print_freq), iter(loader)
    for i in range(steps):
        with timer.waiting():
            batch = to_device(args, next(it))
        step = epoch * steps_per_epoch + i
        if progress is not None:
            progress["step"] = i
        set_lr(args, optimizer, utils.lr_at(args, peak_lr, step, steps_per_epoch))
        if mix is not None:  # a CPU generator (mix_batch draws on the CPU), seeded by step and rank: resumable
            batch = mix(batch, torch.Generator().manual_seed(args.seed * 7919 + step * 131 + args.rank))
        # the gradient share on the first batch; not through a torch.compile'd graph (autograd.grad there gave
        # 0 alone and NaN weights under DDP), so a compiled run logs none
        outputs, loss_task, loss_point, share = train_step(
            args, train_model, batch, optimizer, loss_fn, scaler,
            grad_share_of=model if i == 0 and has_head and not args.compile else None)
        grad_share = share if i == 0 else grad_share
        loss_centre = centre_point_loss(args, loss_fn, outputs, batch)  # LUAB evidence: better than the centre?
        if ema is not None:
            ema.update(model)
        loss = loss_task + args.point_weight * loss_point  # train_step's objective, for the log
        sums += torch.stack([loss, loss_point, loss_centre, torch.ones((), device=args.device)])
        if timer.due(i):
            vs = f" ({loss_point.item() / max(loss_centre.item(), 1e-12):.2f} x centre)" if has_head else ""
            timer.print(i, f"loss {loss.item():.4f} point {loss_point.item():.4f}{vs} "
                           f"lr {optimizer.param_groups[0]['lr']:.3g}")
    all_reduce_sum(sums)
    loss, loss_point, loss_centre = (sums[:3] / sums[3]).tolist()
    stats = {"train_loss": loss, "train_point_loss": loss_point}
    if has_head:
        stats.update(train_point_centre_loss=loss_centre, train_point_vs_centre=loss_point / max(loss_centre, 1e-12))
        if grad_share is not None:
            stats["point_grad_share"] = grad_share
    problems = loader.dataset.dataset.problem_counts(all_ranks=True)  # found so far, by every worker and rank
    return {**stats, **timer.stats(), **{f"train_{k}": v for k, v in problems.items()}}


# LUAB's health, judged from its 4th epoch (IDLE_HEAD_EPOCHS = 3) on: a head whose point loss is still above 0.9 x
# the centre's is not learning, and point_grad_share says which way lambda must go. Logged at start and end.
IDLE_HEAD_EPOCHS, IDLE_HEAD_RATIO = 3, 0.9
HEAD_CONDITIONS = {
    "idle": "the point head is still at the centre baseline and its gradient share is below 1: LUAB acts like "
            "plain training; raise --point-weight",
    "outweighed": "the point head is not beating the centre baseline although its gradient share is 1 or more (the "
                  "point loss dominates the backbone's gradient): lower --point-weight or raise --point-lr",
}


def head_condition(stats):
    """LUAB: None (learning, or too early to tell), "idle" or "outweighed" (HEAD_CONDITIONS) from an epoch's log
    line; a share not measured (--compile) counts as below 1."""
    if stats["epoch"] < IDLE_HEAD_EPOCHS or stats.get("train_point_vs_centre", 0.0) <= IDLE_HEAD_RATIO:
        return None
    return "outweighed" if (stats.get("point_grad_share") or 0.0) >= 1 else "idle"


def report_head(log_lines):
    """Log a head condition once when it starts and once when it ends (from the log's last two epochs)."""
    s, share = log_lines[-1], log_lines[-1].get("point_grad_share")
    before, now = head_condition(log_lines[-2]) if len(log_lines) > 1 else None, head_condition(s)
    numbers = f"point loss {s['train_point_vs_centre']:.2f} x centre, gradient share " + (
        f"{share:.3g}" if share is not None else "not measured")
    if before and before != now:
        log(f"note: epoch {s['epoch']}: the point head is no longer {before} ({numbers})")
    if now and now != before:
        log(f"warning: epoch {s['epoch']}: {HEAD_CONDITIONS[now]} ({numbers})")


def fit(args, train_set, val_set, classes, num_points, loss_fn, evaluate_fn, optimizers=OPTIMIZERS,
        multi_label=False, best_key="val_top1"):
    """The training run of train_imagenet.py and train_coco.py: model, optimiser, run folder, resume, the epoch
    loop, validation, checkpoints, logs. What differs is passed in: class names, `num_points` per image (1 click;
    COCO: one per class), loss_fn(args, outputs, batch) -> (task loss, point loss), evaluate_fn(model, loader) ->
    dict, `optimizers`, `multi_label` (multi-hot targets) and `best_key` (best.pt). -> the last epoch's stats."""
    t_start = time.time()
    model = build_model(args, len(classes), num_points)
    # same initial weights on every rank (seeded in main), then per-rank randomness (drop-path); the data's: the sampler
    torch.manual_seed(args.seed + args.rank)
    random.seed(args.seed + args.rank)
    optimizer, peak_lr = build_optimizer(args, model, optimizers)
    fp16 = args.amp and args.amp_dtype == "float16" and args.device.startswith("cuda")
    scaler = torch.amp.GradScaler() if fp16 else None  # bf16 needs no loss scaling
    ema = utils.ModelEma(model, args.model_ema_decay) if args.model_ema else None
    meta = utils.checkpoint_meta(args, classes, model.num_points)
    run = utils.RunFolder(args.output_dir)
    if not args.eval_only:  # room for a checkpoint: the weights, SGD's 1 or Adam's 2 moments, the EMA
        run.prepare(args.resume, args.overwrite, sum(t.numel() * t.element_size() for t in model.state_dict().values()),
                    copies=1 + (2 if args.opt != "sgd" else 1) + (1 if ema else 0))
    start_epoch, log_lines, best, elapsed_before = 0, [], None, 0.0
    # weights_only=True (read_checkpoint): a checkpoint must not run code
    ckpt = run.resume(read_checkpoint, {"model": args.model, "points": args.points}, args.eval_only) \
        if args.resume else None
    if ckpt is not None:
        for part, key in ((model, "model"), (optimizer, "optimizer"), (scaler, "scaler"), (ema and ema.module, "ema")):
            if part is not None and ckpt.get(key):
                part.load_state_dict(ckpt[key])
        utils.set_rng_state(ckpt["rng"])
        start_epoch, log_lines, best = ckpt["epoch"] + 1, ckpt.get("log", []), ckpt.get("best")
        elapsed_before = ckpt.get("elapsed_s", 0.0)

    train_model = DDP(model, device_ids=[args.local_rank] if args.device.startswith("cuda") else None) \
        if args.distributed else model
    if args.compile:  # only the training forward/backward; checkpoints and EMA read the uncompiled `model`,
        train_model = torch.compile(train_model)  # so their keys carry no `_orig_mod.` (nor DDP's `module.`)
    val_loader = make_loader(args, val_set, UnpaddedDistributedSampler(len(val_set), args.rank, args.world_size),
                             train=False)
    if args.eval_only:
        stats = evaluate_fn(model, val_loader)
        log(json.dumps(stats))
        return stats
    if start_epoch >= args.epochs:
        log(f"{run.path} holds a finished run (epoch {start_epoch} of {args.epochs}): nothing to train; "
            "raise --epochs to train it longer")
        return log_lines[-1] if log_lines else {}

    sampler = RepeatedAugSampler(len(train_set), args.rank, args.world_size, args.repeated_aug, args.seed)
    loader = make_loader(args, SeededItems(train_set), sampler, train=True)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise SystemExit(f"the train set ({len(train_set)} images) is smaller than one batch ({args.batch_size})")
    mix = make_mix(args, len(classes), multi_label)
    run.start({**utils.run_config(args, meta), "resumed_at_epoch": start_epoch or None}, log_lines)
    utils.print_run_header(args, model, train_set, val_set, len(classes), peak_lr, start_epoch, steps_per_epoch)

    epoch, stats, progress = start_epoch, {}, {}
    try:
        for epoch in range(start_epoch, args.epochs):
            sampler.set_epoch(epoch)
            progress.clear()
            stats = train_one_epoch(args, model, loader, epoch, steps_per_epoch, optimizer, peak_lr, loss_fn, mix,
                                    scaler, ema, train_model, progress)
            if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
                stats.update(evaluate_fn(model, val_loader))
                if ema is not None:
                    stats.update({f"ema_{k}": v for k, v in evaluate_fn(ema.module, val_loader).items()})
            stats = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"],
                     "elapsed_s": round(elapsed_before + time.time() - t_start, 1), **stats}
            log_lines.append(stats)
            log(f"epoch {epoch}: " + " ".join(f"{k} {v:.4g}" for k, v in stats.items() if k != "epoch"))
            if args.points == "clicks":
                report_head(log_lines)
            if best_key in stats and (best is None or stats[best_key] > best["value"]):
                best = {"epoch": epoch, "key": best_key, "value": stats[best_key]}
            run.save(log_lines, best, model, optimizer, scaler, ema, (epoch + 1) * steps_per_epoch, args, meta)
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (utils.sigterm_as_ctrl_c): one line, nothing partial on disk
        run.interrupted(epoch, progress.get("step"))
    run.finished(args.epochs, (elapsed_before + time.time() - t_start) / 60, best, stats)
    return stats


# -----------------------------------------------------------------------------
# Validation

@torch.no_grad()
def evaluate_imagenet(args, model, loader, boxes=None):
    """Exact top-1/top-5 over the val set (every image counted once), and given boxes the point head's localisation
    accuracy (point inside a GT box) next to that of always answering the crop's centre ("val_point_acc_centre")."""
    model.eval()
    dataset = loader.dataset
    logits, *points = evaluate.predict(model, loader, args.device, lambda: autocast(args), args.channels_last,
                                       points=boxes is not None)  # points: [] or [[N, K, 2]]
    stats = {f"val_{k}": v for k, v in evaluate.topk_accuracy(logits, torch.tensor(dataset.targets)).items()}
    if points:
        pts = points[0][:, 0].numpy()
        for name, p in (("val_point_acc", pts), ("val_point_acc_centre", np.full_like(pts, 0.5))):
            stats[name] = evaluate.box_point_accuracy(p, *boxes, args.val_resize, args.img_size)
    stats["val_broken_images"] = dataset.reader.counts(all_ranks=True)["broken_images"]  # counted wrong above
    return stats


# -----------------------------------------------------------------------------
# Demo: the README's main command

def demo_preset():
    """The --demo preset: a small LUAB run on the synthetic ImageNet-format data that learns in a few minutes on
    2 CPU cores. Like a recipe, it only fills flags that were not given (`--demo --points none` is a plain run).
    No colour jitter: on 48 px synthetic images it slows learning past the demo's 16 epochs."""
    root = utils.demo_data_dir()
    return dict(data_dir=os.path.join(root, "imagenet"), byproducts=os.path.join(root, "imagenet_ab", "train_xml"),
                val_boxes=os.path.join(root, "imagenet", "boxes", "val"), model="resnet18", recipe="resnet",
                points="clicks", img_size=48, epochs=16, batch_size=32, lr=0.2, lr_step=12, weight_decay=5e-4,
                color_jitter=0.0, workers=min(2, utils.default_workers()), print_freq=10, output_dir="runs/demo")


# -----------------------------------------------------------------------------

def main(args):
    args = resolve_args(args, RECIPES, DEFAULTS, demo_preset() if args.demo else None)
    init_distributed(args)
    utils.sigterm_as_ctrl_c()  # torchrun and schedulers stop runs with SIGTERM: end as Ctrl-C does
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    train_set, val_set = build_datasets(args)
    boxes = val_point_boxes(args, val_set)
    try:  # LUAB: one point target per image, the click
        stats = fit(args, train_set, val_set, train_set.classes, 1, imagenet_loss,
                    lambda model, loader: evaluate_imagenet(args, model, loader, boxes))
        if args.demo and "val_top1" in stats:
            point = (f", point head inside the object box for {stats['val_point_acc']:.1f}% of val images (always "
                     f"the centre: {stats['val_point_acc_centre']:.1f}%)" if "val_point_acc" in stats else "")
            log(f"demo: val top-1 {stats['val_top1']:.1f}% (chance {100 / len(train_set.classes):.0f}%){point}")
        return stats
    finally:
        if args.distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main(get_args_parser().parse_args())
    except byproducts.BadInput as e:  # --strict-data: one line, also when a DataLoader worker raised it
        raise SystemExit(f"error: {byproducts.error_line(e)}")
