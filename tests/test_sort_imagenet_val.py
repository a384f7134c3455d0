"""Tests for tools/sort_imagenet_val.py: the MATLAB v5 reader on files written here in MATLAB's layout (and by
scipy where it is installed), then sorting a small fake flat val folder from a fake devkit and from a Kaggle CSV:
the moves, --dry-run, idempotence, and the one-line refusals that leave the folder untouched."""

import os
import struct
import tarfile
import zlib

import numpy as np
import pytest

from tools import sort_imagenet_val as sv

WNIDS = sorted(sv.known_wnids())
# the devkit's ILSVRC2012_IDs are not the sorted order: here ID i is WNIDS[1000 - i] (ID 1 = the last wnid)
ID_WNID = {i: WNIDS[1000 - i] for i in range(1, 1001)}
GT = [490, 361, 171, 822, 1, 490]  # the ground truth's first lines: images 1..6


def _tag(bo, mtype, data):
    """A data element: MATLAB's small format for <= 4 bytes, else a full tag and the data padded to 8 bytes."""
    if 0 < len(data) <= 4:  # one word: the size in its upper, the type in its lower 16 bits
        return struct.pack(bo + "I", mtype | len(data) << 16) + data.ljust(4, b"\0")
    return struct.pack(bo + "II", mtype, len(data)) + data + b"\0" * (-len(data) % 8)


def _matrix(bo, cls, dims, body, name=b""):
    content = (_tag(bo, 6, struct.pack(bo + "II", cls, 0)) + _tag(bo, 5, struct.pack(bo + "%di" % len(dims), *dims))
               + _tag(bo, 1, name) + body)
    return struct.pack(bo + "II", 14, len(content)) + content


def _value(bo, v):
    """str -> a UTF-8 char array; int -> a double stored as miUINT16, as MATLAB shrinks it; [] -> an empty double."""
    if isinstance(v, str):
        return _matrix(bo, 4, [1, len(v)], _tag(bo, 16, v.encode()))
    if isinstance(v, list):
        return _matrix(bo, 6, [1, len(v)], _tag(bo, 9, struct.pack(bo + "%dd" % len(v), *v)))
    return _matrix(bo, 6, [1, 1], _tag(bo, 4, struct.pack(bo + "H", v)))


def write_mat(path, synsets, bo="<", compress=True):
    """A MAT v5 file with one struct array `synsets` (a list of dicts with the same keys), as MATLAB writes it."""
    fields = list(synsets[0])
    body = _tag(bo, 5, struct.pack(bo + "i", 32)) + _tag(bo, 1, b"".join(f.encode().ljust(32, b"\0") for f in fields))
    body += b"".join(_value(bo, s[f]) for s in synsets for f in fields)
    var = _matrix(bo, 2, [len(synsets), 1], body, b"synsets")
    if compress:
        z = zlib.compress(var)
        var = struct.pack(bo + "II", 15, len(z)) + z
    header = b"MATLAB 5.0 MAT-file, written by a test".ljust(116) + b"\0" * 8 + struct.pack(bo + "H", 0x0100)
    with open(path, "wb") as f:
        f.write(header + (b"IM" if bo == "<" else b"MI") + var)


def _synsets():
    """The 1000 leaves (ILSVRC2012_ID 1..1000) and one inner synset (ID 1001, children 1 and 2), as meta.mat."""
    leaves = [{"ILSVRC2012_ID": i, "WNID": w, "words": "a class", "num_children": 0, "children": []}
              for i, w in ID_WNID.items()]
    return leaves + [{"ILSVRC2012_ID": 1001, "WNID": "n00001740", "words": "entity", "num_children": 2,
                      "children": [1.0, 2.0]}]


@pytest.mark.parametrize("bo, compress", [("<", True), ("<", False), (">", True)])
def test_read_mat5(tmp_path, bo, compress):
    write_mat(tmp_path / "meta.mat", _synsets(), bo, compress)
    syn = sv.read_mat5(str(tmp_path / "meta.mat"))["synsets"]
    assert len(syn) == 1001 and list(syn[0]) == ["ILSVRC2012_ID", "WNID", "words", "num_children", "children"]
    assert syn[0]["WNID"] == WNIDS[999] and syn[0]["ILSVRC2012_ID"].tolist() == [1.0]
    assert syn[1000]["children"].tolist() == [1.0, 2.0] and syn[0]["children"].tolist() == []
    assert sv.devkit_id_to_wnid(str(tmp_path / "meta.mat")) == ID_WNID


