"""Train one foundation model of a workdir (as `suti foundation` does, same trainer, same
done marker and recipe), so that the four models can train in parallel processes at one
thread each on a small machine; `suti foundation` afterwards reuses them and runs the checks.

    .venv/bin/python bench/foundation_model.py --workdir /tmp/w2/work --model base &
    .venv/bin/python bench/foundation_model.py --workdir /tmp/w2/work --model rater foundation.rater.width=64 &
    wait; .venv/bin/suti foundation workdir=/tmp/w2/work foundation.rater.width=64

Prints JSON: the model, its seconds, loss and recipe.
"""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a workdir whose world is built")
    ap.add_argument("--model", required=True, choices=["clip", "identity", "rater", "base"])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. foundation.rater.width=64")
    args = ap.parse_args(argv)

    from suti.flows.common import prepare
    from suti.flows.foundation import _finished, train_model
    from suti.tasks import foundation as F

    cfg, store = prepare([f"profile={args.profile}", f"workdir={args.workdir}", f"torch_threads={args.threads}",
                          *args.overrides])
    if _finished(cfg, store, args.model):
        print(json.dumps({"model": args.model, "reused": True, "recipe": F.recipe(cfg, args.model)}))
        return 0
    images, scenes = F.load_pretrain(store)
    out = train_model.fn(args.model, cfg, store, images, scenes)
    print(json.dumps({"model": args.model, "seconds": out["seconds"], "loss": out["loss"],
                      "recipe": F.recipe(cfg, args.model)}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
