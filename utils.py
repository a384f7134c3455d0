"""
What the scripts share and a reader of LUAB can skip: the infrastructure, one section each, in this order:
checkpoints (reading and rebuilding) -> the torchrun process group -> image reading and the bad-input policy ->
logging and progress -> exact distributed evaluation -> the run folder (checks, atomic writes, resume, Ctrl-C)
-> the training machinery that is not LUAB's (flags, loaders, sampler, EMA, LR curve).

Conventions: `log` writes to stdout (the run's record); `Progress` writes to stderr (transient: redrawn in place
on a terminal, one line every `every` seconds in a log file). Both print on rank 0 only. Without a process group
(one process, no torchrun) every function here is the single-process identity.
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
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from collections import Counter

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
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
    point_head, img_size, val_resize, interpolation, classes; utils.checkpoint_meta); older ones only
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
        timeout = datetime.timedelta(minutes=timeout_min)
        store, _, _ = next(dist.rendezvous("env://", rank, world, timeout=timeout))  # torchrun's MASTER_ADDR/PORT
        store.set_timeout(timeout)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=timeout, rank=rank,
                                world_size=world, store=fresh_namespace(store, rank, world, timeout))
    return rank, world, device

def fresh_namespace(store, rank, world, timeout):
    """The part of `store` where this process group forms: one that no earlier group of the job used.

    torchrun keeps one TCP store for all restarts of a job, and the keys of a group whose worker was killed stay
    in it: a restarted worker that read them would connect to the dead worker's port (gloo: "connectFullMesh
    failed ... Connection refused"; NCCL: a stale unique id). TORCHELASTIC_RESTART_COUNT cannot name the new
    part, since each node's agent counts only its own restarts. Instead rank 0 draws a new generation number from
    a counter in the store, and every other rank takes a generation once rank 0 has echoed the random word it left
    there (a number left by a dead rank 0 is never echoed: it is read again until the new one appears)."""
    if rank == 0:
        gen = store.add("pg/generation", 1)
        store.set("pg/current", str(gen))
        for r in range(1, world):  # get waits (up to `timeout`) until rank r has said hello
            store.set(f"pg/{gen}/welcome{r}", store.get(f"pg/{gen}/hello{r}"))
        return dist.PrefixStore(f"pg/{gen}", store)
    word, gen, deadline = os.urandom(8).hex().encode(), None, time.monotonic() + timeout.total_seconds()
    while time.monotonic() < deadline:
        latest = store.get("pg/current").decode()  # waits until some rank 0 has drawn one
        if latest != gen:
            gen = latest
            store.set(f"pg/{gen}/hello{rank}", word)
        if store.check([f"pg/{gen}/welcome{rank}"]) and store.get(f"pg/{gen}/welcome{rank}") == word:
            return dist.PrefixStore(f"pg/{gen}", store)
        time.sleep(0.1)
    raise dist.DistStoreError(f"rank {rank}: no rank 0 formed a process group within {timeout}")

def exit_together(error=None):
    """Every rank's verdict for all, where one rank may find a reason to stop (a refused run folder): if any rank
    has an error line, all exit at once, rank 0 printing the first one (by rank) and the others leaving silently
    with status 1, so that no rank waits in a collective for one that left. error None: go on."""
    if dist_on():
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)
        error = next((e for e in errors if e), None)
    if error:
        raise SystemExit(error if get_rank() == 0 else 1)

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
# image reading and the bad-input policy: what a loader does with a file or record it cannot use
#
# Bad byproduct records (corrupt XML / JSON, NaN / non-numeric / out-of-range coordinates, an XML without its
# image, ...) are counted by Problems and reported in one summary line (a BadInputWarning naming the files); the
# sample gets point weight 0 or is skipped. Images are read by read_image (modes converted, or refused by name)
# under ImageReader's policy: a broken file is counted, named once, and replaced by the mean pixel (NaN for
# evaluation). strict=True (--strict, --strict-data) turns any of it into a BadInput error.

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

class BadInput(ValueError):
    """A file or record the parser refuses. kind is a short tag (corrupt-xml, bad-coordinate, ...)."""

    def __init__(self, kind, detail=""):
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind, self.detail = kind, detail

class BadImage(BadInput):
    """An image file read_image refuses: kind "unreadable-image" (zero bytes, truncated, not an image) or
    "unsupported-mode" (a pixel format with no faithful RGB form). size is the header's (W, H), or None."""

    def __init__(self, kind, detail="", size=None):
        super().__init__(kind, detail)
        self.size = size

