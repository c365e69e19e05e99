"""Deterministic procedural renderer of world scenes.

Everything is drawn with PIL at 4x the target resolution and box-filtered down, so the
same scene gives byte-identical pixels on every run and machine. Randomness (texture
placement, jitter) comes only from `scene.seed`.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from suti.world import vocab as V
from suti.world.scene import Scene, stable_seed

SUPERSAMPLE = 4
HAT = (45, 45, 55)
HAT_BAND = (210, 30, 30)
SCARF = (220, 40, 60)
SCARF_STRIPE = (250, 250, 250)


def _c(name: str) -> tuple[int, int, int]:
    return V.COLOURS[name]


def _shade(rgb, f: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, v * f))) for v in rgb)


# ---------------------------------------------------------------- contexts

def _vgrad(img: Image.Image, top, bottom, y0: float = 0.0, y1: float = 1.0) -> None:
    d = ImageDraw.Draw(img)
    S = img.size[0]
    a, b = int(y0 * S), int(y1 * S)
    for y in range(a, b):
        t = (y - a) / max(1, b - a - 1)
        d.line([(0, y), (S, y)], fill=tuple(int(top[i] * (1 - t) + bottom[i] * t) for i in range(3)))


def draw_context(key: str, S: int, rng: np.random.Generator) -> Image.Image:
    """Background image for a context key; each has its own colour layout and texture."""
    img = Image.new("RGB", (S, S), (200, 200, 200))
    d = ImageDraw.Draw(img)
    u = S / 32.0  # one target pixel at 32 px
    sky = (150, 200, 240)
    if key == "studio":
        _vgrad(img, (232, 232, 228), (196, 196, 192))
    elif key == "jungle":
        img.paste((20, 80, 30), (0, 0, S, S))
        for _ in range(40):
            x, y, r = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(2, 5) * u
            d.ellipse([x - r * 1.6, y - r, x + r * 1.6, y + r], fill=(40 + int(rng.integers(0, 60)), 140, 50))
        for _ in range(6):
            x = rng.uniform(0, S)
            d.line([(x, 0), (x + rng.uniform(-4, 4) * u, S)], fill=(70, 45, 20), width=int(1.2 * u))
    elif key == "snow":
        _vgrad(img, (190, 210, 235), (225, 235, 250), 0, 0.5)
        img.paste((250, 250, 252), (0, S // 2, S, S))
        for _ in range(50):
            x, y, r = rng.uniform(0, S), rng.uniform(0, S), rng.uniform(0.4, 0.9) * u
            d.ellipse([x - r, y - r, x + r, y + r], fill=(255, 255, 255))
    elif key == "beach":
        _vgrad(img, (120, 185, 240), (175, 215, 245), 0, 0.38)
        img.paste((30, 95, 170), (0, int(0.38 * S), S, int(0.52 * S)))
        img.paste((235, 210, 150), (0, int(0.52 * S), S, S))
        for _ in range(25):
            x, y = rng.uniform(0, S), rng.uniform(0.55 * S, S)
            d.point((x, y), fill=(200, 175, 120))
    elif key == "cobblestone":
        img.paste((90, 90, 95), (0, 0, S, S))
        step = 5 * u
        for j in range(int(S / step) + 1):
            off = (j % 2) * step / 2
            for i in range(-1, int(S / step) + 1):
                x, y = i * step + off, j * step
                g = 120 + int(rng.integers(0, 40))
                d.rounded_rectangle([x + 0.5 * u, y + 0.5 * u, x + step - 0.5 * u, y + step - 0.5 * u],
                                    radius=1.5 * u, fill=(g, g, g - 5))
    elif key == "pink_fabric":
        img.paste((240, 150, 190), (0, 0, S, S))
        for k in range(7):
            y0 = (k + rng.uniform(0, 0.5)) * S / 6
            pts = [(x, y0 + 1.5 * u * np.sin(x / (3 * u) + k)) for x in np.linspace(0, S, 24)]
            d.line(pts, fill=(250, 190, 215), width=int(1.5 * u))
    elif key == "wooden_floor":
        _vgrad(img, (225, 215, 200), (210, 200, 185), 0, 0.45)
        plank = 3 * u
        for j, y in enumerate(np.arange(0.45 * S, S, plank)):
            tone = (150 + 12 * (j % 3), 95 + 8 * (j % 2), 50)
            d.rectangle([0, y, S, y + plank], fill=tone)
            d.line([(0, y), (S, y)], fill=(90, 55, 25), width=max(1, int(0.4 * u)))
    elif key == "city":
        _vgrad(img, sky, (210, 225, 240), 0, 0.7)
        img.paste((110, 110, 115), (0, int(0.7 * S), S, S))
        x = 0.0
        while x < S:
            w, h = rng.uniform(3, 7) * u, rng.uniform(0.25, 0.6) * S
            g = 50 + int(rng.integers(0, 50))
            d.rectangle([x, 0.72 * S - h, x + w, 0.72 * S], fill=(g, g, g + 10))
            for wy in np.arange(0.72 * S - h + u, 0.72 * S - u, 2 * u):
                d.rectangle([x + u, wy, x + 1.8 * u, wy + 0.8 * u], fill=(250, 220, 90))
            x += w + 0.5 * u
    elif key == "mountain":
        _vgrad(img, (120, 170, 230), (190, 215, 240), 0, 0.75)
        img.paste((90, 130, 70), (0, int(0.75 * S), S, S))
        for cx, hh in [(0.25, 0.55), (0.7, 0.65), (1.0, 0.4)]:
            peak = (cx * S, (0.75 - hh) * S)
            d.polygon([(cx * S - 0.4 * S, 0.76 * S), peak, (cx * S + 0.4 * S, 0.76 * S)], fill=(110, 105, 115))
            d.polygon([(peak[0] - 0.08 * S, peak[1] + 0.1 * S), peak, (peak[0] + 0.08 * S, peak[1] + 0.1 * S)],
                      fill=(250, 250, 250))
    elif key == "blue_house":
        _vgrad(img, sky, (200, 225, 245), 0, 0.8)
        img.paste((95, 150, 75), (0, int(0.8 * S), S, S))
        d.rectangle([0.05 * S, 0.3 * S, 0.95 * S, 0.82 * S], fill=(40, 90, 200))
        d.polygon([(0.0, 0.32 * S), (0.5 * S, 0.05 * S), (S, 0.32 * S)], fill=(120, 40, 40))
        for wx in (0.15, 0.72):
            d.rectangle([wx * S, 0.4 * S, (wx + 0.13) * S, 0.52 * S], fill=(240, 240, 250))
    elif key == "purple_rug_forest":
        img.paste((35, 70, 40), (0, 0, S, S))
        for _ in range(8):
            x = rng.uniform(0, S)
            d.polygon([(x - 3 * u, 0.6 * S), (x, rng.uniform(0.05, 0.25) * S), (x + 3 * u, 0.6 * S)],
                      fill=(20, 100 + int(rng.integers(0, 40)), 45))
        d.ellipse([0.05 * S, 0.62 * S, 0.95 * S, 1.05 * S], fill=(130, 50, 160))
        d.ellipse([0.2 * S, 0.7 * S, 0.8 * S, 0.98 * S], outline=(180, 110, 210), width=int(u))
    elif key == "wheat_field":
        _vgrad(img, (140, 190, 240), (200, 225, 245), 0, 0.45)
        img.paste((215, 175, 70), (0, int(0.45 * S), S, S))
        for _ in range(90):
            x, y = rng.uniform(0, S), rng.uniform(0.45 * S, S)
            d.line([(x, y), (x + 0.3 * u, y - 2.5 * u)], fill=(240, 205, 100), width=max(1, int(0.5 * u)))
    elif key == "autumn_tree":
        _vgrad(img, (175, 205, 235), (225, 225, 215), 0, 0.8)
        img.paste((150, 110, 60), (0, int(0.8 * S), S, S))
        d.rectangle([0.72 * S, 0.3 * S, 0.82 * S, 0.82 * S], fill=(90, 55, 25))
        for _ in range(45):
            x, y, r = rng.uniform(0.35 * S, S), rng.uniform(0, 0.45 * S), rng.uniform(1.5, 3.5) * u
            d.ellipse([x - r, y - r, x + r, y + r],
                      fill=[(220, 90, 20), (200, 50, 30), (235, 160, 30)][int(rng.integers(0, 3))])
        for _ in range(12):
            x, y = rng.uniform(0, S), rng.uniform(0.8 * S, S)
            d.ellipse([x - u, y - 0.6 * u, x + u, y + 0.6 * u], fill=(225, 110, 30))
    elif key == "eiffel":
        _vgrad(img, (200, 215, 235), (235, 225, 215), 0, 0.85)
        img.paste((170, 160, 140), (0, int(0.85 * S), S, S))
        tc, col = 0.78 * S, (85, 65, 50)
        d.polygon([(tc - 0.16 * S, 0.86 * S), (tc, 0.05 * S), (tc + 0.16 * S, 0.86 * S),
                   (tc + 0.09 * S, 0.86 * S), (tc, 0.55 * S), (tc - 0.09 * S, 0.86 * S)], fill=col)
        d.line([(tc - 0.1 * S, 0.5 * S), (tc + 0.1 * S, 0.5 * S)], fill=col, width=int(1.2 * u))
    elif key == "water":
        _vgrad(img, (30, 110, 180), (15, 60, 120))
        for k in range(10):
            y = (k + 0.5) * S / 10
            pts = [(x, y + u * np.sin(x / (2.5 * u) + k * 1.7)) for x in np.linspace(0, S, 24)]
            d.line(pts, fill=(120, 190, 235), width=max(1, int(0.6 * u)))
    elif key == "milk":
        _vgrad(img, (255, 252, 240), (238, 232, 215))
        for k in range(6):
            y = (k + 0.5) * S / 6
            pts = [(x, y + 1.2 * u * np.sin(x / (4 * u) + k)) for x in np.linspace(0, S, 24)]
            d.line(pts, fill=(215, 205, 185), width=max(1, int(0.7 * u)))
    elif key == "sunflowers":
        _vgrad(img, (140, 195, 245), (190, 220, 245), 0, 0.35)
        img.paste((60, 150, 50), (0, int(0.35 * S), S, S))
        for _ in range(10):
            x, y, r = rng.uniform(0, S), rng.uniform(0.3 * S, S), rng.uniform(1.8, 2.8) * u
            if 0.3 * S < x < 0.7 * S and y > 0.45 * S:
                continue  # keep the middle free for the subject
            d.ellipse([x - r, y - r, x + r, y + r], fill=(250, 210, 20))
            d.ellipse([x - r / 2.2, y - r / 2.2, x + r / 2.2, y + r / 2.2], fill=(90, 50, 20))
    elif key == "mirror":
        _vgrad(img, (210, 215, 225), (160, 170, 185))
        for k in range(4):
            x = (0.1 + 0.25 * k) * S
            d.line([(x, 0), (x + 0.15 * S, S)], fill=(235, 240, 250), width=int(1.2 * u))
    elif key == "sidewalk":
        _vgrad(img, (185, 185, 190), (150, 150, 155))
        for y in np.arange(0.5 * S, S, 4 * u):
            d.line([(0, y), (S, y)], fill=(120, 120, 125), width=max(1, int(0.4 * u)))
        for _ in range(9):
            x, h = rng.uniform(0, S), rng.uniform(0.25, 0.4) * S
            colr = tuple(int(v) for v in rng.integers(30, 230, 3))
            d.rectangle([x - 1.2 * u, 0.5 * S - h, x + 1.2 * u, 0.5 * S], fill=colr)
            d.ellipse([x - 1.2 * u, 0.5 * S - h - 2.4 * u, x + 1.2 * u, 0.5 * S - h], fill=(230, 190, 160))
    elif key == "dirt_road":
        img.paste((90, 160, 70), (0, 0, S, S))
        _vgrad(img, (165, 200, 235), (200, 220, 240), 0, 0.3)
        d.polygon([(0.42 * S, 0.3 * S), (0.58 * S, 0.3 * S), (S, S), (0, S)], fill=(150, 110, 70))
        for _ in range(20):
            x, y = rng.uniform(0.2 * S, 0.8 * S), rng.uniform(0.5 * S, S)
            d.ellipse([x - 0.5 * u, y - 0.3 * u, x + 0.5 * u, y + 0.3 * u], fill=(115, 85, 55))
    elif key == "white_rug":
        img.paste((205, 190, 165), (0, 0, S, S))
        d.rectangle([0.05 * S, 0.5 * S, 0.95 * S, 0.97 * S], fill=(250, 250, 248))
        for x in np.arange(0.06 * S, 0.95 * S, 1.5 * u):
            d.line([(x, 0.97 * S), (x, S)], fill=(240, 240, 235), width=max(1, int(0.4 * u)))
        for _ in range(30):
            x, y = rng.uniform(0.06 * S, 0.94 * S), rng.uniform(0.52 * S, 0.95 * S)
            d.point((x, y), fill=(225, 225, 220))
    else:
        raise ValueError(f"unknown context {key!r}")
    return img


# ---------------------------------------------------------------- subjects

def _pattern(S: int, body, accent, subject, box, u: float) -> Image.Image:
    """The body's fill: the subject's own pattern geometry (period, fill, angle), anchored
    to the subject's box so it moves with the subject, not with the canvas."""
    img = np.empty((S, S, 3), np.uint8)
    img[:] = body
    pattern = subject.pattern
    if pattern != "plain":
        yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) + 0.5
        xx, yy = xx - box[0], yy - box[1]
        a = np.deg2rad(subject.pattern_angle)
        along = xx * np.cos(a) + yy * np.sin(a)
        across = -xx * np.sin(a) + yy * np.cos(a)
        p = subject.pattern_period * u
        if pattern == "stripes":
            m = (along % p) < subject.pattern_fill * p
        elif pattern == "dots":
            cu, cv = (along % p) - p / 2, (across % p) - p / 2
            m = cu * cu + cv * cv < (0.55 * subject.pattern_fill * p) ** 2
        elif pattern == "checker":
            q = p * (0.6 + 0.5 * subject.pattern_fill)
            m = (np.floor(along / q) + np.floor(across / q)) % 2 == 0
        else:
            raise ValueError(f"unknown pattern {pattern!r}")
        img[m] = accent
    return Image.fromarray(img)


