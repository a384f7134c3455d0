"""
LUAB on ImageNet: supervised training plus a point-regression head supervised by the ImageNet-AB clicks.

    torchrun --nproc_per_node=8 train_imagenet.py --data-dir /data/imagenet --byproducts ab_index.npz --luab
    torchrun --nproc_per_node=8 train_imagenet.py --model vit_small --luab ...   # DeiT recipe for ViTs
    python train_imagenet.py --demo                                              # CPU demo on synthetic data

Plain DDP, no framework. What LUAB adds to ordinary supervised training is small and marked "LUAB:" below:
the model gets a `point_head`, each sample carries a point target with a weight (0 = no click, or the click
left the crop), and the loss gets `point_weight` x a masked SmoothL1 term. Without --luab / --rand-points this
script is a plain ResNet / DeiT training script.

Multi-node: torchrun's own launch, e.g. `torchrun --nnodes=2 --node_rank=R --master_addr=HOST
--nproc_per_node=8 train_imagenet.py ...`. `--batch-size` is always the *global* batch.
"""
import argparse
import contextlib
import copy
import functools
import json
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import byproducts
import evaluate
from models import create_model, load_pretrained, param_groups

# -----------------------------------------------------------------------------
# Recipes. Every value is a flag default; any flag given on the command line wins.

RECIPES = {
    # "the standard 100-epochs setup [36]" of the paper for ResNets: He et al., torchvision's ResNet V1 recipe
    # run for 100 epochs (x0.1 at epochs 30, 60, 90).
    "resnet": dict(epochs=100, batch_size=256, opt="sgd", lr=0.1, lr_base_batch=256, momentum=0.9,
                   weight_decay=1e-4, sched="step", lr_step=30, warmup_epochs=0, min_lr=0.0,
                   label_smoothing=0.0, randaugment="none", mixup=0.0, cutmix=0.0, re_prob=0.0,
                   drop_path=0.0, repeated_aug=1, interpolation="bilinear"),
    # DeiT's main.py defaults (paper appendix F): AdamW 5e-4 x bs/512, cosine, 5 warm-up epochs, 300 epochs.
    "deit": dict(epochs=300, batch_size=1024, opt="adamw", lr=5e-4, lr_base_batch=512, momentum=0.9,
                 weight_decay=0.05, sched="cosine", lr_step=30, warmup_epochs=5, min_lr=1e-5,
                 label_smoothing=0.1, randaugment="rand-m9-mstd0.5", mixup=0.8, cutmix=1.0, re_prob=0.25,
                 drop_path=0.1, repeated_aug=3, interpolation="bicubic"),
}


def get_args_parser(add_help=True):
    p = argparse.ArgumentParser(description="LUAB training on ImageNet (+ ImageNet-AB byproducts)",
                                add_help=add_help)
    g = p.add_argument_group("ImageNet data")
    g.add_argument("--data-dir", help="ImageNet root with train/<wnid>/*.JPEG and val/<wnid>/*.JPEG")
    g.add_argument("--byproducts", help="ImageNet-AB index file (byproducts.py index-imagenet) or XML root")
    g.add_argument("--val-boxes", help="ILSVRC box XMLs of the val images (<stem>.xml or <wnid>/<stem>.xml): "
                                       "enables the point head's localisation accuracy")
    add_training_args(p, recipes=RECIPES, default_model="resnet50")
    return p