class BadInputWarning(UserWarning):
    pass

def error_line(e):
    """One line for a BadInput, also when a DataLoader re-raised it with the worker's traceback in its text."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return re.sub(r"^[\w.]*Bad(Input|Image): ", "", lines[-1]) if lines else type(e).__name__

class Problems:
    """Counts bad input by kind, keeps the first few file names, and reports everything in one line."""

    # documented quirks of the release, harmless repeats, or what a flag accepted: reported, never fatal
    NOTES = {"duplicate-image-id", "duplicate-xml", "empty-class"}

    def __init__(self, what="byproducts"):
        self.what, self.counts, self.examples = what, Counter(), {}

    def add(self, kind, name, detail=""):
        self.counts[kind] += 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < 3:
            ex.append(f"{name} ({detail})" if detail else str(name))

    def extend(self, triples):
        for kind, name, detail in triples:
            self.add(kind, name, detail)

    def merge(self, other):
        for kind, n in other.counts.items():
            self.counts[kind] += n
            ex = self.examples.setdefault(kind, [])
            ex.extend(other.examples[kind][:3 - len(ex)])

    @property
    def n_bad(self):
        return sum(n for k, n in self.counts.items() if k not in self.NOTES)

    def __len__(self):
        return sum(self.counts.values())

    def summary(self):
        parts = [f"{k} x{n}: {'; '.join(self.examples[k])}{' ...' if n > len(self.examples[k]) else ''}"
                 for k, n in sorted(self.counts.items())]
        return f"{self.what}: {len(self)} problem(s) [" + " | ".join(parts) + "]"

    def finish(self, strict=False, warn=True):
        """Raise (strict and anything bad) or warn once with the summary line; returns the line or None."""
        if not self.counts:
            return None
        line = self.summary()
        if strict and self.n_bad:
            raise BadInput("strict", line)
        if warn:
            warnings.warn(line, BadInputWarning, stacklevel=3)
        return line

MEAN_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)  # (124, 116, 104): 0 after Normalize
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")

def _to_rgb(img):
    """A decoded PIL image -> RGB without losing what it shows; raises BadImage (unsupported-mode) otherwise.

    16-bit gray (I;16*, and I, the 32-bit mode 16-bit PNG / TIFF files open as): scaled to 8 bits (v / 257,
    rounded), where PIL's convert("RGB") clips every value above 255 to white. Alpha (RGBA, LA, PA, P with a
    transparent colour): composited over the mean pixel, not dropped (PIL would show whatever colour hides
    under transparent pixels). CMYK, palette, 1-bit, L, YCbCr: PIL's conversion. F (float) and values of I
    outside 0..65535 have no agreed 8-bit form: refused by name.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT:
        a = np.asarray(img).astype(np.int64)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise BadImage("unsupported-mode", f"mode {mode} with values {a.min()}..{a.max()} (not 16-bit)")
        return Image.fromarray(((a + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if "A" in mode or "a" in mode or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", img.size, MEAN_RGB + (255,)), rgba).convert("RGB")
    if mode == "F":
        raise BadImage("unsupported-mode", "mode F (32-bit float pixels)")
    try:
        return img.convert("RGB")
    except ValueError as e:  # e.g. LAB / HSV without a colour-management conversion
        raise BadImage("unsupported-mode", f"mode {mode}: {e}") from None

def read_image(path):
    """The one image reader of every dataset (training, validation, evaluate.py, COCO): path -> PIL RGB image.

    Decodes the whole file (a truncated JPEG fails here, not later in a transform) and converts its mode with
    _to_rgb. Raises BadImage: unreadable-image (missing, zero bytes, truncated, not an image; .size holds the
    header's (W, H) when the header was readable) or unsupported-mode. Datasets apply the policy through
    ImageReader.
    """
    size = None
    try:
        with open(path, "rb") as f:
            img = Image.open(f)
            size = img.size
            img.load()
    except Exception as e:  # OSError (truncated, unidentified), SyntaxError, ValueError, DecompressionBombError
        raise BadImage("unreadable-image", f"{path}: {type(e).__name__}: {e}", size) from None
    try:
        return _to_rgb(img)
    except BadImage as e:
        raise BadImage(e.kind, f"{path}: {e.detail}", size) from None

BROKEN_IMAGE, SIZE_MISMATCH = 1, 2  # ImageReader flag bits

class ImageReader:
    """The bad-image policy, one reader per dataset: reader.read(i, path, size=None) -> PIL RGB image.

    A file read_image refuses becomes a mean-pixel image (MEAN_RGB, 0 after Normalize) of the header's size
    (32 x 32 when even the header is unreadable), so no DataLoader worker dies and the batch keeps its shape.
    Given size (W, H) (what an annotation says the image measures), an image of another size is a bad record:
    the annotation belongs to other images. Either way sample i is flagged, named once in a BadInputWarning
    (once per dataset, whichever worker meets it) and counted; strict=True raises BadImage / BadInput instead.
    failed(i): sample i is flagged (its dataset gives it point mask 0). finish(i, x): for broken="nan" (the
    evaluation policy) the tensor of a broken image becomes all NaN, so every metric counts it wrong (NaN
    logits are a wrong answer for safe_argmax / topk_accuracy, the last rank for AP); broken="mean" keeps the
    mean-pixel image (training). flags uint8[N] is in shared memory: what workers find, the main process sees.
    """

    _collecting = []  # the lists collect() handed out; every reader made meanwhile joins them

    def __init__(self, n, strict=False, broken="mean", fallback_size=32):
        if broken not in ("mean", "nan"):
            raise ValueError(f"broken must be 'mean' or 'nan', not {broken!r}")
        self.flags = torch.zeros(n, dtype=torch.uint8).share_memory_()
        self._view = self.flags.numpy()  # same memory; indexing it costs ~0.1 us, a tensor's ~2 us
        self.strict, self.broken, self.fallback_size = strict, broken, fallback_size
        for made in ImageReader._collecting:
            made.append(self)

    @classmethod
    @contextlib.contextmanager
    def collect(cls):
        """`with ImageReader.collect() as made:` made lists the readers created inside the block, so a caller can
        count the broken images of datasets it did not build (evaluate.py, per benchmark). Kept only as long
        as `made`: each reader holds a shared-memory segment (a file descriptor)."""
        made = []
        cls._collecting.append(made)
        try:
            yield made
        finally:
            cls._collecting.remove(made)

    def __getstate__(self):  # spawned workers get the shared tensor (a handle), and rebuild the view on it
        return {k: v for k, v in self.__dict__.items() if k != "_view"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._view = self.flags.numpy()

    def _flag(self, i, bit, message):
        """Set a flag bit of sample i; warn the first time it is set."""
        first = not self._view[i] & bit
        self._view[i] |= bit
        if first:
            warnings.warn(message, BadInputWarning, stacklevel=3)

    def read(self, i, path, size=None):
        try:
            img = read_image(path)
        except BadImage as e:
            if self.strict:
                raise
            self._flag(i, BROKEN_IMAGE, f"{e.kind}: {e.detail}; using a mean-pixel image, label kept, point "
                                        "weight 0 (evaluation: counted wrong)")
            return Image.new("RGB", e.size or (self.fallback_size,) * 2, MEAN_RGB)
        if size is not None and size[0] > 0 and tuple(img.size) != (int(size[0]), int(size[1])):
            detail = (f"{path} is {img.size[0]}x{img.size[1]} but its annotation was made on a "
                      f"{int(size[0])}x{int(size[1])} image (an index of other images?)")
            if self.strict:
                raise BadInput("size-mismatch", detail)
            self._flag(i, SIZE_MISMATCH, f"size-mismatch: {detail}; point weight 0")
        return img

    def failed(self, i):
        return bool(self._view[i])

    def finish(self, i, x):
        if self.broken == "nan" and self._view[i] & BROKEN_IMAGE and x.is_floating_point():
            return torch.full_like(x, float("nan"))
        return x

    def counts(self, all_ranks=False):
        """{"broken_images", "size_mismatches"}: samples flagged so far. all_ranks=True (a collective call)
        merges the flags of every process first, so an image met on several ranks counts once."""
        f = self.flags
        if all_ranks and dist.is_available() and dist.is_initialized():
            f = f.to(_comm_device(), copy=True)
            dist.all_reduce(f, op=dist.ReduceOp.MAX)
            f = f.cpu()
        return {"broken_images": int((f & BROKEN_IMAGE).count_nonzero()),
                "size_mismatches": int((f & SIZE_MISMATCH).count_nonzero())}

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

# -----------------------------------------------------------------------------
# The run folder of a training run, written so that a kill at any moment leaves a consistent folder: every file
# goes to a temporary name, is fsynced and renamed (atomic on POSIX); the epoch log lives inside the checkpoint and
# log.jsonl is rewritten from it after each save, so log.jsonl never describes an epoch the checkpoint lacks. Also
# here: what a checkpoint carries (RNG states, meta), the run's header, SIGTERM as Ctrl-C, the demos' data.

def _os_reason(e):
    """The OS error behind an exception (torch.save wraps ENOSPC in a RuntimeError), in a few words, or None."""
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


def write_jsonl(path, lines):
    atomic_write(path, lambda f: f.write("".join(json.dumps(line) + "\n" for line in lines).encode()))


def rng_state():
    """The training process's RNG states (torch CPU and CUDA, Python's), as a checkpoint stores them."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class RunFolder:
    """--output-dir of one training run: config.json (written at the start), log.jsonl, checkpoint.pt (every
    epoch) and best.pt. Writing is rank 0's; prepare() is called by every process."""

    FILES = ("config.json", "log.jsonl", "checkpoint.pt", "best.pt")

    def __init__(self, path):
        self.path = path
        self.config, self.log, self.checkpoint, self.best = (os.path.join(path, f) for f in self.FILES)
        self.saved_epoch = None  # the epoch checkpoint.pt holds (set by resume and save)

    def prepare(self, resume, overwrite, state_bytes, copies):
        """Before any training, checked on rank 0 and agreed by every process: the folder exists and is writable,
        a previous run is not replaced by accident, and there is room for a checkpoint (`copies` x `state_bytes`,
        or the size of the one being resumed) plus one more state for best.pt."""
        need = os.path.getsize(self.checkpoint) if resume and os.path.exists(self.checkpoint) else state_bytes * copies
        exit_together(self._check(resume, overwrite, need + state_bytes) if is_main() else None)

    def _check(self, resume, overwrite, need):
        """None, or the one line that refuses the folder."""
        out = self.path
        try:
            os.makedirs(out, exist_ok=True)
            for tmp in glob.glob(os.path.join(glob.escape(out), "*.tmp.*")):  # left by saves that died
                os.remove(tmp)
                log(f"removed {tmp}, a temporary file of an interrupted save")
            entries = sorted(os.listdir(out))
            if entries and not resume:
                if not overwrite:
                    return (f"--output-dir {out} is not empty ({', '.join(entries[:4])}"
                            f"{', ...' if len(entries) > 4 else ''}): continue that run with --resume, replace it "
                            "with --overwrite, or choose another --output-dir")
                for name in self.FILES:
                    with contextlib.suppress(FileNotFoundError):
                        os.remove(os.path.join(out, name))
            probe = os.path.join(out, f".write-test.{os.getpid()}")
            with open(probe, "wb") as f:
                f.write(b"0")
            os.remove(probe)
        except OSError as e:
            return f"--output-dir {out}: {e.strerror or e} ({e.filename or out}); choose a folder you can write to"
        free = shutil.disk_usage(out).free
        if free < need:
            return (f"--output-dir {out}: {free / 2**30:.2f} GiB free, a checkpoint needs about "
                    f"{need / 2**30:.2f} GiB: free some space or choose another folder")
        return None

    def resume(self, read, same, eval_only=False):
        """The checkpoint to continue from, read by read(path), or None when there is none yet (--eval-only needs
        one); a checkpoint saved with other values of `same` ({flag: value}) is refused."""
        if not os.path.exists(self.checkpoint):
            if eval_only:
                raise SystemExit(f"--resume --eval-only: no checkpoint at {self.checkpoint} to evaluate")
            log(f"--resume: no checkpoint at {self.checkpoint} yet, starting the run")
            return None
        try:
            ckpt = read(self.checkpoint)
        except (OSError, ValueError) as e:
            raise SystemExit(f"--resume: {e}; move it away to start the run again") from None
        for k, v in same.items():
            if ckpt.get("args", {}).get(k) != v:
                raise SystemExit(f"{self.checkpoint} was saved with --{k}={ckpt.get('args', {}).get(k)!r}, this run "
                                 f"has {v!r}: use the same flag, or another --output-dir")
        self.saved_epoch = ckpt["epoch"]
        log(f"resumed from {self.checkpoint} at epoch {ckpt['epoch'] + 1}")
        return ckpt

    def start(self, config, log_lines):
        """Rank 0: config.json, and log.jsonl as the checkpoint holds it (drops lines of epochs to be redone)."""
        if is_main():
            atomic_write(self.config, lambda f: f.write(json.dumps(config, indent=1).encode()))
            write_jsonl(self.log, log_lines)

    def save(self, log_lines, best, model, optimizer, scaler, ema, step, args, meta):
        """Rank 0, after the epoch log_lines[-1]: best.pt if that epoch is `best`, then checkpoint.pt (weights of
        the unwrapped model, optimiser, scaler, EMA, RNG states, the log, `meta`), then log.jsonl. A kill between
        best.pt and checkpoint.pt redoes the epoch, bit for bit, and writes the same best.pt."""
        if not is_main():
            return
        epoch, state = log_lines[-1]["epoch"], model.state_dict()
        if best is not None and best["epoch"] == epoch:
            save_checkpoint({"model": state, "meta": meta, "epoch": epoch, "best": best, "args": vars(args)}, self.best)
        save_checkpoint({"model": state, "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict() if scaler else None,
                         "ema": ema.module.state_dict() if ema else None, "epoch": epoch, "step": step,
                         "rng": rng_state(), "args": vars(args), "meta": meta, "log": log_lines, "best": best,
                         "elapsed_s": log_lines[-1]["elapsed_s"]}, self.checkpoint)
        write_jsonl(self.log, log_lines)
        self.saved_epoch = epoch

    def finished(self, epochs, minutes, best, last):
        """The summary line at the end of a run: time, best and final metric (best["key"]), the files."""
        key = best["key"] if best else None
        final = f", final {key} {last[key]:.2f}" if key in last else ""
        best_txt = f"best {key} {best['value']:.2f} (epoch {best['epoch']})" if best else "no validation"
        log(f"finished {epochs} epochs in {minutes:.1f} min: {best_txt}{final}; run folder {self.path} "
            f"(config.json, log.jsonl, checkpoint.pt{', best.pt' if best else ''})")

    def interrupted(self, epoch, step=None):
        """After Ctrl-C or SIGTERM: one line saying where the run stopped and what is saved, exit status 130."""
        done = f"last checkpoint: epoch {self.saved_epoch} in {self.checkpoint}" if self.saved_epoch is not None \
            else "no checkpoint yet"
        at = f"epoch {epoch}" + (f" step {step}" if step is not None else "")
        log(f"interrupted at {at}; {done}; continue with --resume")
        raise SystemExit(130) from None


def git_commit():
    """{"commit", "dirty"} of the code's git checkout, or None outside one."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(dirty)} if commit else None


def run_config(args, meta):
    """config.json: every resolved flag, what the checkpoint describes, versions, code commit, command line."""
    import PIL
    import torchvision
    return {"args": vars(args), "meta": meta, "command": [os.path.basename(sys.argv[0])] + sys.argv[1:],
            "world_size": args.world_size, "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": {"python": sys.version.split()[0], "torch": str(torch.__version__),
                         "torchvision": str(torchvision.__version__), "numpy": np.__version__,
                         "pillow": PIL.__version__},
            "git": git_commit()}


def print_run_header(args, model, train_set, val_set, num_classes, peak_lr, start_epoch, steps_per_epoch):
    """The resolved configuration of a training run in one block at its start (rank 0)."""
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


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def sigterm_as_ctrl_c():
    """From now on SIGTERM (torchrun, schedulers) ends the run as Ctrl-C does: a KeyboardInterrupt."""
    signal.signal(signal.SIGTERM, _raise_interrupt)


def demo_data_dir(seed=0):
    """The demos' synthetic dataset (tools/synth.py) in ~/.cache/luab/synth-v2-seed<seed> ($XDG_CACHE_HOME honoured),
    written once into a temporary folder that is renamed when complete. v2: COCO-AB without a duplicate image id."""
    root = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "luab")
    path = os.path.join(root, f"synth-v2-seed{seed}")
    if not os.path.isdir(path):
        tmp = f"{path}.tmp{os.getpid()}"
        print(f"writing the synthetic dataset to {path} (once)", flush=True)
        from tools.synth import synth  # here: the scripts never need the tools otherwise
        synth(tmp, seed=seed)
        os.makedirs(root, exist_ok=True)
        os.replace(tmp, path)
    return path


def checkpoint_meta(args, classes, num_points):
    """What a checkpoint says about itself, so that evaluate.py (models.model_from_checkpoint) or anyone can
    rebuild the model from the file alone: architecture, classes (names), point head, input geometry."""
    return {"model": args.model, "num_classes": len(classes), "num_points": num_points,
            "img_size": args.img_size, "val_resize": args.val_resize, "interpolation": args.interpolation,
            "classes": list(classes), "points": args.points, "point_head": args.point_head, "pooling": args.pooling,
            "attention_target": args.attention_target, "torch": str(torch.__version__)}


# -----------------------------------------------------------------------------
# The training scripts' machinery that is not LUAB's: the --help layout, the speed and run flags, loaders, the
# sampler that owns all data randomness, the weight EMA, fused optimisers, the LR curve, an epoch's timing.

class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """--help of the training scripts: every fixed default shown; a default left None comes from the recipe,
    and recipes_epilog lists the recipes."""

    def _get_help_string(self, action):
        text = action.help or ""
        shown = all(action.default is not v for v in (None, False, argparse.SUPPRESS)) and "default" not in text
        return text + (" (default: %(default)s)" if shown else "")


def recipes_epilog(recipes):
    """The recipes' values, one wrapped paragraph each, for the end of --help."""
    lines = ["recipes (the defaults of the flags marked 'recipe'; a flag given on the command line wins):"]
    for name, values in recipes.items():
        lines.append(textwrap.fill(f"{name}: " + ", ".join(f"{k}={v}" for k, v in values.items()), width=100,
                                   initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


def add_run_args(p, defaults):
    """The training scripts' flags for speed and for the run (its folder, resume, evaluation, seed, demo)."""
    g = p.add_argument_group("speed")
    g.add_argument("--amp", action="store_true", help="autocast the forward pass (losses and metrics stay fp32)")
    g.add_argument("--amp-dtype", choices=["bfloat16", "float16"], default="bfloat16", help="float16: CUDA only")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (CPU needs a C compiler)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="(default: ResNets on CUDA)")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (CUDA only)")
    g.add_argument("--device", help="default: cuda if available else cpu")
    g = p.add_argument_group("run")
    g.add_argument("--output-dir", help=f"the run folder (default: {defaults['output_dir']})")
    g.add_argument("--resume", action="store_true", help="continue the run in --output-dir if it has a checkpoint")
    g.add_argument("--overwrite", action="store_true", help="replace the run files in --output-dir")
    g.add_argument("--dist-timeout", type=float, default=10.0, help="minutes a process waits for the others")
    g.add_argument("--pretrained", help="initialise from a torchvision / DeiT / our checkpoint")
    g.add_argument("--eval-only", action="store_true", help="evaluate --pretrained (or the resumed model) and exit")
    g.add_argument("--eval-every", type=int, default=1, help="validate every N epochs (and after the last)")
    g.add_argument("--print-freq", type=int, help=f"progress line every N steps (default: {defaults['print_freq']})")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights, the data order and augmentation")
    g.add_argument("--max-steps-per-epoch", type=int, default=0, help="cut epochs short (smoke tests)")
    g.add_argument("--demo", action="store_true", help="a preset: a small LUAB run on cached synthetic data (CPU)")


def resolve_speed_flags(args):
    """Refuse the CUDA-only speed flags on another device; default channels_last where it pays."""
    from models import is_vit_name  # imported here, not at the top: models may import utils
    cuda = args.device.startswith("cuda")
    if args.amp and args.amp_dtype == "float16" and not cuda:
        raise SystemExit("--amp-dtype float16 needs CUDA (fp16 needs the GradScaler); on CPU --amp uses bfloat16")
    if args.sync_bn and not cuda:
        raise SystemExit("--sync-bn needs CUDA (torch's SyncBatchNorm has no CPU kernel): drop it on CPU")
    if args.channels_last is None:  # cuDNN's tensor-core convolutions want NHWC; a ViT has one conv only
        args.channels_last = cuda and not is_vit_name(args.model)


def make_loader(args, dataset, sampler, train):
    """A DataLoader of args.batch_size / world size per process (a train loader drops its last partial batch)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=args.batch_size // args.world_size, sampler=sampler, drop_last=train,
        num_workers=args.workers, pin_memory=args.device.startswith("cuda"),
        persistent_workers=args.workers > 0, prefetch_factor=4 if args.workers > 0 else None)


def to_input(x, device, channels_last=False):
    """A batch of images on the model's device, in its memory format (channels_last: NHWC, for a CNN on CUDA)."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def to_device(args, batch):
    """A loader's batch -> the same list on args.device (images through to_input)."""
    images, *rest = batch
    return [to_input(images, args.device, args.channels_last)] + [t.to(args.device, non_blocking=True) for t in rest]


class RepeatedAugSampler(Sampler):
    """Shuffled distributed sampler with repeated augmentation (Hoffer et al.; DeiT's RASampler idea) that yields
    (index, seed): the dataset seeds its augmentation from that seed (SeededItems), so crops do not depend on the
    number of workers or processes and a resumed run sees exactly the data the uninterrupted run would have seen.

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


@functools.lru_cache(maxsize=None)
def has_fused(opt_class, device):
    """Whether the installed torch has a fused `opt_class` kernel for `device` (CUDA; CPU too since torch 2.4):
    one kernel per parameter does the whole update. torch checks the device only at the first step, so this
    takes one step on a one-element tensor."""
    p = torch.zeros(1, device=device, requires_grad=True)
    p.grad = torch.zeros(1, device=device)
    try:
        opt_class([p], lr=0.1, fused=True).step()
        return True
    except (RuntimeError, TypeError):  # TypeError: an optimiser without the `fused` argument in this torch
        return False


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


class StepTimer:
    """Times the steps of one epoch; `due(i)` says when step i prints its line (rank 0, every `every` steps and
    at the last), `print(i, text)` prints `epoch E [i/N] text <img/s> data <wait %> eta <min>`."""

    def __init__(self, epoch, epochs, steps, batch_size, every):
        self.epoch, self.epochs, self.steps, self.batch_size, self.every = epoch, epochs, steps, batch_size, every
        self.t_epoch = self.t_last = time.perf_counter()
        self.data_wait = 0.0

    @contextlib.contextmanager
    def waiting(self):
        """Time spent inside counts as waiting for data."""
        t0 = time.perf_counter()
        yield
        self.data_wait += time.perf_counter() - t0

    def due(self, i):
        return is_main() and ((i + 1) % self.every == 0 or i + 1 == self.steps)

    def print(self, i, text):
        now = time.perf_counter()
        done, n = (i + 1) / self.steps, min(self.every, (i % self.every) + 1)
        ips = n * self.batch_size / max(now - self.t_last, 1e-9)
        eta = (now - self.t_epoch) / done * (1 - done) + (now - self.t_epoch) / done * (self.epochs - self.epoch - 1)
        print(f"epoch {self.epoch} [{i + 1}/{self.steps}] {text} {ips:.0f} img/s "
              f"data {100 * self.data_wait / (now - self.t_epoch):.0f}% eta {eta / 60:.1f} min", flush=True)
        self.t_last = now

    def stats(self):
        """The epoch's throughput (img/s, global), data-wait fraction and duration, as log.jsonl has them."""
        elapsed = time.perf_counter() - self.t_epoch
        return {"img_per_s": self.steps * self.batch_size / elapsed, "data_wait": self.data_wait / elapsed,
                "epoch_time_s": elapsed}
