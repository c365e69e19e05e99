"""Train some foundation models in this process, in order, as `suti foundation` would (same
trainer, done markers and recipes): the foundation flow starts two of these at one torch
thread each when `foundation.processes=2` (a 2-core machine trains two models side by side
faster than one after the other at two threads: bench/README.md).

    python -m suti.flows.foundation_worker --model clip --model base -- workdir=/tmp/w/work torch_threads=1
"""
from __future__ import annotations

import argparse
import sys

from suti.tasks import foundation as F


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", required=True, choices=list(F.MODELS))
    ap.add_argument("overrides", nargs="*", help="the flow's config overrides")
    args = ap.parse_args(argv)

    from suti.flows.common import prepare
    from suti.flows.foundation import train_model

    cfg, store = prepare(args.overrides)
    images, scenes = F.load_pretrain(store)
    for model in args.model:
        out = train_model.fn(model, cfg, store, images, scenes)
        print(f"trained {model} in {out['seconds']} s (loss {out['loss']:.4f})", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
