"""`suti generate` through the real console script against the smoke world's trained
apprentice: bad input is one line on stderr and exit code 2 (never a traceback); every
image that can be converted is converted and works."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from suti.errors import UserError
from suti.imageio import (WORK_SIDE, b64_png, check_writable, decode_image_bytes, from_b64, output_paths, png_bytes,
                          prepare, read_image)
from test_apprentice_train import trained_world

SUTI = Path(sys.executable).with_name("suti")


@pytest.fixture(scope="session")
def trained(smoke, tmp_path_factory):
    return trained_world(smoke, tmp_path_factory)


def run_suti(trained, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(SUTI), "generate", *trained["overrides"], *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


# ---------------------------------------------------------------------------- image files of every kind


def _subject(h: int, w: int) -> np.ndarray:
    """A test picture: a red square in the middle of a light-blue field."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = (150, 200, 240)
    s = min(h, w) // 3
    img[h // 2 - s // 2:h // 2 + s // 2, w // 2 - s // 2:w // 2 + s // 2] = (220, 20, 20)
    return img


def convertible_files(d: Path) -> dict[str, Path]:
    d.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(_subject(64, 64))
    files = {}
    files["gray"] = d / "gray.png"
    rgb.convert("L").save(files["gray"])
    files["palette"] = d / "palette.png"
    pal = rgb.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(files["palette"], transparency=0)
    files["rgba"] = d / "rgba.png"
    rgba = rgb.convert("RGBA")
    a = np.asarray(rgba).copy()
    a[:8, :, 3] = 0  # a transparent band
    Image.fromarray(a, "RGBA").save(files["rgba"])
    files["gray16"] = d / "gray16.png"
    Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257)).save(files["gray16"])
    files["cmyk"] = d / "cmyk.jpg"
    rgb.convert("CMYK").save(files["cmyk"], quality=95)
    files["huge"] = d / "huge.jpg"
    Image.fromarray(_subject(3000, 4000)).save(files["huge"], quality=80)
    files["wide"] = d / "wide.png"
    Image.fromarray(_subject(40, 90)).save(files["wide"])
    return files


@pytest.fixture(scope="module")
def convertible(tmp_path_factory) -> dict[str, Path]:
    return convertible_files(tmp_path_factory.mktemp("convertible"))


# ---------------------------------------------------------------------------- conversions (in-process)


def test_every_convertible_mode_becomes_rgb(convertible):
    files = convertible
    for name, path in files.items():
        img = read_image(path)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert max(img.shape[:2]) <= WORK_SIDE, name
        sq = prepare(img, 32)
        assert sq.shape == (32, 32, 3), name
        assert sq[16, 16, 0] > sq[16, 16, 2] or name in ("gray", "gray16"), name  # the red square stays central
    assert read_image(files["huge"]).shape[:2] == (768, 1024)  # shrunk while decoding, aspect kept
    assert (read_image(files["rgba"])[:8] == 255).all()  # transparency composited on white
    g8, g16 = read_image(files["gray"]), read_image(files["gray16"])
    assert np.abs(g8.astype(int) - g16.astype(int)).max() <= 1  # 16-bit rescaled to 8 bits
    cmyk = read_image(files["cmyk"])
    assert np.abs(cmyk.astype(int) - _subject(64, 64).astype(int)).mean() < 12
    wide = read_image(files["wide"])
    assert wide.shape[:2] == (40, 90) and prepare(wide, 40)[20, 20].tolist() == [220, 20, 20]  # center crop


def test_exotic_modes_convert(tmp_path):
    for mode, arr in (("I", np.full((8, 8), 70000, np.int32)), ("F", np.full((8, 8), 0.5, np.float32))):
        p = tmp_path / f"{mode}.tif"
        Image.fromarray(arr, mode).save(p)
        img = read_image(p)
        assert img.shape == (8, 8, 3) and img.dtype == np.uint8
    bw = tmp_path / "bw.png"
    Image.new("1", (10, 6), 1).save(bw)
    assert (read_image(bw) == 255).all()
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (12, 12), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    assert read_image(gif)[0, 0].tolist()[0] > 200  # first frame
    assert from_b64(b64_png(_subject(20, 30))).shape == (20, 30, 3)
    assert from_b64("data:image/png;base64," + b64_png(_subject(5, 5))).shape == (5, 5, 3)


@pytest.mark.parametrize("data,needle", [(b"", "empty"), (b"hello, not an image", "not an image"),
                                         (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "cannot read")])
def test_bad_bytes_are_user_errors(tmp_path, data, needle):
    p = tmp_path / "bad.png"
    p.write_bytes(data)
    with pytest.raises(UserError, match=needle) as e:
        read_image(p)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError):
        from_b64("!!!not base64 at all!!!")


def test_output_paths_and_writability(tmp_path):
    assert output_paths(tmp_path / "a.png", 1) == [tmp_path / "a.png"]
    assert output_paths(tmp_path / "a.png", 3) == [tmp_path / f"a_{i}.png" for i in range(3)]
    assert output_paths(tmp_path / "a", 1) == [tmp_path / "a.png"]
    assert output_paths(tmp_path, 2) == [tmp_path / "generated_0.png", tmp_path / "generated_1.png"]
    with pytest.raises(UserError, match=".png"):
        output_paths(tmp_path / "a.jpg", 1)
    check_writable(tmp_path / "new" / "deeper" / "a.png")  # missing folders are created
    (tmp_path / "file").write_text("x")
    for bad in (tmp_path / "file" / "a.png", Path("/proc/suti-nope/a.png")):
        with pytest.raises(UserError, match="cannot write"):
            check_writable(bad)
    assert decode_image_bytes(png_bytes(_subject(3, 3))).shape == (3, 3, 3)


