"""Build the synthetic web (WebLI's stand-in), the held-out evaluation subjects
(DreamBench's stand-in) and the foundation models' pre-training renders.

Store layout under the `world/` prefix:
  pages.jsonl                 url + [{key, alt}] per page: all a pipeline stage may read
  web/<page>/<k>.png          page images
  heldout/index.json          held-out subject ids, class words and split (val | test)
  heldout/<hid>/demo_<k>.png  demonstration images of each held-out subject
  pretrain/images.npy         foundation pre-training renders (N, R, R, 3) uint8
  pretrain/scenes.jsonl       their scenes (the pre-training corpus's own captions come from these)
  truth/labels.jsonl          ground truth of every page image   (evaluation only)
  truth/subjects.jsonl        every page subject                  (evaluation only)
  truth/heldout.jsonl         held-out subject identities         (evaluation only)
  examples/*.png              grids a person can look at
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

from suti.world import vocab as V
from suti.world.render import grid, render
from suti.world.scene import (Scene, SceneMix, Subject, alt_text, make_subject, random_scene, scene_from_dict,
                              stable_seed)

log = logging.getLogger("suti.world")

# World v2: continuous colours, pattern geometry, emblems, silhouettes (words name a subject
# only coarsely). Bumping it rebuilds every stored world and everything trained on one.
WORLD_VERSION = 2
_RENDERER_FILES = ("vocab.py", "scene.py", "render.py")  # what decides pixels and words


def renderer_version() -> str:
    """The world's code version: WORLD_VERSION and a digest of the renderer's source, so an
    edited renderer never silently reuses a world (or models) rendered by the old one."""
    from importlib import resources

    h = hashlib.sha256(f"world-v{WORLD_VERSION}".encode())
    pkg = resources.files("suti.world")
    for name in _RENDERER_FILES:
        h.update(name.encode() + b"\0" + (pkg / name).read_bytes())
    return f"v{WORLD_VERSION}-{h.hexdigest()[:12]}"


@dataclass
class WorldConfig:
    seed: int = 0  # every render and page follows from it
    resolution: int = 32  # pixels per side (32 default, 64 works)
    page_subjects: int = 1500  # subjects with a shop page (the mining corpus)
    heldout_subjects: int = 30  # evaluation subjects, never on a page (DreamBench has 30)
    val_subjects: int = 10  # of those, the validation split (sweeps, tuning); the rest is `test`
    demos_per_heldout: int = 5  # demonstration images per held-out subject
    mixed_pages: int = 150  # noise: pages whose images show different subjects
    duplicate_pages: int = 100  # noise: one image repeated with tiny changes
    small_pages: int = 200  # noise: 1-2 images
    p_small_subject_page: float = 0.12  # a real subject's page with fewer than 3 images
    pretrain_subjects: int = 3000  # identities in the foundation pre-training renders
    pretrain_images: int = 30000  # foundation pre-training renders


def world_config(cfg) -> WorldConfig:
    """The WorldConfig of a composed config's `world` group."""
    from omegaconf import OmegaConf

    return WorldConfig(**OmegaConf.to_container(cfg.world, resolve=True))


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def rng_for(*parts) -> np.random.Generator:
    return np.random.default_rng(stable_seed(*parts))


def heldout_subjects(cfg: WorldConfig) -> list[Subject]:
    """Held-out identities: classes cycled so every class is evaluated."""
    rng = rng_for("heldout", cfg.seed)
    return [make_subject(rng, f"h{i:03d}", V.CLASS_KEYS[i % len(V.CLASS_KEYS)]) for i in range(cfg.heldout_subjects)]


