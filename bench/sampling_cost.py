"""The apprentice's inference settings against their cost, on val: for each setting
(DPM-Solver++ steps, demo guidance or one CFG scale) the same val subjects, Table 1 slots
(shared prompts) and seeds, scored like Table 1 (identity, CLIP-T, overall), and the seconds
of one 4-image request. Samples through Table 1's own `apprentice_images`; reads the store only (no base or expert images are made).

    .venv/bin/python bench/sampling_cost.py --workdir /tmp/w/work --model models:/suti-apprentice@champion \\
        --setting 25:2.0 --setting 15:2.0 --setting 10:2.0 --setting 25:none

A setting is `steps:demo_guidance` (`none`: one guidance scale for text and demos)."""
from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from _workdir import open_workdir


def parse_setting(s: str) -> tuple[int, float | None]:
    try:
        steps, dg = s.split(":")
        return int(steps), (None if dg.lower() == "none" else float(dg))
    except ValueError:
        raise SystemExit(f"setting {s!r} is not steps:demo_guidance (e.g. 25:2.0 or 25:none)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a finished default run's workdir (its store is only read)")
    p.add_argument("--model", default="models:/suti-apprentice@champion")
    p.add_argument("--subjects", type=int, default=3, help="val subjects (the first N of the split)")
    p.add_argument("--prompts", type=int, default=5, help="Table 1 slots per subject, from the first")
    p.add_argument("--setting", action="append", default=None, help="steps:demo_guidance (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    settings = [parse_setting(s) for s in (args.setting or ["25:2.0", "15:2.0", "25:none"])]

    import torch
    from omegaconf import OmegaConf

    torch.set_num_threads(args.threads)
    from suti.config import setup_env
    from suti.models.scorers import Scorers
    from suti.tasks import evaluate as E
    from suti.tasks.apprentice import load_apprentice

    cfg, store = open_workdir(args.workdir)
    setup_env(cfg)
    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    cases = E.subject_cases(cfg, store, sc, args.subjects, "val")
    app = load_apprentice(args.model, cfg, store, device="cpu")
    k = int(cfg.apprentice.demos)
    rows = []
    for steps, dg in settings:
        # generate(demo_guidance=None) means "the export's default": one scale is asked for through the defaults
        app.defaults["demo_guidance"] = dg
        c = OmegaConf.merge(cfg, {"eval": {"sample_steps": steps, "demo_guidance": dg}})  # Table 1's sampler, this setting
        kw = dict(guidance=float(c.eval.guidance), scheduler=str(c.eval.scheduler), steps=steps, demo_guidance=dg)
        parts, gen_s, n_img = [], 0.0, 0
        for case in cases:
            recs = E.dreambench_records(case.described, case.live)[: args.prompts]
            t0 = time.time()
            ims = E.apprentice_images(app, case, recs, 1, E.seeds_for(case, len(recs), int(cfg.seed)), c, k=k)
            gen_s, n_img = gen_s + time.time() - t0, n_img + len(ims)
            parts.append(E.score(sc, store, ims, recs, [case.demos] * len(recs)))
        # one request as a user makes it: the first subject's demos, 4 images
        c0 = cases[0]
        t0 = time.time()
        app.generate(list(c0.demos[:k]), list(c0.demo_texts[:k]), f"a {c0.word} in the snow", num_images=4, seed=0, **kw)
        req = time.time() - t0
        m = E.mean_scores(parts)
        row = {"steps": steps, "demo_guidance": dg, "images": n_img, "identity": round(m["identity"], 4),
               "clip_t": round(m["clip_t"], 4), "overall": round(m["overall"], 4),
               "seconds_per_image": round(gen_s / max(n_img, 1), 3), "seconds_per_4_image_request": round(req, 3)}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    print(json.dumps({"benchmark": "sampling_cost", "workdir": args.workdir, "model": args.model, "split": "val",
                      "subjects": [c.sid for c in cases], "prompts_per_subject": args.prompts,
                      "scheduler": str(cfg.eval.scheduler), "guidance": float(cfg.eval.guidance), "settings": rows},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
