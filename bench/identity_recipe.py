"""Identity-embedder recipes on world v2: does it tell apart subjects that share every word
of their caption? Trains the embedder (DINO's role) on a workdir's pre-training renders with
each recipe and prints JSON: the foundation checks' `margin` (same subject vs another of
the same class, held-out renders) and `same_caption_margin` (same subject vs another with
the identical caption, new subjects), plus seconds. With `--val-eval` (the id of a stored
`suti eval eval.split=val "eval.methods=[oracle,base]"` run) it also scores that run's base
images and the oracle renders with each recipe's embedder: `oracle_minus_base` is Table 1's
room that only a subject's images can fill (issue 11 asks >= 0.3), read on `val` only, so
the recipe chosen here is never chosen on test figures.

    .venv/bin/python bench/identity_recipe.py --workdir /tmp/w2/work \\
        --recipe hard_batches=0 --recipe hard_batches=0.5 --recipe hard_batches=1.0

`--recipe stored` scores the workdir's own embedder without training. Each other recipe is a comma-separated list of `foundation.identity` overrides. The workdir's
store is only read (its world); models are written to a temporary store.
"""
from __future__ import annotations

import argparse
import json

from _workdir import foundation_inputs, open_workdir, train_recipe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a workdir whose world is built (its store is read only)")
    ap.add_argument("--recipe", action="append", default=[], help="identity overrides, e.g. hard_batches=0.5,steps=500")
    ap.add_argument("--val-eval", default=None, help="eval id of a val-split eval with base images in the store")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from suti.models.foundation import IdentityNet
    from suti.models.scorers import Scorers, load_state
    from suti.tasks import foundation as F

    cfg, src = open_workdir(args.workdir, args.profile)
    images, scenes, checks, check_ims = foundation_inputs(cfg, src)
    val = val_slots(cfg, src, args.val_eval) if args.val_eval else None
    rows = []
    for recipe in args.recipe or [""]:
        if recipe == "stored":  # the workdir's own embedder, as its foundation checks scored it
            over, rcfg, tmp, seconds = "stored", cfg, src, 0.0
        else:
            over, rcfg, tmp, seconds = train_recipe(cfg, "identity", recipe, F.train_identity, images, scenes)
        st = load_state(tmp, "foundation/identity/model.pt")
        net = IdentityNet(**st["meta"]["arch"])
        net.load_state_dict(st["state_dict"])
        sc = Scorers(clip=None, identity=net.eval(), rater=None)
        res = F.identity_checks(rcfg, sc, checks, check_ims)
        rows.append({"recipe": over, "margin": res["margin"], "same_caption_margin": res["same_caption_margin"],
                     "same_caption_same_subject": res["same_caption_same_subject"],
                     "same_caption_other_subject": res["same_caption_other_subject"],
                     "train_seconds": round(seconds, 1)})
        if val is not None:
            rows[-1].update(val_gap(sc, val))
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"bench": "identity_recipe", "workdir": args.workdir, "val_eval": args.val_eval,
                      "val_subjects": None if val is None else [v["sid"] for v in val], "rows": rows}, indent=1))
    return 0


def val_slots(cfg, store, eval_id: str) -> list[dict]:
    """Per val subject of a stored eval: its demos, its oracle renders and the base row's
    images, slot for slot as that eval scored them (the same cases, prompts and seeds)."""
    import numpy as np

    from suti.tasks.evaluate import subject_cases
    from suti.models.scorers import Scorers
    from suti.tasks import evaluate as E

    R = cfg.world.resolution
    stored = {r["sid"]: r for r in (store.get_json(k) for k in store.list(f"eval/{eval_id}/subjects/"))}
    if not stored:
        raise SystemExit(f"no stored eval {eval_id!r}: run `suti eval eval.split=val \"eval.methods=[oracle,base]\"`")
    cases = {c.sid: c for c in subject_cases(cfg, store, Scorers.load(store, cfg.backbone.clip_config, R), None, "val")}
    out = []
    for sid, res in sorted(stored.items()):
        if sid not in cases:
            raise SystemExit(f"eval {eval_id} holds {sid}, not a val subject: this bench reads val only")
        case = cases[sid]
        base = [r for r in res["records"] if r["method"] == "base"]
        recs = E.dreambench_records(case.described, case.live)
        n = len(base) // len(recs)
        seeds = E.seeds_for(case, len(recs), cfg.seed)
        out.append({"sid": sid, "demos": case.demos, "n": n,
                    "base": np.stack([E.load_png(store.get_bytes(r["image_key"]), R) for r in base]),
                    "oracle": E.oracle_images(case, recs, n, seeds, R)})
    return out


def val_gap(sc, val: list[dict]) -> dict:
    """Mean identity (cosine to the subject's demos) of the oracle renders and of the base
    row's images on the val slots, and their difference."""
    import numpy as np

    from suti.tasks.judge import identity_scores

    o = np.concatenate([identity_scores(sc, v["oracle"], [v["demos"]] * len(v["oracle"])) for v in val])
    b = np.concatenate([identity_scores(sc, v["base"], [v["demos"]] * len(v["base"])) for v in val])
    return {"val_oracle": float(o.mean()), "val_base": float(b.mean()), "oracle_minus_base": float(o.mean() - b.mean()),
            "val_images": int(len(b))}


if __name__ == "__main__":
    raise SystemExit(main())
