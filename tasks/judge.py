"""The auto-rater's DreamBench-v2 judgement: three binary scores per generated image,
subject (same subject as the demos), text (the prompt's requests are visible) and
photorealism (no artifacts), and overall = AND of the three.

Also the identity score (DINO's role): mean cosine between a generated image's identity
embedding and the demos'.
"""
from __future__ import annotations

import json

import numpy as np

from suti.world import vocab as V


def identity_threshold(scorers, store) -> float:
    """Cosine above which two renders show the same subject: the midpoint between
    same-subject and same-class-other-subject means on the pre-training renders (never
    the held-out subjects). Cached in the store next to the identity model."""
    key = "foundation/identity/threshold.json"
    if store.exists(key):
        meta = store.get_json(key)
        if meta.get("model_loss") == _identity_loss(store):
            return float(meta["threshold"])
    images = store.get_array("world/pretrain/images.npy")
    scenes = [json.loads(x) for x in store.get_bytes("world/pretrain/scenes.jsonl").decode().splitlines()]
    rng = np.random.default_rng(0)
    idx = rng.choice(len(images), size=min(2000, len(images)), replace=False)
    emb = scorers.identity_embed(images[idx])
    sid = np.array([scenes[i]["subject"]["id"] for i in idx])
    cls = np.array([scenes[i]["subject"]["cls"] for i in idx])
    sim = emb @ emb.T
    iu = np.triu_indices(len(idx), 1)
    same = (sid[:, None] == sid[None, :])[iu]
    same_cls = (cls[:, None] == cls[None, :])[iu] & ~same
    s = sim[iu]
    thr = float((s[same].mean() + s[same_cls].mean()) / 2) if same.any() and same_cls.any() else 0.5
    store.put_json(key, {"threshold": thr, "model_loss": _identity_loss(store),
                         "same_mean": float(s[same].mean()) if same.any() else None,
                         "other_same_class_mean": float(s[same_cls].mean()) if same_cls.any() else None})
    return thr


def _identity_loss(store):
    meta = store.done_meta("foundation/identity") or {}
    return meta.get("loss")


def identity_scores(scorers, images: np.ndarray, demo_sets: list[np.ndarray]) -> np.ndarray:
    """Per image: mean cosine to its demos' identity embeddings."""
    emb = scorers.identity_embed(images)
    out = np.zeros(len(images))
    cache: dict[int, np.ndarray] = {}
    for i, demos in enumerate(demo_sets):
        k = id(demos)
        if k not in cache:
            cache[k] = scorers.identity_embed(demos)
        out[i] = float((cache[k] @ emb[i]).mean())
    return out


def text_ok(pred: dict, prompt: dict, class_key: str | None) -> bool:
    """Does the image show what the prompt asked for (as far as the rater can tell)?"""
    if class_key and pred["cls"] != class_key and "cube" not in (prompt.get("edits") or []):
        return False
    ctx = prompt.get("context") or "studio"
    if ctx != "studio" and pred["context"] != ctx:
        return False
    if (prompt.get("style") or "photo") != pred["style"]:
        return False
    view = prompt.get("view") or "front"
    if view != "front" and pred["view"] != view:
        return False
    for e in prompt.get("edits") or []:
        if e in ("red", "purple"):
            if pred["body"] != e:
                return False
        elif e not in pred["edits"]:
            return False
    return all(a in pred["accessories"] for a in prompt.get("accessories") or [])


def judge(scorers, store, images: np.ndarray, prompts: list[dict], demo_sets: list[np.ndarray]) -> dict:
    """DreamBench-v2-style binary scores for generated images.

    prompts[i] is the structured prompt record (text, context, view, edits, accessories,
    style); demo_sets[i] the demonstration images of image i's subject."""
    thr = identity_threshold(scorers, store)
    ident = identity_scores(scorers, images, demo_sets)
    preds = scorers.labels(images)
    demo_cls: dict[int, str] = {}
    subject, text, real = [], [], []
    for i, (p, pr) in enumerate(zip(preds, prompts)):
        k = id(demo_sets[i])
        if k not in demo_cls:
            labs = scorers.labels(demo_sets[i])
            vals, counts = np.unique([lab["cls"] for lab in labs], return_counts=True)
            demo_cls[k] = str(vals[counts.argmax()])
        cls = demo_cls[k]
        subject.append(bool(ident[i] >= thr and (p["cls"] == cls or "cube" in (pr.get("edits") or []))))
        text.append(text_ok(p, pr, cls))
        real.append(p["real"] > 0.5)
    subject, text, real = np.array(subject), np.array(text), np.array(real)
    return {"subject": subject, "text": text, "photorealism": real, "overall": subject & text & real,
            "identity": ident, "threshold": thr}


def class_key_of(word: str) -> str | None:
    for k, (w, _) in V.CLASSES.items():
        if w == word:
            return k
    return None
