"""Images in and out of the apprentice: user files, base64 PNGs and output files.

Whatever can work is converted: grayscale (L, 1), palette (P, with or without
transparency), RGBA / LA (composited on white), 16-bit and 32-bit integer or float
grayscale (I;16, I, F: rescaled to 8 bits), CMYK / YCbCr / LAB, EXIF-rotated photos,
animated files (first frame), huge images (shrunk to a size cap while decoding) and
non-square ones (center-cropped to a square, then resized to the backbone's resolution).

What cannot work (a missing path, a directory, a corrupt or non-image file, an image
bigger than :data:`MAX_PIXELS`) raises :class:`suti.cli.UserError` with one line that
names the file; the CLI prints it and exits with code 2.

Output files (``suti generate --out PATH``): one image -> ``PATH`` itself; N > 1 images ->
``PATH`` with ``_0``, ``_1``, ... before the suffix (``out.png`` -> ``out_0.png``,
``out_1.png``); ``--grid`` also writes ``<stem>_grid.png`` (demos | generated). An
existing directory as ``PATH`` gets ``generated_0.png``, ... inside it.
"""
from __future__ import annotations

import base64
import io
import os
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from suti.errors import UserError

MAX_PIXELS = 100_000_000  # larger images are refused (decompression bombs); 4000x3000 is 12 MP
WORK_SIDE = 1024  # huge images are shrunk to this longest side while decoding (then cropped + resized)

__all__ = ["MAX_PIXELS", "WORK_SIDE", "read_image", "decode_image_bytes", "to_rgb", "square", "prepare",
           "png_bytes", "b64_png", "from_b64", "output_paths", "grid_path", "check_writable", "save_images",
           "save_grid", "grid_rows"]


