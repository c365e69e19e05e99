"""`suti promote`: move the `champion` alias when the candidate is better."""
from __future__ import annotations

from dataclasses import asdict

from prefect import flow

from suti.flows.common import logger, prepare, write_report
from suti.tasks.promote import promote
from suti.tracking import setup_tracking


@flow(name="promote", log_prints=True)
def promote_flow(overrides: list[str] | None = None, force: bool = False) -> dict:
    import mlflow

    cfg, store = prepare(overrides)
    setup_tracking(cfg)
    d = promote(mlflow.MlflowClient(), float(cfg.promote.margin))
    logger().info(f"promotion: {'promoted' if d.promoted else 'kept'} (candidate v{d.candidate}, champion "
                  f"v{d.champion_before} -> v{d.champion_after}): {d.reason}")
    rep = asdict(d)
    write_report(cfg, "promote", rep)
    return rep