def _emblem(d: ImageDraw.ImageDraw, scene: Scene, mask: Image.Image, box, plate, acc, u: float) -> None:
    """The subject's glyph (its logo): 3x3 cells in the accent colour on a plate of body
    colour, at the body's centre; it survives views, edits and styles like a logo does."""
    g = scene.subject.emblem
    if not g:
        return
    m = np.asarray(mask) > 0
    ys, xs = np.nonzero(m)
    if not len(xs):
        return
    cx, cy = float(xs.mean()), float(ys.mean())
    if scene.subject.cls == "clock" and "cube" not in scene.edits:
        cy += 0.22 * (box[3] - box[1])  # below the hands, on the face's lower half
    cell = 1.25 * u
    half, pad = 1.5 * cell, 0.5 * u
    d.rectangle([cx - half - pad, cy - half - pad, cx + half + pad, cy + half + pad], fill=plate)
    for k in range(9):
        if g >> k & 1:
            r, c = divmod(k, 3)
            x, y = cx - half + c * cell, cy - half + r * cell
            d.rectangle([x, y, x + cell - 0.01, y + cell - 0.01], fill=acc)


def _body_mask(scene: Scene, box, S: int) -> Image.Image:
    """Mask of the subject's body, where colour and pattern apply."""
    m = Image.new("L", (S, S), 0)
    d = ImageDraw.Draw(m)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cls, var, view = scene.subject.cls, scene.subject.variant, scene.view
    k = scene.subject.shape  # 0..1: each class's own continuous silhouette parameter
    if "cube" in scene.edits:
        side = min(w, h) * 1.05
        cx, by = (x0 + x1) / 2, y1
        d.rectangle([cx - side / 2, by - side, cx + side / 2, by], fill=255)
        return m
    if view == "top":
        # seen from above: the class silhouette, foreshortened (so the class stays readable)
        y0 = y0 + 0.4 * h
        h = y1 - y0
        box = (x0, y0, x1, y1)
    if cls == "backpack":
        d.rounded_rectangle(box, radius=(0.08 + 0.22 * k + 0.05 * var) * w, fill=255)
    elif cls in ("mug", "can"):
        # the top narrower or wider than the bottom (taper), corners from square to round
        t = (k - 0.5) * 0.24 * w
        d.polygon([(x0 + max(0.0, t), y0), (x1 - max(0.0, t), y0), (x1 - max(0.0, -t), y1), (x0 + max(0.0, -t), y1)],
                  fill=255)
        d.rounded_rectangle([x0 + abs(t) / 2, y0, x1 - abs(t) / 2, y1], radius=(0.02 + 0.12 * k) * w, fill=255)
    elif cls == "bowl":
        d.chord([x0, y0 - h * (0.5 + 0.8 * k), x1, y1], 0, 180, fill=255)
    elif cls == "candle":
        m_ = 0.15 + 0.2 * k
        d.rectangle([x0 + m_ * w, y0 + 0.2 * h, x1 - m_ * w, y1], fill=255)
    elif cls == "clock":
        if var == 2:
            d.rounded_rectangle(box, radius=(0.05 + 0.25 * k) * w, fill=255)
        else:
            e = 0.15 * (k - 0.5) * w  # from tall oval to wide oval
            d.ellipse([x0 - e, y0 + e, x1 + e, y1 - e], fill=255)
    elif cls == "sneaker":
        top = 0.1 + 0.3 * k  # low or high ankle
        d.polygon([(x0, y1), (x0, y0 + (0.4 + 0.3 * k) * h), (x0 + 0.35 * w, y0 + 0.45 * h), (x0 + 0.6 * w, y0 + top * h),
                   (x1 - 0.05 * w, y0 + top * h), (x1, y1)], fill=255)
    elif cls == "teapot":
        m_ = 0.04 + 0.16 * k
        d.ellipse([x0 + m_ * w, y0 + (0.15 + 0.15 * k) * h, x1 - m_ * w, y1], fill=255)
    elif cls == "vase":
        neck = (0.08 + 0.05 * var + 0.06 * k) * w
        belly = 0.45 + 0.3 * k
        cx = (x0 + x1) / 2
        d.polygon([(cx - neck, y0), (cx + neck, y0), (cx + neck, y0 + 0.25 * h), (x1, y0 + belly * h),
                   (cx + 0.3 * w, y1), (cx - 0.3 * w, y1), (x0, y0 + belly * h), (cx - neck, y0 + 0.25 * h)], fill=255)
    elif cls == "plushie":
        cx = (x0 + x1) / 2
        hr = 0.24 + 0.12 * k  # head size
        d.ellipse([x0 + 0.05 * w, y0 + 0.42 * h, x1 - 0.05 * w, y1], fill=255)
        d.ellipse([cx - hr * w, y0 + 0.05 * h, cx + hr * w, y0 + 0.55 * h], fill=255)
        for ex in (cx - 0.28 * w, cx + 0.28 * w):
            er = 0.08 + 0.08 * k
            d.ellipse([ex - er * w, y0, ex + er * w, y0 + 0.2 * h], fill=255)
    elif cls == "robot":
        cx = (x0 + x1) / 2
        hw = 0.2 + 0.16 * k  # head width
        d.rectangle([cx - hw * w, y0 + 0.08 * h, cx + hw * w, y0 + 0.42 * h], fill=255)
        d.rectangle([x0 + (0.16 - 0.12 * k) * w, y0 + 0.45 * h, x1 - (0.16 - 0.12 * k) * w, y1], fill=255)
    elif cls in ("dog", "cat"):
        d.ellipse([x0, y0 + (0.32 + 0.16 * k) * h, x1 - 0.15 * w, y1 - 0.18 * h], fill=255)
        hx = x1 - 0.22 * w
        hr = 0.18 + 0.08 * k  # head size
        d.ellipse([hx - hr * w, y0 + 0.12 * h, hx + hr * w, y0 + 0.55 * h], fill=255)
        for lx in (x0 + 0.12 * w, x0 + 0.3 * w, x1 - 0.45 * w, x1 - 0.3 * w):
            d.rectangle([lx, y1 - 0.22 * h, lx + 0.08 * w, y1], fill=255)
        if cls == "cat":
            d.polygon([(hx - 0.2 * w, y0 + 0.22 * h), (hx - 0.16 * w, y0), (hx - 0.04 * w, y0 + 0.15 * h)], fill=255)
            d.polygon([(hx + 0.2 * w, y0 + 0.22 * h), (hx + 0.16 * w, y0), (hx + 0.04 * w, y0 + 0.15 * h)], fill=255)
            d.line([(x0 + 0.05 * w, y0 + 0.6 * h), (x0 - 0.05 * w, y0 + 0.15 * h)], fill=255, width=int(0.07 * w))
        else:
            d.line([(x0 + 0.05 * w, y0 + 0.6 * h), (x0 - 0.1 * w, y0 + 0.45 * h)], fill=255, width=int(0.09 * w))
    else:
        raise ValueError(f"unknown class {cls!r}")
    return m


