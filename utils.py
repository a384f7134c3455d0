"""
What every script shares and nothing else: the torchrun process group, rank-0 logging, one progress line, and
exact distributed gathering (every sample counted once, whatever the world size).

Conventions: `log` writes to stdout (the run's record); `Progress` writes to stderr (transient: redrawn in place
on a terminal, one line every `every` seconds in a log file). Both print on rank 0 only. Without a process group
(one process, no torchrun) every function here is the single-process identity.
"""

import contextlib
import datetime
import os
import pickle
import re
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

# -----------------------------------------------------------------------------
# checkpoints: reading and rebuilding (our own files, torchvision's and DeiT/timm's), always weights_only=True

_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers

def strip_wrapper_prefixes(key):
    """A state-dict key without the wrappers' prefixes (DDP's "module.", torch.compile's "_orig_mod.")."""
    while key.startswith(_WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key

_LAYER = r"encoder.layers.encoder_layer_\1."
_VIT_RENAMES = [  # DeiT/timm -> torchvision names; q/k/v row order already agrees (timm qkv = in_proj rows)
    (r"^cls_token$", "class_token"),
    (r"^pos_embed$", "encoder.pos_embedding"),
    (r"^patch_embed\.proj\.", "conv_proj."),
    (r"^blocks\.(\d+)\.norm1\.", _LAYER + "ln_1."),
    (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", _LAYER + r"self_attention.in_proj_\2"),
    (r"^blocks\.(\d+)\.attn\.proj\.", _LAYER + "self_attention.out_proj."),
    (r"^blocks\.(\d+)\.norm2\.", _LAYER + "ln_2."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", _LAYER + "mlp.0."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", _LAYER + "mlp.3."),
    (r"^norm\.", "encoder.ln."),
    (r"^head\.", "heads.head."),
    (r"\.mlp\.linear_1\.", ".mlp.0."),  # torchvision before vision#6053 (e.g. vit_b_16-c867db91.pth)
    (r"\.mlp\.linear_2\.", ".mlp.3."),
]

def read_checkpoint(path):
    """torch.load(path, weights_only=True) on the CPU: the one checkpoint reader of every entry point.

    A missing file raises FileNotFoundError; a corrupt or truncated file, or one that pickles more than tensors
    and plain containers (its unpickling could run code: refused, never retried unsafely), raises a ValueError
    whose message is one line naming the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):  # garbage bytes fail with "invalid load key" etc.
            raise ValueError(f"cannot read checkpoint {path}: not a torch checkpoint ({str(e).splitlines()[0]})") \
                from None
        found = re.search(r"GLOBAL (\S+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise ValueError(f"refused {path}: it pickles Python objects{what} besides tensors, and unpickling them "
                         "could run code; only plain weight checkpoints are loaded") from None
    except Exception as e:  # corrupt, truncated, not a torch file
        first = (str(e).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot read checkpoint {path}: {type(e).__name__}: {first}") from None

def checkpoint_parts(ckpt):
    """What a checkpoint (read_checkpoint's result) holds -> (state dict, meta dict).

    Our training checkpoints carry "model" and a self-describing "meta" (model, num_classes, num_points,
    point_head, img_size, val_resize, interpolation, classes; train_imagenet.checkpoint_meta); older ones only
    "args", read as meta; DeiT's are {"model": state dict}; torchvision's are the bare state dict (meta {})."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("model"), dict):
        meta = ckpt.get("meta") if isinstance(ckpt.get("meta"), dict) else ckpt.get("args")
        ckpt, meta = ckpt["model"], meta if isinstance(meta, dict) else {}
    else:
        meta = {}
    if not isinstance(ckpt, dict) or not ckpt or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise ValueError("holds no state dict (str -> tensor, or one under 'model')")
    return ckpt, meta

def load_pretrained(model, state_dict_or_path, drop_mismatched_heads=False):
    """Load torchvision, DeiT/timm or our own weights (a state dict, a {"model": state dict} checkpoint,
    or a path to either) into `model`. Returns a list of notes (str) about the heads: a point head, an
    attentive pool's `attention` or a classifier (fc / heads.head) that is entirely absent from the file keeps
    its fresh initialisation (so torchvision weights load into an attentive ResNet), and a point head or
    attention in the file is ignored when the model has none (the head is dropped at inference). With
    drop_mismatched_heads (fine-tuning, e.g. ImageNet -> COCO: 1000 classes and 1 point vs 80 and 80), a
    classifier or point head of another shape is dropped the same way, as DeiT's fine-tuning does. Anything
    else that does not match exactly (unknown key, missing key, shape) raises a ValueError naming the key."""
    sd = state_dict_or_path
    if isinstance(sd, (str, os.PathLike)):
        sd = read_checkpoint(sd)
    sd, _ = checkpoint_parts(sd)
    renamed = {}
    for key, value in sd.items():
        key = strip_wrapper_prefixes(key)
        if model.is_vit:
            for pattern, repl in _VIT_RENAMES:
                key = re.sub(pattern, repl, key)
        renamed[key] = value
    expected = model.state_dict()
    notes, problems, to_load = [], [], {}
    if drop_mismatched_heads:
        for key in [k for k in renamed if k.startswith(("fc.", "heads.head.", "point_head."))]:
            if key in expected and renamed[key].shape != expected[key].shape:
                notes.append(f"dropped {key} {list(renamed.pop(key).shape)} from the checkpoint: "
                             f"this model's is {list(expected[key].shape)}")
    for key, value in renamed.items():
        if key.startswith("point_head.") and model.point_head is None:
            notes.append(f"ignored {key} from the checkpoint: the model has no point head")
        elif key.startswith("attention.") and getattr(model, "attention", None) is None:
            notes.append(f"ignored {key} from the checkpoint: the model pools by average")
        elif key not in expected:
            problems.append(f"unexpected key {key!r}")
        elif value.shape != expected[key].shape:
            problems.append(f"shape mismatch for {key!r}: checkpoint {list(value.shape)}, "
                            f"model {list(expected[key].shape)}")
        else:
            to_load[key] = value
    head = "heads.head." if model.is_vit else "fc."
    head_dropped = not any(key.startswith(head) for key in renamed)  # the whole layer, not half of it
    for key in expected:
        if key in renamed:
            continue
        if key.startswith(("point_head.", "attention.")) or (head_dropped and key.startswith(head)):
            notes.append(f"{key} is not in the checkpoint: kept its fresh initialisation")
        elif not key.endswith("num_batches_tracked"):  # old torchvision files lack it; BatchNorm back-fills it
            problems.append(f"missing key {key!r}")
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: " + "; ".join(problems[:5]) + more)
    model.load_state_dict(to_load, strict=False)
    return notes

# -----------------------------------------------------------------------------
# the process group

def init_distributed(device=None, timeout_min=10):
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK; nothing to do without them):
    NCCL with one GPU per process, gloo on CPU. device None = this process's GPU if there is one, else "cpu".
    Returns (rank, world_size, device). CUDA also gets cudnn.benchmark and TF32 matmuls, as the torchvision
    references set them."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = str(device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu"))
    if device.startswith("cuda"):
        if device == "cuda":
            device = f"cuda:{local}"
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo",
                                timeout=datetime.timedelta(minutes=timeout_min))
    return rank, world, device

