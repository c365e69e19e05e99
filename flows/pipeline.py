"""`suti run`: the whole pipeline on the embedded synthetic world:
world -> foundation -> mine -> experts -> filter -> sweep (G(lambda) -> short apprentice -> eval)
-> the apprentice at the chosen lambda (full steps) -> eval (all Table 1 rows) -> promote.
Every stage reuses finished work, so a killed run resumes where it stopped."""
from __future__ import annotations

import time

from prefect import flow

from suti.flows.common import logger, prepare, write_report


STAGES = ("world", "foundation", "mine", "experts", "filter", "sweep", "apprentice", "eval", "promote")


def final_choice(cfg, sweep: dict) -> tuple[float | None, bool]:
    """The lambda of the apprentice the pipeline evaluates and may promote, and whether it
    must be trained: not when the sweep already trained it at the full step count."""
    pick = cfg.get("pipeline", {}).get("final_lambda", "best")
    best = sweep.get("best")
    if pick == "best":
        lam = best["lambda"] if best else cfg.filter.get("lambda_")
    elif pick == "config":
        lam = cfg.filter.get("lambda_")
    elif pick == "none" or pick is None:
        lam = None
    else:
        lam = float(pick)
    steps = cfg.get("sweep", {}).get("steps")
    full_in_sweep = steps is None or int(steps) == int(cfg.apprentice.steps)
    reuse = full_in_sweep and best is not None and lam == best["lambda"] and best.get("model_version")
    return lam, not reuse


@flow(name="pipeline", log_prints=True)
def pipeline_flow(overrides: list[str] | None = None, force: bool = False) -> dict:
    from suti.flows.eval import eval_flow
    from suti.flows.experts import experts_flow
    from suti.flows.filter import filter_flow
    from suti.flows.foundation import foundation_flow
    from suti.flows.mine import mine_flow
    from suti.flows.promote import promote_flow
    from suti.flows.sweep import sweep_flow
    from suti.flows.train import train_flow
    from suti.flows.world import world_flow

    cfg, store = prepare(overrides)
    lg = logger()
    t0 = time.time()
    stages = {}

    def stage(name, fn, **kw):
        t = time.time()
        lg.info(f"== stage {len(stages) + 1}/{len(STAGES)}: {name}")
        out = fn(overrides=overrides, **kw)
        stages[name] = round(time.time() - t, 1)
        lg.info(f"== {name} done in {stages[name]} s")
        return out

    stage("world", world_flow)
    stage("foundation", foundation_flow)
    stage("mine", mine_flow)
    stage("experts", experts_flow)
    stage("filter", filter_flow)
    sweep = stage("sweep", sweep_flow)
    lam, retrain = final_choice(cfg, sweep)
    if retrain:
        lg.info(f"final apprentice: lambda {lam} at apprentice.steps={cfg.apprentice.steps} "
                f"(sweep trained {cfg.sweep.steps} steps per lambda)")
        final_version = (stage("apprentice", train_flow, lam="none" if lam is None else lam).get("registered")
                         or {}).get("version")
    else:
        lg.info(f"final apprentice: the sweep's model for lambda {lam} (trained at full steps), no retraining")
        stages["apprentice"] = 0.0
        final_version = sweep["best"]["model_version"]
    ev = stage("eval", eval_flow, limit=cfg.get("pipeline", {}).get("eval_limit"))
    promo = stage("promote", promote_flow)
    summary = {"seconds": round(time.time() - t0, 1), "stage_seconds": stages, "eval_report": f"{cfg.reports_dir}/eval.json",
               "sweep_parent_run_id": sweep["parent_run_id"], "final_lambda": lam,
               "final_model_version": final_version, "champion": promo.get("champion_after"),
               "promotion": promo.get("reason"), "table": ev["table"],
               "mlflow_ui": f"mlflow ui --backend-store-uri {cfg.tracking.uri}",
               "model": "models:/suti-apprentice@champion"}
    path = write_report(cfg, "run", summary)
    app = next((r for r in ev["table"] if r["method"] == "apprentice"), {})
    base = next((r for r in ev["table"] if r["method"] == "base"), {})
    lg.info("\n".join([
        f"SuTI pipeline finished in {summary['seconds'] / 60:.1f} min ({cfg.get('profile_name')} profile)",
        f"  apprentice overall {app.get('overall')}, identity {app.get('identity')} (base overall {base.get('overall')})",
        f"  report:  {cfg.reports_dir}/eval.json  (summary {path})",
        f"  MLflow:  {summary['mlflow_ui']}",
        f"  model:   models:/suti-apprentice@champion (version {summary['champion']})"]))
    return summary
