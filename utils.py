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
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
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