def _details(d: ImageDraw.ImageDraw, scene: Scene, box, u: float) -> None:
    """Accent-coloured details that identify the class and the individual."""
    s = scene.subject
    acc, dark = s.accent_colour, (20, 20, 20)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    lw = max(1, int(1.2 * u))
    view, var = scene.view, s.variant
    if view == "back":
        # the back: an accent band, and only the class details seen from behind (as from the side)
        d.rectangle([x0 + 0.1 * w, y0 + 0.15 * h, x1 - 0.1 * w, y0 + 0.25 * h], fill=acc)
    if view == "top":
        y0 = y0 + 0.4 * h
        h = y1 - y0
        d.ellipse([cx - 0.15 * w, y0 + 0.3 * h, cx + 0.15 * w, y0 + 0.7 * h], fill=acc)
    side = view in ("side", "back")
    if s.cls == "backpack":
        py = y0 + (0.45 + 0.08 * var) * h
        d.rounded_rectangle([x0 + (0.5 if side else 0.18) * w, py, x1 - 0.18 * w, y1 - 0.08 * h], radius=0.1 * w,
                            fill=acc, outline=dark, width=max(1, int(0.5 * u)))
        d.arc([cx - 0.3 * w, y0 - 0.2 * h, cx + 0.3 * w, y0 + 0.2 * h], 180, 360, fill=acc, width=lw)
    elif s.cls in ("mug", "teapot"):
        hy = 0.25 + 0.1 * var
        d.ellipse([x1 - 0.2 * w, y0 + hy * h, x1 + 0.25 * w, y1 - 0.2 * h], outline=acc, width=int(1.6 * u))
        if s.cls == "teapot":
            d.polygon([(x0 + 0.15 * w, y0 + 0.55 * h), (x0 - 0.2 * w, y0 + 0.25 * h), (x0 + 0.15 * w, y0 + 0.75 * h)],
                      fill=acc)
            d.ellipse([cx - 0.2 * w, y0 + 0.15 * h, cx + 0.2 * w, y0 + 0.35 * h], fill=acc)
        else:
            d.rectangle([x0, y0, x1, y0 + 0.1 * h], fill=acc)
    elif s.cls == "bowl":
        d.ellipse([x0, y0 - 0.05 * h, x1, y0 + 0.2 * h], outline=acc, width=lw)
    elif s.cls == "can":
        d.rectangle([x0, y0, x1, y0 + 0.12 * h], fill=acc)
        d.rectangle([x0, y1 - 0.12 * h, x1, y1], fill=acc)
        if not side:
            d.ellipse([cx - 0.18 * w, y0 + 0.4 * h, cx + 0.18 * w, y0 + 0.65 * h], fill=acc, outline=dark)
    elif s.cls == "candle":
        d.line([(cx, y0 + 0.2 * h), (cx, y0 + 0.12 * h)], fill=dark, width=max(1, int(0.5 * u)))
        d.ellipse([cx - 0.1 * w, y0 - 0.1 * h, cx + 0.1 * w, y0 + 0.14 * h], fill=(250, 200, 40))
        d.ellipse([cx - 0.05 * w, y0 - 0.02 * h, cx + 0.05 * w, y0 + 0.12 * h], fill=(250, 120, 20))
        d.rectangle([x0 + 0.25 * w, y0 + (0.5 + 0.1 * var) * h, x1 - 0.25 * w, y0 + (0.62 + 0.1 * var) * h], fill=acc)
    elif s.cls == "clock":
        r = 0.32 * min(w, h)
        cy = (y0 + y1) / 2
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(245, 245, 240), outline=acc, width=lw)
        d.line([(cx, cy), (cx, cy - 0.8 * r)], fill=dark, width=lw)
        d.line([(cx, cy), (cx + 0.6 * r, cy + 0.2 * r * (var - 1))], fill=dark, width=lw)
    elif s.cls == "sneaker":
        d.rectangle([x0, y1 - 0.2 * h, x1, y1], fill=acc)
        for k in range(3):
            lx = x0 + (0.45 + 0.1 * k) * w
            d.line([(lx, y0 + 0.3 * h), (lx + 0.08 * w, y0 + 0.45 * h)], fill=(250, 250, 250), width=lw)
    elif s.cls == "vase":
        d.rectangle([cx - 0.25 * w, y0 + (0.55 + 0.05 * var) * h, cx + 0.25 * w, y0 + (0.68 + 0.05 * var) * h], fill=acc)
    elif s.cls == "plushie":
        d.ellipse([cx - 0.13 * w, y0 + 0.3 * h, cx + 0.13 * w, y0 + 0.48 * h], fill=acc)
        if not side:
            for ex in (cx - 0.12 * w, cx + 0.12 * w):
                d.ellipse([ex - 0.04 * w, y0 + 0.2 * h, ex + 0.04 * w, y0 + 0.28 * h], fill=dark)
        d.ellipse([cx - 0.2 * w, y0 + 0.6 * h, cx + 0.2 * w, y0 + 0.9 * h], fill=acc)
    elif s.cls == "robot":
        d.line([(cx, y0 + 0.08 * h), (cx, y0 - 0.05 * h)], fill=dark, width=lw)
        d.ellipse([cx - 0.05 * w, y0 - 0.1 * h, cx + 0.05 * w, y0], fill=acc)
        if not side:
            for ex in (cx - 0.14 * w, cx + 0.14 * w):
                d.rectangle([ex - 0.06 * w, y0 + 0.18 * h, ex + 0.06 * w, y0 + 0.28 * h], fill=acc)
        d.rectangle([cx - 0.18 * w, y0 + 0.55 * h, cx + 0.18 * w, y0 + (0.7 + 0.05 * var) * h], fill=acc)
    elif s.cls in ("dog", "cat"):
        hx = x1 - 0.22 * w
        if s.cls == "dog":
            for ex in (hx - 0.2 * w, hx + 0.14 * w):
                d.ellipse([ex - 0.05 * w, y0 + 0.15 * h, ex + 0.08 * w, y0 + 0.42 * h], fill=acc)
        d.ellipse([hx + 0.02 * w, y0 + 0.25 * h, hx + 0.08 * w, y0 + 0.32 * h], fill=dark)
        d.rectangle([x0 + 0.25 * w, y0 + 0.45 * h, x0 + (0.4 + 0.05 * var) * w, y1 - 0.2 * h], fill=acc)


