"""
Sorts ILSVRC-2012's flat val folder (ILSVRC2012_val_00000001.JPEG ...) into <wnid>/ class folders, the layout
train_imagenet.py --data-dir and evaluate.py --imagenet-val read.

    python tools/sort_imagenet_val.py /data/imagenet/val --devkit ILSVRC2012_devkit_t12.tar.gz [--dry-run]
    python tools/sort_imagenet_val.py /data/imagenet/val --ground-truth ILSVRC2012_validation_ground_truth.txt \\
        --meta meta.mat
    python tools/sort_imagenet_val.py ILSVRC/Data/CLS-LOC/val --kaggle-csv LOC_val_solution.csv

The labels come from one of two sources:
- the devkit (ILSVRC2012_devkit_t12: its folder or its .tar.gz): data/ILSVRC2012_validation_ground_truth.txt
  holds one ILSVRC2012_ID (1..1000) per line, line i for ILSVRC2012_val_<i>, and data/meta.mat maps those ids to
  wnids. The ids are the devkit's own order, not the sorted wnids of data/imagenet_wnids.txt, so meta.mat is
  needed. It is a MATLAB v5 file, read here with the standard library and numpy (read_mat5; no scipy);
- Kaggle's LOC_val_solution.csv (ImageId,PredictionString "n01751748 x0 y0 x1 y1 ..."): the wnid of the boxes.

Every label must be one of the 1000 wnids of data/imagenet_wnids.txt. Nothing moves unless the labels and the
folder agree: one line refuses a different image count, an image without a label, a labelled image that is
missing, or an image already in another class's folder. Images already in their class folder count as done, so
a second run moves nothing and says so, and an interrupted run continues. --dry-run prints the moves instead.
Other files (box XMLs, hidden files) are left where they are.
"""

import argparse
import csv
import os
import re
import struct
import sys
import tarfile
import zlib

import numpy as np

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")
DEVKIT_FILES = ("ILSVRC2012_validation_ground_truth.txt", "meta.mat")


class Refused(Exception):
    """A mismatch between the labels and the folder, or an unreadable label file: one line, nothing moved."""


# -----------------------------------------------------------------------------
# MATLAB v5 (the devkit's meta.mat), the subset of the format that file uses: numeric, char, struct and cell arrays,
# compressed or not, either byte order. Level 5 MAT-File Format (MathWorks, matfile_format.pdf).

MI_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8",
            16: "u1", 17: "u2", 18: "u4"}  # miINT8 ... miUINT64, miUTF8, miUTF16, miUTF32
MI_MATRIX, MI_COMPRESSED = 14, 15
MX_CELL, MX_STRUCT, MX_CHAR = 1, 2, 4


def _element(buf, pos, bo):
    """The data element at pos -> (type, payload bytes, position of the next element). A small element (type and
    size in one word, data in the next 4 bytes) takes 8 bytes; a normal one is padded to 8 bytes, except
    miCOMPRESSED, which is never padded."""
    word, = struct.unpack_from(bo + "I", buf, pos)
    if word >> 16:
        return word & 0xFFFF, buf[pos + 4:pos + 4 + (word >> 16)], pos + 8
    mtype, n = struct.unpack_from(bo + "II", buf, pos)
    end = pos + 8 + n
    return mtype, buf[pos + 8:end], end if mtype == MI_COMPRESSED else end + (-n % 8)


def _numbers(mtype, data, bo):
    if mtype not in MI_TYPES:
        raise ValueError(f"unsupported MATLAB data type {mtype}")
    return np.frombuffer(data, np.dtype(MI_TYPES[mtype]).newbyteorder(bo))


def _matrix(data, bo):
    """An miMATRIX payload -> str (char array), [dict] (struct array, column-major), [value] (cell array), or a
    float64 numpy array (numeric, column-major, flattened)."""
    if not data:
        return np.zeros(0)
    _, flags, pos = _element(data, 0, bo)
    cls = int(_numbers(6, flags[:4], bo)[0]) & 0xFF
    _, dims, pos = _element(data, pos, bo)
    n = int(np.prod(_numbers(5, dims, bo)))
    _, _, pos = _element(data, pos, bo)  # the array name (empty inside a struct or cell)
    if cls == MX_STRUCT:
        _, fnl, pos = _element(data, pos, bo)
        _, names, pos = _element(data, pos, bo)
        width = int(_numbers(5, fnl, bo)[0])
        fields = [names[i:i + width].split(b"\0")[0].decode() for i in range(0, len(names), width)]
        out = []
        for _ in range(n):
            item = {}
            for f in fields:
                _, sub, pos = _element(data, pos, bo)
                item[f] = _matrix(sub, bo)
            out.append(item)
        return out
    if cls == MX_CELL:
        out = []
        for _ in range(n):
            _, sub, pos = _element(data, pos, bo)
            out.append(_matrix(sub, bo))
        return out
    mtype, real, pos = _element(data, pos, bo)
    if cls == MX_CHAR:
        if mtype == 16:
            return real.decode("utf-8")
        return "".join(chr(c) for c in _numbers(mtype, real, bo))
    return _numbers(mtype, real, bo).astype(np.float64)


