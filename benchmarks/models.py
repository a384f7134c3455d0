"""
Forward+backward time per batch of our models.py against the matching torchvision reference, same process,
same weights, same input, interleaved repeats, median.

    python benchmarks/models.py --models resnet50 vit_base --batch-size 8
    python benchmarks/models.py --device cuda --batch-size 128 --amp --channels-last

References: torchvision resnet18/50/101/152 and vit_b_16; ViT-Ti/S are torchvision VisionTransformer with
DeiT-Ti/S sizes (torchvision ships no Ti/S). Prints a table (ratio = ours / ref, < 1 means ours is faster)
and one JSON line.
"""

import argparse
import json
import os
import statistics
import sys
import time

# This file is itself called models.py: put the repo root first so `import models` finds the real one.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import torch
import torch.nn.functional as F
import torchvision

import models

def reference(name, img_size):
    if name.startswith("resnet"):
        return getattr(torchvision.models, name)(weights=None)
    dim, heads = {"vit_tiny": (192, 3), "vit_small": (384, 6), "vit_base": (768, 12)}[name]
    return torchvision.models.VisionTransformer(image_size=img_size, patch_size=16, num_layers=12,
                                                num_heads=heads, hidden_dim=dim, mlp_dim=4 * dim)

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--models", nargs="+", default=list(models.MODEL_NAMES), choices=models.MODEL_NAMES)
    parser.add_argument("--batch-size", type=int, default=None, help="default 8 on cpu, 64 on cuda")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per model (after 2 warm-up steps)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast")
    parser.add_argument("--channels-last", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    batch_size = args.batch_size or (8 if args.device == "cpu" else 64)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.backends.cudnn.benchmark = True

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def step(model, x, y):
        """One training step without the optimizer: forward, cross-entropy, backward."""
        model.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        sync()
        return (time.perf_counter() - t0) * 1000

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, device {args.device}, "
          f"{torch.get_num_threads()} threads, batch {batch_size}, {args.img_size} px, amp {args.amp}, "
          f"channels_last {args.channels_last}", flush=True)
    results = []
    for name in args.models:
        torch.manual_seed(0)
        ref = reference(name, args.img_size)
        ours = models.create_model(name, img_size=args.img_size)
        ours.load_state_dict(ref.state_dict(), strict=True)  # same weights, so the same numbers flow through
        pair = {"ours": ours, "ref": ref}
        for m in pair.values():
            m.to(device, memory_format=memory_format).train()
        x = torch.randn(batch_size, 3, args.img_size, args.img_size, device=device).to(memory_format=memory_format)
        y = torch.randint(0, 1000, (batch_size,), device=device)
        times = {"ours": [], "ref": []}
        for i in range(2 + args.repeats):
            order = ["ours", "ref"] if i % 2 == 0 else ["ref", "ours"]  # alternate who goes first
            for tag in order:
                ms = step(pair[tag], x, y)
                if i >= 2:
                    times[tag].append(ms)
            if i >= 2:
                print(f"  {name} repeat {i - 1}/{args.repeats}: ours {times['ours'][-1]:.1f} ms, "
                      f"ref {times['ref'][-1]:.1f} ms", flush=True)
        ours_ms, ref_ms = statistics.median(times["ours"]), statistics.median(times["ref"])
        results.append(dict(model=name, ours_ms=round(ours_ms, 2), ref_ms=round(ref_ms, 2),
                            ratio=round(ours_ms / ref_ms, 3)))
        del pair, ours, ref

    print(f"\n{'model':<10} {'ours ms':>10} {'ref ms':>10} {'ratio':>7}")
    for r in results:
        print(f"{r['model']:<10} {r['ours_ms']:>10.1f} {r['ref_ms']:>10.1f} {r['ratio']:>7.3f}")
    print(json.dumps(dict(device=args.device, threads=torch.get_num_threads(), batch_size=batch_size,
                          img_size=args.img_size, amp=args.amp, channels_last=args.channels_last,
                          repeats=args.repeats, torch=torch.__version__, torchvision=torchvision.__version__,
                          results=results)))

if __name__ == "__main__":
    main()
