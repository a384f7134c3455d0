"""
LUAB on ImageNet: supervised training plus a point-regression head supervised by the ImageNet-AB clicks.

    torchrun --nproc_per_node=8 train_imagenet.py --data-dir /data/imagenet --byproducts ab_index.npz --luab
    torchrun --nproc_per_node=8 train_imagenet.py --model vit_small --luab ...   # DeiT recipe for ViTs
    python train_imagenet.py --demo                                              # CPU demo on synthetic data

Plain DDP, no framework; without --luab / --rand-points this is a plain ResNet / DeiT training script. It reads
top to bottom: recipes and flags (resolve_args, then init_distributed completes `args`, which nothing changes
afterwards) -> data -> model -> objective -> optimiser -> train_step -> the epoch loop (train_one_epoch, fit)
-> validation -> the run folder and checkpoints -> the demo -> main. train_coco.py reuses all of it and only
says what COCO does differently.

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
  8. train_imagenet.py: optimizer_groups - the point head learns at lr x --point-lr
  9. train_coco.py: coco_loss and main - one point head output per class, averaged over each image's classes
The appendix's other use of the clicks (--pooling attentive, ResNets; Table D) replaces 1-3 with one place:
  models.py: ResNet.pool - a learned attention pools the last feature map; its centre of mass is the point
The evidence that the head learns (train_point_vs_centre, point_grad_share, val_point_acc next to the centre's)
is measured in train_one_epoch and evaluate_imagenet; it changes no weight.

Multi-node: torchrun's own launch, e.g. `torchrun --nnodes=2 --node_rank=R --master_addr=HOST
--nproc_per_node=8 train_imagenet.py ...`. `--batch-size` is always the *global* batch.
"""
import argparse
import contextlib
import copy
import datetime
import functools
import glob
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import byproducts
import evaluate
import utils
from utils import UnpaddedDistributedSampler, all_reduce_sum, is_main, log
from models import MODEL_NAMES, POINT_HEADS, POOLINGS, create_model, is_vit_name, load_pretrained, param_groups, \
    point_parameters, read_checkpoint

# -----------------------------------------------------------------------------
# Recipes and flags. Every recipe value is a flag default; any flag given on the command line wins.

