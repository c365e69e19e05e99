"""The paper's Table 1 on the world's held-out subjects (DreamBench protocol: 25 prompt
templates per subject, N images per prompt), the K-shot curve and DreamBench-v2-style
compositional levels; and the same protocol on a real DreamBench folder.

Rows: oracle (real renders of the subject in the prompt's scene: reads the world's
truth, evaluation only), base (the words alone), expert (DreamBooth's role: the base
fine-tuned on the subject's demos), apprentice (SuTI, in context) and Dream-SuTI.
Protocol "shared": every method gets the same prompt and the same seed per (subject,
prompt, image) slot: the DreamBench prompt with the subject phrase the captioner gives for
the demos; CLIP-T is scored against the class-word prompt (edits kept), as DreamBench does.
"""
from __future__ import annotations

import copy
import io
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from suti import keys as K
from suti.tasks.judge import class_key_of, judge
from suti.world import vocab as V
from suti.world.scene import Scene, Subject, appearance_phrase, compose, stable_seed

log = logging.getLogger("suti.eval")
METHODS = ("oracle", "base", "expert", "reimagen", "apprentice", "dreamsuti")
PROMPT_PROTOCOL = "shared"  # one prompt and one seed per slot for every method
PROTOCOL_VERSION = 2  # bump when prompts, seeds or scores change meaning: results are keyed by it


# ---------------------------------------------------------------- prompts

def dreambench_records(subject: Subject, live: bool = False) -> list[dict]:
    """The 25 DreamBench prompts as structured records: 20 re-contextualizations + 5
    property edits (objects); live subjects swap the edits for accessories/views/styles,
    as DreamBench's live-subject list does."""
    recs = [dict(context=c) for c in V.CONTEXT_KEYS if c != "studio"]
    if live:
        recs += [dict(accessories=["hat"]), dict(accessories=["glasses"]), dict(accessories=["scarf"]),
                 dict(style="watercolor"), dict(view="back")]
    else:
        recs += [dict(edits=[e]) for e in V.EDIT_KEYS]
    return [_record(subject, r) for r in recs]


def v2_records(subject: Subject, seed: int) -> list[dict]:
    """DreamBench-v2-style growing difficulty: view -> view + context -> + accessory."""
    rng = np.random.default_rng(stable_seed("v2", subject.id, seed))
    out = []
    for k in range(2):
        view = str(rng.choice(V.VIEW_KEYS[1:]))
        ctx = str(rng.choice([c for c in V.CONTEXT_KEYS if c != "studio"]))
        acc = str(rng.choice(V.ACCESSORY_KEYS))
        out += [_record(subject, dict(view=view), level=1), _record(subject, dict(view=view, context=ctx), level=2),
                _record(subject, dict(view=view, context=ctx, accessories=[acc]), level=3)]
    return out


def _record(subject: Subject, r: dict, level: int | None = None) -> dict:
    rec = {"context": r.get("context", "studio"), "view": r.get("view", "front"), "edits": list(r.get("edits", [])),
           "accessories": list(r.get("accessories", [])), "style": r.get("style", "photo")}
    args = (rec["context"], rec["view"], tuple(rec["accessories"]), rec["style"])
    # The shared prompt: every method gets it (the DreamBench prompt with the subject phrase the
    # captioner gives for the demos); CLIP-T scores against the class-word prompt, edits kept.
    rec["text"] = compose(appearance_phrase(subject, tuple(rec["edits"])), *args)
    rec["class_text"] = compose(appearance_phrase(subject, tuple(rec["edits"]), colours=False), *args)
    if level is not None:
        rec["level"] = level
    return rec


def described_subject(labels: list[dict], sid: str, word: str) -> Subject:
    """The subject as the captioner sees its demos (majority vote): what the experts'
    and the apprentice's prompts call it. Shape parameters are unknown and unused."""
    def vote(key):
        return Counter(lab[key] for lab in labels).most_common(1)[0][0]

    cls = class_key_of(word) or vote("cls")
    return Subject(sid, cls, vote("body"), vote("accent"), vote("pattern"), 1.0, 1.0, 0, "")


# ---------------------------------------------------------------- what a result is keyed by

def _foundation_meta(store) -> dict:
    """The trained foundation models' recipes: the base model and the scorers behind every row."""
    return {m: (store.done_meta(K.foundation_done(m)) or {}).get("recipe") for m in ("clip", "identity", "rater", "base")}


