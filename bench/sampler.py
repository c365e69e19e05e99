"""Samplers with the base model: DPM-Solver++ and DDIM at 25 steps vs DDPM at 1000 steps.
Seconds per image and quality (auto-rater class accuracy, CLIP-T) for each. Prints JSON.

    .venv/bin/python bench/sampler.py                                   # builds a smoke store first
    .venv/bin/python bench/sampler.py --store-uri file:///data/work/store --images 32

The prompts are generic captions of held-out renders (the foundation check's protocol:
reads the world's truth, evaluation only); every sampler gets the same prompts, seed and
guidance (`foundation.eval.guidance`). The store needs a finished foundation; it is only read.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

SAMPLERS = [("dpm", 25), ("ddim", 25), ("ddpm", 1000)]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store-uri", help="a store with a finished foundation (default: build a smoke one in --workdir)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint of --store-uri")
    p.add_argument("--workdir", default="work/bench", help="caches (and the smoke store when building one)")
    p.add_argument("--images", type=int, default=16, help="images (prompts) per sampler")
    p.add_argument("--samplers", default=",".join(f"{k}:{n}" for k, n in SAMPLERS),
                   help="scheduler:steps,... (default: %(default)s)")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides (e.g. profile=smoke, seed=1)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    wd = Path(args.workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    from suti.config import compose, setup_env

    setup_env(compose([f"workdir={wd}"]))
    import numpy as np
    import torch

    from suti.models.scorers import Scorers
    from suti.store import open_store
    from suti.tasks.foundation import generate_base, heldout_renders, load_base_unet
    from suti.world.scene import generic_caption
    from suti.world.render import render

    if args.store_uri:
        store = open_store(args.store_uri, args.endpoint_url)
        cfg = compose([*args.overrides, f"workdir={wd}"])
    else:
        from suti.flows.foundation import foundation_flow

        smoke = wd / "smoke"
        ov = ["profile=smoke", f"workdir={smoke}", f"reports_dir={smoke / 'reports'}", "progress=false", *args.overrides]
        foundation_flow(overrides=ov)
        cfg = compose(ov)
        store = open_store(str(cfg.storage.uri))
    if not store.is_done("foundation/base"):
        print(f"sampler: no finished foundation in {store.uri}: run `suti foundation` first", file=sys.stderr)
        return 2
    unet = load_base_unet(cfg, store)
    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    scenes = heldout_renders(cfg, store, args.images)
    prompts = [generic_caption(s) for s in scenes]
    real = np.stack([render(s, int(cfg.world.resolution)) for s in scenes])
    rows = []
    for item in args.samplers.split(","):
        kind, steps = item.split(":")
        sampling = {"scheduler": kind, "sample_steps": int(steps), "guidance": float(cfg.foundation.eval.guidance)}
        t0 = time.time()
        ims = generate_base(unet, sc.clip, cfg.backbone.clip_config, prompts, _Obj(sampling), int(cfg.seed),
                            backbone=cfg.backbone)
        sec = time.time() - t0
        lab = sc.labels(ims)
        rows.append({"sampler": kind, "steps": int(steps), "images": len(ims),
                     "seconds_per_image": round(sec / len(ims), 3), "seconds": round(sec, 1),
                     "class_acc": float(np.mean([p["cls"] == s.subject.cls for p, s in zip(lab, scenes)])),
                     "context_acc": float(np.mean([p["context"] == s.context for p, s in zip(lab, scenes)])),
                     "clip_t": round(float(sc.clip_t(ims, prompts).mean()), 4)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    lab = sc.labels(real)
    out = {"bench": "sampler", "store": store.uri, "resolution": int(unet.config.sample_size),
           "guidance": float(cfg.foundation.eval.guidance), "seed": int(cfg.seed),
           "real_renders": {"class_acc": float(np.mean([p["cls"] == s.subject.cls for p, s in zip(lab, scenes)])),
                            "clip_t": round(float(sc.clip_t(real, prompts).mean()), 4)},
           "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "niceness": os.nice(0),
                       "python": platform.python_version(), "load_avg_1m": round(os.getloadavg()[0], 2)},
           "results": rows}
    print(json.dumps(out, indent=2))
    return 0


class _Obj(dict):
    """Attribute access to a dict (generate_base reads cfg.scheduler / .sample_steps / .guidance)."""
    __getattr__ = dict.__getitem__


if __name__ == "__main__":
    sys.exit(main())