RECIPES = {
    # "the standard 100-epochs setup [36]" of the paper for ResNets: He et al., torchvision's ResNet V1 recipe
    # run for 100 epochs (x0.1 at epochs 30, 60, 90), plus the ColorJitter of the paper's "basic ImageNet training
    # strategy - RandomResizedCrop, RandomFlip, and ColorJitter" (appendix F) at timm's default strength 0.4.
    "resnet": dict(epochs=100, batch_size=256, opt="sgd", lr=0.1, lr_base_batch=256, momentum=0.9,
                   weight_decay=1e-4, sched="step", lr_step=30, warmup_epochs=0, warmup_lr=0.0, min_lr=0.0,
                   lr_update="epoch", label_smoothing=0.0, randaugment="none", color_jitter=0.4, mixup=0.0,
                   cutmix=0.0, re_prob=0.0, drop_path=0.0, repeated_aug=1, interpolation="bilinear",
                   point_weight=20.0, point_lr=1.0),
    # DeiT's main.py defaults, which the paper used "with default settings" (appendix F): AdamW 5e-4 x bs/512,
    # timm's cosine stepped once per epoch with 5 warm-up epochs from 1e-6, 300 epochs, rand-m9-mstd0.5-inc1.
    # DeiT's colour jitter 0.3 is inactive under RandAugment (timm applies it only without auto-augment).
    "deit": dict(epochs=300, batch_size=1024, opt="adamw", lr=5e-4, lr_base_batch=512, momentum=0.9,
                 weight_decay=0.05, sched="cosine", lr_step=30, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5,
                 lr_update="epoch", label_smoothing=0.1, randaugment="rand-m9-mstd0.5-inc1", color_jitter=0.3,
                 mixup=0.8, cutmix=1.0, re_prob=0.25, drop_path=0.1, repeated_aug=3, interpolation="bicubic",
                 point_weight=20.0, point_lr=10.0),
    # The "primitive" ViT setup of the appendix (its ViT table without strong augmentation, and Table 2's ViT
    # rows): the DeiT codebase without RandAugment, stochastic depth, random erasing, Mixup and CutMix, and "a
    # training setup similar to the one in the ViT paper: learning rate 1e-3 and weight decay 0.3". Our choices
    # where the paper is silent: 1e-3 is DeiT's --lr (so scaled by batch/512, as DeiT's main.py does), and
    # everything the paper does not name stays DeiT's default (300 epochs, 5 warm-up epochs, label smoothing
    # 0.1, repeated augmentation x3, colour jitter 0.3, which is active here since RandAugment is off).
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
                                add_help=add_help, formatter_class=HelpFormatter, epilog=recipes_epilog(RECIPES))
    g = p.add_argument_group("ImageNet data")
    g.add_argument("--data-dir", help="ImageNet root with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    g.add_argument("--byproducts", help="ImageNet-AB index file (byproducts.py index-imagenet) or XML root")
    g.add_argument("--val-boxes", help="ILSVRC box XMLs of the val images (<stem>.xml or <wnid>/<stem>.xml): "
                                       "enables the point head's localisation accuracy")
    g.add_argument("--allow-empty-classes", action="store_true",
                   help="keep class folders without images as classes (default: refuse them)")
    add_training_args(p, recipes=RECIPES, defaults=DEFAULTS, optimizers=OPTIMIZERS)
    return p


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help shows every fixed default; the recipe-dependent ones are listed per recipe in the epilog."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def recipes_epilog(recipes):
    lines = ["recipes (the defaults of the optimisation flags; any flag given on the command line wins):"]
    for name, values in recipes.items():
        lines.append(textwrap.fill(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()), width=100,
                                   initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


class PointsAction(argparse.Action):
    """--luab, --rand-points and --points all set args.points; two different choices are a usage error."""

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if self.const is not None else values
        if getattr(namespace, self.dest) not in (None, value):
            parser.error(f"{option_string} contradicts an earlier --luab / --rand-points / --points: "
                         "they are different runs, choose one")
        setattr(namespace, self.dest, value)


def add_training_args(p, recipes, defaults, optimizers):
    """The flags every training script shares (train_coco.py adds its data flags and these); `optimizers` is the
    script's {--opt: class} table. Flags whose value comes from a preset default to None here and are filled by
    resolve_args."""
    p.add_argument("--model", choices=MODEL_NAMES, help=f"backbone (default: {defaults['model']})")
    p.add_argument("--recipe", choices=list(recipes), default=None,
                   help="hyper-parameter preset (listed below); default: resnet for ResNets, deit for ViTs"
                   if "deit" in recipes else "hyper-parameter preset (listed below)")
    g = p.add_argument_group("data")
    g.add_argument("--data-fraction", type=float, default=1.0, help="train on this fraction of the train set")
    g.add_argument("--img-size", type=int, help=f"training / validation resolution (default: {defaults['img_size']})")
    g.add_argument("--val-resize", type=int, default=None, help="default: img_size / 0.875")
    g.add_argument("--workers", type=int,
                   help=f"data loader workers per process (default: min(8, cores per process) = {utils.default_workers()})")
    g.add_argument("--strict-data", action="store_true",
                   help="bad byproduct records, broken images and size mismatches are errors, not counted skips")
    g = p.add_argument_group("LUAB")
    g.add_argument("--points", choices=["clicks", "random", "none"], action=PointsAction,
                   help="the point targets: the annotators' byproducts (clicks = --luab), uniform random points "
                        "(random = --rand-points) or none (plain training; the default)")
    g.add_argument("--luab", dest="points", nargs=0, const="clicks", action=PointsAction,
                   help="regress the annotators' byproducts (the paper's method) = --points clicks")
    g.add_argument("--rand-points", dest="points", nargs=0, const="random", action=PointsAction,
                   help="regress a uniform random point fixed per image (the paper's control) = --points random")
    g.add_argument("--rand-points-on", choices=["all", "clicked"], default="all",
                   help="--rand-points supervises every image (all; the paper: 'a uniform-random point for each "
                        "image') or only those LUAB supervises, i.e. with a byproduct (clicked; needs the byproducts)")
    g.add_argument("--point-weight", type=float,
                   help="lambda, weight of the point loss (default: the recipe's point_weight)")
    g.add_argument("--point-head", choices=list(POINT_HEADS), default="normed",
                   help="what the point head reads: normed = the L2-normalised features (one SGD step moves a "
                        "point by 2 lr lambda dL/dpoint), plain = the raw features (the paper's Linear, default "
                        "init; unstable under the ResNet SGD recipe)")
    g.add_argument("--pooling", choices=list(POOLINGS), default="avg",
                   help="ResNets: avg = the global average pool (the paper's main method: the point head regresses "
                        "the click); attentive = the appendix's point-guided pooling, a learned attention over the "
                        "last feature map whose centre of mass is regressed to the click (no point head)")
    g.add_argument("--point-lr", type=float,
                   help="the point head's learning rate as a multiple of the scheduled LR (default: the recipe's "
                        "point_lr: 1 for SGD, where lambda x lr already sets the head's step, 10 for the Adam family)")
    g.add_argument("--point-loss", choices=["smoothl1", "mse"], default="smoothl1",
                   help="per point: the sum over x and y of SmoothL1 (beta --smoothl1-beta) or of the squared "
                        "error, on coordinates normalised to [0, 1]; averaged over the points with weight > 0 in "
                        "the global batch. With beta 1 every |error| <= 1 is in SmoothL1's quadratic zone "
                        "(0.5 error^2), so mse = 2 x smoothl1 there")
    g.add_argument("--smoothl1-beta", type=float, default=1.0,
                   help="SmoothL1's switch from quadratic to linear (PyTorch's default 1.0)")
    g = p.add_argument_group("optimisation (defaults come from --recipe)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="GLOBAL batch size over all processes")
    g.add_argument("--opt", choices=list(optimizers))
    g.add_argument("--lr", type=float,
                   help="learning rate at a global batch of --lr-base-batch; the LR used is "
                        "lr x batch_size / lr_base_batch (linear scaling rule, Goyal et al.)")
    g.add_argument("--lr-base-batch", type=int, help="256 for the resnet recipe, 512 for deit")
    g.add_argument("--momentum", type=float)
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--sched", choices=["step", "cosine"])
    g.add_argument("--lr-step", type=int, help="step schedule: x0.1 every this many epochs")
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--min-lr", type=float)
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--warmup-lr", type=float, help="LR of the first warm-up epoch (DeiT's --warmup-lr)")
    g.add_argument("--lr-update", choices=["epoch", "step"],
                   help="epoch: the LR is set once per epoch exactly as DeiT steps timm's scheduler (epochs 0 "
                        "and 1 at --warmup-lr, then linear to the peak at epoch warmup+1, then cosine); step: "
                        "the same curve evaluated at every step (a smooth ramp from --warmup-lr)")
    g.add_argument("--randaugment", help="timm-style config, e.g. 'rand-m9-mstd0.5-inc1', or 'none'")
    g.add_argument("--color-jitter", type=float,
                   help="brightness = contrast = saturation jitter; as timm, only applied without RandAugment")
    g.add_argument("--mixup", type=float, help="Mixup alpha (0 = off)")
    g.add_argument("--cutmix", type=float, help="CutMix alpha (0 = off)")
    g.add_argument("--re-prob", type=float, help="random erasing probability")
    g.add_argument("--drop-path", type=float, help="stochastic depth rate (ViT)")
    g.add_argument("--repeated-aug", type=int, help="repeated augmentation: copies of each image per epoch")
    g.add_argument("--interpolation", choices=["bilinear", "bicubic"])
    g.add_argument("--clip-grad", type=float, default=0.0, help="max grad norm (0 = off)")
    g.add_argument("--model-ema", action="store_true", help="keep an EMA of the weights (saved, evaluated too)")
    g.add_argument("--model-ema-decay", type=float, default=0.99996)
    g = p.add_argument_group("speed")
    g.add_argument("--amp", action="store_true",
                   help="autocast the forward pass to bf16 (CUDA and CPU; losses and metrics stay fp32)")
    g.add_argument("--amp-dtype", choices=["bfloat16", "float16"], default="bfloat16",
                   help="float16 is CUDA-only (it needs the GradScaler)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (inductor; CPU needs a C compiler)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC images and weights (default: on for ResNets on CUDA, off otherwise)")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA only)")
    g.add_argument("--device", default=None, help="default: cuda if available else cpu")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", help=f"the run folder: config.json, log.jsonl, checkpoint.pt, best.pt "
                                        f"(default: {defaults['output_dir']})")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --output-dir from its checkpoint.pt if there is one, else start it "
                        "there: the same command can be relaunched after any failure, e.g. under "
                        "torchrun --max-restarts=N")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the run files of a previous run in --output-dir (otherwise a folder that is not "
                        "empty is refused without --resume)")
    g.add_argument("--dist-timeout", type=float, default=10.0,
                   help="minutes a process waits for the others (init_process_group, collectives) before failing")
    g.add_argument("--pretrained", help="initialise from a torchvision / DeiT / our checkpoint")
    g.add_argument("--eval-only", action="store_true", help="evaluate --pretrained (or the resumed model) and exit")
    g.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (and after the last)")
    g.add_argument("--print-freq", type=int, help=f"progress line every N steps (default: {defaults['print_freq']})")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-steps-per-epoch", type=int, default=0, help="cut epochs short (smoke tests)")
    g.add_argument("--demo", action="store_true",
                   help="a preset: write the synthetic dataset once into a cache folder and train a small model "
                        "on CPU (LUAB unless --points says otherwise); every flag given explicitly wins")


def resolve_args(args, recipes, defaults=DEFAULTS, preset=None):
    """Fill every flag left unset, in this order: `preset` (a dict, e.g. the demo's), the recipe, `defaults`;
    an explicit flag always wins. Then derive the quantities the loop needs. (init_distributed completes `args`.)"""
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
    """The rest of the configuration, which torchrun and the machine decide: join the process group
    (utils.init_distributed) and set args.rank, world_size, local_rank, distributed and device, then the
    device-dependent speed flags (resolve_speed_flags). After this call `args` is complete and nothing changes
    it: runtime objects (the model, the steps per epoch) travel as arguments."""
    args.rank, args.world_size, args.device = utils.init_distributed(args.device, args.dist_timeout)
    args.local_rank = int(os.environ.get("LOCAL_RANK", 0))
    args.distributed = args.world_size > 1
    if args.batch_size % args.world_size:
        raise SystemExit(f"--batch-size {args.batch_size} (global) must be divisible by {args.world_size} processes")
    resolve_speed_flags(args)


def resolve_speed_flags(args):
    """Refuse the CUDA-only speed flags on another device; default channels_last where it pays."""
    cuda = args.device.startswith("cuda")
    if args.amp and args.amp_dtype == "float16" and not cuda:
        raise SystemExit("--amp-dtype float16 needs CUDA (fp16 needs the GradScaler); on CPU --amp uses bfloat16")
    if args.sync_bn and not cuda:
        raise SystemExit("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel): drop it on CPU")
    if args.channels_last is None:  # cuDNN's tensor-core convolutions want NHWC; a ViT has one conv only
        args.channels_last = cuda and not is_vit_name(args.model)


# -----------------------------------------------------------------------------
# Data: sampling. The sampler owns all data randomness: it yields (index, seed) and the dataset seeds its
# augmentation from that seed, so crops do not depend on the number of workers or processes and a
# resumed run sees exactly the data the uninterrupted run would have seen.

class RepeatedAugSampler(torch.utils.data.Sampler):
    """Shuffled distributed sampler with repeated augmentation (Hoffer et al.; DeiT's RASampler idea).

    Each epoch: a permutation of the dataset, every index repeated `repeats` times in a row, padded to a
    multiple of the world size and dealt round-robin, so the copies of one image land on different
    processes with different seeds. Each process keeps ceil(n / world) items, so an epoch costs the
    same as without repetition. repeats=1 is an ordinary shuffled DistributedSampler.
    """

    def __init__(self, n, rank=0, world_size=1, repeats=1, seed=0):
        self.n, self.rank, self.world, self.repeats, self.seed = n, rank, world_size, repeats, seed
        self.num_samples = math.ceil(n / world_size)
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        idx = torch.randperm(self.n, generator=g).repeat_interleave(self.repeats)
        total = math.ceil(len(idx) / self.world) * self.world
        idx = torch.cat([idx, idx[: total - len(idx)]])
        pos = torch.arange(self.rank, total, self.world)[: self.num_samples]
        # one seed per (epoch, position in the global list): repeated copies get different augmentations
        seeds = (self.seed * 1_000_003 + self.epoch) * 10_000_019 + pos
        return iter(zip(idx[pos].tolist(), seeds.tolist()))


class SeededItems(torch.utils.data.Dataset):
    """Wraps a dataset so that item (index, seed) is augmented with torch's and Python's RNGs seeded from `seed`.

    The global RNG states are restored afterwards: with --workers 0 the items are made in the main process,
    whose RNGs drive the model (drop-path masks), and those must not depend on the data loaded last."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):  # CPU generator only: the transforms draw on the CPU
            torch.manual_seed(seed % 2**63)
            random.seed(seed)
            try:
                return self.dataset[index]
            finally:
                random.setstate(py_state)


# -----------------------------------------------------------------------------
# Data: datasets and loaders

def build_datasets(args):
    for d in ("train", "val"):
        if not args.data_dir or not os.path.isdir(os.path.join(args.data_dir, d)):
            raise SystemExit(f"--data-dir must contain {d}/<wnid>/*.JPEG (got {args.data_dir!r})")
    clicked_only = args.points == "random" and args.rand_points_on == "clicked"
    if (args.points == "clicks" or clicked_only) and not args.byproducts:
        raise SystemExit(f"{'--luab' if args.points == 'clicks' else '--rand-points-on clicked'} needs --byproducts "
                         "(an index from `byproducts.py index-imagenet` or the XML root)")
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


def make_loader(args, dataset, sampler, train):
    return torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size // args.world_size, sampler=sampler, drop_last=train,
        num_workers=args.workers, pin_memory=args.device.startswith("cuda"),
        persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers > 0 else None)


def to_device(args, batch):
    """A loader's batch -> the same list on args.device (images channels_last if args.channels_last)."""
    images, *rest = batch
    images = images.to(args.device, non_blocking=True)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return [images] + [t.to(args.device, non_blocking=True) for t in rest]


# -----------------------------------------------------------------------------
# Model

def build_model(args, num_classes, num_points):
    """The backbone on args.device, from --pretrained if given. LUAB: with --luab / --rand-points it gets a
    point head regressing `num_points` (x, y) targets per image (ImageNet 1, COCO one per class) on the
    penultimate features (models.ImageClassifier); plain training (--points none) builds a plain classifier."""
    try:
        model = create_model(args.model, num_classes=num_classes, num_points=num_points if args.points != "none" else 0,
                             drop_path=args.drop_path, img_size=args.img_size, point_head=args.point_head,
                             pooling=args.pooling)
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

def point_loss(pred, points, point_mask, kind="smoothl1", beta=1.0):
    """LUAB: masked point regression, averaged over the points that count in the *global* batch.

    pred [B, K, 2]; points [B, K, 2] or [B, J, K, 2] (J targets per sample after Mixup/CutMix); point_mask the
    same without the last dim: 0 where a point does not count (no byproduct, or it left the crop), else its
    weight (1, or the mixing weight after Mixup/CutMix). Dividing by the global mask sum (times world size,
    because DDP averages gradients) makes the loss and its gradients identical for any number of processes.
    """
    if points.dim() == 4:
        pred = pred.unsqueeze(1)
    pred = pred.float().expand_as(points)
    if kind == "smoothl1":
        per_point = F.smooth_l1_loss(pred, points, reduction="none", beta=beta).sum(-1)  # [B, (J,) K]
    else:
        per_point = F.mse_loss(pred, points, reduction="none").sum(-1)
    denom = all_reduce_sum(point_mask.sum().detach().clone())
    world = utils.get_world_size()
    return (per_point * point_mask).sum() * world / denom.clamp(min=1e-6)


def classification_loss(logits, targets, label_smoothing):
    """Cross-entropy on int labels, or soft-target cross-entropy after Mixup/CutMix."""
    if targets.dim() == 1:
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def imagenet_loss(args, outputs, batch):
    """(cross-entropy, LUAB point loss) of outputs = (logits [B, C], points [B, 1, 2] or None) on batch =
    (images, labels [B] or soft [B, C], points [B, 1, 2] or [B, 2, 1, 2], point_mask without the last dim)."""
    logits, pred_points = outputs
    _, targets, points, point_mask = batch
    loss_task = classification_loss(logits, targets, args.label_smoothing)
    if pred_points is None:
        return loss_task, torch.zeros((), device=logits.device)
    return loss_task, point_loss(pred_points, points, point_mask, args.point_loss, args.smoothl1_beta)


def make_mix(args, num_classes, multi_label=False):
    """Mixup/CutMix on the device with the points carried along (byproducts.mix_batch), or None when both are
    off: mix(batch, generator) -> batch. Single-label targets become label-smoothed one-hot vectors first;
    multi-label ones (COCO's multi-hot) are mixed as they are."""
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
# Optimiser (LUAB: the point head's LR scale), LR as a pure function of the step (so resume needs no scheduler
# state), EMA

def optimizer_groups(args, model):
    """Parameter groups: DeiT's no-decay rule for the Adam family (models.param_groups); for SGD one group,
    torchvision's ResNet recipe decays every parameter (BN and biases included). LUAB: the point head's
    parameters go into groups of their own with "lr_scale" = --point-lr (train_one_epoch multiplies the
    scheduled LR by it): under Adam every weight moves by about lr per step whatever its gradient's size, so
    lambda cannot speed the head up there, and at the backbone's lr the head barely leaves the centre."""
    groups = param_groups(model, args.weight_decay) if args.opt != "sgd" else \
        [{"params": list(model.parameters()), "weight_decay": args.weight_decay}]
    head = {id(p) for p in point_parameters(model)}
    out = []
    for g in groups:
        for in_head in (False, True):
            params = [p for p in g["params"] if (id(p) in head) == in_head]
            if params:
                out.append({**g, "params": params, "lr_scale": args.point_lr if in_head else 1.0})  # LUAB
    return out


@functools.lru_cache(maxsize=None)
def has_fused(opt_class, device):
    """Whether the installed torch has a fused `opt_class` kernel for `device` (CUDA; CPU too since torch 2.4).
    torch checks the device only at the first step, so this takes one step on a one-element tensor."""
    p = torch.zeros(1, device=device, requires_grad=True)
    p.grad = torch.zeros(1, device=device)
    try:
        opt_class([p], lr=0.1, fused=True).step()
        return True
    except (RuntimeError, TypeError):  # TypeError: an optimiser without the `fused` argument in this torch
        return False


# --opt -> optimiser class; train_coco.py adds AdamP to its copy of this table
OPTIMIZERS = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def build_optimizer(args, model, optimizers=OPTIMIZERS):
    """optimizers[args.opt] on optimizer_groups, at the linearly scaled LR -> (optimizer, that peak LR)."""
    lr = args.lr * args.batch_size / args.lr_base_batch
    opt_class = optimizers[args.opt]
    kwargs = {"momentum": args.momentum} if args.opt == "sgd" else {}
    # fused: one kernel per parameter does the whole update; without it torch's default (foreach kernels
    # over all parameters on CUDA, a Python loop of small ops on CPU)
    if has_fused(opt_class, args.device):
        kwargs["fused"] = True
    return opt_class(optimizer_groups(args, model), lr=lr, weight_decay=args.weight_decay, **kwargs), lr


def lr_at(args, peak_lr, step, steps_per_epoch):
    """Learning rate at a global step, as a pure function of the step (resume needs no scheduler state).

    The curve f(t), t in epochs, is timm's (DeiT's scheduler): linear warm-up from warmup_lr to peak_lr over
    warmup_epochs, then, counted from t = 0 (timm's warmup_prefix=False), either x0.1 every lr_step epochs or a
    cosine from peak_lr to min_lr at t = epochs. lr_update "epoch" holds the LR for a whole epoch as the
    reference loops do: the step schedule uses f(e) in epoch e (torchvision's StepLR); the cosine one uses
    f(e - 1) (DeiT calls lr_scheduler.step(e) *after* epoch e, and its scheduler starts at warmup_lr, so epochs
    0 and 1 both train at warmup_lr). lr_update "step" evaluates f at the fractional epoch of every step.
    """
    if args.lr_update == "step":
        t = step / steps_per_epoch
    else:
        t = step // steps_per_epoch
        if args.sched == "cosine":
            t = max(t - 1, 0)
    if t < args.warmup_epochs:
        return args.warmup_lr + t * (peak_lr - args.warmup_lr) / args.warmup_epochs
    if args.sched == "step":
        return peak_lr * 0.1 ** int(t // args.lr_step)
    if t >= args.epochs:
        return args.min_lr
    return args.min_lr + 0.5 * (peak_lr - args.min_lr) * (1 + math.cos(math.pi * t / args.epochs))


class ModelEma:
    """Exponential moving average of the weights (buffers copied), as DeiT keeps with --model-ema."""

    def __init__(self, model, decay):
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model):
        ema_p, p = list(self.module.parameters()), list(model.parameters())
        torch._foreach_lerp_(ema_p, p, 1 - self.decay)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)