def _world_key(cfg) -> dict:
    from suti.world.corpus import renderer_version

    w = cfg.world
    return {"renderer": renderer_version(), "seed": int(w.seed), "resolution": int(w.resolution),
            "heldout_subjects": int(w.heldout_subjects), "val_subjects": int(w.val_subjects),
            "demos_per_heldout": int(w.demos_per_heldout)}


def eval_settings(cfg, store, split: str, limit: int | None) -> dict:
    """Every setting that changes an evaluation's images or scores (besides the model)."""
    from omegaconf import OmegaConf

    ev, a = cfg.eval, cfg.apprentice
    return {"protocol_version": PROTOCOL_VERSION, "prompt_protocol": PROMPT_PROTOCOL, "split": split,
            "limit": limit, "images_per_prompt": int(ev.images_per_prompt), "guidance": float(ev.guidance),
            "scheduler": str(ev.scheduler), "sample_steps": int(ev.sample_steps), "seed": int(cfg.seed),
            "methods": list(OmegaConf.to_container(ev.methods)), "kshot_prompts": int(ev.kshot_prompts),
            "curves": bool(ev.curves),
            "apprentice_demos": int(a.demos), **_demo_guidance(cfg),
            "dreamsuti": {k: a.get(k) for k in ("dreamsuti_steps", "dreamsuti_lr", "dreamsuti_batch_size",
                                                "dreamsuti_train_base")},
            "expert": expert_settings(cfg, store)["expert"],
            "world": _world_key(cfg), "foundation": _foundation_meta(store), **_precision(cfg)}


def _demo_guidance(cfg) -> dict:
    """``eval.demo_guidance``, keyed only when set (results made before it existed keep their keys)."""
    dg = cfg.eval.demo_guidance
    return {} if dg is None else {"demo_guidance": float(dg)}


def _precision(cfg) -> dict:
    """The sampling precision, keyed only when it is not fp32 (so results and experts made
    before the setting existed, all fp32, keep their keys)."""
    p = str(cfg.backbone.sample_precision)
    return {} if p == "fp32" else {"sample_precision": p}


def expert_settings(cfg, store) -> dict:
    """What the evaluation's expert row depends on (not the apprentice): experts are reused
    by every evaluation with these settings."""
    from omegaconf import OmegaConf

    ev = cfg.eval
    from suti.tasks.experts import RECIPE_KEYS

    e = OmegaConf.to_container(cfg.expert, resolve=True)
    return {"protocol_version": PROTOCOL_VERSION, "expert": {k: v for k, v in e.items() if k in RECIPE_KEYS},
            "images_per_prompt": int(ev.images_per_prompt), "guidance": float(ev.guidance),
            "scheduler": str(ev.scheduler), "sample_steps": int(ev.sample_steps), "seed": int(cfg.seed),
            "world": _world_key(cfg), "base": _foundation_meta(store)["base"], **_precision(cfg)}


def protocol_of(settings: dict) -> str:
    """The protocol two scores must share to be compared: version, split, subjects, images per
    prompt, sampler, seed, world and scorers (not which rows were run)."""
    from suti.store import digest

    keep = ("protocol_version", "prompt_protocol", "split", "limit", "images_per_prompt", "guidance", "scheduler",
            "sample_steps", "seed", "apprentice_demos", "world")
    part = {k: settings[k] for k in keep}
    if "demo_guidance" in settings:  # keyed only when set: earlier protocols keep their ids
        part["demo_guidance"] = settings["demo_guidance"]
    part["scorers"] = {k: v for k, v in settings["foundation"].items() if k != "base"}
    return f"p{settings['protocol_version']}-{settings['split']}-{digest(part)[:8]}"


def settings_digest(settings: dict) -> str:
    from suti.store import digest

    return digest(settings)[:10]


def _content_hash(meta: dict, modules) -> str:
    """sha256 of a JSON-able description plus every module's weights (names and fp32 values)."""
    import hashlib

    import torch

    h = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
    for m in modules:
        for name, t in sorted(m.state_dict().items()):
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def model_fingerprint(app) -> str:
    """A content hash of an apprentice (weights + sampling defaults): what keys the results of
    a model that has no registry version (an exported folder, a store run)."""
    return "m" + _content_hash(app.defaults, [app.model])[:12]


# ---------------------------------------------------------------- scoring