def add_training_args(p, recipes, default_model, optimizers=("sgd", "adamw")):
    """The flags every training script shares (train_coco.py adds its data flags and these)."""
    p.add_argument("--model", default=default_model,
                   help="resnet18|resnet50|resnet101|resnet152|vit_tiny|vit_small|vit_base")
    p.add_argument("--recipe", choices=list(recipes), default=None,
                   help="hyper-parameter preset; default: resnet for ResNets, deit for ViTs")
    g = p.add_argument_group("data")
    g.add_argument("--data-fraction", type=float, default=1.0, help="train on this fraction of the train set")
    g.add_argument("--img-size", type=int, default=224)
    g.add_argument("--val-resize", type=int, default=None, help="default: img_size / 0.875")
    g.add_argument("--workers", type=int, default=8, help="data loader workers per process")
    g.add_argument("--strict-data", action="store_true", help="bad byproduct records are errors, not skips")
    g = p.add_argument_group("LUAB")
    g.add_argument("--luab", action="store_true", help="regress the annotators' clicks (the paper's method)")
    g.add_argument("--rand-points", action="store_true",
                   help="regress a uniform random point fixed per image (the paper's control)")
    g.add_argument("--point-weight", type=float, default=1.0, help="lambda, weight of the point loss")
    g.add_argument("--point-loss", choices=["smoothl1", "mse"], default="smoothl1")
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
    g.add_argument("--randaugment", help="'rand-m9-mstd0.5' or 'none'")
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
    g.add_argument("--output-dir", default="runs/imagenet")
    g.add_argument("--resume", action="store_true", help="continue from <output-dir>/checkpoint.pt")
    g.add_argument("--pretrained", help="initialise from a torchvision / DeiT / our checkpoint")
    g.add_argument("--eval-only", action="store_true", help="evaluate --pretrained (or the resumed model) and exit")
    g.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (and after the last)")
    g.add_argument("--print-freq", type=int, default=50)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--max-steps-per-epoch", type=int, default=0, help="cut epochs short (smoke tests)")
    g.add_argument("--demo", action="store_true",
                   help="write the synthetic dataset once into a cache folder and train a small LUAB model on CPU")


def resolve_args(args, recipes):
    """Fill every unset flag from the recipe; derive the quantities the loop needs."""
    if args.recipe is None:
        args.recipe = "deit" if args.model.startswith("vit") else "resnet"
    for k, v in recipes[args.recipe].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.luab and args.rand_points:
        raise SystemExit("--luab and --rand-points are two different runs: choose one")
    args.points = "clicks" if args.luab else "random" if args.rand_points else "none"
    if args.val_resize is None:
        args.val_resize = int(round(args.img_size / 0.875))  # the usual 0.875 test crop ratio
    return args


# -----------------------------------------------------------------------------
# Distributed set-up: torchrun's environment variables, nothing else