# -----------------------------------------------------------------------------
# One training step

def autocast(args):
    """The context the forward pass runs in: with --amp, autocast to --amp-dtype on CUDA or CPU (bf16 there).
    Only the model runs inside it: the losses cast its outputs to fp32 (.float()) and are computed outside,
    as are the metrics, so the numbers reported do not depend on --amp."""
    return utils.autocast(args.device, args.amp_dtype if args.amp else None)


def point_grad_share(model, point_weight, loss_task, loss_point):
    """LUAB at work, measured on one batch: ||d(lambda x point loss)/d backbone|| / ||d(task loss)/d backbone||,
    the norms over all backbone parameters of `model` (unwrapped; classifier and point head excluded), on this
    process's batch (no all-reduce). Two extra backward passes through the graph the step then backpropagates."""
    heads = {id(p) for p in [*model.classifier.parameters(), *point_parameters(model)]}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in heads]

    def norm(loss):
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return torch.sqrt(sum(g.float().pow(2).sum() for g in grads if g is not None))
    return (norm(point_weight * loss_point) / norm(loss_task).clamp(min=1e-12)).item()


def train_step(args, model, batch, optimizer, loss_fn, scaler=None, grad_share_of=None):
    """One optimisation step on a batch already on the device (and mixed): forward under autocast, the task
    and point losses, their LUAB sum, zero_grad / backward / clip (--clip-grad) / step; with the fp16
    GradScaler (CUDA only) the loss is scaled up for the backward pass and the gradients unscaled before
    clipping. `model` is what runs the step (DDP or compiled wrapper or the model itself); grad_share_of, the
    unwrapped model, asks for point_grad_share on this batch first. Returns (outputs, task loss, point loss,
    grad share or None), the losses detached; outputs = (logits, points or None)."""
    with autocast(args):
        outputs = model(batch[0], return_points=True)  # LUAB: (logits, points), points None without a head
    loss_task, loss_point = loss_fn(args, outputs, batch)
    loss = loss_task + args.point_weight * loss_point  # LUAB: the whole change to the objective
    share = None
    if grad_share_of is not None and outputs[1] is not None:
        share = point_grad_share(grad_share_of, args.point_weight, loss_task, loss_point)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if args.clip_grad > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return outputs, loss_task.detach(), loss_point.detach(), share


