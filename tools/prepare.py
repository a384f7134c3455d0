"""
Data preparation that runs once before training: the ImageNet-AB click index.

    python tools/prepare.py index-imagenet --xml-root imagenet_ab_v1_0/train_xml --out imagenet_ab_index.npz

Parsing the ~1.27 M ImageNet-AB XML files at every start would be slow, and a dict of 1.27 M tuples is not shared
well by DataLoader workers, so index-imagenet converts them once into one .npz (docs/formats.md §1, "The click
index"): byproducts.imagenet_click of every file, on a process pool, in a byproducts.ClickIndex, written where
byproducts.load_imagenet_index reads it. A dataset given the XML folder itself runs the same scan in memory
(ClickIndex.from_xml).
"""

import argparse
import multiprocessing as mp
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
from byproducts import (BAD, CLICK, NO_CLICK, ClickIndex, _list_xml, _xml_key, imagenet_click,  # noqa: E402
                        read_imagenet_ab_xml)
from utils import BadInput, Problems, Progress  # noqa: E402

INDEX_FORMAT = "luab-imagenet-ab-index-v2"  # v2 added sizes; a v1 file loads with a warning (no size check)
# all the index needs: the click, and the size of the image it was made on (to catch an index of other images)
_CLICK_FIELDS = frozenset({"selected", "selectedRecord", "originalImageWidth", "originalImageHeight"})
_FAILED = object()


def _original_size(entries):
    """(W, H) of the image the annotator saw (originalImageWidth/Height of the first entry that has both), or
    (0, 0) when unknown."""
    for e in entries:
        w, h = e.get("originalImageWidth"), e.get("originalImageHeight")
        if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0:
            return w, h
    return 0, 0


def _index_chunk(paths):
    """A chunk of ImageNet-AB XML files -> (number of files, (keys, points, status, n_selected, n_entries, sizes,
    problems)): the ClickIndex columns of the files and [(kind, file, detail)]; an unreadable file gets status BAD."""
    keys, pts, status, n_sel, n_ent, sizes, problems = [], [], [], [], [], [], []
    for p in paths:
        keys.append(_xml_key(p))
        try:
            entries = read_imagenet_ab_xml(p, fields=_CLICK_FIELDS)
            click = imagenet_click(entries)
        except BadInput as e:
            problems.append((e.kind, p, e.detail))
            click, entries = _FAILED, []
        except OSError as e:
            problems.append(("unreadable-file", p, str(e)))
            click, entries = _FAILED, []
        n_ent.append(min(len(entries), 255))
        sizes.append(_original_size(entries))
        n_sel.append(min(sum(1 for e in entries if e.get("selected") is True and e.get("selectedRecord")), 255))
        if click is _FAILED:
            status.append(BAD)
            pts.append((0.0, 0.0))
        elif click is None:
            status.append(NO_CLICK)
            pts.append((0.0, 0.0))
        else:
            status.append(CLICK)
            pts.append(click)
    return len(paths), (keys, pts, status, n_sel, n_ent, sizes, problems)


