"""Does the apprentice learn to read its demonstrations when only they carry the subject?

A G where every subject has the same prompt ("a ball on the beach") and differs only in
its colour (a blob of a random hue at a random place, as the world v2's continuous body
colours): the text cannot say which subject, so a model that lowers its loss must copy from
the demos. Train the apprentice on a workdir's foundation with each recipe, then render
subjects it never saw, once with their own demos and once with another subject's demos,
and print JSON per recipe: how much closer the render's colour is to its own subject's
(`own_dist` vs `swap_dist`, mean RGB distance of the foreground to the subject colour; the
`colour_gain` = swap - own, > 0 when the demos are read), and how different the two
renders are (`own_vs_swap_pixels`).

    .venv/bin/python bench/reads_demos.py --workdir /tmp/w2/work --recipe steps=300 \\
        --recipe steps=300,train_base=true --recipe steps=300,demo_sites=all

Each recipe is a comma-separated list of `apprentice` overrides. The workdir's store is only
read (its world and foundation); G and the models go to a temporary store.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PROMPT = "a ball on the beach"


def blob(rng, colour, size: int) -> np.ndarray:
    """A disc of `colour` on a light background (a subject whose only identity is its colour)."""
    img = np.full((size, size, 3), 235, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.integers(size // 4, size - size // 4, 2)
    r = rng.integers(size // 6, size // 4 + 1)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    return img


def colours(rng, n: int) -> np.ndarray:
    """n saturated colours of random hue (continuous: no colour word names them exactly)."""
    import colorsys

    return np.array([[int(255 * c) for c in colorsys.hsv_to_rgb(rng.random(), 0.6 + 0.4 * rng.random(),
                                                                   0.55 + 0.4 * rng.random())] for _ in range(n)])


def write_G(store, rng, n_subjects: int, images: int, size: int, prefix: str) -> list[dict]:
    from suti.imageio import png_bytes

    rows, subjects = [], []
    for s, colour in enumerate(colours(rng, n_subjects)):
        keys = []
        for i in range(images):
            key = f"{prefix}/s{s}/{i}.png"
            store.put_bytes(key, png_bytes(blob(rng, tuple(int(c) for c in colour), size)))
            keys.append(key)
        subjects.append({"colour": colour.tolist(), "keys": keys})
        for t in range(images):  # each image once the target, the others its demos
            demos = [k for j, k in enumerate(keys) if j != t]
            rows.append({"sample_key": keys[t], "cluster_id": f"{prefix}-s{s}", "prompt": PROMPT, "delta": 0.1,
                         "demo_keys": demos, "demo_texts": ["a ball"] * len(demos), "description": "ball"})
    return rows, subjects


def foreground_colour(img: np.ndarray) -> np.ndarray:
    """Mean RGB of the pixels that are not background-light (the whole image when none)."""
    px = img.reshape(-1, 3).astype(float)
    fg = px[px.mean(1) < 200]
    return (fg if len(fg) >= 4 else px).mean(0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a workdir with a world and foundation models (read only)")
    ap.add_argument("--recipe", action="append", default=[], help="apprentice overrides, e.g. steps=300,lr=1e-3")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--subjects", type=int, default=24, help="training subjects in G")
    ap.add_argument("--heldout", type=int, default=8, help="unseen subjects rendered")
    ap.add_argument("--images", type=int, default=4, help="images per subject (target + demos)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import shutil

    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    from suti.config import compose
    from suti.store import open_store
    from suti.tasks import apprentice as A

    out = []
    for recipe in args.recipe or ["steps=300"]:
        ov = [f"apprentice.{kv}" for kv in recipe.split(",") if kv]
        with tempfile.TemporaryDirectory(prefix="reads-demos-") as tmp:
            src = compose([f"profile={args.profile}", f"workdir={args.workdir}"])
            src_root = Path(str(src.storage.uri).removeprefix("file://"))
            for part in ("world/manifest.json", "foundation"):
                (Path(tmp) / "store" / part).parent.mkdir(parents=True, exist_ok=True)
                (shutil.copytree if (src_root / part).is_dir() else shutil.copy)(src_root / part, Path(tmp) / "store" / part)
            cfg = compose([f"profile={args.profile}", f"workdir={tmp}", "progress=false", "apprentice.register=false",
                           "apprentice.grid_rows=1", f"torch_threads={args.threads}", *ov])
            store = open_store(str(cfg.storage.uri))
            R = int(cfg.world.resolution)
            rng = np.random.default_rng(args.seed)
            rows, _ = write_G(store, rng, args.subjects, args.images, R, "train")
            _, held = write_G(store, rng, args.heldout, args.images, R, "held")
            t0 = time.time()
            rec = A.train_apprentice(cfg, store, rows, "reads-demos")
            seconds = time.time() - t0
            app = A.load_apprentice("reads-demos", cfg, store, device="cpu")
            def read(key):
                return np.asarray(Image.open(store.local_path(key)).convert("RGB"))

            own_d, swap_d, diff = [], [], []
            k = int(cfg.apprentice.demos)
            for i, s in enumerate(held):
                other = held[(i + 1) % len(held)]
                own_demos = [read(x) for x in s["keys"][:k]]
                swap_demos = [read(x) for x in other["keys"][:k]]
                kw = dict(num_images=2, seed=100 + i)
                own = app.generate(own_demos, ["a ball"] * k, PROMPT, **kw)
                swap = app.generate(swap_demos, ["a ball"] * k, PROMPT, **kw)
                c = np.asarray(s["colour"], float)
                own_d += [float(np.linalg.norm(foreground_colour(x) - c)) for x in own]
                swap_d += [float(np.linalg.norm(foreground_colour(x) - c)) for x in swap]
                diff += [float(np.abs(a.astype(float) - b.astype(float)).mean()) for a, b in zip(own, swap)]
            res = {"recipe": recipe, "steps": rec["steps"], "train_seconds": round(seconds, 1),
                   "final_loss": rec.get("loss"), "gates": rec.get("gates"),
                   "own_dist": round(float(np.mean(own_d)), 2), "swap_dist": round(float(np.mean(swap_d)), 2),
                   "colour_gain": round(float(np.mean(swap_d) - np.mean(own_d)), 2),
                   "own_vs_swap_pixels": round(float(np.mean(diff)), 2), "heldout_subjects": len(held)}
            print(json.dumps(res), file=sys.stderr)
            out.append(res)
    print(json.dumps({"benchmark": "reads_demos", "workdir": args.workdir, "profile": args.profile,
                      "subjects": args.subjects, "results": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