# -----------------------------------------------------------------------------
# The epoch loop

# A LUAB run warns when, from this epoch on, its point loss is still above this fraction of the centre baseline.
IDLE_HEAD_EPOCHS, IDLE_HEAD_RATIO = 3, 0.9


def centre_point_loss(args, loss_fn, outputs, batch):
    """The point loss that always predicting the image centre would get on this batch's targets: the level an
    idle point head stays at. 0 for a plain run."""
    if outputs[1] is None:
        return torch.zeros((), device=args.device)
    return loss_fn(args, (outputs[0].detach(), torch.full_like(outputs[1].detach(), 0.5)), batch)[1]


def train_one_epoch(args, model, loader, epoch, steps_per_epoch, optimizer, peak_lr, loss_fn, mix=None,
                    scaler=None, ema=None, train_model=None, progress=None):
    """One pass over `loader` (at most --max-steps-per-epoch steps) of train_step; returns the mean losses,
    throughput and data-wait fraction of the epoch. `model` is the unwrapped model (EMA, gradient share),
    train_model what runs the steps (its DDP / compiled wrapper; default: model); steps_per_epoch = len(loader)
    places the steps on the LR schedule; mix = make_mix(...) or None. LUAB runs also log the point loss of
    always predicting the image centre on the same targets ("train_point_centre_loss", the level an idle head
    stays at), their ratio, and point_grad_share of the epoch's first batch ("point_grad_share"). progress (a
    dict) gets the current step, for the message of an interrupted run."""
    train_model = model if train_model is None else train_model
    train_model.train()
    steps = len(loader) if not args.max_steps_per_epoch else min(len(loader), args.max_steps_per_epoch)
    sums = torch.zeros(4, device=args.device)  # loss, point loss, centre-baseline point loss, number of steps
    # point targets (--luab / --rand-points): the model predicts points from its head or its attentive pool;
    # a plain run, attentive pooling included, has no point loss to measure
    grad_share, has_head = None, args.points != "none"
    t_epoch = t_last = time.perf_counter()
    data_wait = 0.0
    it = iter(loader)
    for i in range(steps):
        t0 = time.perf_counter()
        batch = to_device(args, next(it))
        data_wait += time.perf_counter() - t0
        step = epoch * steps_per_epoch + i
        if progress is not None:
            progress["step"] = i
        for g in optimizer.param_groups:
            g["lr"] = lr_at(args, peak_lr, step, steps_per_epoch) * g["lr_scale"]
        if mix is not None:  # a CPU generator (mix_batch draws on the CPU), seeded by step and rank: resumable
            batch = mix(batch, torch.Generator().manual_seed(args.seed * 7919 + step * 131 + args.rank))
        # the gradient share on the first batch; not through a torch.compile'd graph (autograd.grad there gave
        # 0 alone and NaN weights under DDP), so a compiled run logs none
        outputs, loss_task, loss_point, share = train_step(
            args, train_model, batch, optimizer, loss_fn, scaler,
            grad_share_of=model if i == 0 and has_head and not args.compile else None)
        if i == 0:
            grad_share = share
        loss_centre = centre_point_loss(args, loss_fn, outputs, batch)  # LUAB evidence: better than the centre?
        if ema is not None:
            ema.update(model)
        loss = loss_task + args.point_weight * loss_point
        sums += torch.stack([loss, loss_point, loss_centre, torch.ones((), device=args.device)])
        if is_main() and ((i + 1) % args.print_freq == 0 or i + 1 == steps):
            now = time.perf_counter()
            done = (i + 1) / steps
            n = min(args.print_freq, (i % args.print_freq) + 1)
            ips = n * args.batch_size / max(now - t_last, 1e-9)
            eta = (now - t_epoch) / done * (1 - done) + (now - t_epoch) / done * (args.epochs - epoch - 1)
            vs = f" ({loss_point.item() / max(loss_centre.item(), 1e-12):.2f} x centre)" if has_head else ""
            print(f"epoch {epoch} [{i + 1}/{steps}] loss {loss.item():.4f} point {loss_point.item():.4f}{vs} "
                  f"lr {optimizer.param_groups[0]['lr']:.3g} {ips:.0f} img/s "
                  f"data {100 * data_wait / (now - t_epoch):.0f}% eta {eta / 60:.1f} min", flush=True)
            t_last = now
    all_reduce_sum(sums)
    elapsed = time.perf_counter() - t_epoch
    loss, loss_point, loss_centre = (sums[:3] / sums[3]).tolist()
    stats = {"train_loss": loss, "train_point_loss": loss_point}
    if has_head:
        stats.update(train_point_centre_loss=loss_centre, train_point_vs_centre=loss_point / max(loss_centre, 1e-12))
        if grad_share is not None:
            stats["point_grad_share"] = grad_share
        if args.points == "clicks" and epoch >= IDLE_HEAD_EPOCHS and stats["train_point_vs_centre"] > IDLE_HEAD_RATIO:
            share = f", gradient share {grad_share:.3f}" if grad_share is not None else ""
            log(f"warning: epoch {epoch}: the point head is still at the centre baseline (point loss "
                      f"{stats['train_point_vs_centre']:.2f} x centre{share}): LUAB "
                      f"acts like plain training; raise --point-weight (SGD) or --point-lr (AdamW, AdamP)")
    problems = loader.dataset.dataset.problem_counts(all_ranks=True)  # found so far, by every worker and rank
    return {**stats, "img_per_s": steps * args.batch_size / elapsed, "data_wait": data_wait / elapsed,
            "epoch_time_s": elapsed, **{f"train_{k}": v for k, v in problems.items()}}