def init_distributed(args):
    args.rank, args.world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    args.local_rank = int(os.environ.get("LOCAL_RANK", 0))
    args.distributed = args.world_size > 1
    if args.device is None:
        args.device = f"cuda:{args.local_rank}" if torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda"):
        torch.cuda.set_device(args.device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.distributed:
        dist.init_process_group("nccl" if args.device.startswith("cuda") else "gloo")
    if args.batch_size % args.world_size:
        raise SystemExit(f"--batch-size {args.batch_size} (global) must be divisible by {args.world_size} processes")


def is_main(args):
    return args.rank == 0


def log(args, *msg):
    if is_main(args):
        print(*msg, flush=True)


def all_reduce_sum(t):
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return t


# -----------------------------------------------------------------------------
# Sampling. The sampler owns all data randomness: it yields (index, seed) and the dataset seeds its
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
    """Wraps a dataset so that item (index, seed) is augmented with the RNGs seeded from `seed`."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        index, seed = item
        torch.manual_seed(seed % 2**63)
        random.seed(seed)
        return self.dataset[index]


# -----------------------------------------------------------------------------
# Data

def build_datasets(args):
    for d in ("train", "val"):
        if not args.data_dir or not os.path.isdir(os.path.join(args.data_dir, d)):
            raise SystemExit(f"--data-dir must contain {d}/<wnid>/*.JPEG (got {args.data_dir!r})")
    if args.points == "clicks" and not args.byproducts:
        raise SystemExit("--luab needs --byproducts (an index from `byproducts.py index-imagenet` or the XML root)")
    if args.byproducts and not os.path.exists(args.byproducts):
        raise SystemExit(f"--byproducts {args.byproducts!r} does not exist")
    train_tf = byproducts.TrainTransform(
        size=args.img_size, hflip=0.5, interpolation=args.interpolation,
        randaugment=None if args.randaugment in (None, "none") else args.randaugment, re_prob=args.re_prob)
    val_tf = byproducts.EvalTransform(size=args.img_size, resize=args.val_resize, interpolation=args.interpolation)
    train = byproducts.ImageNetAB(os.path.join(args.data_dir, "train"),
                                  clicks=args.byproducts if args.points == "clicks" else None,
                                  points=args.points, transform=train_tf, data_fraction=args.data_fraction,
                                  seed=args.seed, strict=args.strict_data)
    val = byproducts.ImageNetAB(os.path.join(args.data_dir, "val"), points="none", transform=val_tf)
    if train.classes != val.classes:
        raise SystemExit("train/ and val/ have different class folders")
    if args.points == "clicks" and train.num_points == 0:
        raise SystemExit(f"--byproducts {args.byproducts!r} matches no image of {args.data_dir}/train "
                         "(wrong file, or keys not of the form wnid/stem?)")
    return train, val


def val_point_boxes(args, val):
    """For each val image, its GT boxes normalised to [0, 1] of the image, and the JPEG size (W, H)."""
    if not args.val_boxes:
        return None
    from PIL import Image
    boxes = byproducts.load_boxes(args.val_boxes)
    out = []
    for key, (path, _) in zip(val.keys, val.samples):
        rec = boxes.get(key) or boxes.get(key.split("/")[-1])
        if rec is None:
            out.append(None)
            continue
        with Image.open(path) as im:  # header only: the geometry of the eval crop needs the JPEG's size
            size = im.size
        w, h = rec["size"] or size  # boxes are in the XML's <size> frame, which may differ from the JPEG
        out.append((rec["boxes"] / np.array([w, h, w, h], dtype=np.float64), size))
    if not any(o is not None for o in out):
        raise SystemExit(f"--val-boxes {args.val_boxes!r} matches no val image")
    return out


def make_loader(args, dataset, sampler, train):
    return torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size // args.world_size, sampler=sampler, drop_last=train,
        num_workers=args.workers, pin_memory=args.device.startswith("cuda"),
        persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers > 0 else None)


# -----------------------------------------------------------------------------
# Objective

def point_loss(pred, points, weights, kind="smoothl1"):
    """LUAB: masked point regression, averaged over the points that count in the *global* batch.

    pred [B, K, 2]; points [B, K, 2] or [B, J, K, 2] (J targets per sample after Mixup/CutMix); weights the
    same without the last dim. Dividing by the global weight sum (times world size, because DDP averages
    gradients) makes the loss and its gradients identical for any number of processes.
    """
    if points.dim() == 4:
        pred = pred.unsqueeze(1)
    pred = pred.float().expand_as(points)
    fn = F.smooth_l1_loss if kind == "smoothl1" else F.mse_loss
    per_point = fn(pred, points, reduction="none").sum(-1)  # [B, (J,) K]
    denom = all_reduce_sum(weights.sum().detach().clone())
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return (per_point * weights).sum() * world / denom.clamp(min=1e-6)


def classification_loss(logits, targets, label_smoothing):
    """Cross-entropy on int labels, or soft-target cross-entropy after Mixup/CutMix."""
    if targets.dim() == 1:
        return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def imagenet_loss(args, outputs, batch):
    logits, pred_points = outputs if isinstance(outputs, tuple) else (outputs, None)
    _, targets, points, weights = batch
    loss_cls = classification_loss(logits, targets, args.label_smoothing)
    if pred_points is None:
        return loss_cls, torch.zeros((), device=logits.device)
    return loss_cls, point_loss(pred_points, points, weights, args.point_loss)


def imagenet_mix(args, num_classes):
    """Mixup/CutMix on the device, points carried along (byproducts.mix_batch); None when off."""
    if not (args.mixup > 0 or args.cutmix > 0):
        return None

    def mix(images, labels, points, weights, generator):
        soft = F.one_hot(labels, num_classes).float()
        soft = soft * (1 - args.label_smoothing) + args.label_smoothing / num_classes
        return byproducts.mix_batch(images, soft, points, weights, mixup_alpha=args.mixup,
                                    cutmix_alpha=args.cutmix, generator=generator)
    return mix


# -----------------------------------------------------------------------------
# Optimiser, LR as a pure function of the step (so resume needs no scheduler state), EMA

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


def build_optimizer(args, model):
    lr = args.lr * args.batch_size / args.lr_base_batch
    groups = param_groups(model, args.weight_decay) if args.opt == "adamw" else model.parameters()
    opt_class = torch.optim.SGD if args.opt == "sgd" else torch.optim.AdamW
    # fused: one kernel per parameter does the whole update; without it torch's default (foreach kernels
    # over all parameters on CUDA, a Python loop of small ops on CPU)
    fused = True if has_fused(opt_class, args.device) else None
    if args.opt == "sgd":
        # torchvision's ResNet recipe decays every parameter (BN and biases included)
        opt = opt_class(groups, lr=lr, momentum=args.momentum, weight_decay=args.weight_decay, fused=fused)
    else:
        opt = opt_class(groups, lr=lr, weight_decay=args.weight_decay, fused=fused)
    return opt, lr


def lr_at(args, peak_lr, step, steps_per_epoch):
    """Learning rate at a global step: linear warm-up, then step decay or cosine down to min_lr."""
    epoch = step / steps_per_epoch
    if epoch < args.warmup_epochs:
        return peak_lr * (step + 1) / (args.warmup_epochs * steps_per_epoch)
    if args.sched == "step":
        return peak_lr * 0.1 ** int(epoch // args.lr_step)
    t = (epoch - args.warmup_epochs) / max(args.epochs - args.warmup_epochs, 1e-8)
    return args.min_lr + 0.5 * (peak_lr - args.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


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
# Checkpoints: written to a temporary file and renamed (atomic on POSIX), so a kill at any moment
# leaves either the previous or the new checkpoint, never a torn one.

def save_checkpoint(state, path):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    saved = ckpt.get("args", {})
    for k in ("model", "points"):
        if saved.get(k) != getattr(args, k):
            raise SystemExit(f"{path} was saved with --{k}={saved.get(k)!r}, this run has {getattr(args, k)!r}")
    return ckpt


# -----------------------------------------------------------------------------
# Training and evaluation loops

def autocast(args):
    """The context the forward pass runs in: with --amp, autocast to --amp-dtype on CUDA or CPU (bf16 there).
    Only the model runs inside it: the losses cast its outputs to fp32 (.float()) and are computed outside,
    as are the metrics, so the numbers reported do not depend on --amp."""
    if not args.amp:
        return contextlib.nullcontext()
    return torch.autocast(args.device.split(":")[0], dtype=getattr(torch, args.amp_dtype))


def resolve_speed_flags(args):
    """Refuse the CUDA-only speed flags on another device; default channels_last where it pays."""
    cuda = args.device.startswith("cuda")
    if args.amp and args.amp_dtype == "float16" and not cuda:
        raise SystemExit("--amp-dtype float16 needs CUDA (fp16 needs the GradScaler); on CPU --amp uses bfloat16")
    if args.sync_bn and not cuda:
        raise SystemExit("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel): drop it on CPU")
    if args.channels_last is None:  # cuDNN's tensor-core convolutions want NHWC; a ViT has one conv only
        args.channels_last = cuda and not args.model.startswith("vit")


def to_device(args, batch):
    images, *rest = batch
    images = images.to(args.device, non_blocking=True)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return [images] + [t.to(args.device, non_blocking=True) for t in rest]


def backward_step(args, model, loss, optimizer, scaler=None):
    """Zero the gradients, backpropagate `loss`, clip (--clip-grad) and step. With the fp16 GradScaler (CUDA
    only) the loss is scaled up for the backward pass and the gradients unscaled before clipping."""
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


def train_one_epoch(args, model, loader, optimizer, peak_lr, epoch, loss_fn, mix=None, ema=None, scaler=None):
    """One pass over `loader`; returns the mean losses, throughput and data-wait fraction of the epoch."""
    model.train()
    steps = len(loader) if not args.max_steps_per_epoch else min(len(loader), args.max_steps_per_epoch)
    sums = torch.zeros(3, device=args.device)  # loss, point loss, number of steps
    t_epoch = t_last = time.perf_counter()
    data_wait = 0.0
    it = iter(loader)
    for i in range(steps):
        t0 = time.perf_counter()
        batch = to_device(args, next(it))
        data_wait += time.perf_counter() - t0
        step = epoch * args.steps_per_epoch + i
        for g in optimizer.param_groups:
            g["lr"] = lr_at(args, peak_lr, step, args.steps_per_epoch)
        if mix is not None:  # a CPU generator (mix_batch draws on the CPU), seeded by step and rank: resumable
            gen = torch.Generator().manual_seed(args.seed * 7919 + step * 131 + args.rank)
            batch = list(mix(*batch, generator=gen))
        with autocast(args):
            outputs = model(batch[0])
        loss_cls, loss_pt = loss_fn(args, outputs, batch)
        loss = loss_cls + args.point_weight * loss_pt  # LUAB: the whole change to the objective
        backward_step(args, model, loss, optimizer, scaler)
        if ema is not None:
            ema.update(args.model_without_ddp)
        sums += torch.stack([loss_cls.detach() + args.point_weight * loss_pt.detach(), loss_pt.detach(),
                             torch.ones((), device=args.device)])
        if is_main(args) and ((i + 1) % args.print_freq == 0 or i + 1 == steps):
            now = time.perf_counter()
            done = (i + 1) / steps
            n = min(args.print_freq, (i % args.print_freq) + 1)
            ips = n * args.batch_size / max(now - t_last, 1e-9)
            eta = (now - t_epoch) / done * (1 - done) + (now - t_epoch) / done * (args.epochs - epoch - 1)
            print(f"epoch {epoch} [{i + 1}/{steps}] loss {loss.item():.4f} point {loss_pt.item():.4f} "
                  f"lr {optimizer.param_groups[0]['lr']:.3g} {ips:.0f} img/s "
                  f"data {100 * data_wait / (now - t_epoch):.0f}% eta {eta / 60:.1f} min", flush=True)
            t_last = now
    all_reduce_sum(sums)
    elapsed = time.perf_counter() - t_epoch
    return {"train_loss": (sums[0] / sums[2]).item(), "train_point_loss": (sums[1] / sums[2]).item(),
            "img_per_s": steps * args.batch_size / elapsed, "data_wait": data_wait / elapsed,
            "epoch_time_s": elapsed}


@torch.no_grad()
def evaluate_imagenet(args, model, loader, boxes=None):
    """Exact top-1/top-5 over the whole val set (an unpadded sampler: every image counted once), and,
    given boxes, the point head's localisation accuracy (predicted point inside any GT box)."""
    model.eval()
    dataset = loader.dataset
    logits_all, points_all = [], []
    for batch in loader:
        images = to_device(args, batch)[0]
        with autocast(args):
            out = model(images)
        logits, points = out if isinstance(out, tuple) else (out, None)
        logits_all.append(logits.float())
        if points is not None:
            points_all.append(points.float()[:, 0])
    indices = torch.tensor(list(loader.sampler), dtype=torch.long, device=args.device)
    logits = torch.cat(logits_all) if logits_all else torch.zeros(0, len(dataset.classes), device=args.device)
    tensors = [logits] + ([torch.cat(points_all)] if points_all else [])
    gathered = evaluate.gather_by_index(indices, *tensors)
    labels = torch.tensor(dataset.targets)
    stats = {f"val_{k}": v for k, v in evaluate.topk_accuracy(gathered[0].cpu(), labels).items()}
    if boxes is not None and len(gathered) > 1:
        pts = gathered[1].cpu().numpy()
        keep = [i for i, b in enumerate(boxes) if b is not None]
        sizes = np.array([boxes[i][1] for i in keep], dtype=np.float64)
        px = evaluate.eval_points_to_original(pts[keep], sizes, resize=args.val_resize, crop=args.img_size)
        stats["val_point_acc"] = evaluate.point_in_box_accuracy(px / sizes, [boxes[i][0] for i in keep])
    return stats


# -----------------------------------------------------------------------------
# Demo: the README's main command

def demo_data_dir(seed=0):
    root = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "luab")
    path = os.path.join(root, f"synth-seed{seed}")
    if not os.path.isdir(path):  # written once, into a temporary folder renamed when complete
        tmp = f"{path}.tmp{os.getpid()}"
        print(f"writing the synthetic dataset to {path} (once)", flush=True)
        byproducts.synth(tmp, seed=seed)
        os.makedirs(root, exist_ok=True)
        os.replace(tmp, path)
    return path