def read_mat5(source):
    """A MATLAB v5 MAT-file (a path or its bytes) -> {variable name: value} as _matrix returns them. ValueError for
    anything else (a v7.3 HDF5 file, another format)."""
    buf = source if isinstance(source, bytes) else open(source, "rb").read()
    if len(buf) < 128 or buf[126:128] not in (b"IM", b"MI"):
        raise ValueError("not a MATLAB v5 MAT-file" + (" (v7.3/HDF5 is not supported; save it with -v7)"
                                                        if b"MATLAB 7.3" in buf[:128] else ""))
    bo = "<" if buf[126:128] == b"IM" else ">"
    out, pos = {}, 128
    while pos + 8 <= len(buf):
        mtype, data, pos = _element(buf, pos, bo)
        if mtype == MI_COMPRESSED:
            data = zlib.decompress(data)
            mtype, data, _ = _element(data, 0, bo)
        if mtype != MI_MATRIX or not data:
            continue
        _, _, p = _element(data, 0, bo)
        _, _, p = _element(data, p, bo)
        _, name, _ = _element(data, p, bo)
        out[name.decode()] = _matrix(data, bo)
    return out


# -----------------------------------------------------------------------------
# the labels: {image number (1-based): wnid}

def known_wnids():
    with open(os.path.join(DATA, "imagenet_wnids.txt")) as f:
        return {line.strip() for line in f if line.strip()}


def devkit_id_to_wnid(meta):
    """meta.mat (a path or bytes) -> {ILSVRC2012_ID 1..1000: wnid} from its `synsets` struct array."""
    try:
        synsets = read_mat5(meta).get("synsets")
    except (ValueError, struct.error, zlib.error, IndexError) as e:
        raise Refused(f"meta.mat: {e}; give the devkit's data/meta.mat (ILSVRC2012_devkit_t12)")
    if not isinstance(synsets, list) or not synsets or not {"ILSVRC2012_ID", "WNID"} <= set(synsets[0]):
        raise Refused("meta.mat has no `synsets` struct with ILSVRC2012_ID and WNID; give the devkit's data/meta.mat")
    table = {}
    for s in synsets:
        i = int(s["ILSVRC2012_ID"][0]) if len(s["ILSVRC2012_ID"]) else 0
        if 1 <= i <= 1000:
            table[i] = s["WNID"]
    if len(table) != 1000:
        raise Refused(f"meta.mat maps {len(table)} ILSVRC2012_IDs in 1..1000, not 1000; give ILSVRC2012's meta.mat")
    return table


def devkit_labels(ground_truth, meta):
    """ILSVRC2012_validation_ground_truth.txt (text) and meta.mat (path or bytes) -> {image number: wnid}."""
    ids = devkit_id_to_wnid(meta)
    labels = {}
    for n, line in enumerate(ground_truth.splitlines(), 1):
        if not line.strip():
            continue
        if not line.strip().isdigit() or int(line) not in ids:
            raise Refused(f"ground truth line {n}: {line.strip()!r} is not an ILSVRC2012_ID 1..1000; give "
                          "ILSVRC2012_validation_ground_truth.txt")
        labels[n] = ids[int(line)]
    return labels


def read_devkit(path):
    """The devkit folder (or a folder holding the two files) or its .tar.gz -> (ground truth text, meta.mat bytes)."""
    found = {}
    if os.path.isdir(path):
        for d, _, files in os.walk(path):
            for f in files:
                if f in DEVKIT_FILES and f not in found:
                    with open(os.path.join(d, f), "rb") as fh:
                        found[f] = fh.read()
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:
            for m in tar.getmembers():
                name = os.path.basename(m.name)
                if m.isfile() and name in DEVKIT_FILES and name not in found:
                    found[name] = tar.extractfile(m).read()
    else:
        raise Refused(f"--devkit {path}: neither a folder nor a tar file; give ILSVRC2012_devkit_t12(.tar.gz)")
    missing = [f for f in DEVKIT_FILES if f not in found]
    if missing:
        raise Refused(f"--devkit {path}: no {' or '.join(missing)} inside; give ILSVRC2012_devkit_t12(.tar.gz)")
    return found[DEVKIT_FILES[0]].decode(), found[DEVKIT_FILES[1]]


def kaggle_labels(path):
    """LOC_val_solution.csv -> {image number: wnid}: every box of a row must name the same wnid."""
    labels = {}
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header is None or [h.strip() for h in header[:2]] != ["ImageId", "PredictionString"]:
            raise Refused(f"{path}: the header is not ImageId,PredictionString; give Kaggle's LOC_val_solution.csv")
        for n, row in enumerate(rows, 2):
            if not row:
                continue
            m = re.fullmatch(r"ILSVRC2012_val_(\d{8})", row[0].strip())
            wnids = (row[1].split()[0::5] if len(row) > 1 else [])
            if not m or not wnids or len(set(wnids)) != 1:
                raise Refused(f"{path}:{n}: {row[0]!r} needs an ILSVRC2012_val_ id and boxes of one wnid "
                              f"(got {sorted(set(wnids)) or 'none'}); give Kaggle's LOC_val_solution.csv")
            labels[int(m.group(1))] = wnids[0]
    return labels