def score(scorers, store, images: np.ndarray, recs: list[dict], demo_sets: list[np.ndarray]) -> dict:
    """Per-image scores: identity (DINO's role), CLIP-I, CLIP-T (against the class-word
    prompt, as DreamBench does), and the auto-rater's binary judgement."""
    j = judge(scorers, store, images, recs, demo_sets)
    emb = scorers.image_embed(images)
    clip_i = np.zeros(len(images))
    cache: dict[int, np.ndarray] = {}
    for i, d in enumerate(demo_sets):
        if id(d) not in cache:
            cache[id(d)] = scorers.image_embed(d)
        clip_i[i] = float((cache[id(d)] @ emb[i]).mean())
    clip_t = scorers.clip_t(images, [r.get("class_text", r["text"]) for r in recs])
    return {"identity": j["identity"], "clip_i": clip_i, "clip_t": clip_t, "subject": j["subject"].astype(float),
            "text": j["text"].astype(float), "photorealism": j["photorealism"].astype(float),
            "overall": j["overall"].astype(float)}


def mean_scores(parts: list[dict]) -> dict:
    keys = ("identity", "clip_i", "clip_t", "subject", "text", "photorealism", "overall")
    return {k: float(np.mean(np.concatenate([p[k] for p in parts]))) if parts else None for k in keys}


# ---------------------------------------------------------------- generation per method

@dataclass
class SubjectCase:
    sid: str
    word: str
    demos: np.ndarray  # (K, R, R, 3)
    demo_keys: list[str]
    demo_texts: list[str]
    described: Subject
    truth: Subject | None  # world only: renders the oracle
    live: bool = False
    seconds: dict = field(default_factory=dict)
    bytes: dict = field(default_factory=dict)


def split_subjects(store, split: str, limit: int | None = None) -> list[dict]:
    """The held-out subjects of one split (`val` or `test`), in world order, first `limit`."""
    from suti.errors import UserError

    idx = store.get_json("world/heldout/index.json")["subjects"]
    if any("split" not in s for s in idx):
        raise UserError("the stored world has no val/test split (a world v1): run `suti world --force`")
    out = [s for s in idx if s["split"] == split]
    if not out:
        raise UserError(f"the world has no held-out subject in split {split!r} (world.val_subjects)")
    return out[:limit] if limit else out


def subject_cases(cfg, store, scorers, limit: int | None, split: str) -> list["SubjectCase"]:
    """The split's held-out subjects as evaluation cases: demos, the captioner's texts and the
    subject it describes (what every method's prompt names), and the truth (the oracle's renders)."""
    from suti.world.scene import subject_from_dict

    idx = split_subjects(store, split, limit)
    truth = {json.loads(x)["id"]: subject_from_dict(json.loads(x))
             for x in store.get_bytes("world/truth/heldout.jsonl").decode().splitlines()}
    R = cfg.world.resolution
    cases = []
    for s in idx:
        keys = [f"world/{k}" for k in s["demos"]]
        demos = np.stack([load_png(store.get_bytes(k), R) for k in keys])
        labels = scorers.labels(demos)
        described = described_subject(labels, s["id"], s["class"])
        texts = scorers.caption(demos)
        cases.append(SubjectCase(s["id"], s["class"], demos, keys, texts, described, truth[s["id"]], s["live"]))
    return cases


def seeds_for(case: SubjectCase, n_prompts: int, seed: int) -> list[int]:
    return [stable_seed("eval", case.sid, j, seed) % (2 ** 31) for j in range(n_prompts)]


def oracle_images(case: SubjectCase, recs: list[dict], n: int, seeds: list[int], R: int) -> np.ndarray:
    return np.stack([render(Scene(case.truth, r["context"], r["view"], tuple(r["edits"]), tuple(r["accessories"]),
                                  r["style"], s + k), R)
                     for r, s in zip(recs, seeds) for k in range(n)])


def base_images(cfg, backbone, recs: list[dict], n: int, seeds: list[int], text_key: str = "text") -> np.ndarray:
    """The base model on each record's shared prompt (what the words alone carry), on the very
    sampling path of the apprentice (`text_to_image`): a frozen-base apprentice with no demos
    gives these same images."""
    from suti.models.backbone import base_model_fn, text_to_image

    fn = base_model_fn(backbone)
    return np.concatenate([text_to_image(backbone, fn, r[text_key], n, cfg.eval.guidance, cfg.eval.scheduler,
                                         cfg.eval.sample_steps, s) for r, s in zip(recs, seeds)])


def backbone_fingerprint(backbone) -> str:
    """A content hash of the base model the base row samples (UNet, text tower, VAE weights,
    sampling precision): what keys the cached base images."""
    meta = {**backbone.describe(), "precision": getattr(backbone, "sample_precision", "fp32")}
    return "b" + _content_hash(meta, [backbone.unet, *backbone.frozen_modules()])[:16]


