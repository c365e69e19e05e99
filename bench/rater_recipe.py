"""Auto-rater recipes on world v2: how well does the rater name the class of a held-out
subject's render? Trains the rater on a workdir's pre-training renders with each recipe and
prints JSON: the foundation checks' figures (class, context, pattern, view, style accuracy,
real-on-renders, on the same held-out renders as `foundation.json`) plus class accuracy per
class, per view and per style, and seconds.

    .venv/bin/python bench/rater_recipe.py --workdir /tmp/w2/work \\
        --recipe width=32 --recipe width=48 --recipe width=32,steps=6000

Each recipe is a comma-separated list of `foundation.rater` overrides. The workdir's store
is only read (its world); models are written to a temporary store.
"""
from __future__ import annotations

import argparse
import collections
import json

from _workdir import foundation_inputs, open_workdir, train_recipe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a workdir whose world is built (its store is read only)")
    ap.add_argument("--recipe", action="append", default=[], help="rater overrides, e.g. width=48,steps=3000")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from suti.models.foundation import RaterNet
    from suti.models.scorers import Scorers, load_state
    from suti.tasks import foundation as F

    cfg, src = open_workdir(args.workdir, args.profile)
    images, scenes, checks, check_ims = foundation_inputs(cfg, src)

    def acc_by(key, pred):
        tally = collections.defaultdict(lambda: [0, 0])
        for s, p in zip(checks, pred):
            t = tally[key(s)]
            t[0] += p["cls"] == s.subject.cls
            t[1] += 1
        return {k: round(a / n, 3) for k, (a, n) in sorted(tally.items())}

    rows = []
    for recipe in args.recipe or [""]:
        over, rcfg, tmp, seconds = train_recipe(cfg, "rater", recipe, F.train_rater, images, scenes)
        st = load_state(tmp, "foundation/rater/model.pt")
        net = RaterNet(**st["meta"]["arch"])
        net.load_state_dict(st["state_dict"])
        pred = Scorers(clip=None, identity=None, rater=net.eval()).labels(check_ims)
        res = F.rater_checks(checks, pred)
        rows.append({"recipe": over, **res, "class_acc_by_class": acc_by(lambda s: s.subject.cls, pred),
                     "class_acc_by_view": acc_by(lambda s: s.view, pred),
                     "class_acc_by_style": acc_by(lambda s: s.style, pred),
                     "train_seconds": round(seconds, 1)})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"bench": "rater_recipe", "workdir": args.workdir, "heldout_renders": len(checks),
                      "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