def fit(args, train_set, val_set, classes, num_points, loss_fn, evaluate_fn, optimizers=OPTIMIZERS,
        multi_label=False, best_key="val_top1"):
    """The training run shared by train_imagenet.py and train_coco.py: model, optimiser, run folder, resume,
    the epoch loop, validation, checkpoints and logs. What differs between the two is passed in: `classes`
    (names), `num_points` (point targets per image: 1 click on ImageNet, one per class on COCO), the two
    functions `loss_fn(args, outputs, batch) -> (task loss, point loss)` and `evaluate_fn(model, loader) ->
    dict`, `optimizers` ({--opt: class}), `multi_label` (multi-hot targets, which Mixup/CutMix mix as they are)
    and `best_key`: best.pt keeps the epoch with the highest stats[best_key]. Returns the last epoch's stats."""
    t_start = time.time()
    model = build_model(args, len(classes), num_points)
    # Same initial weights on every rank (seeded in main), then rank-specific randomness for the model
    # (drop-path masks); the data's randomness is the sampler's, independent of this.
    torch.manual_seed(args.seed + args.rank)
    random.seed(args.seed + args.rank)
    optimizer, peak_lr = build_optimizer(args, model, optimizers)
    fp16 = args.amp and args.amp_dtype == "float16" and args.device.startswith("cuda")
    scaler = torch.amp.GradScaler() if fp16 else None  # bf16 needs no loss scaling
    ema = ModelEma(model, args.model_ema_decay) if args.model_ema else None
    meta = checkpoint_meta(args, classes, model.num_points)

    out = args.output_dir
    ckpt_path, best_path, log_path = (os.path.join(out, f) for f in ("checkpoint.pt", "best.pt", "log.jsonl"))
    if not args.eval_only:
        state_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        slots = 1 + (2 if args.opt != "sgd" else 1) + (1 if ema else 0)  # weights, optimiser moments, EMA
        need = os.path.getsize(ckpt_path) if args.resume and os.path.exists(ckpt_path) else state_bytes * slots
        agree(args, prepare_output_dir(args, need + state_bytes) if is_main() else None)

    start_epoch, log_lines, best, elapsed_before = 0, [], None, 0.0
    if args.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path, args)
        load_pretrained(model, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema"):
            ema.module.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"])
        start_epoch = ckpt["epoch"] + 1
        log_lines, best, elapsed_before = ckpt.get("log", []), ckpt.get("best"), ckpt.get("elapsed_s", 0.0)
        log(f"resumed from {ckpt_path} at epoch {start_epoch}")
    elif args.resume and not args.eval_only:
        log(f"--resume: no checkpoint at {ckpt_path} yet, starting the run")
    elif args.resume:
        raise SystemExit(f"--resume --eval-only: no checkpoint at {ckpt_path} to evaluate")

    train_model = DDP(model, device_ids=[args.local_rank] if args.device.startswith("cuda") else None) \
        if args.distributed else model
    if args.compile:  # only the training forward/backward; checkpoints and EMA read the uncompiled `model`,
        train_model = torch.compile(train_model)  # so their keys carry no `_orig_mod.` (nor DDP's `module.`)
    val_sampler = UnpaddedDistributedSampler(len(val_set), args.rank, args.world_size)
    val_loader = make_loader(args, val_set, val_sampler, train=False)
    if args.eval_only:
        stats = evaluate_fn(model, val_loader)
        log(json.dumps(stats))
        return stats
    if start_epoch >= args.epochs:
        log(f"{out} holds a finished run (epoch {start_epoch} of {args.epochs}): nothing to train; "
            "raise --epochs to train it longer")
        return log_lines[-1] if log_lines else {}

    sampler = RepeatedAugSampler(len(train_set), args.rank, args.world_size, args.repeated_aug, args.seed)
    loader = make_loader(args, SeededItems(train_set), sampler, train=True)
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise SystemExit(f"the train set ({len(train_set)} images) is smaller than one batch ({args.batch_size})")
    mix = make_mix(args, len(classes), multi_label)
    if is_main():
        with open(os.path.join(out, "config.json"), "w") as f:
            json.dump({**run_config(args, meta), "resumed_at_epoch": start_epoch or None}, f, indent=1)
        write_log(log_path, log_lines)  # what the checkpoint holds: drops lines of epochs that will be redone
    print_run_header(args, model, train_set, val_set, len(classes), peak_lr, start_epoch, steps_per_epoch)

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
            if is_main():
                # best.pt before checkpoint.pt: a kill in between redoes this epoch, bit for bit, and agrees
                if best_key in stats and (best is None or stats[best_key] > best["value"]):
                    best = {"epoch": epoch, "key": best_key, "value": stats[best_key]}
                    save_checkpoint({"model": model.state_dict(), "meta": meta, "epoch": epoch, "best": best,
                                     "args": vars(args)}, best_path)
                save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                 "scaler": scaler.state_dict() if scaler else None,
                                 "ema": ema.module.state_dict() if ema else None, "epoch": epoch,
                                 "step": (epoch + 1) * steps_per_epoch, "rng": rng_state(),
                                 "args": vars(args), "meta": meta, "log": log_lines, "best": best,
                                 "elapsed_s": stats["elapsed_s"]}, ckpt_path)
                write_log(log_path, log_lines)
    except KeyboardInterrupt:  # Ctrl-C (or SIGTERM, see main): one line, nothing partial on disk
        step = f" step {progress['step']}" if "step" in progress else ""
        done = f"last checkpoint: epoch {log_lines[-1]['epoch']} in {ckpt_path}" if log_lines else "no checkpoint yet"
        log(f"interrupted at epoch {epoch}{step}; {done}; continue with --resume")
        raise SystemExit(130) from None
    final = f", final {best_key} {stats[best_key]:.2f}" if best_key in stats else ""
    best_txt = f"best {best_key} {best['value']:.2f} (epoch {best['epoch']})" if best else "no validation"
    log(f"finished {args.epochs} epochs in {(elapsed_before + time.time() - t_start) / 60:.1f} min: "
        f"{best_txt}{final}; run folder {out} (config.json, log.jsonl, checkpoint.pt{', best.pt' if best else ''})")
    return stats


