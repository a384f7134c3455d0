"""
The appendix pictures of the LUAB paper as PNGs: Figures M, N, I and D's right column, each with its title and
legend drawn on it, so that a picture says what it shows without this code.

    python tools/figures.py --checkpoint runs/r50_luab/best.pt --imagenet-val /data/imagenet/val --out pictures/
    python tools/figures.py --checkpoint runs/coco_luab/best.pt --coco /data/coco2014 --out pictures/ \
        --coco-ab coco_ab_v1_0.json
    python tools/figures.py --imagenet-ab-xml imagenet_ab_v1_0/train_xml --imagenet-train-boxes boxes/ --out pictures/

Every picture whose inputs are given is drawn: Fig. M (--checkpoint with a point head or an attentive pool,
--imagenet-val), Fig. N (--checkpoint of a COCO model, --coco), Fig. I (--coco, --coco-ab) and Fig. D right
(--imagenet-ab-xml). The model flags and data roots are evaluate.py's (the same names, checks, defaults and
geometry: the checkpoint says its model, classes and input size). Pillow, torchvision.utils and drawing.py only.
"""

import argparse
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root
import byproducts  # noqa: E402
import drawing as dr  # noqa: E402
import evaluate as E  # noqa: E402
import models  # noqa: E402
from tools import analyses  # noqa: E402

# one colour per class of an image: bright ones, each drawn over a black outline
CLASS_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 200, 200),
                 (240, 50, 230), (150, 150, 0)]
LABEL_SIZE = 13  # px of the class names drawn on the images


def outlined_text(d, xy, s, colour, size=LABEL_SIZE):
    """s at pixel xy (top-left) in `colour`, outlined in black (Pillow's stroke), so it reads on any background."""
    d.text(xy, s, fill=colour, font=dr.font(size), stroke_width=2, stroke_fill=(0, 0, 0))