def cached_base_images(cfg, store, backbone, fingerprint: str, recs: list[dict], n: int,
                       seeds: list[int]) -> tuple[np.ndarray, float]:
    """`base_images` and the seconds sampling them took, each (prompt, seed, n) slot sampled
    once per base model and sampler: the base row does not depend on the apprentice, so the
    sweep's lambdas, the training val checks, bench recipes and the final Table 1 share it
    (the same images, not resampled; the seconds are those of the first sampling)."""
    from suti.store import digest

    sampler = {"guidance": float(cfg.eval.guidance), "scheduler": str(cfg.eval.scheduler),
               "steps": int(cfg.eval.sample_steps), "n": int(n)}
    out, seconds = [], 0.0
    for r, sd in zip(recs, seeds):
        key = f"eval/base-images/{fingerprint}/{digest({**sampler, 'prompt': r['text'], 'seed': int(sd)})}.npz"
        if store.exists(key):
            with np.load(io.BytesIO(store.get_bytes(key)), allow_pickle=False) as z:
                ims, secs = z["images"], float(z["seconds"])
        else:
            t = time.time()
            ims = base_images(cfg, backbone, [r], n, [sd])
            secs = time.time() - t
            buf = io.BytesIO()
            np.savez(buf, images=ims, seconds=np.float64(secs))
            store.put_bytes(key, buf.getvalue())
        out.append(ims)
        seconds += secs
    return np.concatenate(out), seconds


def apprentice_images(app, case: SubjectCase, recs: list[dict], n: int, seeds: list[int], cfg, k: int | None = None,
                      demos: np.ndarray | None = None, texts: list[str] | None = None) -> np.ndarray:
    d = case.demos if demos is None else demos
    t = case.demo_texts if texts is None else texts
    k = len(d) if k is None else k
    out = []
    for r, s in zip(recs, seeds):
        out += app.generate(list(d[:k]), list(t[:k]), r["text"], num_images=n, guidance=cfg.eval.guidance,
                            scheduler=cfg.eval.scheduler, steps=cfg.eval.sample_steps, seed=s,
                            demo_guidance=cfg.eval.demo_guidance)
    return np.stack(out)


def expert_images(cfg, store, case: SubjectCase, recs: list[dict], n: int, seeds: list[int], root: str, base_state,
                  clip) -> np.ndarray:
    """DreamBooth's row: fine-tune the base on the subject's demos (cached per subject), then
    sample each slot's shared prompt with the slot's seed, at the evaluation's sampler."""
    from suti.tasks.experts import ExpertSpec, read_image, run_expert

    spec = ExpertSpec(cluster_id=case.sid, image_keys=case.demo_keys, texts=case.demo_texts,
                      prompts=[{**r} for r in recs])
    res = run_expert(spec, cfg, store, base_state, clip, root=root, samples_per_prompt=n, slot_seeds=seeds)
    rec = store.get_json(f"{root}/{case.sid}/record.json")
    case.seconds["expert"] = rec["train_seconds"] + rec["sample_seconds"]
    lora = f"{root}/{case.sid}/lora.safetensors"
    case.bytes["expert"] = len(store.get_bytes(lora)) if store.exists(lora) else _unet_bytes(base_state)
    del res
    return np.stack([read_image(store, s["key"], cfg.world.resolution) for s in rec["samples"]])


def _unet_bytes(base_state) -> int:
    """A full fine-tune stores a whole UNet per subject."""
    return int(sum(v.numel() * v.element_size() for v in base_state["state_dict"].values()))


def render(scene, R):
    from suti.world.render import render as _render

    return _render(scene, R)


