"""bf16 autocast for no-grad sampling: faster, and the same images' quality?

Samples the base model of a workdir on the same held-out prompts and seeds (the sampling
path of every Table 1 row, `text_to_image`, 4 images a prompt as the eval) once per
precision and prints JSON per precision: seconds per prompt (one guided batch of 4 x 25
steps), the auto-rater's class accuracy and CLIP-T on the generic prompts (as the
foundation checks score the base model), and against fp32 the mean absolute pixel
difference and how often the rater's class label agrees.

    .venv/bin/python bench/bf16_sampling.py --workdir /tmp/w2/work --prompts 50

The workdir's store is only read.
"""
from __future__ import annotations

import argparse
import json
import time

from _workdir import open_workdir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a workdir whose foundation is trained (its store is read only)")
    ap.add_argument("--prompts", type=int, default=50)
    ap.add_argument("--images", type=int, default=4, help="images per prompt (one batch)")
    ap.add_argument("--precision", action="append", default=[], help="fp32 | bf16 (default: both)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from suti.models.backbone import base_model_fn, load_backbone, text_to_image
    from suti.models.scorers import Scorers
    from suti.tasks import foundation as F
    from suti.world.scene import generic_caption

    cfg, store = open_workdir(args.workdir, args.profile)
    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    bb = load_backbone(cfg, store)
    fn = base_model_fn(bb)
    scenes = F.heldout_renders(cfg, store, args.prompts)
    prompts = [generic_caption(s) for s in scenes]
    want = np.repeat([s.subject.cls for s in scenes], args.images)
    ev = cfg.eval
    rows, first = [], None
    text_to_image(bb, fn, prompts[0], args.images, ev.guidance, ev.scheduler, 2, 0)  # warm-up
    for prec in args.precision or ["fp32", "bf16"]:
        bb.sample_precision = prec
        t0 = time.time()
        ims = np.concatenate([text_to_image(bb, fn, p, args.images, ev.guidance, ev.scheduler, ev.sample_steps, 1000 + i)
                              for i, p in enumerate(prompts)])
        secs = time.time() - t0
        labels = [d["cls"] for d in sc.labels(ims)]
        row = {"precision": prec, "seconds_per_prompt": round(secs / len(prompts), 4), "images": int(len(ims)),
               "class_acc": float(np.mean(np.asarray(labels) == want)),
               "clip_t": float(sc.clip_t(ims, [p for p in prompts for _ in range(args.images)]).mean())}
        if first is None:
            first = (ims, labels)
        else:
            row["mean_abs_pixel_diff_vs_first"] = float(np.abs(ims.astype(float) - first[0].astype(float)).mean())
            row["rater_class_agrees_with_first"] = float(np.mean(np.asarray(labels) == np.asarray(first[1])))
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"bench": "bf16_sampling", "workdir": args.workdir, "threads": args.threads,
                      "steps": int(ev.sample_steps), "scheduler": str(ev.scheduler), "guidance": float(ev.guidance),
                      "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
