"""Which apprentice training choices make it read its demonstrations? Measured on `val`.

For each recipe: train the apprentice on a finished workdir's G (or the raw clusters, or
both) with `apprentice` overrides, then run the eval flow on the **val** split with the
oracle, base and apprentice rows (the shared prompt protocol: the same prompt and seed per
slot), and print JSON per recipe: identity of each row, CLIP-T, `gap_closed` =
(apprentice - base) / (oracle - base), training seconds and the final gates.

    .venv/bin/python bench/apprentice_recipes.py --workdir /tmp/w3/work --limit 5 \\
        --recipe steps=400 --recipe steps=400,lr=1e-3 --recipe steps=400,lr=1e-3,train_base=true

A recipe is a comma-separated list of `apprentice` overrides plus two keys of its own:
`source` = G (default) | clusters | mix (G plus every mined cluster: many more subjects) and
`lam` = the filter's lambda for G (default `filter.lambda_`; `none`: every expert sample) and
`min_id` = keep only G rows whose sample's identity to its cluster is at least this (the filter's
`identity` field: delta-CLIP alone keeps the samples that copy the subject least).
Models go to the workdir's store as unregistered runs `bench-<digest>` (a rerun reuses a
finished one); nothing is registered or promoted, and test subjects are never read.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time


def parse(recipe: str) -> tuple[dict, list[str]]:
    """(own keys, apprentice overrides) of one recipe string."""
    own, ov = {"source": "G", "lam": "config", "min_id": None}, []
    for kv in filter(None, recipe.split(",")):
        k, v = kv.split("=", 1)
        if k in own:
            own[k] = v
        else:
            ov.append(f"apprentice.{k}={v}")
    if own["source"] not in ("G", "clusters", "mix"):
        raise SystemExit(f"source must be G, clusters or mix, got {own['source']!r}")
    return own, ov


def rows_for(store, cfg, own: dict) -> list[dict]:
    from suti.tasks.apprentice import rows as R

    lam = float(cfg.filter.lambda_) if own["lam"] == "config" else None if own["lam"] == "none" else float(own["lam"])
    if own["source"] == "clusters":
        return R.cluster_rows(store)
    G = R.load_G(store, lam)
    if own["min_id"] is not None:
        if any("identity" not in r for r in G):
            raise SystemExit("min_id: this workdir's filter rows have no `identity` (made before it existed); "
                             "run `suti filter --force` first")
        G = [r for r in G if r["identity"] >= float(own["min_id"])]
    return G + R.cluster_rows(store) if own["source"] == "mix" else G


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="a workdir whose filter stage finished")
    ap.add_argument("--recipe", action="append", default=[], help="e.g. steps=400,lr=1e-3,source=mix")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--limit", type=int, default=5, help="val subjects evaluated")
    ap.add_argument("--images-per-prompt", type=int, default=1)
    ap.add_argument("--curves", action="store_true", help="also the K-shot curve (K = 0..5) on val")
    ap.add_argument("--demo-guidance", default="", metavar="S,S",
                    help="also evaluate each trained model with these separate demo guidance scales (eval.demo_guidance)")
    args = ap.parse_args(argv)

    from suti.config import compose, setup_env

    # homes, caches and telemetry switches into the workdir before prefect is imported (as the CLI does)
    setup_env(compose([f"profile={args.profile}", f"workdir={args.workdir}"]))
    from suti.flows.eval import eval_flow
    from suti.store import open_store
    from suti.tasks import apprentice as A

    out = []
    for recipe in args.recipe or ["steps=400"]:
        own, ov = parse(recipe)
        name = "bench-" + hashlib.sha256(recipe.encode()).hexdigest()[:10]
        base_ov = [f"profile={args.profile}", f"workdir={args.workdir}", "progress=false",
                   "apprentice.register=false", f"apprentice.run_name={name}"]
        cfg = compose(base_ov + ov)
        store = open_store(str(cfg.storage.uri))
        rows = rows_for(store, cfg, own)
        t0 = time.time()
        rec = A.train_apprentice(cfg, store, rows, name)
        train_s = time.time() - t0
        eval_ov = base_ov + ov + [f"eval.images_per_prompt={args.images_per_prompt}",
                                  "eval.methods=[oracle,base,apprentice]", f"eval.curves={str(args.curves).lower()}"]
        t1 = time.time()
        ev = eval_flow(overrides=eval_ov, model=name, limit=args.limit, split="val", register_tags=False)
        eval_s = time.time() - t1
        rows_t = {r["method"]: r for r in ev["table"]}
        o, b, a = (rows_t[m]["identity"] for m in ("oracle", "base", "apprentice"))
        by_dg = {}
        for dg in filter(None, args.demo_guidance.split(",")):
            e2 = eval_flow(overrides=eval_ov + [f"eval.demo_guidance={float(dg)}"], model=name, limit=args.limit,
                           split="val", register_tags=False)
            r2 = next(r for r in e2["table"] if r["method"] == "apprentice")
            by_dg[dg] = {"identity": round(r2["identity"], 4), "clip_t": round(r2["clip_t"], 4),
                         "overall": r2.get("overall"),
                         "gap_closed": round((r2["identity"] - b) / (o - b), 4) if abs(o - b) > 1e-9 else None}
        res = {"recipe": recipe, "run": name, "rows": len(rows), "subjects": len({r["cluster_id"] for r in rows}),
               "steps": rec.get("steps"), "train_seconds": round(train_s, 1), "eval_seconds": round(eval_s, 1),
               "final_loss": rec.get("loss"), "gates": rec.get("gates"),
               "identity": {"oracle": round(o, 4), "base": round(b, 4), "apprentice": round(a, 4)},
               "clip_t": {m: round(rows_t[m]["clip_t"], 4) for m in ("base", "apprentice")},
               "overall": {m: rows_t[m].get("overall") for m in ("base", "apprentice")},
               "gap_closed": round((a - b) / (o - b), 4) if abs(o - b) > 1e-9 else None,
               "kshot": [{"k": r["k"], "identity": round(r["identity"], 4)} for r in ev.get("kshot", [])],
               "demo_guidance": by_dg,
               "split": ev["split"], "subject_ids": ev["subject_ids"]}
        print(json.dumps(res), file=sys.stderr, flush=True)
        out.append(res)
    print(json.dumps({"benchmark": "apprentice_recipes", "workdir": args.workdir, "split": "val",
                      "limit": args.limit, "images_per_prompt": args.images_per_prompt, "results": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
