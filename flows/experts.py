"""`suti experts`: one expert per mined cluster, mapped concurrently with Prefect task
mapping on one machine (thread or Dask runner), or one flow run per shard on a work pool
(`expert.runner=deployment`, exercised by the operations tests). A rerun skips finished
experts; a failing expert is retried, then recorded as failed without stopping the others."""
from __future__ import annotations

import os
import time

from omegaconf import DictConfig, OmegaConf
from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from suti import keys as K
from suti.flows.common import logger, prepare, write_report
from suti.tasks.experts import ExpertResult, ExpertSpec, expert_specs, run_expert
from suti.tracking import log_bytes, log_json, log_metrics, mlflow_run


def _runtime(cfg_dict: dict, store_uri: str, endpoint: str | None):
    """Rebuild what a task needs from plain values (no in-memory models cross tasks)."""
    from suti.models.scorers import load_state
    from suti.store import open_store
    from suti.tasks.foundation import load_clip

    cfg = OmegaConf.create(cfg_dict)
    store = open_store(store_uri, endpoint)
    return cfg, store, load_state(store, K.BASE), load_clip(cfg, store)


@task(name="expert", task_run_name="expert-{spec.cluster_id}", retries=1, retry_delay_seconds=1, cache_policy=NO_CACHE)
def train_expert(spec: ExpertSpec, cfg_dict: dict, store_uri: str, endpoint: str | None = None,
                 root: str = "experts") -> ExpertResult:
    cfg, store, base_state, clip = _runtime(cfg_dict, store_uri, endpoint)
    fail = os.environ.get("SUTI_FAIL_EXPERT")  # fault injection for the isolation test
    if fail and fail == spec.cluster_id:
        raise RuntimeError(f"injected failure for expert {spec.cluster_id}")
    res = run_expert(spec, cfg, store, base_state, clip, root=root)
    logger().info(f"expert {spec.cluster_id}: {res.status}, {res.samples} samples "
                  f"(train {res.train_seconds}s, sample {res.sample_seconds}s)")
    return res


def task_runner(cfg: DictConfig):
    if cfg.expert.runner == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(cluster_kwargs={"n_workers": int(cfg.num_workers), "processes": True,
                                              "threads_per_worker": 1, "dashboard_address": None})
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=int(cfg.num_workers))


def run_specs(specs: list[ExpertSpec], cfg: DictConfig, store, root: str = "experts") -> list[ExpertResult]:
    """Map experts over the configured task runner; failures become `failed` results."""
    import torch

    if not specs:
        return []
    cfg_dict = OmegaConf.to_container(cfg, resolve=True)
    uri, endpoint = str(cfg.storage.uri), cfg.storage.endpoint_url
    # threads share the process: split the cores between concurrent experts
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // int(cfg.num_workers)))

    @flow(name="experts-map", task_runner=task_runner(cfg))
    def _map():
        futures = train_expert.map(specs, cfg_dict=unmapped(cfg_dict), store_uri=uri, endpoint=endpoint,
                                   root=unmapped(root))  # a dict or a str would be mapped over
        out = []
        for spec, fut in zip(specs, futures):
            try:
                out.append(fut.result())
            except Exception as e:  # isolated: recorded, the others go on
                msg = " ".join(str(e).split())[:300]
                store.put_json(f"{root}/{spec.cluster_id}/failed.json", {"error": msg})
                out.append(ExpertResult(cluster_id=spec.cluster_id, status="failed", error=msg))
        return out

    return _map()


@flow(name="experts-shard", log_prints=True)
def experts_shard_flow(overrides: list[str] | None = None, shard: int = 0, num_shards: int = 1,
                       force: bool = False) -> dict:
    """One shard of the experts (a flow run on a work pool, e.g. one GPU)."""
    cfg, store = prepare(overrides)
    specs = expert_specs(store, cfg.expert.clusters)[shard::num_shards]
    res = run_specs(specs, cfg, store)
    return {"shard": shard, "results": [r.model_dump() for r in res]}