def load_png(data: bytes, R: int) -> np.ndarray:
    img = Image.open(io.BytesIO(data)).convert("RGB")
    if img.size != (R, R):
        w, h = img.size
        s = min(w, h)
        img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)).resize((R, R), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


# ---------------------------------------------------------------- the real DreamBench folder

def read_dreambench(root: str | Path, R: int, limit: int | None = None) -> tuple[list[dict], dict]:
    """Subjects (name, class, live?, images) and the two prompt lists from a DreamBench
    folder (`<subject>/NN.jpg`, `prompts_and_classes.txt`). Unreadable images are skipped
    with a warning and counted."""
    root = Path(root)
    txt = root / "prompts_and_classes.txt"
    if not txt.is_file():
        raise FileNotFoundError(f"not a DreamBench folder (no prompts_and_classes.txt): {root}")
    text = txt.read_text()
    classes = {}
    for line in text.split("Prompts")[0].splitlines():
        if "," in line and not line.startswith("subject_name"):
            a, b = line.strip().split(",", 1)
            classes[a] = b
    obj_part, live_part = text.split("Live Subject Prompts")[0], text.split("Live Subject Prompts")[1]
    pat = r"'(a \{0\} \{1\}[^']*|a [a-z ]+ \{0\} \{1\}[^']*)'"
    import re

    obj = re.findall(pat, obj_part.split("Object Prompts")[1])
    live = re.findall(pat, live_part)
    live_classes = {"dog", "cat"}
    subjects, skipped = [], 0
    for name in sorted(classes)[:limit] if limit else sorted(classes):
        imgs = []
        for f in sorted((root / name).glob("*")):
            if f.suffix.lower() not in (".jpg", ".jpeg", ".png"):
                continue
            try:
                imgs.append(load_png(f.read_bytes(), R))
            except Exception as e:  # a corrupt file must not stop the evaluation
                log.warning(f"skipping unreadable image {f}: {' '.join(str(e).split())[:120]}")
                skipped += 1
        if imgs:
            subjects.append({"name": name, "class": classes[name], "live": classes[name] in live_classes,
                             "images": np.stack(imgs)})
    return subjects, {"object_prompts": obj, "live_prompts": live, "skipped_images": skipped}


def dreambench_eval(cfg, store, scorers, app, backbone, limit: int | None, n: int) -> dict:
    """The DreamBench protocol on a real folder with the configured stack: 30 subjects x 25
    prompts x n images; the oracle row is real-vs-real similarity (DreamBench's)."""
    R = cfg.world.resolution
    subjects, meta = read_dreambench(cfg.eval.dreambench_dir, R, limit)
    t0 = time.time()
    rows = {"oracle": [], "base": [], "apprentice": []}
    prompts_total = 0
    for s in subjects:
        tmpl = meta["live_prompts"] if s["live"] else meta["object_prompts"]
        recs = [{"text": t.replace("{0} {1}", s["class"]), "class_text": t.replace("{0} {1}", s["class"]),
                 "context": "studio", "view": "front", "edits": [], "accessories": [], "style": "photo"} for t in tmpl]
        prompts_total += len(recs)
        demos = s["images"][:3]
        ref = s["images"]
        # oracle: each real image against the others (DINO / CLIP-I between real images)
        e_id, e_clip = scorers.identity_embed(ref), scorers.image_embed(ref)
        m = len(ref)
        if m > 1:
            off = ~np.eye(m, dtype=bool)
            rows["oracle"].append({"identity": (e_id @ e_id.T)[off], "clip_i": (e_clip @ e_clip.T)[off]})
        seeds = [stable_seed("dreambench", s["name"], j) % 2 ** 31 for j in range(len(recs))]
        b = base_images(cfg, backbone, recs, n, seeds)
        a = np.concatenate([np.stack(app.generate(list(demos), None, r["text"], num_images=n, guidance=cfg.eval.guidance,
                                                  scheduler=cfg.eval.scheduler, steps=cfg.eval.sample_steps, seed=sd,
                                                  demo_guidance=cfg.eval.demo_guidance))
                            for r, sd in zip(recs, seeds)]) if app is not None else None
        for name, ims in (("base", b), ("apprentice", a)):
            if ims is None:
                continue
            rr = [r for r in recs for _ in range(n)]
            emb_i, emb_c = scorers.identity_embed(ims), scorers.image_embed(ims)
            rows[name].append({"identity": (emb_i @ e_id.T).mean(1), "clip_i": (emb_c @ e_clip.T).mean(1),
                               "clip_t": scorers.clip_t(ims, [r["class_text"] for r in rr])})
    table = []
    for name, parts in rows.items():
        if not parts:
            continue
        row = {"method": name}
        for k in ("identity", "clip_i", "clip_t"):
            vals = [p[k] for p in parts if k in p]
            row[k] = float(np.mean(np.concatenate(vals))) if vals else None
        table.append(row)
    return {"subjects": len(subjects), "prompts": prompts_total, "images_per_prompt": n,
            "images": prompts_total * n, "skipped_images": meta["skipped_images"], "table": table,
            "seconds": round(time.time() - t0, 1)}


def deepcopy_apprentice(app):
    return copy.deepcopy(app)


def json_dumps(obj) -> str:
    return json.dumps(obj, default=float)
