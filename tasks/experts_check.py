"""The experts' quality check: on N clusters, does fine-tuning close the identity gap
between the base model (class word, no fine-tuning) and real renders of the subject in
the prompt's scene? This check, and only it, reads the world's ground truth."""
from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np

from suti.models.scorers import Scorers
from suti.tasks.experts import current_experts, read_image, sample_prompts
from suti.tasks.foundation import load_base_unet, load_clip
from suti.tasks.judge import identity_scores, judge
from suti.world.render import grid, render
from suti.world.scene import Scene, appearance_phrase, compose, subject_from_dict


def truth_subjects(store) -> tuple[dict, dict]:
    labels = {}
    for line in store.get_bytes("world/truth/labels.jsonl").decode().splitlines():
        d = json.loads(line)
        labels["world/" + d["key"]] = d["subject_id"]
    subjects = {json.loads(x)["id"]: subject_from_dict(json.loads(x))
                for x in store.get_bytes("world/truth/subjects.jsonl").decode().splitlines()}
    return labels, subjects


def class_prompt(subject, p: dict) -> str:
    """The same prompt with the class word in place of the subject description."""
    return compose(appearance_phrase(subject, tuple(p.get("edits") or ()), colours=False), p.get("context") or "studio",
                   p.get("view") or "front", tuple(p.get("accessories") or ()), p.get("style") or "photo")


def check_experts(cfg, store, n_clusters: int = 30, root: str = "experts") -> dict:
    """Identity gap closed, text and overall of the first `n_clusters` current experts under
    `root` against the base model (class-word prompt, same seeds) and real renders."""
    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    labels, subjects = truth_subjects(store)
    R = cfg.world.resolution
    recs = current_experts(cfg, store, root)[:n_clusters]
    if not recs:
        return {"clusters": 0}
    base = load_base_unet(cfg, store)
    clip = load_clip(cfg, store)
    e_imgs, b_imgs, r_imgs, demo_sets, prompts = [], [], [], [], []
    rows = []
    for rec in recs:
        demos = np.stack([read_image(store, k, R) for k in rec["demo_keys"]])
        sid = Counter(labels.get(k) for k in rec["demo_keys"]).most_common(1)[0][0]
        subj = subjects[sid]
        ps = [s["prompt_record"] for s in rec["samples"]]
        exp = np.stack([read_image(store, s["key"], R) for s in rec["samples"]])
        bas = sample_prompts(base, clip, cfg.backbone.clip_config, [class_prompt(subj, p) for p in ps], 1,
                             rec["scheduler"], rec["sample_steps"], rec["guidance"], rec["seed"] + 1, cfg.backbone)
        real = np.stack([render(Scene(subj, p.get("context") or "studio", p.get("view") or "front",
                                      tuple(p.get("edits") or ()), tuple(p.get("accessories") or ()),
                                      p.get("style") or "photo", s["seed"] + s["index"]), R)
                         for p, s in zip(ps, rec["samples"])])
        e_imgs.append(exp), b_imgs.append(bas), r_imgs.append(real)
        demo_sets += [demos] * len(exp)
        prompts += ps
        rows.append(list(demos[:3]) + [real[0], bas[0], exp[0]])
    E, B, Rr = np.concatenate(e_imgs), np.concatenate(b_imgs), np.concatenate(r_imgs)
    ie, ib, ir = (identity_scores(sc, x, demo_sets) for x in (E, B, Rr))
    je = judge(sc, store, E, prompts, demo_sets)
    jb = judge(sc, store, B, prompts, demo_sets)
    jr = judge(sc, store, Rr, prompts, demo_sets)  # the rater's ceiling on these prompts
    gap = float(ir.mean() - ib.mean())
    out = {"clusters": len(recs), "samples": int(len(E)),
           "identity_expert": float(ie.mean()), "identity_base": float(ib.mean()), "identity_real": float(ir.mean()),
           "gap_closed": float((ie.mean() - ib.mean()) / gap) if abs(gap) > 1e-6 else None,
           "text_expert": float(je["text"].mean()), "text_base": float(jb["text"].mean()),
           "text_real": float(jr["text"].mean()), "overall_real": float(jr["overall"].mean()),
           "overall_expert": float(je["overall"].mean()), "overall_base": float(jb["overall"].mean()),
           "clip_t_expert": float(sc.clip_t(E, [p["text"] for p in prompts]).mean())}
    buf = io.BytesIO()
    grid([im for r in rows[:8] for im in r], 6, scale=3).save(buf, format="PNG")
    out["_grid"] = buf.getvalue()
    out["grid_columns"] = ["demo", "demo", "demo", "real render", "base (class word)", "expert"]
    return out