# ---------------------------------------------------------------------------- decoding


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB; transparency composited on white, deep images rescaled."""
    mode = img.mode
    if mode in ("RGB",):
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img)
        if mode.startswith("I;16"):
            arr8 = (arr.astype(np.uint32) >> 8).astype(np.uint8)
        else:
            a = arr.astype(np.float64)
            hi = float(np.nanmax(a)) if a.size else 0.0
            lo = float(np.nanmin(a)) if a.size else 0.0
            if mode == "F" and 0.0 <= lo and hi <= 1.0:
                a = a * 255.0  # float images in [0, 1]
            elif hi > 255.0:
                a = a / 257.0 if lo >= 0 and hi <= 65535 else (a - lo) / max(hi - lo, 1e-12) * 255.0
            arr8 = np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr8, "L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img).convert("RGB")
    if mode == "L" and "transparency" in img.info:
        return to_rgb(img.convert("RGBA"))
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV, RGBX


def _shrink(img: Image.Image, side: int) -> Image.Image:
    if max(img.size) <= side:
        return img
    img = img.copy()
    img.thumbnail((side, side), Image.LANCZOS, reducing_gap=3.0)
    return img


def decode_image_bytes(data: bytes, name: str = "image", max_side: int = WORK_SIDE) -> np.ndarray:
    """Bytes of any image file -> uint8 RGB (H, W, 3), longest side <= ``max_side``."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise UserError(f"image {name} is too large ({w}x{h}, more than {MAX_PIXELS:,} pixels)")
            if img.format == "JPEG":
                img.draft("RGB", (max_side, max_side))  # decode huge JPEGs at a reduced scale
            img.load()
            img = ImageOps.exif_transpose(img) or img
            img = _shrink(to_rgb(img), max_side)
    except UserError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise UserError(f"image {name} is too large: {' '.join(str(e).split())}") from None
    except UnidentifiedImageError:
        raise UserError(f"cannot read {name}: not an image file (or an unsupported format)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise UserError(f"cannot read image {name}: corrupt or truncated ({' '.join(str(e).split())})") from None
    arr = np.asarray(img, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
        raise UserError(f"cannot read image {name}: unexpected shape {arr.shape}")
    return np.ascontiguousarray(arr)


def read_image(path: str | os.PathLike, max_side: int = WORK_SIDE) -> np.ndarray:
    """A user's image file -> uint8 RGB (H, W, 3). One-line :class:`UserError` when it can't be."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"image not found: {p}")
    if p.is_dir():
        raise UserError(f"{p} is a directory, not an image file")
    if not p.is_file():
        raise UserError(f"{p} is not a regular file")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"cannot read {p}: {e.strerror or e}") from None
    if not data:
        raise UserError(f"cannot read {p}: the file is empty")
    return decode_image_bytes(data, str(p), max_side)


def square(img: np.ndarray) -> np.ndarray:
    """Center crop to the largest square."""
    h, w = img.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return img[top:top + s, left:left + s]


def prepare(img: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 RGB of any size -> center-cropped square of ``resolution`` pixels."""
    sq = square(np.asarray(img, dtype=np.uint8))
    if sq.shape[0] == resolution:
        return np.ascontiguousarray(sq)
    pil = Image.fromarray(np.ascontiguousarray(sq))
    return np.asarray(pil.resize((resolution, resolution), Image.LANCZOS, reducing_gap=3.0), dtype=np.uint8)


# ---------------------------------------------------------------------------- encoding


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def b64_png(img: np.ndarray) -> str:
    """uint8 (H, W, 3) -> base64 PNG string (the pyfunc's image wire format)."""
    return base64.b64encode(png_bytes(img)).decode("ascii")


def from_b64(s: str, name: str = "base64 image") -> np.ndarray:
    """Base64 (optionally a ``data:image/...;base64,`` URL) of any image file -> uint8 RGB."""
    if not isinstance(s, str) or not s.strip():
        raise UserError(f"{name}: expected a base64-encoded image string")
    if s.startswith("data:") and "," in s:
        s = s.split(",", 1)[1]
    try:
        data = base64.b64decode(s, validate=False)
    except (ValueError, TypeError) as e:
        raise UserError(f"{name}: not valid base64 ({e})") from None
    return decode_image_bytes(data, name)


# ---------------------------------------------------------------------------- output files


def output_paths(out: str | os.PathLike, n: int) -> list[Path]:
    """Where ``n`` generated images go for ``--out`` (see the module docstring)."""
    p = Path(out).expanduser()
    if p.is_dir():
        return [p / f"generated_{i}.png" for i in range(n)]
    if p.suffix.lower() != ".png":
        if p.suffix:
            raise UserError(f"--out must be a .png path (outputs are PNG files), got {p}")
        p = p.with_suffix(".png")
    if n == 1:
        return [p]
    return [p.with_name(f"{p.stem}_{i}{p.suffix}") for i in range(n)]


def grid_path(out: str | os.PathLike) -> Path:
    p = Path(out).expanduser()
    if p.is_dir():
        return p / "generated_grid.png"
    return p.with_name(f"{p.with_suffix('.png').stem}_grid.png")


def check_writable(out: str | os.PathLike) -> None:
    """Fail early (one line) when ``--out`` cannot be written: before any model is loaded."""
    if out is None or not str(out).strip():
        raise UserError("--out is required: a .png path for the generated images")
    p = Path(out).expanduser()
    if p.is_dir():
        parent = p
    else:
        output_paths(p, 1)  # suffix check
        parent = p.parent if str(p.parent) else Path(".")
        if p.exists() and not p.is_file():
            raise UserError(f"cannot write {p}: it exists and is not a regular file")
    anc = parent
    while not anc.exists():
        anc = anc.parent
    if not anc.is_dir():
        raise UserError(f"cannot write {p}: {anc} is not a directory")
    if anc == parent and not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {p}: no write permission in {parent}")
    if anc != parent and not os.access(anc, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {p}: cannot create {parent} (no write permission in {anc})")
    # A real probe: permissions (root, read-only mounts, /proc) are only known by trying.
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".suti-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"cannot write {p}: {e.strerror or e}") from None


def save_images(images: Sequence[np.ndarray], out: str | os.PathLike) -> list[Path]:
    """Write PNGs for ``--out`` (atomically each); returns the paths."""
    paths = output_paths(out, len(images))
    for img, path in zip(images, paths):
        _write(path, png_bytes(img))
    return paths


def save_grid(rows, size: int, path: str | os.PathLike) -> Path:
    """Write :func:`grid_rows` as a PNG at ``path``; returns it."""
    buf = io.BytesIO()
    grid_rows(rows, size).save(buf, format="PNG")
    _write(Path(path), buf.getvalue())
    return Path(path)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise UserError(f"cannot write {path}: {e.strerror or e}") from None


def grid_rows(rows: Sequence[tuple[Sequence[np.ndarray], Sequence[np.ndarray]]], size: int,
              scale: int = 2, pad: int = 2, labels: bool = True) -> Image.Image:
    """One row per request: its demos, a gap, then its generated images (white background).
    ``labels``: a header band names the columns (``demo 1`` .., ``image 1`` ..)."""
    rows = list(rows)
    n_left = max((len(d) for d, _ in rows), default=0)
    n_right = max((len(g) for _, g in rows), default=0)
    cols = n_left + n_right
    gap = size // 2 if n_left else 0
    width = pad + cols * (size + pad) + gap
    height = pad + max(1, len(rows)) * (size + pad)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    for r, (demos, gens) in enumerate(rows):
        y = pad + r * (size + pad)
        for i, im in enumerate(demos):
            canvas.paste(Image.fromarray(prepare(im, size)), (pad + i * (size + pad), y))
        for j, im in enumerate(gens):
            canvas.paste(Image.fromarray(prepare(im, size)), (pad + (n_left + j) * (size + pad) + gap, y))
    if scale != 1:
        canvas = canvas.resize((width * scale, height * scale), Image.NEAREST)
    if not labels or not cols:
        return canvas
    from PIL import ImageDraw

    band = 14
    out = Image.new("RGB", (canvas.width, canvas.height + band), (255, 255, 255))
    out.paste(canvas, (0, band))
    draw = ImageDraw.Draw(out)
    names = [f"demo {i + 1}" for i in range(n_left)] + [f"image {j + 1}" for j in range(n_right)]
    for c, name in enumerate(names):
        x0 = (pad + c * (size + pad) + (gap if c >= n_left else 0)) * scale
        w = draw.textlength(name)
        draw.text((x0 + max(0, (size * scale - w) / 2), 2), name, fill=(40, 40, 40))
    return out