def _accessories(d: ImageDraw.ImageDraw, scene: Scene, box, u: float) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    if scene.subject.cls in ("dog", "cat") and "cube" not in scene.edits and scene.view != "top":
        cx = x1 - 0.22 * w  # the head
    for a in scene.accessories:
        if a == "hat":
            d.rectangle([cx - 0.3 * w, y0 - 0.04 * h, cx + 0.3 * w, y0 + 0.04 * h], fill=HAT)
            d.rectangle([cx - 0.18 * w, y0 - 0.32 * h, cx + 0.18 * w, y0], fill=HAT)
            d.rectangle([cx - 0.18 * w, y0 - 0.1 * h, cx + 0.18 * w, y0 - 0.03 * h], fill=HAT_BAND)
        elif a == "glasses":
            gy, r = y0 + 0.3 * h, 0.11 * w
            for ex in (cx - 0.14 * w, cx + 0.14 * w):
                d.ellipse([ex - r, gy - r, ex + r, gy + r], outline=(10, 10, 10), width=max(1, int(1.1 * u)))
            d.line([(cx - 0.04 * w, gy), (cx + 0.04 * w, gy)], fill=(10, 10, 10), width=max(1, int(0.8 * u)))
        elif a == "scarf":
            sy = y0 + 0.5 * h
            d.rectangle([x0 + 0.05 * w, sy, x1 - 0.05 * w, sy + 0.12 * h], fill=SCARF)
            d.rectangle([cx + 0.05 * w, sy, cx + 0.18 * w, sy + 0.4 * h], fill=SCARF)
            d.line([(cx + 0.05 * w, sy + 0.25 * h), (cx + 0.18 * w, sy + 0.25 * h)], fill=SCARF_STRIPE,
                   width=max(1, int(0.6 * u)))