def print_run_header(args, model, train_set, val_set, num_classes, peak_lr, start_epoch, steps_per_epoch):
    """The resolved configuration in one block at the start of every run (rank 0)."""
    params = sum(p.numel() for p in model.parameters()) / 1e6
    targets = "none (plain training)" if args.points == "none" else f"{args.points}, lambda {args.point_weight:g}"
    if args.points == "random":
        targets += f", on {args.rand_points_on} images"
    lines = [
        f"run    {args.output_dir} ({f'resumed at epoch {start_epoch}' if start_epoch else 'new'}), seed {args.seed}, "
        f"{args.world_size} process(es) on {args.device}",
        f"model  {args.model} ({params:.1f} M params), {num_classes} classes, points: {targets}"
        + (f", {args.pooling} pooling" if args.pooling != "avg" else ""),
        f"data   {len(train_set)} train / {len(val_set)} val images, {args.img_size} px, global batch "
        f"{args.batch_size} ({args.batch_size // args.world_size} per process), {args.workers} workers",
        f"optim  recipe {args.recipe}: {args.opt} lr {peak_lr:.4g} (= {args.lr:g} x {args.batch_size}/"
        f"{args.lr_base_batch}), wd {args.weight_decay:g}, {args.sched} schedule, warm-up {args.warmup_epochs:g} "
        f"epochs, {args.epochs} epochs x {steps_per_epoch} steps",
        f"augment randaugment {args.randaugment}, colour jitter {args.color_jitter:g}, mixup {args.mixup:g}, "
        f"cutmix {args.cutmix:g}, erasing {args.re_prob:g}, label smoothing {args.label_smoothing:g}",
    ]
    log("\n".join(lines))