def draw_labels(d, labels, cell, r=7):
    """Class names beside their marks, drawn after every mark and box of a cell x cell picture. labels: [(x, y,
    name, colour)] with (x, y) the mark's pixel. A name goes right of its mark, or left where it would leave the
    picture, and down past the marks and the names already placed, so none hides another."""
    taken = [(x - r, y - r, x + r, y + r) for x, y, _, _ in labels]
    for x, y, s, colour in labels:
        w, h = dr.text_size(s, LABEL_SIZE)[0] + 4, LABEL_SIZE + 4
        x, y = (x + r + 3 if x + r + 3 + w <= cell else max(0, x - r - 3 - w)), min(max(0, y - h // 2), cell - h)
        while y + h < cell and any(x < b[2] and b[0] < x + w and y < b[3] and b[1] < y + h for b in taken):
            y += 4
        taken.append((x, y, x + w, y + h))
        outlined_text(d, (x + 2, y), s, colour)


def mark_point(d, point, cell, colour, r=6):
    """A normalised point as an x on a cell x cell picture; a point outside the picture (the head is not bounded)
    as an o on the border, where it left. Drawn over a black outline, as the labels. -> its pixel (x, y)."""
    q = np.clip(point, 0, 1)
    x, y = q * (cell - 1)
    inside = np.array_equal(q, point)
    if not inside:
        x, y = np.clip((x, y), r, cell - 1 - r)  # the whole o inside the picture
    for fill, width in (((0, 0, 0), 5), (colour, 3)):
        if inside:
            d.line([x - r, y - r, x + r, y + r], fill=fill, width=width)
            d.line([x - r, y + r, x + r, y - r], fill=fill, width=width)
        else:
            d.ellipse([x - r, y - r, x + r, y + r], outline=fill, width=width)
    return x, y


def save_sheet(cells, title, legend, path, ncol=4):
    """The cells (PIL images of one size) as a grid with white 4 px gutters (torchvision's make_grid), the title
    wrapped above it and the legend wrapped below it, saved as PNG at path. -> path"""
    grid = make_grid([torch.from_numpy(np.array(c.convert("RGB"))).permute(2, 0, 1) for c in cells], nrow=ncol,
                     padding=4, pad_value=255)
    img = Image.fromarray(grid.permute(1, 2, 0).numpy())
    width, line_h = max(40, img.width // 7), 17
    head, foot = textwrap.wrap(title, width), textwrap.wrap(legend, width)
    out = Image.new("RGB", (img.width, img.height + line_h * (len(head) + len(foot)) + 12), dr.WHITE)
    out.paste(img, (0, line_h * len(head) + 4))
    for j, line in enumerate(head):
        dr.text(out, (4, 3 + j * line_h), line, 14)
    for j, line in enumerate(foot):
        dr.text(out, (4, img.height + line_h * (len(head) + j) + 9), line, 13, fill=(40, 40, 40))
    out.save(path)
    return path


def unnormalise(x):
    """Normalised input [3, H, W] -> the PIL image the network saw."""
    std, mean = torch.tensor(E.IMAGENET_STD).view(3, 1, 1), torch.tensor(E.IMAGENET_MEAN).view(3, 1, 1)
    rgb = x.float().cpu() * std + mean
    return Image.fromarray((rgb.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))


def pick(n_items, n, seed=0):
    """n indices drawn without replacement (seeded), in ascending order."""
    return sorted(np.random.default_rng(seed).choice(n_items, min(n, n_items), replace=False).tolist())


@torch.no_grad()
def figure_points_imagenet(model, args, path, n=16, cell=192):
    """Fig. M: the predicted point on random IN-val images, drawn on the network's own input (the checkpoint's
    Resize + CenterCrop), with the GT boxes (evaluate.val_point_boxes) mapped into that crop."""
    all_paths, _, _ = E.scan_class_folders(args.imagenet_val, E.imagenet_label_of(args))
    paths = [all_paths[i] for i in pick(len(all_paths), n)]
    boxes, sizes, source = E.val_point_boxes(paths, args)
    tf, cells, hits = E.default_transform(args), [], []
    reader = byproducts.ImageReader(len(paths))  # a broken file: a mean-pixel cell, named in a warning
    for j, p in enumerate(paths):
        x = tf(reader.read(j, p)).to(args.device)
        point = model(x[None], return_points=True)[1][0, 0].float().cpu().numpy()  # normalised in the crop
        c = unnormalise(x).resize((cell, cell), Image.BILINEAR)
        d = ImageDraw.Draw(c)
        if boxes[j] is not None:
            scale, offset = byproducts.eval_crop_geometry(sizes[j:j + 1], args.resize, args.img_size)
            for b in boxes[j]:  # normalised to the original image -> pixels of the crop -> pixels of the cell
                lo = (b[:2] * sizes[j] * scale[0] - offset[0]) / args.img_size * cell
                hi = (b[2:] * sizes[j] * scale[0] - offset[0]) / args.img_size * cell
                d.rectangle([*lo, *hi], outline=(0, 220, 0), width=3)
            px = byproducts.eval_points_to_original(point[None], sizes[j:j + 1], args.resize, args.img_size)
            hits.append(E.point_in_box_accuracy(px / sizes[j], [boxes[j]]) > 0)
        mark_point(d, point, cell, (255, 30, 30))
        cells.append(c)
    legend = ("red x: the predicted point (o on the border: outside the crop); green: GT boxes "
              + (f"({source}); the point is inside a box in {sum(hits)} of the {len(hits)} images with boxes"
                 if hits else "(none found: pass --imagenet-boxes)"))
    title = (f"Fig. M: {args.model} points on {len(cells)} random IN-val images, as the network sees them "
             f"({E.describe_default(args)})")
    return save_sheet(cells, title, legend, path)


def draw_classes(c, cell, items, draw):
    """On the cell picture c, one colour per class: for each (name, value) of items, draw(d, value, colour) draws
    the class's marks and returns (x, y) of the one its name goes beside; then the names, outlined (draw_labels)."""
    d, labels = ImageDraw.Draw(c), []
    for j, (name, value) in enumerate(items):
        colour = CLASS_COLOURS[j % len(CLASS_COLOURS)]
        labels.append((*draw(d, value, colour), name, colour))
    draw_labels(d, labels, cell)
    return c


@torch.no_grad()
def figure_points_coco(model, args, path, n=12, cell=256):
    """Fig. N: for random COCO val images, each GT class's predicted point (its own point head) and the GT boxes
    of that class, one colour per class, the class name beside the point."""
    root = Path(args.coco)
    ds = E.CocoEvalSet(root / args.coco_split, root / "annotations" / f"instances_{args.coco_split}.json",
                       args.coco_size, interpolation=args.interpolation)
    names = {k: c["name"] for k, c in enumerate(ds.coco.categories)}
    if model.num_points != len(names):
        raise SystemExit(f"--coco {args.coco}: Fig. N needs one point head per category ({len(names)}); "
                         f"--checkpoint {args.checkpoint} has {model.num_points}")
    cells = []
    for i in pick(len(ds), n):
        x = ds[i][0].to(args.device)
        points = model(x[None], return_points=True)[1][0].float().cpu().numpy()  # [C, 2], normalised to the image
        info = ds.images[i]
        c = unnormalise(x).resize((cell, cell), Image.BILINEAR)

        def boxes_and_point(d, k, colour):
            for b in ds.boxes(i)[k] / np.array([info["width"], info["height"]] * 2) * cell:
                d.rectangle(b.tolist(), outline=colour, width=2)
            return mark_point(d, points[k], cell, colour)
        cells.append(draw_classes(c, cell, [(names[k], k) for k in sorted(ds.boxes(i))], boxes_and_point))
    title = f"Fig. N: {args.model} points on {len(cells)} random COCO {args.coco_split} images ({args.coco_size} px)"
    legend = ("per GT class of the image: x = that class's predicted point (its own point head; o on the border: "
              "outside the image), boxes = its GT boxes, one colour per class, the class name beside the point")
    return save_sheet(cells, title, legend, path)


def figure_icons_coco(args, path, n=12, cell=256):
    """Fig. I: COCO-AB icon placements (the final "add" of each class, the paper's point) on random COCO train
    images, the class name beside each icon."""
    root = Path(args.coco)
    inst = byproducts.read_coco_instances(root / "annotations" / f"instances_{args.coco_train_split}.json")
    records = byproducts.read_coco_ab(args.coco_ab)
    ids = [i for i in inst.image_ids if i in records and byproducts.coco_points(records[i])]
    if not ids:
        raise SystemExit(f"--coco-ab {args.coco_ab}: no record with an icon matches an image of "
                         f"instances_{args.coco_train_split}.json; give the COCO-AB file of that split")
    names = {c["id"]: c["name"] for c in inst.categories}
    cells, chosen = [], [ids[j] for j in pick(len(ids), n)]
    reader = byproducts.ImageReader(len(chosen))  # a broken file: a mean-pixel cell, named in a warning
    for j, i in enumerate(chosen):
        c = reader.read(j, root / args.coco_train_split / inst.images[i]["file_name"])
        c = c.resize((cell, cell), Image.BILINEAR)

        def icon(d, xy, colour):
            x, y = xy[0] * cell, xy[1] * cell
            d.ellipse([x - 6, y - 6, x + 6, y + 6], fill=colour, outline=dr.WHITE, width=2)
            return x, y
        icons = sorted(byproducts.coco_points(records[i]).items())
        cells.append(draw_classes(c, cell, [(names.get(cid, str(cid)), xy) for cid, xy in icons], icon))
    title = f"Fig. I: COCO-AB icon placements on {len(cells)} random COCO {args.coco_train_split} images"
    legend = ("dot = where the annotator dropped the class icon (the last 'add' of the class, the paper's point), "
              "class name beside it; images resized to square cells")
    return save_sheet(cells, title, legend, path)


def click_accuracy_maps(records, grid=8):
    """Fig. D (right): click localisation accuracy by location. records: analyses.imagenet_records() with
    boxes. Returns (by_box [2, grid, grid], by_click [2, grid, grid]) of (hits, images): images binned by the
    centre of their largest GT box, and by their click; a hit = the click inside any GT box (byproducts' +-1 px
    rule)."""
    out = np.zeros((2, 2, grid, grid), np.int64)  # [by box | by click, hits | images, row y, col x]
    for r in records:
        if r["click"] is None or r["boxes"] is None:
            continue
        W, H = r["size"]
        b = r["boxes"][np.argmax((r["boxes"][:, 2] - r["boxes"][:, 0]) * (r["boxes"][:, 3] - r["boxes"][:, 1]))]
        hit = int(analyses.points_in_boxes(r["click"], r["boxes"], W, H))
        for k, (x, y) in enumerate((((b[0] + b[2]) / 2 / W, (b[1] + b[3]) / 2 / H), r["click"])):
            row, col = (min(max(int(v * grid), 0), grid - 1) for v in (y, x))
            out[k, :, row, col] += (hit, 1)
    return out[0], out[1]


def figure_click_accuracy(args, path, grid=8, cell=56):
    """Fig. D (right column) as two accuracy maps side by side, each cell coloured and labelled with its %."""
    records, _ = analyses.imagenet_records(args.imagenet_ab_xml, args.imagenet_train_boxes)
    maps = click_accuracy_maps(records, grid)
    if maps[0][1].sum() == 0:
        raise SystemExit(f"--imagenet-ab-xml {args.imagenet_ab_xml}: no image has both a click and a GT box; give "
                         "--imagenet-train-boxes (the ILSVRC train box XMLs)")
    panels = []
    for (hits, n), name in zip(maps, ("by GT box centre", "by click location")):
        p = Image.new("RGB", (grid * cell, grid * cell + 20), dr.WHITE)
        d = ImageDraw.Draw(p)
        dr.text(p, (4, 3), f"accuracy {name}", 13)
        for row in range(grid):
            for col in range(grid):
                box = [col * cell, 20 + row * cell, (col + 1) * cell - 1, 20 + (row + 1) * cell - 1]
                if n[row, col] == 0:
                    d.rectangle(box, fill=(200, 200, 200))
                    continue
                a = hits[row, col] / n[row, col]
                d.rectangle(box, fill=(int(255 * (1 - a)), int(200 * a), 60))  # red (0 %) -> green (100 %)
                outlined_text(d, (box[0] + 4, box[1] + 4), f"{100 * a:.0f}%", dr.WHITE, 12)
                outlined_text(d, (box[0] + 4, box[1] + 22), f"n={n[row, col]}", dr.WHITE, 11)
        panels.append(p)
    title = (f"Fig. D (right): click localisation accuracy per location, {int(maps[0][1].sum())} clicked images "
             f"with GT boxes, overall {100 * maps[0][0].sum() / maps[0][1].sum():.1f}%")
    legend = (f"the image split into {grid}x{grid} cells (x right, y down); left: images binned by the centre of "
              "their largest GT box, right: by where the click is; colour and number = % of those clicks inside a "
              "GT box (red 0% .. green 100%), n = images; grey = no image")
    return save_sheet(panels, title, legend, path, ncol=2)


def draw_figures(model, args):
    """Every picture whose inputs are given, into --out DIR. model: None without --checkpoint. -> paths written."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if model is not None and not models.point_parameters(model):
        raise SystemExit(f"--checkpoint {args.checkpoint} predicts no point: Figures M and N draw predicted points")
    if model is not None and args.imagenet_val:
        written.append(figure_points_imagenet(model, args, out / "fig_m_points_imagenet_val.png", args.per_picture))
    if model is not None and args.coco:
        written.append(figure_points_coco(model, args, out / "fig_n_points_coco_val.png", args.per_picture))
    if args.coco_ab:
        written.append(figure_icons_coco(args, out / "fig_i_icons_coco.png", args.per_picture))
    if args.imagenet_ab_xml:
        written.append(figure_click_accuracy(args, out / "fig_d_click_accuracy_maps.png"))
    return written


def get_args_parser():
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    E.add_model_args(p)
    g = p.add_argument_group("pictures")
    g.add_argument("--out", required=True, metavar="DIR", help="the folder the PNGs are written into")
    g.add_argument("--per-picture", type=int, default=16, help="images per picture (Figs. M, N, I)")
    g.add_argument("--imagenet-val", help="val/<wnid>/*.JPEG (Fig. M), as evaluate.py's")
    g.add_argument("--imagenet-boxes", help="ILSVRC box XMLs of the val images (Fig. M; default: found beside val/)")
    g.add_argument("--wsol-metadata", help="wsolevaluation metadata folder: Fig. M's boxes when no XMLs are found")
    g.add_argument("--coco", help="COCO root with <split>/ images and annotations/instances_<split>.json (Figs. N, I)")
    g.add_argument("--coco-split", default="val2014", help="the split of Fig. N")
    g.add_argument("--coco-size", type=int, default=None, help="Fig. N's input: default the checkpoint's img_size")
    g.add_argument("--coco-ab", help="COCO-AB JSON (Fig. I), with the images of --coco-train-split under --coco")
    g.add_argument("--coco-train-split", default="train2014")
    g.add_argument("--imagenet-ab-xml", help="ImageNet-AB train_xml/ (Fig. D)")
    g.add_argument("--imagenet-train-boxes", help="ILSVRC train box XMLs (Fig. D; default: the boxes in the AB XML)")
    return p


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    if not (args.checkpoint or args.coco_ab or args.imagenet_ab_xml):
        parser.error("give --checkpoint (with --imagenet-val / --coco), --coco-ab or --imagenet-ab-xml")
    E.check_inputs(args)
    for flag in ("coco_ab", "imagenet_ab_xml", "imagenet_train_boxes"):
        if getattr(args, flag) and not Path(getattr(args, flag)).exists():
            raise SystemExit(f"--{flag.replace('_', '-')} {getattr(args, flag)}: no such file or directory")
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = E.load_run_model(args).to(args.device) if args.checkpoint else None
    E.resolve_eval_geometry(args)  # without a checkpoint: the defaults
    args.label_space = E.label_space(getattr(args, "classes", None), model.classifier.out_features) if model else None
    print("wrote " + " ".join(str(p) for p in draw_figures(model, args)))


if __name__ == "__main__":
    main()