def _fan_out_deployments(cfg, overrides, n_shards: int, specs: list[ExpertSpec], store) -> list[ExpertResult]:
    """Submit one experts-shard flow run per shard (all at once), wait for them, and read
    the outcome back from the store (so no shared Prefect result storage is needed)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    name = cfg.expert.deployment
    runs = [run_deployment(name, parameters={"overrides": list(overrides or []), "shard": i, "num_shards": n_shards},
                           timeout=0) for i in range(n_shards)]
    pending = {r.id for r in runs}
    with get_client(sync_client=True) as client:
        while pending:
            for rid in list(pending):
                state = client.read_flow_run(rid).state
                if state is not None and state.is_final():
                    pending.discard(rid)
                    if not state.is_completed():
                        logger().warning(f"shard flow run {rid} ended {state.name}; its unfinished experts count as failed")
            if pending:
                time.sleep(5)
    out = []
    for spec in specs:
        prefix = f"experts/{spec.cluster_id}"
        if store.is_done(prefix):
            rec = store.get_json(f"{prefix}/record.json")
            out.append(ExpertResult(cluster_id=spec.cluster_id, status="trained", samples=len(rec["samples"]),
                                    train_seconds=rec["train_seconds"], sample_seconds=rec["sample_seconds"]))
        else:
            err = store.get_json(f"{prefix}/failed.json")["error"] if store.exists(f"{prefix}/failed.json") else "shard lost"
            out.append(ExpertResult(cluster_id=spec.cluster_id, status="failed", error=err))
    return out


@flow(name="experts", log_prints=True)
def experts_flow(overrides: list[str] | None = None, force: bool = False) -> dict:
    from suti.flows import stages

    cfg, store = prepare(overrides)
    lg = logger()
    stages.require("mine", cfg, store, by="experts")
    specs = expert_specs(store, cfg.expert.clusters)
    if force:
        for s in specs:
            store.delete(f"experts/{s.cluster_id}")
    lg.info(f"{len(specs)} experts to run ({cfg.expert.method}, {cfg.expert.steps} steps, runner "
            f"{cfg.expert.runner}, {cfg.num_workers} workers)")
    t0 = time.time()
    with mlflow_run(cfg, "experts") as rid:
        if cfg.expert.runner == "deployment":
            results = _fan_out_deployments(cfg, overrides, int(cfg.expert.shards), specs, store)
        else:
            results = run_specs(specs, cfg, store)
        wall = time.time() - t0
        report = summarize(results, wall, cfg, store)
        other = compare_method(cfg, store, specs)
        if other:
            report["seconds_per_expert"][other["method"]] = other["seconds_per_expert"]
            report["experts_per_hour"][other["method"]] = other["experts_per_hour"]
            report["compare"] = other
        report["mlflow_run_id"] = rid
        if cfg.expert.check:
            from suti.tasks.experts_check import check_experts

            check = stored_check(cfg, store, specs) if report["trained"] == 0 else None
            if check is not None:
                lg.info("experts check: no expert changed since it ran, reusing it (experts/check.json)")
            else:
                lg.info("checking experts against the base model and real renders (reads world truth: check only)")
                check = check_experts(cfg, store, n_clusters=int(cfg.expert.check_clusters))
                grid_png = check.pop("_grid", None)
                if grid_png:
                    store.put_bytes("experts/examples/grid.png", grid_png)
                    log_bytes(rid, grid_png, "examples", "experts_grid.png")
                store.put_json(CHECK_KEY, {"fingerprint": check_fingerprint(cfg, store, specs), "check": check})
            report["check"] = check
            report["gap_closed"], report["text_score"] = check.get("gap_closed"), check.get("text_expert")
        log_metrics(rid, {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
        log_metrics(rid, {f"{k}.{m}": v for k in ("seconds_per_expert", "experts_per_hour")
                          for m, v in report[k].items() if v is not None})
        if "check" in report:
            log_metrics(rid, {f"check.{k}": v for k, v in report["check"].items() if isinstance(v, (int, float))})
        log_json(rid, report, "experts.json")
    create_table_artifact(key="experts", table=[r.model_dump() for r in results], description="Experts by status")
    create_markdown_artifact(key="experts-summary", markdown=_markdown(report))
    path = write_report(cfg, "experts", report)
    stages.mark(store, "experts", stages.experts_fingerprint(cfg, store), failed=report["failed"])
    lg.info(f"experts: {report['trained']} trained, {report['reused']} reused, {report['failed']} failed; "
            f"{report['seconds_per_expert'][cfg.expert.method]:.1f} s/expert; report {path}")
    return report


CHECK_KEY = "experts/check.json"


def check_fingerprint(cfg: DictConfig, store, specs: list[ExpertSpec]) -> str:
    """What the experts check depends on: the expert config, the base and rater models, the
    experts it reads and the seed."""
    from suti.store import digest

    return digest([OmegaConf.to_container(cfg.expert, resolve=True), store.done_meta("foundation/base"),
                   store.done_meta("foundation/rater"), [s.cluster_id for s in specs], int(cfg.seed)])


def stored_check(cfg: DictConfig, store, specs: list[ExpertSpec]) -> dict | None:
    """The check of an earlier call when nothing it depends on changed (the filter, sweep and
    pipeline flows call this flow again; the check samples ~500 images, 4 minutes here)."""
    return (store.get_fingerprinted(CHECK_KEY, check_fingerprint(cfg, store, specs)) or {}).get("check")


def summarize(results: list[ExpertResult], wall: float, cfg: DictConfig, store=None) -> dict:
    """Counts and speed. Seconds per expert come from every finished expert's record (reused
    ones too); experts per hour from the wall clock of the run that trained them all (kept in
    the store, so that a rerun that reuses them reports the same throughput)."""
    trained = [r for r in results if r.status == "trained"]
    done = [r for r in results if r.status != "failed"]
    per = [r.train_seconds + r.sample_seconds for r in done]
    spe = float(sum(per) / len(per)) if per else 0.0
    method = str(cfg.expert.method)
    eph = 3600.0 * len(trained) / wall if trained and wall > 0 else None
    key = "experts/throughput.json"
    if store is not None:
        if trained and len(trained) == len(done):
            store.put_json(key, {"method": method, "experts": len(trained), "wall_seconds": round(wall, 1),
                                 "experts_per_hour": eph, "workers": int(cfg.num_workers)})
        elif not trained and store.exists(key):
            prev = store.get_json(key)
            eph = prev["experts_per_hour"] if prev.get("method") == method else eph
    return {"experts": len(results), "trained": len(trained), "reused": sum(r.status == "reused" for r in results),
            "failed": sum(r.status == "failed" for r in results),
            "failed_ids": [r.cluster_id for r in results if r.status == "failed"],
            "samples": sum(r.samples for r in results), "method": method, "steps": int(cfg.expert.steps),
            "seconds_per_expert": {method: spe}, "experts_per_hour": {method: eph},
            "train_seconds_per_expert": float(sum(r.train_seconds for r in done) / max(1, len(done))),
            "sample_seconds_per_expert": float(sum(r.sample_seconds for r in done) / max(1, len(done))),
            "wall_seconds": round(wall, 1), "workers": int(cfg.num_workers)}


def compare_method(cfg: DictConfig, store, specs: list[ExpertSpec]) -> dict | None:
    """The other fine-tuning method (full <-> LoRA) timed on the first `expert.compare_clusters`
    clusters with the same runner and workers, so the report has both methods' speed. Its
    outputs go to a scratch root and are deleted; the figures are kept and reused while the
    expert config and the base model are unchanged."""
    from suti.store import digest

    n = int(cfg.expert.compare_clusters)
    if n <= 0 or not specs or cfg.expert.runner == "deployment":
        return None
    other = "lora" if cfg.expert.method == "full" else "full"
    ecfg = OmegaConf.to_container(cfg.expert, resolve=True)
    ecfg.pop("method")
    fp = digest([ecfg, store.done_meta("foundation/base"), int(cfg.num_workers), [s.cluster_id for s in specs[:n]]])
    key, root = f"experts-compare/{other}.json", f"experts-compare/{other}"
    prev = store.get_fingerprinted(key, fp)
    if prev is not None:
        return prev
    logger().info(f"timing {other} experts on {min(n, len(specs))} clusters beside the {cfg.expert.method} ones")
    store.delete(root)
    ocfg = OmegaConf.merge(cfg, {"expert": {"method": other}})
    t0 = time.time()
    res = [r for r in run_specs(specs[:n], ocfg, store, root=root) if r.status == "trained"]
    wall = time.time() - t0
    store.delete(root)
    if not res:
        return None
    out = {"method": other, "experts": len(res), "workers": int(cfg.num_workers), "fingerprint": fp,
           "seconds_per_expert": float(sum(r.train_seconds + r.sample_seconds for r in res) / len(res)),
           "experts_per_hour": 3600.0 * len(res) / wall}
    store.put_json(key, out)
    return out


def _markdown(r: dict) -> str:
    lines = ["| figure | value |", "|---|---|"]
    for k in ("experts", "trained", "reused", "failed", "samples", "method"):
        lines.append(f"| {k} | {r[k]} |")
    for k in ("seconds_per_expert", "experts_per_hour"):
        for m, v in r[k].items():
            lines.append(f"| {k} ({m}) | {'-' if v is None else f'{v:.1f}'} |")
    for k, v in (r.get("check") or {}).items():
        if isinstance(v, (int, float)):
            lines.append(f"| check.{k} | {v:.3f} |")
    return "\n".join(lines)
