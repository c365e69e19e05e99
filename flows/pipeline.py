"""`suti run`: the whole pipeline on the embedded synthetic world:
world -> foundation -> mine -> experts -> filter -> sweep (G(lambda) -> short apprentice -> eval)
-> the apprentice at the chosen lambda (full steps) -> Re-Imagen (the same architecture on the raw
clusters, no experts: the paper's baseline) -> eval (all Table 1 rows) -> promote.
Every stage reuses finished work, so a killed run resumes where it stopped."""
from __future__ import annotations

import time

from prefect import flow

from suti.flows.common import image_markdown, logger, prepare, write_report
from suti.tracking import log_json, log_metrics, pipeline_run


from suti.flows.stages import STAGES, selected


def add_arguments(parser) -> None:
    parser.add_argument("--until", default=None, metavar="STAGE",
                        help=f"run the DAG up to and including STAGE ({', '.join(STAGES)})")
    parser.add_argument("--from", dest="from_stage", default=None, metavar="STAGE",
                        help="start the DAG at STAGE; the stages before it must be finished")


def final_choice(cfg, sweep: dict) -> tuple[float | None, bool]:
    """The lambda of the apprentice the pipeline evaluates and may promote, and whether it
    must be trained: not when the sweep already trained it at the full step count."""
    pick = cfg.pipeline.final_lambda
    best = sweep.get("best")
    if pick == "best":
        lam = best["lambda"] if best else cfg.filter.lambda_
    elif pick == "config":
        lam = cfg.filter.lambda_
    elif pick == "none" or pick is None:
        lam = None
    else:
        lam = float(pick)
    steps = cfg.sweep.steps
    full_in_sweep = steps is None or int(steps) == int(cfg.apprentice.steps)
    reuse = full_in_sweep and best is not None and lam == best["lambda"] and best.get("model_version")
    return lam, not reuse


def stage_run_name(i: int, name: str, cfg, **kw) -> str:
    """The stage's Prefect flow-run name, read like a log line: `3/10 mine (smoke)`."""
    extra = "".join(f" {k}={v}" for k, v in kw.items() if v is not None)
    return f"{i}/{len(STAGES)} {name}{extra} ({cfg.profile_name})"


def _pipeline_run_name() -> str:
    """`suti run profile=smoke` (paths left out): the pipeline's Prefect flow-run name."""
    from prefect.runtime import flow_run

    from suti.cli import run_name

    return run_name("run", [str(o) for o in (flow_run.parameters.get("overrides") or [])])


@flow(name="pipeline", flow_run_name=_pipeline_run_name, log_prints=True)
def pipeline_flow(overrides: list[str] | None = None, force: bool = False, until: str | None = None,
                  from_stage: str | None = None) -> dict:
    """The DAG, each stage entered once: `until` / `from_stage` run part of it, reusing
    finished work (the stages before `from_stage` must be finished for this config)."""
    from suti.flows.eval import eval_flow
    from suti.flows.experts import experts_flow
    from suti.flows.filter import filter_flow
    from suti.flows.foundation import foundation_flow
    from suti.flows.mine import mine_flow
    from suti.flows.promote import promote_flow
    from suti.flows.sweep import sweep_flow
    from suti.flows.train import train_flow
    from suti.flows.world import world_flow

    run = selected(until, from_stage)  # a wrong stage name fails before any work
    cfg, store = prepare(overrides)
    lg = logger()
    t0 = time.time()
    stages, entries = {}, {}

    def stage(name, fn, **kw):
        if name not in run:
            return None
        entries[name] = entries.get(name, 0) + 1
        t = time.time()
        i = STAGES.index(name) + 1
        lg.info(f"== stage {i}/{len(STAGES)}: {name}")
        label = {k: v for k, v in kw.items() if k in ("lam", "limit", "source")}
        out = fn.with_options(flow_run_name=stage_run_name(i, name, cfg, **label))(overrides=overrides, **kw)
        stages[name] = round(time.time() - t, 1)
        lg.info(f"== {name} done in {stages[name]} s")
        return out

    with pipeline_run(cfg) as run_id:
        summary = _stages(cfg, stage, stages, entries, run, t0, world_flow, foundation_flow, mine_flow, experts_flow, filter_flow,
                          sweep_flow, train_flow, eval_flow, promote_flow)
        summary["mlflow_run_id"] = run_id
        log_metrics(run_id, {"seconds": summary["seconds"], **{f"seconds.{k}": v for k, v in stages.items()}})
        log_json(run_id, summary, "run.json")
    path = write_report(cfg, "run", summary)
    if "eval" not in run:
        lg.info(f"suti run: stages {' -> '.join(run)} finished in {summary['seconds'] / 60:.1f} min; "
                f"reports in {cfg.reports_dir} (summary {path})")
        return summary
    _artifacts(summary, store)
    ev_table = summary["table"]
    app = next((r for r in ev_table if r["method"] == "apprentice"), {})
    base = next((r for r in ev_table if r["method"] == "base"), {})
    lg.info("\n".join([
        f"SuTI pipeline finished in {summary['seconds'] / 60:.1f} min ({cfg.profile_name} profile)",
        f"  apprentice overall {app.get('overall')}, identity {app.get('identity')} (base overall {base.get('overall')})",
        f"  report:  {cfg.reports_dir}/eval.json  (summary {path})",
        f"  MLflow:  {summary['mlflow_ui']}  (parent run {summary['mlflow_run_id']})",
        f"  model:   models:/suti-apprentice@champion (version {summary['champion']})"]))
    return summary


