"""Train and check the world's foundation models. Plain functions: the Prefect flow in
`flows/foundation.py` only wires them.

Each model is trained on the world's pre-training renders (`world/pretrain/`: the
foundation models' own "internet", disjoint from the shop pages and the held-out
subjects), saved to `foundation/<name>/model.pt` and checked on held-out renders.
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np
import torch
from omegaconf import DictConfig

from suti import keys as K
from suti.models.clip import build_clip, text_hidden_states, tokenizer
from suti.models.diffusion import (build_unet, check_schedule, guided_scheduler, sample, schedule_config, to_uint8,
                                  training_scheduler)
from suti.models.foundation import (BaseLit, ClipLit, IdentityLit, IdentityNet, RaterLit, RaterNet, corrupt, fit,
                                    jitter, loader, resolve_precision, scene_targets)
from suti.models.scorers import Scorers, load_state, save_module
from suti.world.corpus import rng_for
from suti.world.render import grid, render
from suti.world.scene import Scene, generic_caption, random_scene, scene_from_dict, subject_from_dict

log = logging.getLogger("suti.foundation")
MODELS = K.FOUNDATION_MODELS


def recipe(cfg: DictConfig, model: str) -> dict:
    """What a trained foundation model depends on (its training section, and for the base
    model the UNet and noise schedule): a finished model is reused only while this is unchanged."""
    from omegaconf import OmegaConf

    from suti.world.corpus import renderer_version

    w = cfg.world
    train = OmegaConf.to_container(cfg.foundation[model], resolve=True)
    train["precision"] = resolve_precision(train["precision"])  # `auto` trains differently by CPU
    out = {"train": train, "seed": int(cfg.seed),
           # the pre-training renders it learned from: the renderer and what sizes the corpus
           "world": {"renderer": renderer_version(), "resolution": int(w.resolution),
                     "pretrain_subjects": int(w.pretrain_subjects), "pretrain_images": int(w.pretrain_images)}}
    if model == "base":
        out["unet"] = OmegaConf.to_container(cfg.backbone.unet, resolve=True)
        out["schedule"] = schedule_config(cfg.backbone)
    return out


def load_pretrain(store) -> tuple[np.ndarray, list[dict]]:
    images = store.get_array("world/pretrain/images.npy")
    scenes = [json.loads(x) for x in store.get_bytes("world/pretrain/scenes.jsonl").decode().splitlines()]
    return images, scenes


def _captions(scenes: list[dict], idx, rng, drop: float) -> list[str]:
    return [generic_caption(scene_from_dict(scenes[int(i)]), rng, drop) for i in idx]


def train_clip(cfg: DictConfig, store, images, scenes) -> dict:
    c = cfg.foundation.clip
    model = build_clip(cfg.backbone.clip_config, image_size=cfg.world.resolution, seed=cfg.seed)
    tok = tokenizer(cfg.backbone.clip_config)

    def batch(rng):
        idx = rng.integers(0, len(images), c.batch_size)
        return torch.as_tensor(images[idx]), tok(_captions(scenes, idx, rng, c.caption_drop))

    loss = fit(ClipLit(model, c.lr, c.steps), loader(batch, cfg.seed + 1), c.steps, cfg.progress, name="clip",
               precision=c.precision)
    save_module(store, K.CLIP, model, {"config": cfg.backbone.clip_config, "loss": loss})
    return {"loss": loss}


def train_identity(cfg: DictConfig, store, images, scenes) -> dict:
    c = cfg.foundation.identity
    arch = {"width": int(c.width), "embed_dim": c.embed_dim}
    torch.manual_seed(cfg.seed)
    net = IdentityNet(**arch)
    by_subject: dict[str, list[int]] = {}
    for i, s in enumerate(scenes):
        by_subject.setdefault(s["subject"]["id"], []).append(i)
    sids = [k for k, v in by_subject.items() if len(v) >= 2]
    groups = [by_subject[k] for k in sids]
    # Hard negatives: subjects that share class and body colour word (what a caption says of
    # them) in one batch, so the embedder learns what words cannot say (world v2).
    word_of = {s["subject"]["id"]: (s["subject"]["cls"], s["subject"]["body"]) for s in scenes}
    by_words: dict[tuple, list[int]] = {}
    for gi, sid in enumerate(sids):
        by_words.setdefault(word_of[sid], []).append(gi)
    hard_pools = [v for v in by_words.values() if len(v) >= 2]
    p_hard = float(c.hard_batches)
    per_pool = 4

    def pick_groups(rng):
        n = min(c.subjects_per_batch, len(groups))
        if not hard_pools or rng.random() >= p_hard:
            return rng.choice(len(groups), size=n, replace=False)
        out: list[int] = []
        for pool in rng.permutation(len(hard_pools)):
            members = hard_pools[int(pool)]
            out += [int(x) for x in rng.choice(members, size=min(per_pool, len(members)), replace=False)]
            if len(out) >= n:
                break
        return np.asarray(out[:n])

    def batch(rng):
        picks = pick_groups(rng)
        idx, ids = [], []
        for g in picks:
            members = groups[int(g)]
            take = rng.choice(members, size=c.views_per_subject, replace=len(members) < c.views_per_subject)
            idx += list(take)
            ids += [int(g)] * len(take)
        return torch.as_tensor(images[idx]), torch.as_tensor(ids)

    loss = fit(IdentityLit(net, c.lr, c.steps, c.temperature), loader(batch, cfg.seed + 2), c.steps, cfg.progress,
               name="identity", precision=c.precision)
    save_module(store, K.IDENTITY, net, {"arch": arch, "loss": loss})
    return {"loss": loss}


def train_rater(cfg: DictConfig, store, images, scenes) -> dict:
    c = cfg.foundation.rater
    arch = {"width": int(c.width)}
    torch.manual_seed(cfg.seed)
    net = RaterNet(**arch)
    targets = scene_targets(scenes)

    def batch(rng):
        idx = rng.integers(0, len(images), c.batch_size)
        ims = jitter(images[idx], rng, int(c.shift))
        fake = corrupt(ims[: c.batch_size // 2], rng)
        real_label = torch.cat([torch.ones(len(ims)), torch.zeros(len(fake))])
        return (torch.as_tensor(ims), {k: torch.as_tensor(v[idx]) for k, v in targets.items()},
                torch.as_tensor(fake), real_label)

    loss = fit(RaterLit(net, c.lr, c.steps), loader(batch, cfg.seed + 3), c.steps, cfg.progress, name="rater",
               precision=c.precision)
    save_module(store, K.RATER, net, {"arch": arch, "loss": loss})
    return {"loss": loss}


def load_clip(cfg: DictConfig, store):
    clip = build_clip(cfg.backbone.clip_config, image_size=cfg.world.resolution)
    clip.load_state_dict(load_state(store, K.CLIP)["state_dict"])
    return clip.eval().requires_grad_(False)


def train_base(cfg: DictConfig, store, images, scenes) -> dict:
    c = cfg.foundation.base
    clip = load_clip(cfg, store)
    tok = tokenizer(cfg.backbone.clip_config)
    unet = build_unet(cfg.backbone, cfg.world.resolution, clip.transformer.width, seed=cfg.seed)

    def batch(rng):
        idx = rng.integers(0, len(images), c.batch_size)
        caps = [("" if rng.random() < c.uncond_prob else cap) for cap in _captions(scenes, idx, rng, c.caption_drop)]
        return torch.as_tensor(images[idx]), tok(caps)

    lit = BaseLit(unet, clip, training_scheduler(cfg.backbone), c.lr, c.steps, float(c.ema_decay),
                  float(c.min_snr_gamma))
    loss = fit(lit, loader(batch, cfg.seed + 4), c.steps, cfg.progress, name="base", precision=c.precision)
    unet = lit.final_unet()
    save_module(store, K.BASE, unet,
                {"unet_config": dict(unet.config), "loss": loss, "text_encoder": K.CLIP,
                 "schedule": schedule_config(cfg.backbone)})
    return {"loss": loss}


def load_base_unet(cfg: DictConfig, store):
    from diffusers import UNet2DConditionModel

    state = load_state(store, K.BASE)
    check_schedule(cfg, state["meta"])
    unet = UNet2DConditionModel.from_config(state["meta"]["unet_config"])
    unet.load_state_dict(state["state_dict"])
    return unet.eval()


def generate_base(unet, clip, clip_name: str, prompts: list[str], cfg_sampling, seed: int, batch: int = 50,
                  *, backbone) -> np.ndarray:
    """Sample one image per prompt from a text-conditioned UNet with CFG (`backbone`: the config
    naming its schedule and prediction type)."""
    tok = tokenizer(clip_name)
    sched = guided_scheduler(cfg_sampling.scheduler, cfg_sampling.guidance, backbone)
    res = unet.config.sample_size
    out = []
    for i in range(0, len(prompts), batch):
        p = prompts[i:i + batch]
        with torch.no_grad():
            cond = text_hidden_states(clip, tok(p))
            uncond = text_hidden_states(clip, tok([""] * len(p)))
        g = torch.Generator().manual_seed(seed + i)
        x = sample(lambda x, t, c: unet(x, t, c).sample, cond, uncond, (len(p), 3, res, res), sched,
                   cfg_sampling.sample_steps, cfg_sampling.guidance, g)
        out.append(to_uint8(x))
    return np.concatenate(out)


# ---------------------------------------------------------------- checks

def heldout_renders(cfg: DictConfig, store, n: int) -> list[Scene]:
    """Random scenes of held-out subjects (reads the world's truth: evaluation only)."""
    subjects = [subject_from_dict(json.loads(x)) for x in store.get_bytes("world/truth/heldout.jsonl").decode().splitlines()]
    rng = rng_for("foundation-check", cfg.seed)
    return [random_scene(rng, subjects[i % len(subjects)]) for i in range(n)]


def heldout_checks(cfg: DictConfig, store, n: int) -> tuple[list[Scene], np.ndarray]:
    """``n`` held-out check scenes (`heldout_renders`) and their renders at the world's resolution."""
    scenes = heldout_renders(cfg, store, n)
    return scenes, np.stack([render(s, cfg.world.resolution) for s in scenes])


def rater_checks(scenes: list[Scene], pred: list[dict]) -> dict:
    """How often the rater's labels of renders match the scenes' truth."""
    def acc(key):
        return float(np.mean([p[key] == t for p, t in zip(pred, (key_of(s, key) for s in scenes))]))

    def key_of(s, key):
        return {"cls": s.subject.cls, "context": s.context, "pattern": s.subject.pattern, "view": s.view,
                "style": s.style}[key]

    return {"class_acc": acc("cls"), "context_acc": acc("context"), "pattern_acc": acc("pattern"),
            "view_acc": acc("view"), "style_acc": acc("style"),
            "real_on_renders": float(np.mean([p["real"] > 0.5 for p in pred]))}


def evaluate(cfg: DictConfig, store, base_unet=None, untrained_unet=None) -> dict:
    """The foundation checks of the issue, on held-out renders."""
    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    scenes, ims = heldout_checks(cfg, store, cfg.foundation.eval.heldout_renders)
    caps = [generic_caption(s) for s in scenes]
    res: dict = {}

    # CLIP: image -> caption top-1 among groups of 100 captions
    ie, te = sc.image_embed(ims), sc.text_embed(caps)
    hits, groups = [], 0
    for g in range(0, len(ims) - 99 if len(ims) >= 100 else 1, 100):
        sl = slice(g, g + 100)
        sim = ie[sl] @ te[sl].T
        gt = np.array([[caps[g + i] == caps[g + j] for j in range(sim.shape[1])] for i in range(sim.shape[0])])
        hits += list(gt[np.arange(len(sim)), sim.argmax(1)])
        groups += 1
    res["clip"] = {"retrieval_top1": float(np.mean(hits)), "pool": min(100, len(ims)), "groups": groups,
                   "chance": 1.0 / min(100, len(ims))}

    res["identity"] = identity_checks(cfg, sc, scenes, ims)

    # rater
    res["rater"] = rater_checks(scenes, sc.labels(ims))

    # base model vs untrained, on generic held-out prompts
    n = cfg.foundation.eval.base_prompts
    ps, real = heldout_checks(cfg, store, n)
    prompts = [generic_caption(s) for s in ps]
    res["real_clip_t"] = float(sc.clip_t(real, prompts).mean())
    samples = {}
    for name, unet in (("base", base_unet), ("untrained", untrained_unet)):
        if unet is None:
            continue
        t0 = time.time()
        ims_g = generate_base(unet, sc.clip, cfg.backbone.clip_config, prompts, cfg.foundation.eval, cfg.seed,
                              backbone=cfg.backbone)
        lab = sc.labels(ims_g)
        res[name] = {"class_acc": float(np.mean([p["cls"] == s.subject.cls for p, s in zip(lab, ps)])),
                     "context_acc": float(np.mean([p["context"] == s.context for p, s in zip(lab, ps)])),
                     "clip_t": float(sc.clip_t(ims_g, prompts).mean()),
                     "sample_seconds": round(time.time() - t0, 1)}
        samples[name] = ims_g
    if "base" in res:
        res["base"]["real_clip_t"] = res["real_clip_t"]
        res["base"]["clip_t_ratio"] = res["base"]["clip_t"] / max(1e-6, res["real_clip_t"])
    k = min(16, n)
    rows = [real[:k]] + [samples[s][:k] for s in ("base", "untrained") if s in samples]
    res["_grid"] = grid([im for r in rows for im in r], k, scale=3)
    res["_prompts"] = prompts[:k]
    return res


def identity_checks(cfg: DictConfig, sc, scenes: list[Scene], ims: np.ndarray) -> dict:
    """Identity embedder: same subject in different contexts vs a different subject of the
    same class (`margin`, on held-out renders), and vs a subject with the identical caption
    (`same_caption_margin`, on new subjects)."""
    emb = sc.identity_embed(ims)
    same, diff = [], []
    for i in range(len(scenes)):
        for j in range(i + 1, len(scenes)):
            a, b = scenes[i], scenes[j]
            if a.subject.id == b.subject.id and a.context != b.context:
                same.append(float(emb[i] @ emb[j]))
            elif a.subject.id != b.subject.id and a.subject.cls == b.subject.cls:
                diff.append(float(emb[i] @ emb[j]))
    ms = float(np.mean(same)) if same else None
    md = float(np.mean(diff)) if diff else None
    return {"same_subject": ms, "other_subject_same_class": md, "margin": ms - md if same and diff else None,
            "pairs": [len(same), len(diff)], **same_caption_margin(cfg, sc)}


def same_caption_margin(cfg: DictConfig, sc, groups: int = 12, per_group: int = 4, scenes: int = 3) -> dict:
    """World v2's point, measured on the identity embedder: new subjects (never rendered for
    training) in groups that share every word of their caption, each in a few random scenes.
    Margin = mean similarity of two scenes of the same subject - mean similarity of two
    subjects with the identical caption."""
    from suti.world.corpus import same_caption_subjects

    R = cfg.world.resolution
    rng = rng_for("same-caption-check", cfg.seed)
    gs = same_caption_subjects(groups, per_group, seed=cfg.seed + 1)
    items = [(gi, si, random_scene(rng, s)) for gi, g in enumerate(gs) for si, s in enumerate(g) for _ in range(scenes)]
    emb = sc.identity_embed(np.stack([render(x, R) for _, _, x in items]))
    sim = emb @ emb.T
    same, other = [], []
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            if items[i][0] != items[j][0]:
                continue
            (same if items[i][1] == items[j][1] else other).append(float(sim[i, j]))
    return {"same_caption_same_subject": float(np.mean(same)), "same_caption_other_subject": float(np.mean(other)),
            "same_caption_margin": float(np.mean(same) - np.mean(other)), "same_caption_pairs": [len(same), len(other)]}


def untrained_unet(cfg: DictConfig):
    import json as _j
    from importlib import resources

    width = _j.loads((resources.files("suti.models") / "model_configs" / f"{cfg.backbone.clip_config}.json").read_text())["text_cfg"]["width"]
    return build_unet(cfg.backbone, cfg.world.resolution, width, seed=cfg.seed + 99).eval()