def test_read_mat5_matches_scipy(tmp_path):
    sio = pytest.importorskip("scipy.io")  # not a dependency: a cross-check where it is installed
    dt = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("children", "O")]
    arr = np.zeros((3, 1), dtype=dt)
    for k, (i, w, ch) in enumerate([(1, "n02119789", np.zeros((0, 0))), (2, "n02100735", np.zeros((0, 0))),
                                    (1001, "n00001740", np.array([[1.0, 2.0]]))]):
        arr[k, 0] = (np.array([[float(i)]]), w, ch)
    for compress in (True, False):
        sio.savemat(tmp_path / "m.mat", {"synsets": arr}, do_compression=compress)
        syn = sv.read_mat5(str(tmp_path / "m.mat"))["synsets"]
        assert [s["WNID"] for s in syn] == ["n02119789", "n02100735", "n00001740"]
        assert [s["ILSVRC2012_ID"].tolist() for s in syn] == [[1.0], [2.0], [1001.0]]
        assert syn[2]["children"].tolist() == [1.0, 2.0] and syn[0]["children"].size == 0


@pytest.fixture
def val(tmp_path):
    """A flat val folder of 6 images (ILSVRC2012_val_00000001..6.JPEG), a box XML and a hidden file beside them."""
    d = tmp_path / "val"
    d.mkdir()
    for i in range(1, 7):
        (d / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(b"jpeg %d" % i)
    (d / "ILSVRC2012_val_00000001.xml").write_text("<annotation/>")
    (d / ".DS_Store").write_bytes(b"")
    return d


def _devkit(tmp_path, gt=GT):
    root = tmp_path / "ILSVRC2012_devkit_t12"
    (root / "data").mkdir(parents=True)
    write_mat(root / "data" / "meta.mat", _synsets())
    (root / "data" / "ILSVRC2012_validation_ground_truth.txt").write_text("".join(f"{g}\n" for g in gt))
    return root


def _tree(d):
    return sorted(os.path.relpath(os.path.join(p, f), d) for p, _, fs in os.walk(d) for f in fs)


def _expected(labels):
    return sorted([f"{w}/ILSVRC2012_val_{i:08d}.JPEG" for i, w in labels.items()]
                  + ["ILSVRC2012_val_00000001.xml", ".DS_Store"])


def test_devkit_dry_run_sort_and_idempotent(tmp_path, val, capsys):
    devkit = _devkit(tmp_path)
    before = _tree(val)
    assert sv.main([str(val), "--devkit", str(devkit), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"would move ILSVRC2012_val_00000001.JPEG -> {ID_WNID[490]}/"
    assert out[-1] == f"would move 6 images into 5 class folders of {val}" and len(out) == 7
    assert _tree(val) == before  # nothing moved
    with tarfile.open(tmp_path / "devkit.tar.gz", "w:gz") as tar:  # the devkit as downloaded
        tar.add(devkit, arcname="ILSVRC2012_devkit_t12")
    assert sv.main([str(val), "--devkit", str(tmp_path / "devkit.tar.gz")]) == 0
    assert capsys.readouterr().out == f"moved 6 images into 5 class folders of {val}\n"
    labels = {i: ID_WNID[g] for i, g in enumerate(GT, 1)}
    assert _tree(val) == _expected(labels)
    assert (val / ID_WNID[490] / "ILSVRC2012_val_00000006.JPEG").read_bytes() == b"jpeg 6"
    gt, meta = devkit / "data/ILSVRC2012_validation_ground_truth.txt", devkit / "data/meta.mat"
    assert sv.main([str(val), "--ground-truth", str(gt), "--meta", str(meta)]) == 0  # a second run
    assert capsys.readouterr().out == f"nothing to do: all 6 images of {val} are already in their class folders\n"
    assert _tree(val) == _expected(labels)


def test_kaggle_csv_and_an_interrupted_run(tmp_path, val, capsys):
    labels = {1: WNIDS[3], 2: WNIDS[3], 3: WNIDS[7], 4: WNIDS[0], 5: WNIDS[999], 6: WNIDS[7]}
    csv = tmp_path / "LOC_val_solution.csv"
    csv.write_text("ImageId,PredictionString\n" + "".join(
        f"ILSVRC2012_val_{i:08d},{w} 1 2 30 40 {w} 5 6 70 80 \n" for i, w in sorted(labels.items(), reverse=True)))
    (val / WNIDS[3]).mkdir()  # images 1 and 2 were moved before an interruption
    for i in (1, 2):
        os.rename(val / f"ILSVRC2012_val_{i:08d}.JPEG", val / WNIDS[3] / f"ILSVRC2012_val_{i:08d}.JPEG")
    assert sv.main([str(val), "--kaggle-csv", str(csv)]) == 0
    assert capsys.readouterr().out == f"moved 4 images into 3 class folders of {val} (2 were already sorted)\n"
    assert _tree(val) == _expected(labels)


@pytest.mark.parametrize("change, message", [
    (lambda v, t: os.remove(v / "ILSVRC2012_val_00000003.JPEG"),
     r"5 val images, the labels have 6; missing ILSVRC2012_val_00000003.JPEG"),
    (lambda v, t: (v / "ILSVRC2012_val_00000007.JPEG").write_bytes(b"x"),
     r"ILSVRC2012_val_00000007.JPEG: an image without a label; the ground truth has "
     r"ILSVRC2012_val_00000001..00000006.JPEG"),
    (lambda v, t: (v / "holiday.jpg").write_bytes(b"x"), r"holiday.jpg: an image without a label"),
    (lambda v, t: ((v / WNIDS[5]).mkdir(), os.rename(v / "ILSVRC2012_val_00000002.JPEG",
                                                      v / WNIDS[5] / "ILSVRC2012_val_00000002.JPEG")),
     rf"ILSVRC2012_val_00000002.JPEG: in {WNIDS[5]}/ but the labels say {ID_WNID[361]}; the folder was sorted "
     r"with other labels"),
    (lambda v, t: ((v / ID_WNID[361]).mkdir(), (v / ID_WNID[361] / "ILSVRC2012_val_00000002.JPEG").write_bytes(b"")),
     r"ILSVRC2012_val_00000002.JPEG is there 2 times"),
    (lambda v, t: (t / "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt").write_text("1\n0\n"),
     r"ground truth line 2: '0' is not an ILSVRC2012_ID 1..1000"),
    (lambda v, t: (t / "ILSVRC2012_devkit_t12/data/meta.mat").write_bytes(b"\x89HDF" + b"MATLAB 7.3 MAT-file" * 9),
     r"meta.mat: not a MATLAB v5 MAT-file \(v7.3/HDF5 is not supported"),
    (lambda v, t: write_mat(t / "ILSVRC2012_devkit_t12/data/meta.mat", _synsets()[:999]),
     r"meta.mat maps 999 ILSVRC2012_IDs in 1..1000, not 1000"),
    (lambda v, t: os.remove(t / "ILSVRC2012_devkit_t12/data/meta.mat"), r"--devkit .*: no meta.mat inside"),
])
def test_refusals_move_nothing(tmp_path, val, change, message):
    _devkit(tmp_path)
    change(val, tmp_path)
    before = _tree(val)
    with pytest.raises(SystemExit, match=r"^refused, nothing moved: .*" + message):
        sv.main([str(val), "--devkit", str(tmp_path / "ILSVRC2012_devkit_t12")])
    assert _tree(val) == before


def test_kaggle_csv_refusals(tmp_path, val):
    csv = tmp_path / "s.csv"
    csv.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4 n01443537 1 2 3 4\n")
    with pytest.raises(SystemExit, match=r"s.csv:2: 'ILSVRC2012_val_00000001' needs an ILSVRC2012_val_ id and "
                                         r"boxes of one wnid \(got \['n01440764', 'n01443537'\]\)"):
        sv.main([str(val), "--kaggle-csv", str(csv)])
    csv.write_text("ImageId,PredictionString\n" + "".join(f"ILSVRC2012_val_{i:08d},n99999999 1 2 3 4\n"
                                                          for i in range(1, 7)))
    with pytest.raises(SystemExit, match=r"1 label\(s\) are not ILSVRC-2012 wnids \(e.g. n99999999\)"):
        sv.main([str(val), "--kaggle-csv", str(csv)])
    csv.write_text("id,label\n")
    with pytest.raises(SystemExit, match=r"the header is not ImageId,PredictionString"):
        sv.main([str(val), "--kaggle-csv", str(csv)])
    with pytest.raises(SystemExit, match=r"nowhere.csv: no such file or folder \(kaggle-csv\)"):
        sv.main([str(val), "--kaggle-csv", str(tmp_path / "nowhere.csv")])
    assert _tree(val) == sorted([f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 7)]
                                + ["ILSVRC2012_val_00000001.xml", ".DS_Store"])
