"""`suti status`: which pipeline stages are finished in a workdir, read from the store's
completion markers (`<stage>/_DONE.json`, written last), as `dvc status` reads its lock file.

    suti status                       # ./work (or $SUTI_WORKDIR)
    suti status workdir=/data/run2    # another workdir

It starts no flow, imports neither Prefect nor MLflow, and writes nothing.
"""
from __future__ import annotations

import sys

from suti import keys as K


def _markers(store, prefix: str) -> list[str]:
    """Items under `prefix` with a completion marker: `experts/c01/_DONE.json` -> `c01`."""
    return sorted({k[len(prefix) + 1:].rsplit("/", 1)[0] for k in store.list(prefix)
                   if k.endswith("/_DONE.json") and k.count("/") == prefix.count("/") + 2})


def stage_status(store) -> list[dict]:
    """One row per stage of `suti run`: {stage, done (bool), detail}."""
    rows = []

    def add(stage, done, detail=""):
        rows.append({"stage": stage, "done": bool(done), "detail": detail})

    add("world", store.exists("world/manifest.json"), "world/manifest.json")
    models = [m for m in K.FOUNDATION_MODELS if store.is_done(K.foundation_done(m))]
    add("foundation", len(models) == len(K.FOUNDATION_MODELS),
        f"{len(models)}/{len(K.FOUNDATION_MODELS)} models" + (f" ({', '.join(models)})" if models else ""))
    mine = store.done_meta("mine")
    n_clusters = None
    if mine is not None:
        c = mine.get("clusters")
        n_clusters = len(c) if isinstance(c, (list, dict)) else c
    add("mine", mine is not None, f"{n_clusters} clusters" if n_clusters is not None else "")
    experts = _markers(store, "experts")
    add("experts", bool(experts) and (n_clusters is None or len(experts) >= int(n_clusters)),
        f"{len(experts)}" + (f"/{n_clusters}" if n_clusters is not None else "") + " experts")
    flt = store.done_meta("filter")
    add("filter", flt is not None, f"{flt.get('rows')} scored samples" if flt else "")
    add("sweep", store.exists("sweep/overall_vs_lambda.png"), "sweep/overall_vs_lambda.png")
    runs = _markers(store, "apprentice")
    add("apprentice", bool(runs), f"{len(runs)} run(s)" + (f": {', '.join(runs)}" if runs else ""))
    evals = _markers(store, "eval")
    add("eval", bool(evals), f"{len(evals)} eval(s)" + (f": {', '.join(evals)}" if evals else ""))
    return rows


def status(overrides: list[str] | None = None, force: bool = False, out=None) -> int:
    """Print the stages of `suti run` and whether each is finished in the workdir."""
    from suti.errors import UserError
    from suti.config import compose
    from suti.store import open_store

    out = out or sys.stdout
    cfg = compose(overrides)
    if force:
        raise UserError("suti status takes no --force (it only reads)")
    store = open_store(str(cfg.storage.uri), cfg.storage.endpoint_url)
    rows = stage_status(store)
    from pathlib import Path

    print(f"workdir {Path(cfg.workdir).expanduser().resolve()}  (store {cfg.storage.uri})", file=out)
    for r in rows:
        print(f"  {r['stage']:<11} {'done' if r['done'] else 'missing':<8} {r['detail']}".rstrip(), file=out)
    done = sum(r["done"] for r in rows)
    print(f"{done}/{len(rows)} stages finished; promote keeps no marker (the champion alias is in MLflow)", file=out)
    return 0