# -----------------------------------------------------------------------------
# Validation

@torch.no_grad()
def evaluate_imagenet(args, model, loader, boxes=None):
    """Exact top-1/top-5 over the whole val set (an unpadded sampler: every image counted once), and,
    given boxes, the point head's localisation accuracy (predicted point inside any GT box) and, as the level to
    beat, the accuracy of always answering the centre of the eval crop ("val_point_acc_centre")."""
    model.eval()
    dataset = loader.dataset
    logits, *points = evaluate.predict(model, loader, args.device, lambda: autocast(args), args.channels_last,
                                       points=boxes is not None)  # points: [] or [[N, K, 2]]
    stats = {f"val_{k}": v for k, v in evaluate.topk_accuracy(logits, torch.tensor(dataset.targets)).items()}
    if points:
        pts = points[0][:, 0].numpy()
        boxes, sizes = boxes
        keep = [i for i, b in enumerate(boxes) if b is not None]
        for name, p in (("val_point_acc", pts[keep]), ("val_point_acc_centre", np.full_like(pts[keep], 0.5))):
            px = evaluate.eval_points_to_original(p, sizes[keep], resize=args.val_resize, crop=args.img_size)
            stats[name] = evaluate.point_in_box_accuracy(px / sizes[keep], [boxes[i] for i in keep])
    stats["val_broken_images"] = dataset.reader.counts(all_ranks=True)["broken_images"]  # counted wrong above
    return stats


# -----------------------------------------------------------------------------
# The run folder: config.json (written at start), checkpoint.pt (every epoch), best.pt, log.jsonl.
# Files are written to a temporary name and renamed (atomic on POSIX), so a kill at any moment leaves the previous
# or the new file, never a torn one. The epoch log lives inside the checkpoint and log.jsonl is rewritten from it
# after each checkpoint, so log.jsonl never describes an epoch that the checkpoint does not hold.

