"""`suti world`: render the synthetic web, held-out subjects and pre-training renders."""
from __future__ import annotations

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from suti.flows.common import logger, prepare, write_report
from suti.world.corpus import world_config
from suti.tracking import log_bytes, log_metrics, mlflow_run


@task(name="build-world", cache_policy=NO_CACHE)
def build_world_task(cfg, store) -> dict:
    from suti.world.corpus import build_world

    lg = logger()
    return build_world(world_config(cfg), store, lambda d, n, what: lg.info(f"rendered {d}/{n} {what}"))


def world_done(store, cfg) -> dict | None:
    """The world's manifest when a finished world with this exact config, rendered by this
    exact renderer (`renderer_version`: world version + renderer source), is in the store."""
    from dataclasses import asdict

    from suti.world.corpus import renderer_version

    if not store.exists("world/manifest.json"):
        return None
    m = store.get_json("world/manifest.json")
    if m.get("config") != asdict(world_config(cfg)):
        return None
    if m.get("renderer_version") != renderer_version():
        logger().info(f"world: stored world was rendered by {m.get('renderer_version') or 'world v1'}, "
                      f"the renderer is now {renderer_version()}: rebuilding it")
        return None
    return m["report"]


@flow(name="world", log_prints=True)
def world_flow(overrides: list[str] | None = None, force: bool = False) -> dict:
    cfg, store = prepare(overrides)
    lg = logger()
    report = None if force else world_done(store, cfg)
    if report is not None:
        lg.info(f"world already built ({report['pages']} pages, {report['images']} images): reusing it")
        report = {**report, "reused": True}
    else:
        with mlflow_run(cfg, "world") as rid:
            report = build_world_task(cfg, store)
            log_metrics(rid, {k: v for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
            for name in ("pages_subject", "pages_mixed", "pages_duplicate", "heldout_demos", "factors"):
                log_bytes(rid, store.get_bytes(f"world/examples/{name}.png"), "examples", f"{name}.png")
        report = {**report, "reused": False}
        create_table_artifact(key="world-pages", table=[{"kind": k, "pages": v} for k, v in report["pages_by_kind"].items()],
                              description="Pages of the synthetic web by kind")
    report["store"] = store.url("world")
    path = write_report(cfg, "world", report)
    lg.info(f"world: {report['pages']} pages, {report['images']} images, {report['heldout_subjects']} held-out "
            f"subjects, deterministic={report['deterministic']}, report {path}")
    return report
