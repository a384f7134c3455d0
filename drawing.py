"""
Small figures with Pillow only: text, nice tick values, framed axes, markers, legends, a titled canvas.

tools/plot.py (training curves, lambda sweeps) and `tools/analyses.py draw` (the appendix pictures) both draw with
these, so every picture of the repository reads the same way: a title, axes with ticks and labels, a legend.
Pillow (and nothing else) because the runtime is torch, torchvision, numpy and pillow; no matplotlib.

Coordinates. Pixels: (0, 0) is the top-left corner of the image, x right, y down. Data: an Axes maps
xlim x ylim onto its box with y up; a ylim given high-to-low, e.g. (1, 0), puts y down, as in image-like data.
"""

import functools
import math

from PIL import Image, ImageDraw, ImageFont

BLACK, GREY, LIGHT, WHITE = (0, 0, 0), (110, 110, 110), (228, 228, 228), (255, 255, 255)
# matplotlib's "tab10": ten colours that stay apart from each other and readable on white
PALETTE = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))
MARGINS = (66, 30, 18, 46)  # px around an Axes box: left (tick labels, y label), top (title), right, bottom
TITLE_SIZE, LABEL_SIZE, TICK_SIZE = 17, 13, 12


@functools.lru_cache(maxsize=None)
def font(size=LABEL_SIZE):
    """Pillow's built-in scalable font at `size` px (Pillow >= 10.1); older Pillow: its small bitmap font. It
    has Latin-1 glyphs only (± yes, λ or × no), so labels say "lambda" and "x"."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def text_size(s, size=LABEL_SIZE):
    """(width, height) px of the inked box of s."""
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), s, font=font(size))
    return right - left, bottom - top


def text(img, xy, s, size=LABEL_SIZE, anchor="lt", fill=BLACK, vertical=False):
    """Draw s with the anchor point of its inked box at pixel xy: anchor = horizontal l|m|r + vertical t|m|b
    ("mt": xy is the middle of the top edge). vertical=True turns it 90 degrees counter-clockwise (a y-axis
    label). Our own anchoring, because Pillow's anchors fail for the bitmap font. Returns the box drawn."""
    f = font(size)
    left, top, right, bottom = ImageDraw.Draw(img).textbbox((0, 0), s, font=f)
    w, h = right - left, bottom - top
    tile = Image.new("RGBA", (max(w, 1), max(h, 1)), (0, 0, 0, 0))
    ImageDraw.Draw(tile).text((-left, -top), s, font=f, fill=fill)
    if vertical:
        tile = tile.rotate(90, expand=True)
    x = round(xy[0] - {"l": 0, "m": tile.width / 2, "r": tile.width}[anchor[0]])
    y = round(xy[1] - {"t": 0, "m": tile.height / 2, "b": tile.height}[anchor[1]])
    img.paste(tile, (x, y), tile)
    return x, y, x + tile.width, y + tile.height


def nice_step(span, n=5):
    """The tick step for about n intervals over span: span / n rounded to 1, 2 or 5 x 10^k (mantissa below
    1.5 -> 1, below 3 -> 2, below 7 -> 5, else 10: Heckbert's "nice numbers", Graphics Gems 1990)."""
    raw = span / n
    k = math.floor(math.log10(raw))
    m = raw / 10 ** k
    return (1 if m < 1.5 else 2 if m < 3 else 5 if m < 7 else 10) * 10.0 ** k


def nice_ticks(lo, hi, n=5, integer=False):
    """Every multiple of nice_step(hi - lo, n) inside [lo, hi] (integer=True: steps of at least 1), e.g.
    (0, 1) -> [0, 0.2, ..., 1.0], (0.37, 0.91) -> [0.4, 0.5, ..., 0.9], (0, 16) -> [0, 5, 10, 15]."""
    lo, hi = min(lo, hi), max(lo, hi)
    step = nice_step(hi - lo, n) if hi > lo else 1.0
    if integer:
        step = max(1.0, round(step))
    first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
    return [round(k * step, 12) + 0.0 for k in range(first, last + 1)]  # + 0.0: no "-0"