RUN_FILES = ("config.json", "log.jsonl", "checkpoint.pt", "best.pt")


def _os_reason(e):
    """The OS error behind an exception (torch.save wraps ENOSPC in a RuntimeError), in a few words."""
    while e is not None:
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        e = e.__cause__ or e.__context__
    return None


def atomic_write(path, write):
    """write(file) into path.tmp.<pid>, fsync, rename; on any failure the temporary file is removed and the
    previous file at `path` is left as it was. An OS failure (disk full, read-only) ends the run with one line."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        reason = _os_reason(e)
        if reason is None:
            raise
        previous = f"previous version intact at {path}" if os.path.exists(path) else "no previous version"
        raise SystemExit(f"cannot write {path}: {reason}; {previous}") from None


def save_checkpoint(state, path):
    atomic_write(path, lambda f: torch.save(state, f))


def write_log(path, lines):
    atomic_write(path, lambda f: f.write("".join(json.dumps(line) + "\n" for line in lines).encode()))


def rng_state():
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def load_checkpoint(path, args):
    try:
        ckpt = read_checkpoint(path)  # weights_only=True: a checkpoint must not run code
    except (OSError, ValueError) as e:
        raise SystemExit(f"--resume: {e}; move it away to start the run again") from None
    saved = ckpt.get("args", {})
    for k in ("model", "points"):
        if saved.get(k) != getattr(args, k):
            raise SystemExit(f"{path} was saved with --{k}={saved.get(k)!r}, this run has {getattr(args, k)!r}: "
                             f"use the same flag, or another --output-dir")
    return ckpt


def prepare_output_dir(args, estimate_bytes):
    """Checked before any training, on rank 0, and agreed by every process: the folder exists and is writable, a
    previous run is not overwritten by accident, there is room for a checkpoint. Returns None or the error line."""
    out = args.output_dir
    try:
        os.makedirs(out, exist_ok=True)
        for tmp in glob.glob(os.path.join(glob.escape(out), "*.tmp.*")):  # left by saves that died
            os.remove(tmp)
            log(f"removed {tmp}, a temporary file of an interrupted save")
        entries = sorted(os.listdir(out))
        if entries and not args.resume:
            if not args.overwrite:
                return (f"--output-dir {out} is not empty ({', '.join(entries[:4])}"
                        f"{', ...' if len(entries) > 4 else ''}): continue that run with --resume, replace it "
                        "with --overwrite, or choose another --output-dir")
            for name in RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(out, name))
        probe = os.path.join(out, f".write-test.{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"0")
        os.remove(probe)
    except OSError as e:
        return f"--output-dir {out}: {e.strerror or e} ({e.filename or out}); choose a folder you can write to"
    free = shutil.disk_usage(out).free
    if free < estimate_bytes:
        return (f"--output-dir {out}: {free / 2**30:.2f} GiB free, a checkpoint needs about "
                f"{estimate_bytes / 2**30:.2f} GiB: free some space or choose another folder")
    return None


def agree(args, error):
    """Rank 0's verdict for everybody, so that all processes stop together (no hang in the next collective)."""
    if args.distributed:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error:
        raise SystemExit(error)


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)} if commit else None


def checkpoint_meta(args, classes, num_points):
    """What a checkpoint says about itself, so that evaluate.py (models.model_from_checkpoint) or anyone can
    rebuild the model from the file alone: architecture, classes (names), point head, input geometry."""
    return {"model": args.model, "num_classes": len(classes), "num_points": num_points,
            "img_size": args.img_size, "val_resize": args.val_resize, "interpolation": args.interpolation,
            "classes": list(classes), "points": args.points, "point_head": args.point_head, "pooling": args.pooling,
            "torch": str(torch.__version__)}


def run_config(args, meta):
    """config.json: every resolved flag, what the checkpoint describes, versions, code commit, command line."""
    import numpy
    import PIL
    import torchvision
    return {"args": vars(args), "meta": meta, "command": [os.path.basename(sys.argv[0])] + sys.argv[1:],
            "world_size": args.world_size, "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": {"python": sys.version.split()[0], "torch": str(torch.__version__),
                         "torchvision": str(torchvision.__version__), "numpy": numpy.__version__,
                         "pillow": PIL.__version__},
            "git": git_commit()}


# -----------------------------------------------------------------------------
# Demo: the README's main command

def demo_data_dir(seed=0):
    root = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "luab")
    path = os.path.join(root, f"synth-seed{seed}")
    if not os.path.isdir(path):  # written once, into a temporary folder renamed when complete
        tmp = f"{path}.tmp{os.getpid()}"
        print(f"writing the synthetic dataset to {path} (once)", flush=True)
        from tools.synth import synth  # here: the core files never need the tools
        synth(tmp, seed=seed)
        os.makedirs(root, exist_ok=True)
        os.replace(tmp, path)
    return path


def demo_preset():
    """The --demo preset: a small LUAB run on the synthetic ImageNet-format data that learns in a few minutes on
    2 CPU cores. Like a recipe, it only fills flags that were not given (`--demo --points none` is a plain run).
    No colour jitter: on 48 px synthetic images it slows learning past the demo's 16 epochs."""
    root = demo_data_dir()
    return dict(data_dir=os.path.join(root, "imagenet"), byproducts=os.path.join(root, "imagenet_ab", "train_xml"),
                val_boxes=os.path.join(root, "imagenet", "boxes", "val"), model="resnet18", recipe="resnet",
                points="clicks", img_size=48, epochs=16, batch_size=32, lr=0.2, lr_step=12, weight_decay=5e-4,
                color_jitter=0.0, workers=min(2, utils.default_workers()), print_freq=10, output_dir="runs/demo")


# -----------------------------------------------------------------------------

def _interrupt(signum, frame):
    """SIGTERM (torchrun, schedulers) ends a run as Ctrl-C does: one line, status 130."""
    raise KeyboardInterrupt


def main(args):
    args = resolve_args(args, RECIPES, DEFAULTS, demo_preset() if args.demo else None)
    init_distributed(args)
    signal.signal(signal.SIGTERM, _interrupt)  # torchrun and schedulers stop runs with SIGTERM: end as Ctrl-C does
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