# ---------------------------------------------------------------------------- the console script


BAD_CASES = {  # case -> (arguments replacing / adding to a good call, what the one line says)
    "missing-file": (lambda d: {"--demo": [str(d / "nope.png")]}, "image not found"),
    "directory": (lambda d: {"--demo": [str(d)]}, "is a directory"),
    "corrupt": (lambda d: {"--demo": [str(_write(d / "corrupt.png", os.urandom(300)))]}, "not an image"),
    "truncated": (lambda d: {"--demo": [str(_write(d / "trunc.png", png_bytes(_subject(16, 16))[:60]))]}, "cannot read"),
    "text-file": (lambda d: {"--demo": [str(_write(d / "notes.txt", b"a shopping list"))]}, "not an image"),
    "empty-prompt": (lambda d: {"--prompt": [""]}, "--prompt is empty"),
    "blank-prompt": (lambda d: {"--prompt": ["   \t "]}, "--prompt is empty"),
    "unwritable-out": (lambda d: {"--out": ["/proc/suti-nope/out.png"]}, "cannot write"),
    "out-under-a-file": (lambda d: {"--out": [str(_write(d / "afile", b"x") / "out.png")]}, "cannot write"),
    "bad-number": (lambda d: {"--num-images": ["two"]}, "--num-images must be a whole number"),
    "bad-demo-guidance": (lambda d: {"--demo-guidance": ["-3"]}, "--demo-guidance must be between 0 and 100"),
    "unknown-model": (lambda d: {"--model": ["no-such-run"]}, "no apprentice model"),
}


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_input_is_one_line_and_exit_2(trained, convertible, tmp_path, case):
    make, needle = BAD_CASES[case]
    args = {"--demo": [str(convertible["gray"])], "--prompt": ["a mug"], "--out": [str(tmp_path / "out" / "x.png")]}
    for flag, values in make(tmp_path).items():
        args[flag] = args["--demo"] + values if flag == "--demo" else values  # a bad demo beside a good one
    proc = run_suti(trained, *[a for flag, values in args.items() for v in values for a in (flag, v)])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("suti: error: ") and needle in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_convertible_demos_generate_pngs(trained, convertible, tmp_path):
    files = convertible
    out = tmp_path / "made" / "sub" / "gen.png"  # missing folders are created
    argv = [a for p in files.values() for a in ("--demo", str(p))]
    proc = run_suti(trained, *argv, "--demo-text", "Oxlable teddy bear", "--prompt", "Oxlable teddy bear in the snow",
                    "--out", str(out), "--num-images", "2", "--steps", "2", "--seed", "3", "--scheduler", "ddim",
                    "--demo-guidance", "3", "--grid")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # several images: gen_0.png, gen_1.png, and gen.png a grid of them (what --help says); --grid adds gen_grid.png
    expected = [out.with_name("gen_0.png"), out.with_name("gen_1.png"), out, out.with_name("gen_grid.png")]
    assert [Path(x) for x in proc.stdout.split()] == expected
    images = []
    for p in expected[:2]:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
            images.append(np.asarray(im))
    with Image.open(out) as sheet:  # the two images side by side (scaled 2x, under a label band)
        s = np.asarray(sheet.convert("RGB"))
        assert sheet.size[0] > 2 * 64 and sheet.size[1] < sheet.size[0]
        assert (s[-4 - 64:-4:2, 4:4 + 64:2] == images[0]).all()  # the first image, 2x, bottom-left
    with Image.open(expected[3]) as g:
        assert g.size[0] > g.size[1]  # one row: 7 demos | 2 generated


# ---------------------------------------------------------------------------- Dream-SuTI through the CLI


def run_cmd(trained, command: str, *args: str, overrides: tuple = (), timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # (overrides go before the flags: argparse does not intermix)
    return subprocess.run([str(SUTI), command, *trained["overrides"], *overrides, *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def test_dreamsuti_bad_subject_is_one_line(trained, convertible, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes(convertible["wide"].read_bytes())
    for args, needle in ((["--subject-dir", str(one)], "at least 2 images"),
                         (["--subject-dir", str(tmp_path / "nope")], "subject folder not found"),
                         (["--demo", str(convertible["gray"]), "--demo", str(tmp_path)], "is a directory")):
        proc = run_cmd(trained, "dreamsuti", *args)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr[-2000:]


@pytest.mark.slow
def test_dreamsuti_then_generate_with_one_demo(trained, tmp_path):
    subject = trained["store"].local_path("world/heldout/h001")
    proc = run_cmd(trained, "dreamsuti", "--subject-dir", str(subject), "--subject-text", "a mug",
                   overrides=("apprentice.dreamsuti_steps=3", "apprentice.dreamsuti_batch_size=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "mug.png"
    proc = run_suti(trained, "--model", "dreamsuti-h001", "--demo", str(subject / "demo_0.png"), "--prompt",
                    "a mug in the snow", "--out", str(out), "--num-images", "1", "--steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(out)]  # one image: exactly --out
    with Image.open(out) as im:
        assert im.size == (32, 32)