def _subject_layer(scene: Scene, S: int, rng: np.random.Generator) -> tuple[Image.Image, tuple]:
    """RGBA layer with the subject drawn at its jittered place; returns it and its box."""
    s = scene.subject
    u = S / 32.0
    scale = rng.uniform(0.92, 1.08)
    w = 0.44 * s.w * scale * (0.62 if scene.view == "side" else 1.0)
    h = 0.44 * s.h * scale
    cx = 0.5 + rng.uniform(-0.06, 0.06)
    bottom = 0.86 + rng.uniform(-0.03, 0.03)
    if scene.subject.cls in ("bowl", "sneaker"):
        h *= 0.6
    box = ((cx - w / 2) * S, (bottom - h) * S, (cx + w / 2) * S, bottom * S)
    body = s.body_colour
    for e in scene.edits:
        if e in ("red", "purple"):
            body = _c(e)
    accent = s.accent_colour
    if "wet" in scene.edits:
        body, accent = _shade(body, 0.72), _shade(accent, 0.72)
    layer = Image.new("RGBA", (S, S), (0, 0, 0, 0))
    mask = _body_mask(scene, box, S)
    fill = _pattern(S, body, accent, s, box, u)
    layer.paste(fill.convert("RGBA"), (0, 0), mask)
    # a dark outline so the silhouette reads on any background
    edge = mask.filter(ImageFilter.MaxFilter(3)).point(lambda v: 255 if v else 0)
    outline = ImageChops.subtract(edge, mask)
    layer.paste((max(0, body[0] - 90), max(0, body[1] - 90), max(0, body[2] - 90), 255), (0, 0), outline)
    d = ImageDraw.Draw(layer)
    _details(d, scene, box, u)
    _emblem(d, scene, mask, box, body, accent, u)
    if "shiny" in scene.edits:
        x0, y0, x1, y1 = box
        hl = Image.new("RGBA", (S, S), (0, 0, 0, 0))
        hd = ImageDraw.Draw(hl)
        hd.ellipse([x0 + 0.15 * (x1 - x0), y0 + 0.15 * (y1 - y0), x0 + 0.42 * (x1 - x0), y0 + 0.4 * (y1 - y0)],
                   fill=(255, 255, 255, 230))
        hd.ellipse([x1 - 0.3 * (x1 - x0), y1 - 0.35 * (y1 - y0), x1 - 0.18 * (x1 - x0), y1 - 0.2 * (y1 - y0)],
                   fill=(255, 255, 255, 200))
        layer.alpha_composite(Image.composite(hl, Image.new("RGBA", (S, S)), mask))
    if "wet" in scene.edits:
        x0, y0, x1, y1 = box
        for _ in range(7):
            x, y = rng.uniform(x0 - 2 * u, x1 + 2 * u), rng.uniform(y0 - 2 * u, y1)
            d.ellipse([x - 0.7 * u, y - u, x + 0.7 * u, y + u], fill=(150, 210, 255, 255))
    _accessories(d, scene, box, u)
    return layer, box