def dist_on():
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

def get_rank():
    return dist.get_rank() if dist_on() else 0

def get_world_size():
    return dist.get_world_size() if dist_on() else 1

def is_main():
    return get_rank() == 0

def _comm_device():
    """Where a collective's tensors must live: the GPU for NCCL, the CPU for gloo."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")

def default_workers():
    """Data-loader workers per process: up to 8, but never more than this process's share of the CPU cores."""
    return max(0, min(8, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))

def autocast(device, dtype=None):
    """The context a forward pass runs in: autocast to `dtype` ("bfloat16", "float16") on `device`'s type, or no
    autocast when dtype is None. The one autocast of training, validation and evaluate.py."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(str(device).split(":")[0], dtype=getattr(torch, dtype))

# -----------------------------------------------------------------------------
# logging and progress

def log(*msg):
    """print(*msg) on rank 0, flushed (a log file tailed during a run stays current)."""
    if is_main():
        print(*msg, flush=True)

class Progress:
    """A rank-0 progress line on stderr, `desc: done/total unit (rate unit/s, eta Ns)`: redrawn in place on a
    terminal (every 0.25 s), else printed as a new line every `every` seconds; always once at the end."""

    def __init__(self, desc, total, unit="img", every=10.0):
        self.desc, self.total, self.unit = desc, total, unit
        self.tty = sys.stderr.isatty()
        self.every = 0.25 if self.tty else every
        self.done, self.t0, self.last = 0, time.perf_counter(), 0.0

    def update(self, n):
        self.done += n
        now = time.perf_counter()
        if is_main() and (now - self.last >= self.every or self.done >= self.total):
            self.last = now
            rate = self.done / max(now - self.t0, 1e-9)
            eta = (self.total - self.done) / max(rate, 1e-9)
            msg = f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({rate:,.0f} {self.unit}/s, eta {eta:.0f}s)"
            end = "\n" if not self.tty or self.done >= self.total else ""
            print(("\r" + msg) if self.tty else msg, end=end, file=sys.stderr, flush=True)

# -----------------------------------------------------------------------------
# exact distributed evaluation: every rank takes a strided share, results are gathered by dataset index

class UnpaddedDistributedSampler(Sampler):
    """Rank r of world w iterates r, r + w, r + 2w, ... : no padding, no duplicates, no shuffling, so a
    gathered result covers the dataset exactly once (DistributedSampler pads with repeats). World 1 without
    a process group is the identity."""

    def __init__(self, data_source, rank=None, world_size=None):
        self.n = data_source if isinstance(data_source, int) else len(data_source)
        self.world_size = world_size if world_size is not None else get_world_size()
        self.rank = rank if rank is not None else get_rank()

    def __iter__(self):
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self):
        return len(range(self.rank, self.n, self.world_size))

def gather_by_index(indices, *tensors):
    """indices: LongTensor [n] (this rank's dataset indices), tensors: [n, ...] each -> tuple of tensors
    [sum n, ...] from all ranks, sorted by dataset index, on each input's device. Ranks may hold different n
    (even 0): everything is padded to the longest, all-gathered, then trimmed. Works without a process group."""
    indices = torch.as_tensor(indices).long()
    if not dist_on():
        order = torch.argsort(indices.to(tensors[0].device) if tensors else indices)
        return tuple(t[order] for t in tensors)
    dev, world = _comm_device(), dist.get_world_size()
    # a rank with nothing to report may not know the trailing shape/dtype: take them from one that does
    meta = [None] * world
    dist.all_gather_object(meta, [(tuple(t.shape[1:]), t.dtype) if len(t) else None for t in tensors])
    n = torch.tensor([len(indices)], device=dev)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    longest = max(sizes)

    def gather(t, k=None):
        if k is not None:
            shape, dtype = next((m[k] for m in meta if m[k] is not None), ((), t.dtype))
            t = t.reshape((len(t),) + shape).to(dtype) if len(t) else torch.zeros((0,) + shape, dtype=dtype)
        out_dtype = t.dtype
        t = t.to(dev)
        if t.dtype == torch.bool:  # gloo does not all_gather bool
            t = t.to(torch.uint8)
        t = torch.cat([t, t.new_zeros((longest - len(t),) + t.shape[1:])])
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        return torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(out_dtype)

    order = torch.argsort(gather(indices.to(dev)))
    return tuple(gather(t, k)[order].to(t.device) for k, t in enumerate(tensors))

def all_reduce_sum(x):
    """The sum over ranks of a tensor or a numpy array, returned as the same kind (a tensor is summed in place).
    Numpy goes through float64 / int64, so counts stay exact."""
    if not dist_on():
        return x if torch.is_tensor(x) else np.asarray(x)
    if torch.is_tensor(x):
        t = x.to(_comm_device())
        dist.all_reduce(t)
        if t is not x:
            x.copy_(t)
        return x
    a = np.asarray(x)
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64 if a.dtype.kind == "f" else np.int64))
    t = t.to(_comm_device())
    dist.all_reduce(t)
    return t.cpu().numpy()
