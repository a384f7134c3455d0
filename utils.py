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
import re
import sys
import time
import warnings
from collections import Counter

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.utils.data import Sampler

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