def heldout_split(cfg: WorldConfig) -> dict[str, str]:
    """Held-out subject id -> "val" | "test": every k-th subject is validation, so both
    splits cycle through the classes; disjoint, and neither ever appears on a page."""
    n = cfg.heldout_subjects
    v = max(0, min(cfg.val_subjects, n - 1))  # test is never empty
    step = max(1, n // v) if v else 0
    val = {i for i in range(n) if v and i % step == step - 1}
    val = set(sorted(val)[:v])
    return {f"h{i:03d}": ("val" if i in val else "test") for i in range(n)}


def page_subjects(cfg: WorldConfig) -> list[Subject]:
    rng = rng_for("pages", cfg.seed)
    return [make_subject(rng, f"s{i:05d}") for i in range(cfg.page_subjects)]


def pretrain_scenes(cfg: WorldConfig) -> list[Scene]:
    """Scenes of the foundation models' pre-training corpus: their own identities, every
    factor represented, so the base model knows classes, colours and contexts but no brand."""
    rng = rng_for("pretrain", cfg.seed)
    subjects = [make_subject(rng, f"p{i:05d}") for i in range(cfg.pretrain_subjects)]
    mix = SceneMix(p_studio=0.15, p_view_front=0.6, p_edit=0.15, p_accessory=0.15, p_style=0.15)
    return [random_scene(rng, subjects[int(rng.integers(len(subjects)))], mix) for _ in range(cfg.pretrain_images)]


def demo_scene(subject: Subject, k: int, seed: int) -> Scene:
    """The k-th demonstration of a held-out subject: plain, product-photo contexts."""
    ctx = ["studio", "wooden_floor", "white_rug", "studio", "pink_fabric", "cobblestone"][k % 6]
    view = ["front", "front", "side", "front", "front", "back"][k % 6]
    return Scene(subject, ctx, view, (), (), "photo", stable_seed("demo", subject.id, k, seed))


def _web_pages(cfg: WorldConfig, subjects: list[Subject]):
    """Yield (url, kind, [scene]) for every page, deterministic in cfg.seed."""
    rng = rng_for("web", cfg.seed)
    shop_mix = SceneMix(p_studio=0.35, p_view_front=0.6, p_edit=0.03, p_accessory=0.04, p_style=0.04)
    for s in subjects:
        n = int(rng.integers(1, 3)) if rng.random() < cfg.p_small_subject_page else int(rng.integers(3, 11))
        url = f"https://{s.brand.lower()}.shop/products/{s.word.replace(' ', '-')}-{s.id}"
        yield url, "subject", [random_scene(rng, s, shop_mix) for _ in range(n)]
    for i in range(cfg.mixed_pages):
        n = int(rng.integers(3, 9))
        if rng.random() < 0.5:  # a category page: one class, different subjects
            cls = str(rng.choice(V.CLASS_KEYS))
            pool = [s for s in subjects if s.cls == cls] or subjects
        else:
            pool = subjects
        picks = rng.choice(len(pool), size=min(n, len(pool)), replace=False)
        yield (f"https://catalog{i}.example/browse/page-{i}", "mixed",
               [random_scene(rng, pool[int(j)], shop_mix) for j in picks])
    for i in range(cfg.duplicate_pages):
        s = subjects[int(rng.integers(len(subjects)))]
        sc = random_scene(rng, s, shop_mix)
        yield f"https://img-mirror{i}.example/{s.brand.lower()}", "duplicate", [sc] * int(rng.integers(3, 8))
    for i in range(cfg.small_pages):
        n = int(rng.integers(1, 3))
        yield (f"https://blog{i}.example/post/{i}", "small",
               [random_scene(rng, subjects[int(rng.integers(len(subjects)))], shop_mix) for _ in range(n)])


def _near_duplicate(img: np.ndarray, seed: int) -> np.ndarray:
    noise = rng_for("dup", seed).integers(-6, 7, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def build_world(cfg: WorldConfig, store, progress=None) -> dict:
    """Render the whole world into `store` under `world/`; returns the report dict.

    `progress(done, total, what)` is called now and then for long loops.
    """
    t0 = time.time()
    progress = progress or (lambda *a: None)
    R = cfg.resolution
    subjects = page_subjects(cfg)
    held = heldout_subjects(cfg)
    pages, labels, digest = [], [], hashlib.sha256()
    page_list = list(_web_pages(cfg, subjects))
    total = sum(len(sc) for _, _, sc in page_list)
    done = 0
    for pi, (url, kind, scenes) in enumerate(page_list):
        pid = f"p{pi:05d}"
        prng = rng_for("alt", cfg.seed, pi)
        entries = []
        for k, sc in enumerate(scenes):
            img = render(sc, R)
            if kind == "duplicate" and k > 0:
                img = _near_duplicate(img, stable_seed(pi, k))
            data = png_bytes(img)
            digest.update(data)
            key = f"web/{pid}/{k}.png"
            store.put_bytes(f"world/{key}", data)
            entries.append({"key": key, "alt": alt_text(sc, prng)})
            lab = sc.labels()
            lab.update(key=key, page=pid, kind=kind, near_duplicate=kind == "duplicate" and k > 0)
            labels.append(lab)
            done += 1
            if done % 2000 == 0:
                progress(done, total, "page images")
        pages.append({"page": pid, "url": url, "images": entries})
    store.put_bytes("world/pages.jsonl", "\n".join(json.dumps(p) for p in pages).encode())
    store.put_bytes("world/truth/labels.jsonl", "\n".join(json.dumps(x) for x in labels).encode())
    store.put_bytes("world/truth/subjects.jsonl", "\n".join(json.dumps(asdict(s)) for s in subjects).encode())
    store.put_bytes("world/truth/heldout.jsonl", "\n".join(json.dumps(asdict(s)) for s in held).encode())

    demos = {}
    for s in held:
        for k in range(cfg.demos_per_heldout):
            img = render(demo_scene(s, k, cfg.seed), R)
            data = png_bytes(img)
            digest.update(data)
            store.put_bytes(f"world/heldout/{s.id}/demo_{k}.png", data)
            demos.setdefault(s.id, []).append(img)
    split = heldout_split(cfg)
    store.put_json("world/heldout/index.json",
                   {"subjects": [{"id": s.id, "class": s.word, "live": V.CLASSES[s.cls][1], "split": split[s.id],
                                  "demos": [f"heldout/{s.id}/demo_{k}.png" for k in range(cfg.demos_per_heldout)]}
                                 for s in held]})

    scenes = pretrain_scenes(cfg)
    arr = np.zeros((len(scenes), R, R, 3), np.uint8)
    for i, sc in enumerate(scenes):
        arr[i] = render(sc, R)
        if (i + 1) % 5000 == 0:
            progress(i + 1, len(scenes), "pre-training renders")
    digest.update(arr.tobytes())
    store.put_array("world/pretrain/images.npy", arr)
    store.put_bytes("world/pretrain/scenes.jsonl",
                    "\n".join(json.dumps({**sc.labels(), "subject": asdict(sc.subject)}) for sc in scenes).encode())

    _write_examples(store, pages, labels, held, demos, R)
    heldout_ids = {s.id for s in held}
    heldout_on_pages = sum(1 for lab in labels if lab["subject_id"] in heldout_ids)
    report = {
        "world_version": WORLD_VERSION, "renderer_version": renderer_version(),
        "splits": {k: sum(1 for v in split.values() if v == k) for k in ("val", "test")},
        "same_caption_groups": _same_caption_groups(subjects, 2),
        "seed": cfg.seed, "resolution": R, "subjects": len(subjects), "heldout_subjects": len(held),
        "pages": len(pages), "images": len(labels),
        "pages_by_kind": {k: sum(1 for _, kk, _ in page_list if kk == k) for k in ("subject", "mixed", "duplicate", "small")},
        "pretrain_images": len(scenes), "classes": len(V.CLASSES), "contexts": len(V.CONTEXTS),
        "styles": len(V.STYLES), "sha256": digest.hexdigest(),
        "deterministic": rerender_matches(store, labels, cfg, n=100),
        "heldout_on_pages": heldout_on_pages, "seconds": round(time.time() - t0, 2),
    }
    store.put_json("world/manifest.json", {"config": asdict(cfg), "renderer_version": report["renderer_version"],
                                           "report": report})
    return report


def rerender_matches(store, labels: list[dict], cfg: WorldConfig, n: int = 100) -> bool:
    """Render a sample of stored page images again from their scenes: same bytes?"""
    rng = rng_for("recheck", cfg.seed)
    clean = [lab for lab in labels if not lab["near_duplicate"]]
    for j in rng.choice(len(clean), size=min(n, len(clean)), replace=False):
        lab = clean[int(j)]
        if png_bytes(render(scene_from_dict(lab), cfg.resolution)) != store.get_bytes(f"world/{lab['key']}"):
            return False
    return True


def _write_examples(store, pages, labels, held, demos, R) -> None:
    by_key = {lab["key"]: lab for lab in labels}

    def load(key):
        return np.asarray(Image.open(io.BytesIO(store.get_bytes(f"world/{key}"))).convert("RGB"))

    for kind in ("subject", "mixed", "duplicate"):
        rows = [p for p in pages if by_key[p["images"][0]["key"]]["kind"] == kind][:6]
        ims = []
        for p in rows:
            row = [load(e["key"]) for e in p["images"][:8]]
            ims += row + [np.full((R, R, 3), 255, np.uint8)] * (8 - len(row))
        store.put_bytes(f"world/examples/pages_{kind}.png", _png(grid(ims, 8, scale=3)))
    ims = [im for s in held[:8] for im in demos[s.id][:5]]
    store.put_bytes("world/examples/heldout_demos.png", _png(grid(ims, 5, scale=3)))
    s = held[0]
    factor_scenes = ([Scene(s, c, seed=1) for c in V.CONTEXT_KEYS] + [Scene(s, view=v, seed=1) for v in V.VIEW_KEYS]
                     + [Scene(s, edits=(e,), seed=1) for e in V.EDIT_KEYS]
                     + [Scene(s, accessories=(a,), seed=1) for a in V.ACCESSORY_KEYS]
                     + [Scene(s, "beach", style=st, seed=1) for st in V.STYLE_KEYS])
    store.put_bytes("world/examples/factors.png", _png(grid([render(x, R) for x in factor_scenes], 8, scale=3)))
    store.put_bytes("world/examples/same_caption.png", _png(same_caption_grid(R)))


def _same_caption_groups(subjects: list[Subject], min_size: int) -> int:
    """How many captions are shared by at least `min_size` different subjects."""
    from collections import Counter

    from suti.world.scene import caption_key

    return sum(1 for n in Counter(caption_key(s) for s in subjects).values() if n >= min_size)


def same_caption_subjects(rows: int = 6, per_row: int = 6, seed: int = 0) -> list[list[Subject]]:
    """Groups of different subjects that share every word of their caption: for each of
    `rows` captions, `per_row` subjects drawn until that many share it."""
    from suti.world.scene import caption_key

    rng = rng_for("same-caption", seed)
    groups: dict[str, list[Subject]] = {}
    out = []
    for i in range(200000):
        s = make_subject(rng, f"c{i:06d}", V.CLASS_KEYS[len(out) % len(V.CLASS_KEYS)])
        g = groups.setdefault(caption_key(s), [])
        g.append(s)
        if len(g) == per_row:
            out.append(g)
            groups.clear()
            if len(out) == rows:
                break
    return out


def same_caption_grid(R: int, rows: int = 6, per_row: int = 6) -> Image.Image:
    """One row per caption: different subjects the caption cannot tell apart, each in the
    same studio scene (the world's point at a glance), the caption left of the row."""
    from suti.world.render import labelled_grid
    from suti.world.scene import appearance_phrase

    groups = same_caption_subjects(rows, per_row)
    ims = [render(Scene(s, "studio", seed=1), R) for g in groups for s in g]
    return labelled_grid(ims, per_row, [], ["a " + appearance_phrase(g[0]) for g in groups], scale=3)


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