def _artifacts(summary: dict, store) -> None:
    """The run's summary in the Prefect UI: Table 1, the eval grid and the seconds per stage."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from suti.flows.eval import markdown_table

    key = f"eval/{summary['eval_id']}/grid.png" if summary.get("eval_id") else None
    grid = (image_markdown(store.get_bytes(key), "eval grid: demos | methods x prompts", summary.get("eval_grid"))
            if key and store.exists(key) else str(summary.get("eval_grid")))

    create_markdown_artifact(key="pipeline-summary", description="suti run: Table 1 and time per stage", markdown="\n".join([
        f"# suti run: {summary['seconds'] / 60:.1f} min", "", f"final lambda {summary['final_lambda']}, "
        f"model version {summary['final_model_version']}, champion {summary['champion']} ({summary['promotion']})", "",
        "## Table 1", "", markdown_table(summary["table"]), "", "## Seconds per stage", "",
        "| stage | seconds |", "|---|---|", *[f"| {k} | {v} |" for k, v in summary["stage_seconds"].items()], "",
        "## Eval grid", "", grid, "",
        f"MLflow: `{summary['mlflow_ui']}` (parent run `{summary['mlflow_run_id']}`)"]))
    create_table_artifact(key="pipeline-stages", table=[{"stage": k, "seconds": v} for k, v in summary["stage_seconds"].items()],
                          description="suti run: seconds per stage")


def _earlier(cfg, name: str, stage_: str) -> dict:
    """The report of a stage this run does not enter (`--from` after it)."""
    import json
    from pathlib import Path

    p = Path(cfg.reports_dir) / f"{name}.json"
    if not p.is_file():
        from suti.errors import UserError

        raise UserError(f"run --from {stage_}: no {p} from an earlier run: run `suti run --until {name}` first")
    return json.loads(p.read_text())


def _stages(cfg, stage, stages, entries, run, t0, world_flow, foundation_flow, mine_flow, experts_flow, filter_flow,
            sweep_flow, train_flow, eval_flow, promote_flow) -> dict:
    lg = logger()
    stage("world", world_flow)
    stage("foundation", foundation_flow)
    stage("mine", mine_flow)
    stage("experts", experts_flow)
    stage("filter", filter_flow)
    sweep = stage("sweep", sweep_flow)
    out = {"profile": cfg.profile_name, "stages": list(run), "stage_seconds": stages, "stage_entries": entries}
    if not set(run) & {"apprentice", "reimagen", "eval", "promote"}:
        return {"seconds": round(time.time() - t0, 1), **out}
    sweep = sweep if sweep is not None else _earlier(cfg, "sweep", run[0])
    lam, retrain = final_choice(cfg, sweep)
    final_version = None
    if "apprentice" in run and retrain:
        lg.info(f"final apprentice: lambda {lam} at apprentice.steps={cfg.apprentice.steps} "
                f"(sweep trained {cfg.sweep.steps} steps per lambda)")
        final_version = (stage("apprentice", train_flow, lam="none" if lam is None else lam).get("registered")
                         or {}).get("version")
    elif "apprentice" in run:
        lg.info(f"final apprentice: the sweep's model for lambda {lam} (trained at full steps), no retraining")
        stages["apprentice"], entries["apprentice"] = 0.0, 1
        final_version = sweep["best"]["model_version"]
    stage("reimagen", train_flow, source="clusters")
    ev = stage("eval", eval_flow, limit=cfg.pipeline.eval_limit)
    promo = stage("promote", promote_flow) or {}
    ev = ev if ev is not None else _earlier(cfg, "eval", run[0])
    return {"seconds": round(time.time() - t0, 1), **out, "eval_report": f"{cfg.reports_dir}/eval.json",
            "sweep_parent_run_id": sweep.get("parent_run_id"), "final_lambda": lam,
            "final_model_version": final_version, "champion": promo.get("champion_after"),
            "promotion": promo.get("reason"), "table": ev["table"],
            "mlflow_ui": f"mlflow ui --backend-store-uri {cfg.tracking.uri}",
            "model": "models:/suti-apprentice@champion", "eval_id": ev.get("eval_id"), "eval_grid": ev.get("grid")}