def apply_demo_defaults(args):
    """A small LUAB run on the synthetic ImageNet-format data that learns in a few minutes on 2 CPU cores."""
    root = demo_data_dir()
    demo = dict(data_dir=os.path.join(root, "imagenet"), byproducts=os.path.join(root, "imagenet_ab", "train_xml"),
                val_boxes=os.path.join(root, "imagenet", "boxes", "val"), model="resnet18", recipe="resnet",
                img_size=48, epochs=16, batch_size=32, lr=0.2, lr_step=12, weight_decay=5e-4, point_weight=5.0, workers=2,
                print_freq=10, output_dir="runs/demo")
    for k, v in demo.items():
        if getattr(args, k) in (None, get_args_parser().get_default(k)):
            setattr(args, k, v)
    if not args.rand_points:
        args.luab = True


# -----------------------------------------------------------------------------

def fit(args, train_set, val_set, num_classes, num_points, loss_fn, mix, evaluate_fn, make_optimizer=None,
        class_names=None):
    """The training run shared by train_imagenet.py and train_coco.py: model, optimiser, resume, the
    epoch loop, validation, checkpoints and logs. `loss_fn(args, outputs, batch) -> (task loss, point
    loss)`, `mix(*batch, generator) -> batch` or None, `evaluate_fn(model, loader) -> dict`,
    `make_optimizer(args, model) -> (optimizer, peak lr)` (default: build_optimizer)."""
    resolve_speed_flags(args)
    log(args, f"{len(train_set)} train / {len(val_set)} val images, {num_classes} classes, "
              f"points={args.points}, recipe={args.recipe}, world={args.world_size}")
    # LUAB: the model gets a point head (K points) on the penultimate features; 0 = a plain classifier
    model = create_model(args.model, num_classes=num_classes, num_points=num_points if args.points != "none" else 0,
                         drop_path=args.drop_path, img_size=args.img_size)
    if args.pretrained:
        try:
            load_pretrained(model, args.pretrained)
        except ValueError as e:
            raise SystemExit(f"--pretrained {args.pretrained}: {e}")
    if args.sync_bn and args.distributed:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(args.device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    args.model_without_ddp = model
    optimizer, peak_lr = (make_optimizer or build_optimizer)(args, model)
    fp16 = args.amp and args.amp_dtype == "float16" and args.device.startswith("cuda")
    scaler = torch.amp.GradScaler() if fp16 else None  # bf16 needs no loss scaling
    ema = ModelEma(model, args.model_ema_decay) if args.model_ema else None

    start_epoch = 0
    ckpt_path, log_path = os.path.join(args.output_dir, "checkpoint.pt"), os.path.join(args.output_dir, "log.jsonl")
    if args.resume:
        if not os.path.exists(ckpt_path):
            raise SystemExit(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = load_checkpoint(ckpt_path, args)
        load_pretrained(model, ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema"):
            ema.module.load_state_dict(ckpt["ema"])
        set_rng_state(ckpt["rng"])
        start_epoch = ckpt["epoch"] + 1
        log(args, f"resumed from {ckpt_path} at epoch {start_epoch}")
        if is_main(args) and os.path.exists(log_path):  # drop log lines of epochs that will be redone
            with open(log_path) as f:
                lines = [line for line in f if json.loads(line)["epoch"] < start_epoch]
            with open(log_path, "w") as f:
                f.writelines(lines)

    train_model = DDP(model, device_ids=[args.local_rank] if args.device.startswith("cuda") else None) \
        if args.distributed else model
    if args.compile:  # only the training forward/backward; checkpoints and EMA read the uncompiled `model`,
        train_model = torch.compile(train_model)  # so their keys carry no `_orig_mod.` (nor DDP's `module.`)
    val_sampler = evaluate.UnpaddedDistributedSampler(len(val_set), args.rank, args.world_size)
    val_loader = make_loader(args, val_set, val_sampler, train=False)
    if args.eval_only:
        stats = evaluate_fn(model, val_loader)
        log(args, json.dumps(stats))
        return stats

    sampler = RepeatedAugSampler(len(train_set), args.rank, args.world_size, args.repeated_aug, args.seed)
    loader = make_loader(args, SeededItems(train_set), sampler, train=True)
    args.steps_per_epoch = len(loader)
    if args.steps_per_epoch == 0:
        raise SystemExit(f"the train set ({len(train_set)} images) is smaller than one batch ({args.batch_size})")
    if is_main(args):
        os.makedirs(args.output_dir, exist_ok=True)
    # what a checkpoint must say about itself so that evaluate.py (or anyone) can rebuild the model from it alone
    meta = {"model": args.model, "num_classes": num_classes, "num_points": num_points if args.points != "none" else 0,
            "img_size": args.img_size, "val_resize": args.val_resize, "interpolation": args.interpolation,
            "classes": list(class_names) if class_names is not None else None, "points": args.points,
            "torch": str(torch.__version__)}
    stats = {}
    for epoch in range(start_epoch, args.epochs):
        sampler.set_epoch(epoch)
        stats = train_one_epoch(args, train_model, loader, optimizer, peak_lr, epoch, loss_fn, mix, ema, scaler)
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            stats.update(evaluate_fn(model, val_loader))
            if ema is not None:
                stats.update({f"ema_{k}": v for k, v in evaluate_fn(ema.module, val_loader).items()})
        if is_main(args):
            print(f"epoch {epoch}: " + " ".join(f"{k} {v:.4g}" for k, v in stats.items()), flush=True)
            with open(log_path, "a") as f:
                f.write(json.dumps({"epoch": epoch, **stats}) + "\n")
            save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scaler": scaler.state_dict() if scaler else None,
                             "ema": ema.module.state_dict() if ema else None, "epoch": epoch,
                             "step": (epoch + 1) * args.steps_per_epoch, "rng": rng_state(),
                             "args": saveable_args(args), "meta": meta}, ckpt_path)
    return stats


def main(args):
    if args.demo:
        apply_demo_defaults(args)
    args = resolve_args(args, RECIPES)
    init_distributed(args)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    train_set, val_set = build_datasets(args)
    boxes = val_point_boxes(args, val_set)
    num_classes = len(train_set.classes)
    try:
        stats = fit(args, train_set, val_set, num_classes, 1, imagenet_loss, imagenet_mix(args, num_classes),
                    lambda model, loader: evaluate_imagenet(args, model, loader, boxes),
                    class_names=train_set.classes)
        if args.demo:
            log(args, f"demo done: val top-1 {stats['val_top1']:.1f}% (chance {100 / num_classes:.0f}%), point head "
                      f"inside the object box for {stats['val_point_acc']:.1f}% of val images; "
                      f"checkpoint and log.jsonl in {args.output_dir}")
        return stats
    finally:
        if args.distributed:
            dist.destroy_process_group()


def saveable_args(args):
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}


if __name__ == "__main__":
    main(get_args_parser().parse_args())