def _cpu_count():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _default_workers(n_files):
    return max(1, min(_cpu_count(), n_files // 2000))  # a pool costs ~0.1 s to start: not worth it for a few files


def _parallel(fn, chunks, workers, progress=None, total=0, unit="files"):
    """Map fn over chunks with a process pool (workers > 1) or inline; yields results in chunk order (so the
    output does not depend on the number of workers). progress: the description of its utils.Progress line, or None."""
    bar = Progress(progress, total, unit, every=5.0) if progress else None
    if workers <= 1 or len(chunks) <= 1:
        results = map(fn, chunks)
        pool = None
    else:
        pool = mp.get_context("fork").Pool(workers)
        results = pool.imap(fn, chunks)
    try:
        for n, res in results:
            if bar:
                bar.update(n)
            yield res
    finally:
        if pool:
            pool.terminate()


def scan_imagenet_ab(xml_root, workers=None, progress=False):
    """Scan an ImageNet-AB XML tree. Returns (ClickIndex, problems as (kind, file, detail) list, n_appledouble).
    A key seen twice (two extracted copies) keeps its first file in sorted order; the repeat is a note."""
    paths, n_apple = _list_xml(xml_root)
    workers = _default_workers(len(paths)) if workers is None else workers
    chunk = max(64, min(1024, len(paths) // (workers * 8) + 1))
    chunks = [paths[i:i + chunk] for i in range(0, len(paths), chunk)]
    cols, problems = ([], [], [], [], [], []), []
    for res in _parallel(_index_chunk, chunks, workers, progress and "index", len(paths)):
        for col, part in zip(cols, res[:6]):
            col.extend(part)
        problems.extend(res[6])
    keys, pts, status, n_sel, n_ent, sizes = cols
    index = ClickIndex(keys, np.array(pts, np.float32).reshape(-1, 2), status, n_sel, n_ent, sizes)
    if len(index.keys) < len(keys):
        seen = set()
        for p, k in zip(paths, keys):
            if k in seen:
                problems.append(("duplicate-xml", p, f"{k} already read from another file; ignored"))
            seen.add(k)
    return index, problems, n_apple


def save_index(index, path):
    """Write a ClickIndex as the .npz load_imagenet_index reads: to a temporary name, then renamed."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:  # a file object: np.savez(str) would append ".npz" to the name
        np.savez(f, format=np.array(INDEX_FORMAT), keys=index.keys, points=index.points, status=index.status,
                 n_selected=index.n_selected, n_entries=index.n_entries, sizes=index.sizes)
    os.replace(tmp, path)


def build_imagenet_index(xml_root, out_path, workers=None, strict=False, progress=True):
    """Convert an ImageNet-AB XML tree into one .npz index (see byproducts.ClickIndex); returns a stats dict.

    xml_root may be train_xml/, its parent, or an imagenet_ab_v1_0/ prefix above it: every *.xml below is
    keyed by "<parent dir>/<stem>". Bad files are counted, named in one summary line and stored with status
    BAD (mask 0); strict=True raises BadInput after the scan instead of writing the index.
    """
    t0 = time.perf_counter()
    index, probs, n_apple = scan_imagenet_ab(xml_root, workers=workers, progress=progress)
    seconds = time.perf_counter() - t0
    problems = Problems(f"index-imagenet({xml_root})")
    problems.extend(probs)
    line = problems.finish(strict, warn=False)
    save_index(index, out_path)
    n = len(index.keys)
    stats = {"files": n, "with_click": int((index.status == CLICK).sum()),
             "no_click": int((index.status == NO_CLICK).sum()), "bad": int((index.status == BAD).sum()),
             "appledouble_skipped": n_apple, "seconds": seconds, "files_per_s": n / max(seconds, 1e-9),
             "workers": _default_workers(n) if workers is None else workers, "problems": line}
    return stats


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("index-imagenet", help="convert an ImageNet-AB XML tree into one .npz index", allow_abbrev=False)
    i.add_argument("--xml-root", required=True, help="train_xml/ (or a parent, e.g. imagenet_ab_v1_0/)")
    i.add_argument("--out", required=True, help="output file (.npz)")
    i.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    i.add_argument("--strict", action="store_true", help="any bad file is an error (nothing is written)")
    args = ap.parse_args(argv)
    workers = args.workers or _cpu_count()
    try:
        st = build_imagenet_index(args.xml_root, args.out, workers=workers, strict=args.strict)
    except BadInput as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if st["problems"]:
        print(st["problems"], file=sys.stderr)
    print(f"indexed {st['files']:,} XML files in {st['seconds']:.1f}s: {st['files_per_s']:,.0f} files/s on "
          f"{st['workers']} worker(s) ({st['files_per_s'] / st['workers']:,.0f}/s per worker); "
          f"{st['with_click']:,} with a click, {st['no_click']:,} without, {st['bad']:,} bad, "
          f"{st['appledouble_skipped']} AppleDouble skipped -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
