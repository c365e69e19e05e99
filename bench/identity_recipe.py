"""Identity-embedder recipes on world v2: does it tell apart subjects that share every word
of their caption? Trains the embedder (DINO's role) on a workdir's pre-training renders with
each recipe and prints JSON: the foundation checks' `margin` (same subject vs another of
the same class, held-out renders) and `same_caption_margin` (same subject vs another with
the identical caption, new subjects), plus seconds.

    .venv/bin/python bench/identity_recipe.py --workdir /tmp/w2/work \\
        --recipe hard_batches=0 --recipe hard_batches=0.5 --recipe hard_batches=1.0

Each recipe is a comma-separated list of `foundation.identity` overrides. The workdir's
store is only read (its world); models are written to a temporary store.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a workdir whose world is built (its store is read only)")
    ap.add_argument("--recipe", action="append", default=[], help="identity overrides, e.g. hard_batches=0.5,steps=500")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import yaml

    torch.set_num_threads(args.threads)
    from omegaconf import OmegaConf

    from suti.config import compose
    from suti.models.foundation import IdentityNet
    from suti.models.scorers import Scorers, load_state
    from suti.store import open_store
    from suti.tasks import foundation as F
    from suti.world.render import render

    cfg = compose([f"profile={args.profile}", f"workdir={args.workdir}", "progress=false"])
    src = open_store(str(cfg.storage.uri))
    images, scenes = F.load_pretrain(src)
    checks = F.heldout_renders(cfg, src, int(cfg.foundation.eval.heldout_renders))
    check_ims = np.stack([render(s, cfg.world.resolution) for s in checks])
    rows = []
    for recipe in args.recipe or [""]:
        over = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in recipe.split(",") if kv)}
        rcfg = OmegaConf.merge(cfg, {"foundation": {"identity": over}})
        tmp = open_store(f"file://{tempfile.mkdtemp(prefix='bench-identity-')}")
        t0 = time.time()
        F.train_identity(rcfg, tmp, images, scenes)
        seconds = time.time() - t0
        st = load_state(tmp, "foundation/identity/model.pt")
        net = IdentityNet(**st["meta"]["arch"])
        net.load_state_dict(st["state_dict"])
        sc = Scorers(clip=None, identity=net.eval(), rater=None)
        res = F.identity_checks(rcfg, sc, checks, check_ims)
        rows.append({"recipe": over, "margin": res["margin"], "same_caption_margin": res["same_caption_margin"],
                     "same_caption_same_subject": res["same_caption_same_subject"],
                     "same_caption_other_subject": res["same_caption_other_subject"],
                     "train_seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"bench": "identity_recipe", "workdir": args.workdir, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
