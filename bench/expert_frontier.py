"""The expert recipe's cost/quality frontier: method (full / LoRA) x steps x lr -> seconds per
expert and identity gap closed, on the same clusters, prompts and seeds. Prints JSON.

    .venv/bin/python bench/expert_frontier.py --workdir /tmp/w4/work --clusters 8 \\
        --recipe method=full,steps=150,lr=1e-4 --recipe method=lora,steps=150,lr=1e-3

Each recipe is a comma-separated list of `expert` overrides. Its experts are trained through
the experts flow's own mapping (`run_specs`, `num_workers` at a time, as `suti experts` pays)
on the first `--clusters` mined clusters of a workdir whose mining finished, into
`bench-experts/<recipe digest>/` of the workdir's store (a rerun reuses finished experts; the
default recipe reuses the workdir's own `experts/` when they match). Then the experts check
(`tasks/experts_check.py`, the only reader of world truth) scores them against the base model
given the class word (same prompts and seeds for every recipe) and real renders:

- `gap_closed` = (identity(expert) - identity(base)) / (identity(real) - identity(base)),
- `text_expert` / `overall_expert`: the auto-rater's text and overall on the experts' samples,
- `seconds_per_expert`: mean train + sample seconds from the experts' records, and
  `wall_per_expert`: the mapping's wall clock / experts (with the workers' concurrency).

`cheapest_ok` names the recipe with the lowest `seconds_per_expert` whose `gap_closed` >=
`--floor` (issue 12: 0.6).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a workdir whose mining finished (`suti mine`)")
    ap.add_argument("--recipe", action="append", default=[], help="expert overrides, e.g. method=lora,steps=100,lr=1e-3")
    ap.add_argument("--clusters", type=int, default=8, help="clusters (experts) per recipe, the same for every recipe")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--floor", type=float, default=0.6, help="gap_closed an acceptable recipe must reach")
    args = ap.parse_args(argv)
    if not args.recipe:
        raise SystemExit("give at least one --recipe")
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from _workdir import open_workdir, parse_recipe
    from omegaconf import OmegaConf

    from suti.config import setup_env
    from suti.errors import UserError
    from suti.flows.stages import require
    from suti.store import digest
    from suti.tasks.experts import RECIPE_KEYS, expert_specs

    recipes = [parse_recipe(r) for r in args.recipe]
    cfg0, store = open_workdir(args.workdir, args.profile)
    for over in recipes:
        bad = sorted(set(over) - set(cfg0.expert))
        if bad:
            raise SystemExit(f"unknown expert key(s) {bad}; known: {sorted(cfg0.expert)}")
    try:
        require("mine", cfg0, store, by="experts")  # what the experts stage itself requires
    except UserError as e:
        raise SystemExit(str(e)) from None
    setup_env(cfg0)
    from suti.flows.experts import run_specs
    from suti.tasks.experts_check import check_experts

    specs = expert_specs(store, args.clusters)
    if len(specs) < args.clusters:
        print(f"only {len(specs)} clusters with prompts", file=sys.stderr)
    default = {k: cfg0.expert[k] for k in RECIPE_KEYS}
    rows = []
    for over in recipes:
        cfg = OmegaConf.merge(cfg0, {"expert": {**over, "clusters": len(specs), "runner": "thread"}})
        recipe = {k: OmegaConf.to_container(cfg.expert, resolve=True)[k] for k in RECIPE_KEYS}
        root = "experts" if recipe == default else f"bench-experts/{digest(recipe)}"
        print(f"recipe {over}: {len(specs)} experts under {root}/", file=sys.stderr, flush=True)
        t0 = time.time()
        results = run_specs(specs, cfg, store, root=root)
        wall = time.time() - t0
        ok = [r for r in results if r.status != "failed"]
        check = check_experts(cfg, store, n_clusters=len(specs), root=root)
        check.pop("_grid", None)
        row = {"recipe": over, "root": root, "experts": len(ok), "failed": len(results) - len(ok),
               "trained_now": sum(r.status == "trained" for r in results),
               "seconds_per_expert": round(sum(r.train_seconds + r.sample_seconds for r in ok) / max(1, len(ok)), 2),
               "train_seconds_per_expert": round(sum(r.train_seconds for r in ok) / max(1, len(ok)), 2),
               "wall_per_expert": round(wall / max(1, len(ok)), 2) if any(r.status == "trained" for r in ok) else None,
               **{k: check.get(k) for k in ("gap_closed", "identity_expert", "identity_base", "identity_real",
                                            "text_expert", "text_base", "overall_expert", "overall_base",
                                            "clip_t_expert", "samples")}}
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    good = [r for r in rows if r["gap_closed"] is not None and r["gap_closed"] >= args.floor and r["failed"] == 0]
    cheapest = min(good, key=lambda r: r["seconds_per_expert"]) if good else None
    out = {"bench": "expert_frontier", "workdir": args.workdir, "clusters": [s.cluster_id for s in specs],
           "floor": args.floor, "default_recipe": default, "workers": int(cfg0.num_workers),
           "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                       "load_avg_1m": round(os.getloadavg()[0], 2)},
           "results": rows, "cheapest_ok": cheapest["recipe"] if cheapest else None}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
