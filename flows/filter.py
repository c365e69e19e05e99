"""`suti filter`: delta-CLIP for every expert sample, G(lambda) sizes, a histogram."""
from __future__ import annotations

import json
import time

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from suti.flows.common import logger, prepare, write_report
from suti.tracking import log_bytes, log_json, log_metrics, mlflow_run

CHECK_LAMBDAS = [None, 0.0, 0.01, 0.02, 0.03]


@task(name="delta-clip", cache_policy=NO_CACHE)
def score_deltas(cfg, store) -> list[dict]:
    from suti.models.scorers import Scorers
    from suti.tasks.experts import current_experts
    from suti.tasks.filter import delta_rows

    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    rows = delta_rows(sc, store, cfg.world.resolution, current_experts(cfg, store))
    store.put_bytes("filter/deltas.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    store.mark_done("filter", {"rows": len(rows)})
    return rows


@task(name="kept-vs-dropped", cache_policy=NO_CACHE)
def kept_vs_dropped(cfg, store, rows: list[dict], lam: float) -> dict:
    """Auto-rater overall score of samples kept vs dropped at lambda."""
    from suti.models.scorers import Scorers
    from suti.tasks.experts import read_image
    from suti.tasks.judge import judge

    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    R = cfg.world.resolution
    demo_cache: dict = {}
    demos = []
    for r in rows:
        k = tuple(r["demo_keys"])
        if k not in demo_cache:
            demo_cache[k] = np.stack([read_image(store, x, R) for x in k])
        demos.append(demo_cache[k])
    ims = np.stack([read_image(store, r["sample_key"], R) for r in rows])
    j = judge(sc, store, ims, [r["prompt_record"] or {"text": r["prompt"]} for r in rows], demos)
    kept = np.array([r["delta"] > lam for r in rows])
    res = {"lambda": lam, "kept": int(kept.sum()), "dropped": int((~kept).sum())}
    for part in ("overall", "subject", "text", "photorealism"):
        res[f"{part}_kept"] = float(j[part][kept].mean()) if kept.any() else None
        res[f"{part}_dropped"] = float(j[part][~kept].mean()) if (~kept).any() else None
    both = res["overall_kept"] is not None and res["overall_dropped"] is not None
    res["overall_gain"] = res["overall_kept"] - res["overall_dropped"] if both else None  # None: one side empty
    return res


@flow(name="filter", log_prints=True)
def filter_flow(overrides: list[str] | None = None, force: bool = False) -> dict:
    from suti.flows import stages
    from suti.tasks.filter import histogram_png, select

    cfg, store = prepare(overrides)
    lg = logger()
    stages.require("experts", cfg, store, by="filter")
    fp = stages.filter_fingerprint(cfg, store)
    prev = None if force else stages.marked(store, "filter", fp)
    if prev is not None and store.is_done("filter"):
        lg.info(f"filter: the experts, scorers and filter config are unchanged, reusing its scores ({prev['report']['samples']} samples)")
        write_report(cfg, "filter", {**prev["report"], "reused": True})
        return {**prev["report"], "reused": True}
    t0 = time.time()
    lam = cfg.filter.lambda_
    with mlflow_run(cfg, "filter") as rid:
        rows = score_deltas(cfg, store)
        sizes = [{"lambda": l, "size": len(select(rows, l))} for l in CHECK_LAMBDAS]
        sweep_sizes = [{"lambda": l, "size": len(select(rows, l))} for l in cfg.filter.sweep]
        hist = histogram_png([r["delta"] for r in rows], lam)
        store.put_bytes("filter/delta_histogram.png", hist)
        log_bytes(rid, hist, "plots", "delta_histogram.png")
        kd = kept_vs_dropped(cfg, store, rows, lam) if rows else {}
        report = {"samples": len(rows), "lambda": lam,
                  # |G(lambda)| by lambda ("none": no filter), the key our checks read
                  "sizes": {("none" if s["lambda"] is None else str(s["lambda"])): s["size"] for s in sizes},
                  "size_list": sizes, "sweep_sizes": sweep_sizes,
                  "kept_minus_dropped_overall": kd.get("overall_gain"),
                  "non_increasing": all(a["size"] >= b["size"] for a, b in zip(sizes, sizes[1:])),
                  "delta_mean": float(np.mean([r["delta"] for r in rows])) if rows else None,
                  "delta_quantiles": {q: float(np.quantile([r["delta"] for r in rows], q)) for q in (0.1, 0.5, 0.9)} if rows else {},
                  "kept_vs_dropped": kd, "seconds": round(time.time() - t0, 1), "mlflow_run_id": rid,
                  "histogram": store.url("filter/delta_histogram.png")}
        log_metrics(rid, {"samples": len(rows), **{f"size.lambda_{s['lambda']}": s["size"] for s in sizes},
                          **{k: v for k, v in kd.items() if isinstance(v, (int, float)) and v is not None}})
        log_json(rid, report, "filter.json")
    create_markdown_artifact(key="filter", markdown="\n".join(
        ["| lambda | size of G |", "|---|---|"] + [f"| {s['lambda']} | {s['size']} |" for s in sizes]))
    path = write_report(cfg, "filter", report)
    stages.mark(store, "filter", fp, report=report)
    lg.info(f"filter: {len(rows)} samples; |G| by lambda {[(s['lambda'], s['size']) for s in sizes]}; "
            f"overall kept/dropped {kd.get('overall_kept')}/{kd.get('overall_dropped')}; report {path}")
    return report