def tick_label(v, ticks):
    """v with as many decimals as the spacing of ticks needs (0.2 -> 1, 0.05 -> 2, 5 -> 0)."""
    step = min((b - a for a, b in zip(ticks, ticks[1:])), default=1.0)
    return f"{v:.{max(0, -math.floor(math.log10(step) + 1e-9))}f}"


def padded(lo, hi, frac=0.06):
    """A data range widened by frac of its span on each side (a flat range by 1, so a line is never on the frame)."""
    if hi == lo:
        return lo - 1.0, hi + 1.0
    pad = frac * (hi - lo)
    return lo - pad, hi + pad


def marker(draw, x, y, colour, kind="dot", r=4):
    """A point marker at pixel (x, y): "dot" filled circle, "ring" circle outline, "cross" an x."""
    if kind == "cross":
        draw.line([x - r, y - r, x + r, y + r], fill=colour, width=2)
        draw.line([x - r, y + r, x + r, y - r], fill=colour, width=2)
    elif kind == "ring":
        draw.ellipse([x - r, y - r, x + r, y + r], outline=colour, width=2)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def dashed(draw, pts, colour, width=2, dash=7):
    """A polyline through pixel points, drawn dash px on, dash px off."""
    on, left = True, dash
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        length, done = math.hypot(x1 - x0, y1 - y0), 0.0
        while done < length:
            step = min(left, length - done)
            if on:
                a, b = done / length, (done + step) / length
                draw.line([x0 + a * (x1 - x0), y0 + a * (y1 - y0), x0 + b * (x1 - x0), y0 + b * (y1 - y0)],
                          fill=colour, width=width)
            done, left = done + step, left - step
            if left <= 0:
                on, left = not on, dash


class Axes:
    """A plot area: pixel box (left, top, right, bottom) of img showing xlim x ylim (y up unless ylim is given
    high-to-low). xscale "linear" or "log1p" (x drawn at log10(1 + x): 0 stays on the axis while 1, 5, 20, 50
    spread out, for a lambda sweep)."""

    def __init__(self, img, box, xlim, ylim, xscale="linear"):
        if xscale not in ("linear", "log1p"):
            raise ValueError(f"xscale {xscale!r}: use 'linear' or 'log1p'")
        self.img, self.box, self.xlim, self.ylim, self.xscale = img, box, xlim, ylim, xscale
        self.draw = ImageDraw.Draw(img)

    def _fx(self, x):
        return math.log10(1 + x) if self.xscale == "log1p" else x

    def px(self, x, y):
        """Data (x, y) -> pixel (column, row), floats."""
        left, top, right, bottom = self.box
        x0, x1 = self._fx(self.xlim[0]), self._fx(self.xlim[1])
        return (left + (self._fx(x) - x0) / (x1 - x0) * (right - left),
                bottom - (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0]) * (bottom - top))

    def frame(self, title=None, xlabel=None, ylabel=None, xticks=None, yticks=None, xtick_labels=None, grid=True):
        """Frame, grid lines, ticks with labels (default nice_ticks of each range), axis labels and a title."""
        left, top, right, bottom = self.box
        xticks = nice_ticks(*self.xlim) if xticks is None else xticks
        yticks = nice_ticks(*self.ylim) if yticks is None else yticks
        xtick_labels = xtick_labels or [tick_label(v, xticks) for v in xticks]
        y_width = 0
        for v, s in zip(xticks, xtick_labels):
            x = self.px(v, self.ylim[0])[0]
            if grid:
                self.draw.line([x, top, x, bottom], fill=LIGHT)
            self.draw.line([x, bottom, x, bottom + 4], fill=BLACK)
            text(self.img, (x, bottom + 6), s, TICK_SIZE, "mt")
        for v in yticks:
            y = self.px(self.xlim[0], v)[1]
            if grid:
                self.draw.line([left, y, right, y], fill=LIGHT)
            self.draw.line([left - 4, y, left, y], fill=BLACK)
            box = text(self.img, (left - 6, y), tick_label(v, yticks), TICK_SIZE, "rm")
            y_width = max(y_width, box[2] - box[0])
        self.draw.rectangle([left, top, right, bottom], outline=BLACK)
        if xlabel:
            y = bottom + 14 + text_size("0", TICK_SIZE)[1]  # under the tick labels
            text(self.img, ((left + right) / 2, y), xlabel, LABEL_SIZE, "mt")
        if ylabel:
            text(self.img, (left - 12 - y_width, (top + bottom) / 2), ylabel, LABEL_SIZE, "rm", vertical=True)
        if title:
            text(self.img, ((left + right) / 2, top - 8), title, LABEL_SIZE + 1, "mb")

    def line(self, xs, ys, colour, width=2, kind="dot", dash=False):
        """Data points joined in the given order, each with a marker (kind None: none)."""
        pts = [self.px(x, y) for x, y in zip(xs, ys)]
        if len(pts) > 1 and dash:
            dashed(self.draw, pts, colour, width)
        elif len(pts) > 1:
            self.draw.line(pts, fill=colour, width=width, joint="curve")
        for x, y in pts if kind else ():
            marker(self.draw, x, y, colour, kind)

    def errorbar(self, x, y, err, colour, cap=5):
        """A vertical bar y +- err at x with caps."""
        (cx, lo), (_, hi) = self.px(x, y - err), self.px(x, y + err)
        self.draw.line([cx, lo, cx, hi], fill=colour, width=2)
        for yy in (lo, hi):
            self.draw.line([cx - cap, yy, cx + cap, yy], fill=colour, width=2)