# -----------------------------------------------------------------------------
# the folder

def plan(val_dir, labels):
    """The moves that sort val_dir -> ([(file name, wnid)] still to move, number already in place). Raises Refused
    (one line) when the labels and the folder disagree; nothing has moved then."""
    unknown = sorted(set(labels.values()) - known_wnids())
    if unknown:
        raise Refused(f"{len(unknown)} label(s) are not ILSVRC-2012 wnids (e.g. {unknown[0]}); give the "
                      "ILSVRC2012 ground truth")
    flat, placed = {}, {}
    for entry in sorted(os.scandir(val_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            for f in os.scandir(entry.path):
                m = VAL_NAME.match(f.name)
                if m and f.is_file():
                    placed.setdefault(int(m.group(1)), []).append((entry.name, f.name))
        elif entry.name.lower().endswith((".jpeg", ".jpg", ".png")):
            m = VAL_NAME.match(entry.name)
            if not m or int(m.group(1)) not in labels:
                raise Refused(f"{os.path.join(val_dir, entry.name)}: an image without a label; the ground truth "
                              f"has ILSVRC2012_val_00000001..{max(labels):08d}.JPEG, move that file out")
            flat[int(m.group(1))] = entry.name
    for i, where in placed.items():
        if len(where) > 1 or i in flat:
            copies = [os.path.join(d, f) for d, f in where] + ([flat[i]] if i in flat else [])
            raise Refused(f"{val_dir}: ILSVRC2012_val_{i:08d}.JPEG is there {len(copies)} times ({', '.join(copies)});"
                          " keep one")
        d, f = where[0]
        if labels.get(i) != d:
            raise Refused(f"{os.path.join(val_dir, d, f)}: in {d}/ but the labels say {labels.get(i, 'no class')}; "
                          "the folder was sorted with other labels: give those, or flatten it first")
    found = len(flat) + len(placed)
    if found != len(labels):
        missing = min(set(labels) - set(flat) - set(placed))
        raise Refused(f"{val_dir}: {found} val images, the labels have {len(labels)}; missing "
                      f"ILSVRC2012_val_{missing:08d}.JPEG (a partial download?)")
    return [(flat[i], labels[i]) for i in sorted(flat)], len(placed)


def sort_val(val_dir, labels, dry_run=False):
    """Moves every flat val image into its <wnid>/ folder (or, dry_run, prints each move) -> images moved."""
    moves, done = plan(val_dir, labels)
    if not moves:
        print(f"nothing to do: all {done} images of {val_dir} are already in their class folders")
        return 0
    for name, wnid in moves:
        if dry_run:
            print(f"would move {name} -> {wnid}/")
            continue
        os.makedirs(os.path.join(val_dir, wnid), exist_ok=True)
        os.rename(os.path.join(val_dir, name), os.path.join(val_dir, wnid, name))
    classes = len({w for _, w in moves})
    print(f"{'would move' if dry_run else 'moved'} {len(moves)} images into {classes} class folders of {val_dir}"
          + (f" ({done} were already sorted)" if done else ""))
    return 0 if dry_run else len(moves)


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.strip().split("\n\n")[0],
                                 epilog=__doc__.strip().split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("val_dir", help="the flat val folder (ILSVRC2012_img_val.tar extracted)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--devkit", help="ILSVRC2012_devkit_t12.tar.gz or its extracted folder")
    src.add_argument("--ground-truth", help="the devkit's ILSVRC2012_validation_ground_truth.txt (with --meta)")
    src.add_argument("--kaggle-csv", help="Kaggle's LOC_val_solution.csv")
    ap.add_argument("--meta", help="the devkit's data/meta.mat (with --ground-truth)")
    ap.add_argument("--dry-run", action="store_true", help="print the moves, move nothing")
    args = ap.parse_args(argv)
    if bool(args.ground_truth) != bool(args.meta):
        ap.error("--ground-truth and --meta go together (or give --devkit)")
    for flag in ("val_dir", "devkit", "ground_truth", "meta", "kaggle_csv"):
        path = getattr(args, flag)
        if path and not os.path.exists(path):
            raise SystemExit(f"{path}: no such file or folder ({flag.replace('_', '-')})")
    if not os.path.isdir(args.val_dir):
        raise SystemExit(f"{args.val_dir}: not a folder; give the val folder")
    try:
        if args.kaggle_csv:
            labels = kaggle_labels(args.kaggle_csv)
        elif args.devkit:
            labels = devkit_labels(*read_devkit(args.devkit))
        else:
            with open(args.ground_truth) as f:
                labels = devkit_labels(f.read(), args.meta)
        if not labels:
            raise Refused("the labels are empty; give the ILSVRC2012 ground truth")
        sort_val(args.val_dir, labels, args.dry_run)
    except Refused as e:
        raise SystemExit(f"refused, nothing moved: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