def _stylize(img: Image.Image, style: str, resolution: int) -> Image.Image:
    S = img.size[0]
    if style == "photo":
        return img
    if style == "watercolor":
        soft = img.filter(ImageFilter.GaussianBlur(S / 64))
        soft = ImageEnhance.Color(soft).enhance(0.7)
        return Image.blend(soft, Image.new("RGB", img.size, (250, 243, 225)), 0.35)
    if style == "sketch":
        g = ImageOps.grayscale(img).filter(ImageFilter.GaussianBlur(S / 128))
        edges = ImageOps.invert(g.filter(ImageFilter.FIND_EDGES).point(lambda v: min(255, v * 3)))
        return Image.merge("RGB", [edges] * 3)
    if style == "pixel":
        small = img.resize((max(4, resolution // 2),) * 2, Image.BOX)
        return small.resize(img.size, Image.NEAREST)
    if style == "popart":
        return ImageEnhance.Color(ImageOps.posterize(img, 2)).enhance(2.0)
    raise ValueError(f"unknown style {style!r}")


def render(scene: Scene, resolution: int = 32) -> np.ndarray:
    """Render a scene to a (resolution, resolution, 3) uint8 array, deterministically."""
    S = resolution * SUPERSAMPLE
    rng = np.random.default_rng(stable_seed("scene", scene.seed))
    bg = draw_context(scene.context, S, np.random.default_rng(stable_seed("bg", scene.context, scene.seed)))
    layer, box = _subject_layer(scene, S, rng)
    canvas = bg.convert("RGBA")
    if scene.context == "mirror":
        refl = layer.transpose(Image.FLIP_TOP_BOTTOM)
        shift = int(2 * box[3] - S)
        moved = Image.new("RGBA", (S, S), (0, 0, 0, 0))
        moved.paste(refl, (0, shift))
        a = moved.getchannel("A").point(lambda v: v * 45 // 100)
        moved.putalpha(a)
        canvas.alpha_composite(moved)
    canvas.alpha_composite(layer)
    if scene.context in ("water", "milk"):
        # the subject floats: the surface covers its lowest part
        d = ImageDraw.Draw(canvas)
        y = box[3] - 0.12 * (box[3] - box[1])
        colr = (40, 120, 190, 255) if scene.context == "water" else (245, 240, 225, 255)
        d.rectangle([0, y, S, S], fill=colr)
        d.line([(box[0] - S * 0.05, y), (box[2] + S * 0.05, y)], fill=(255, 255, 255, 255), width=int(S / 40))
    img = _stylize(canvas.convert("RGB"), scene.style, resolution)
    return np.asarray(img.resize((resolution, resolution), Image.BOX), dtype=np.uint8)


def grid(images: list[np.ndarray], cols: int, scale: int = 2, pad: int = 1) -> Image.Image:
    """Tile images into one PNG-ready grid (for artifacts)."""
    if not images:
        return Image.new("RGB", (8, 8), (255, 255, 255))
    r = images[0].shape[0]
    rows = (len(images) + cols - 1) // cols
    g = Image.new("RGB", (cols * (r + pad) + pad, rows * (r + pad) + pad), (255, 255, 255))
    for i, im in enumerate(images):
        g.paste(Image.fromarray(im), (pad + (i % cols) * (r + pad), pad + (i // cols) * (r + pad)))
    return g.resize((g.size[0] * scale, g.size[1] * scale), Image.NEAREST)


def labelled_grid(images: list[np.ndarray], cols: int, col_labels: list[str] = (), row_labels: list[str] = (),
                  scale: int = 2) -> Image.Image:
    """`grid` with a header row of column labels and a label column on the left, so a person
    reads what each tile is (PIL's built-in font; labels are cut to the tile width)."""
    g = grid(images, cols, scale=scale)
    if not col_labels and not row_labels:
        return g
    r = images[0].shape[0] if images else 8
    tile = (r + 1) * scale
    rows = (len(images) + cols - 1) // cols if images else 0
    head = 12 if col_labels else 0
    left = min(220, 6 * max((len(x) for x in row_labels), default=0) + 4) if row_labels else 0
    out = Image.new("RGB", (g.size[0] + left, g.size[1] + head), (255, 255, 255))
    out.paste(g, (left, head))
    d = ImageDraw.Draw(out)
    chars = max(1, tile // 6)
    for c, text in enumerate(col_labels[:cols]):
        d.text((left + scale + c * tile, 1), str(text)[:chars], fill=(0, 0, 0))
    for i, text in enumerate(row_labels[:rows]):
        d.text((2, head + scale + i * tile + tile // 2 - 5), str(text)[: max(1, left // 6)], fill=(0, 0, 0))
    return out