def _swatch(draw, x, y, colour, kind, w=24):
    """A legend key, w px wide, vertically centred on y: "line" (with a dot), "dashed", "box" (an outline),
    "patch" (filled), or a marker kind."""
    if kind == "dashed":
        dashed(draw, [(x, y), (x + w, y)], colour)
    elif kind == "line":
        draw.line([x, y, x + w, y], fill=colour, width=2)
        marker(draw, x + w / 2, y, colour)
    elif kind == "box":
        draw.rectangle([x + 3, y - 6, x + w - 3, y + 6], outline=colour, width=2)
    elif kind == "patch":
        draw.rectangle([x + 3, y - 6, x + w - 3, y + 6], fill=colour)
    else:
        marker(draw, x + w / 2, y, colour, kind, r=5)


def _legend_layout(items, max_width, size):
    """Entries flowed left to right, wrapped at max_width: [(x, y) of each entry], (width, height)."""
    pad, key, gap, row_h = 8, 24 + 6, 18, text_size("Ag", size)[1] + 8
    x = y = pad
    pos, width = [], 0
    for label, _, _ in items:
        w = key + text_size(label, size)[0]
        if x > pad and x + w + pad > max_width:
            x, y = pad, y + row_h
        pos.append((x, y))
        width = max(width, x + w + pad)
        x += w + gap
    return pos, (width, y + row_h + pad - 4)


def legend_size(items, max_width, size=LABEL_SIZE):
    """(width, height) px legend(items, ...) will take."""
    return _legend_layout(items, max_width, size)[1]


def legend(img, items, xy, max_width, size=LABEL_SIZE):
    """A framed legend with its top-left corner at xy: items (label, colour, kind) with kind as in _swatch,
    flowed into rows no wider than max_width px. Returns its box."""
    pos, (w, h) = _legend_layout(items, max_width, size)
    draw = ImageDraw.Draw(img)
    x0, y0 = xy
    draw.rectangle([x0, y0, x0 + w, y0 + h], fill=WHITE, outline=GREY)
    row_h = text_size("Ag", size)[1] + 8
    for (label, colour, kind), (x, y) in zip(items, pos):
        _swatch(draw, x0 + x, y0 + y + row_h / 2 - 2, colour, kind)
        text(img, (x0 + x + 30, y0 + y + row_h / 2 - 2), label, size, "lm")
    return x0, y0, x0 + w, y0 + h


def canvas(width, body_height, title, legend_items=()):
    """A white picture: the title centred at the top, then the legend (if any) centred under it, then
    body_height px for the caller. Returns (image, y where the body starts)."""
    title_h = text_size(title, TITLE_SIZE)[1] + 16 if title else 6
    lw, lh = legend_size(legend_items, width - 20) if legend_items else (0, -8)
    img = Image.new("RGB", (width, title_h + lh + 8 + body_height), WHITE)
    if title:
        text(img, (width / 2, 10), title, TITLE_SIZE, "mt")
    if legend_items:
        legend(img, legend_items, ((width - lw) // 2, title_h), width - 20)
    return img, title_h + lh + 8
