"""The check every trained apprentice gets: a few `val` subjects (never `test`), the first
prompts of their Table 1 slots (same prompts and seeds as the evaluation), scored like Table 1.

Rows: the oracle (real renders: free), the base on the shared prompt (what the words carry),
the expert fine-tuned on the subject's demos (DreamBooth's role, cached per subject under
``eval/<expert settings>/val-check-experts``) and the apprentice with its demos. Gives the
apprentice's val identity, overall and CLIP-T, its identity gap closed, and a grid:
demos | apprentice | expert per prompt, one row per subject.
"""
from __future__ import annotations

import io
import logging
import time

import numpy as np

from suti import keys as K
from suti.tasks import evaluate as E

log = logging.getLogger("suti.apprentice")

METHODS = ("oracle", "base", "expert", "apprentice")


def val_check(cfg, store, app, subjects: int, prompts: int) -> dict:
    """Figures (``val.<method>.<score>``, ``val.gap_closed``...) and ``_grid`` (PNG bytes)."""
    from suti.models.backbone import load_backbone
    from suti.models.scorers import Scorers, load_state
    from suti.tasks.foundation import load_clip
    from suti.world.render import labelled_grid

    t0 = time.time()
    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    cases = E.subject_cases(cfg, store, sc, subjects, "val")  # never empty: an empty split is a UserError
    backbone = load_backbone(cfg, store)
    base_fp = E.backbone_fingerprint(backbone)
    clip, base_state = getattr(backbone, "clip", None) or load_clip(cfg, store), load_state(store, K.BASE)
    root = f"eval/experts-{E.settings_digest(E.expert_settings(cfg, store))}/val-check-experts"
    R, k = cfg.world.resolution, int(cfg.apprentice.demos)
    n_demos = min(3, min(len(c.demos) for c in cases))
    shown = min(2, prompts)  # grid: the first prompts, apprentice beside expert
    parts = {m: [] for m in METHODS}
    ims, row_labels = [], []
    for i, case in enumerate(cases):
        recs = E.dreambench_records(case.described, case.live)[:prompts]
        seeds = E.seeds_for(case, len(recs), cfg.seed)  # the evaluation's seeds of these slots
        images = {"oracle": E.oracle_images(case, recs, 1, seeds, R),
                  "base": E.cached_base_images(cfg, store, backbone, base_fp, recs, 1, seeds)[0],
                  "expert": E.expert_images(cfg, store, case, recs, 1, seeds, root, base_state, clip),
                  "apprentice": E.apprentice_images(app, case, recs, 1, seeds, cfg, k=k)}
        for m, x in images.items():
            parts[m].append(E.score(sc, store, x, recs, [case.demos] * len(recs)))
        ims += list(case.demos[:n_demos]) + [images[m][j] for j in range(shown) for m in ("apprentice", "expert")]
        row_labels.append(f"{case.sid} {case.word}")
        log.info(f"val check: subject {i + 1}/{len(cases)} ({case.sid}) scored")
    means = {m: E.mean_scores(p) for m, p in parts.items()}
    room = means["oracle"]["identity"] - means["base"]["identity"]

    def closed(m: str) -> float | None:
        return (means[m]["identity"] - means["base"]["identity"]) / room if abs(room) > 1e-6 else None

    out = {f"val.{m}.{s}": v for m, d in means.items() for s, v in d.items() if v is not None}
    out.update({"val.gap_closed": closed("apprentice"), "val.expert_gap_closed": closed("expert"),
                "val.subjects": len(cases), "val.prompts": prompts, "val.seconds": round(time.time() - t0, 1)})
    cols = [f"demo {d + 1}" for d in range(n_demos)] + [f"{m} p{j + 1}" for j in range(shown)
                                                         for m in ("apprentice", "expert")]
    buf = io.BytesIO()
    labelled_grid(ims, len(cols), cols, row_labels, scale=3).save(buf, format="PNG")
    out["_grid"] = buf.getvalue()
    out["subject_ids"] = [c.sid for c in cases]
    return out
