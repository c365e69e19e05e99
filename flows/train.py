"""`suti train`: train the apprentice on G(lambda) and register it as the candidate.

    suti train profile=smoke                 # lambda = filter.lambda_ (paper: 0.02)
    suti train --lam none                    # every expert sample (no filter)
    suti train --lam 0.025 apprentice.steps=3000

Reruns reuse a finished run (same steps and rows) and resume an interrupted one from its
last checkpoint in the store (`apprentice/<run>/last.ckpt`); `--force` starts over.
Then the val check (`apprentice.val_check_subjects` val subjects, never test): val identity,
overall and gap closed against the base and the experts, and a grid demos | apprentice |
expert, logged to the training run (`val.*` metrics, `examples/val_grid.png`).
Multi-device runs (`apprentice.devices=4 apprentice.strategy=ddp`) train in a subprocess
(Lightning relaunches its entry script for DDP). Report: `reports/train.json`.
"""
from __future__ import annotations

import time

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from suti.flows.common import image_markdown, logger, prepare, write_report
from suti.tasks import apprentice as A
from suti.tracking import lambda_params, log_bytes, log_dataset, log_metrics, mlflow_run

LAM_FROM_CONFIG = "config"


def _lam_arg(value: str):
    """argparse type of --lam: checked before the flow starts."""
    import argparse

    if value.strip().lower() in ("none", "null", LAM_FROM_CONFIG):
        return value.strip().lower()
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number or 'none', got {value!r}") from None


def add_arguments(parser) -> None:
    parser.add_argument("--lam", default=LAM_FROM_CONFIG, metavar="LAMBDA", type=_lam_arg,
                        help="train on G(lambda): rows with delta > LAMBDA; 'none' = every row "
                             "(default: filter.lambda_)")
    parser.add_argument("--source", default=None, choices=list(A.SOURCES),
                        help="G: the experts' outputs G(lambda) (SuTI, registered as suti-apprentice); mix: G(lambda) "
                             "plus every mined cluster as extra subjects; clusters: the raw mined clusters, no experts "
                             "(the Re-Imagen baseline, registered as suti-reimagen). Default: apprentice.source")
    parser.add_argument("--run-name", dest="run_name", default=None,
                        help="name of the training run in the store and MLflow (default: lam-<lambda>)")


def parse_lam(value, cfg) -> float | None:
    """``--lam`` / ``lam=``: a number, None / 'none' (every row) or 'config' (filter.lambda_)."""
    from suti.errors import UserError

    if value == LAM_FROM_CONFIG:
        value = cfg.filter.lambda_
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UserError(f"--lam must be a number or 'none', got {value!r}") from None


@task(name="load-rows", task_run_name="load {source} rows (lambda={lam})", retries=2, retry_delay_seconds=2,
      cache_policy=NO_CACHE)
def load_rows(store, lam: float | None, source: str = "G") -> list[dict]:
    return A.training_rows(store, source, lam)


@task(name="train-apprentice", task_run_name="train apprentice {run_name} (lambda={lam})", cache_policy=NO_CACHE)
def train_task(cfg, store, rows: list[dict], lam: float | None, run_name: str, run_id: str, force: bool,
               source: str = "G") -> dict:
    if A.needs_subprocess(cfg):
        return A.train_in_subprocess(cfg, store, lam, run_name, run_id, force, source)
    return A.train_apprentice(cfg, store, rows, run_name, run_id, force)


@task(name="register-apprentice", task_run_name="register {run_name} as a candidate", retries=2, retry_delay_seconds=2,
      cache_policy=NO_CACHE)
def register_task(cfg, store, run_name: str, run_id: str, tags: dict) -> dict:
    return A.register_candidate(cfg, store, run_name, run_id, tags)


@task(name="val-check", task_run_name="val check of {run_name}: {subjects} val subjects x {prompts} prompts",
      cache_policy=NO_CACHE)
def val_check_task(cfg, store, run_name: str, run_id: str, subjects: int, prompts: int) -> dict:
    """The trained model on a few val subjects (identity, overall, gap closed; a grid demos |
    apprentice | expert), logged to its training run."""
    from suti.tasks.apprentice.valcheck import val_check

    res = val_check(cfg, store, A.load_apprentice(run_name, cfg, store), subjects, prompts)
    store.put_bytes(f"apprentice/{run_name}/val_grid.png", res["_grid"])
    log_metrics(run_id, {k: v for k, v in res.items() if isinstance(v, (int, float))})
    log_bytes(run_id, res["_grid"], "examples", "val_grid.png")
    return {**res, "grid": store.url(f"apprentice/{run_name}/val_grid.png")}  # `_grid`: the PNG, left out of reports


@flow(name="train", flow_run_name="train apprentice lambda={lam}", log_prints=True)
def train_flow(overrides: list[str] | None = None, force: bool = False, lam: float | str | None = None,
               run_name: str | None = None, parent_run_id: str | None = None, source: str | None = None) -> dict:
    """Train on G(lam) (``lam=None``: every row; ``"config"``: ``filter.lambda_``), register
    ``suti-apprentice`` version with alias ``candidate``, write ``reports/train.json``.
    ``source="clusters"``: the same architecture on the raw mined clusters (Re-Imagen, the
    paper's baseline), run ``reimagen``, registered as ``reimagen.model_name``; ``reports/reimagen.json``.

    ``parent_run_id`` nests the MLflow run (a lambda sweep's parent run)."""
    from omegaconf import open_dict

    cfg, store = prepare(overrides)
    lg = logger()
    if source is None:
        source = str(cfg.apprentice.source)  # G | mix, checked when the config was composed
    reimagen = source == "clusters"
    lam = None if reimagen else parse_lam(lam, cfg)
    name = run_name or ("reimagen" if reimagen else A.run_name_for(cfg, lam))
    if reimagen:
        with open_dict(cfg):
            cfg.apprentice.model_name = str(cfg.reimagen.model_name)
            cfg.apprentice.init_from = None  # the baseline never starts from a trained apprentice
    t0 = time.time()
    rows = load_rows(store, lam, source)
    what = {"clusters": "raw clusters (Re-Imagen)", "mix": f"G(lambda={lam}) + raw clusters",
            "G": f"G(lambda={lam})"}[source]
    lg.info(f"{what}: {len(rows)} training examples from {len({r.get('cluster_id') for r in rows})} clusters")
    digest = A.rows_digest(rows)
    tags = {"lambda": str(lam), "run_name": name, "dataset_digest": digest, "source": source}
    with mlflow_run(cfg, f"train:{name}", parent_run_id=parent_run_id, tags={"suti.lambda": str(lam)},
                    params={**lambda_params(lam), "G.digest": digest}) as rid:
        log_metrics(rid, {"G.size": len(rows), "G.clusters": len({r.get("cluster_id") for r in rows})})
        log_dataset(rid, rows, lam, digest, source=store.url("mine" if reimagen else "filter"))
        record = train_task(cfg, store, rows, lam, name, rid, force, source)
        n_val = int(cfg.apprentice.val_check_subjects)
        val = val_check_task(cfg, store, name, rid, n_val, int(cfg.apprentice.val_check_prompts)) if n_val else None
        val_grid = val.pop("_grid") if val else None
        registered = register_task(cfg, store, name, rid, {**tags, "steps": record["steps"], "rows": len(rows)}) \
            if cfg.apprentice.register else None
        report = {"run_name": name, "source": source, "lambda": lam, "rows": len(rows), "mlflow_run_id": rid,
                  "registered": registered, "val_check": val,
                  "profile": cfg.profile_name, "wall_seconds": round(time.time() - t0, 1),
                  **{k: v for k, v in record.items() if k not in ("rows",)}}
    path = write_report(cfg, "reimagen" if reimagen else "train", report)
    ov = report["overhead"]
    create_markdown_artifact(key="apprentice-train", description="Apprentice training", markdown="\n".join([
        "| item | value |", "|---|---|",
        f"| run | {name} (lambda {lam}) |", f"| examples in G | {len(rows)} |",
        f"| steps (resumed from) | {report['steps']} ({report.get('resumed_from', 0)}) |",
        f"| final loss | {report['loss']:.4f} |",
        f"| parameters base / added (ratio) | {ov['base']:,} / {ov['added']:,} ({ov['ratio']:.3f}) |",
        f"| registered | {registered['uri'] + ' v' + str(registered['version']) if registered else '-'} |",
        f"| samples | {report['samples']} |",
        *([f"| val identity / overall / gap closed ({val['val.subjects']} subjects) | "
           f"{val['val.apprentice.identity']:.3f} / {val['val.apprentice.overall']:.3f} / "
           f"{val['val.gap_closed'] if val['val.gap_closed'] is None else round(val['val.gap_closed'], 3)} |"]
          if val else []), "",
        image_markdown(store.get_bytes(f"apprentice/{name}/samples.png"), "demos | generated, one row per example",
                       report["samples"]),
        *([image_markdown(val_grid, "val subjects: demos | apprentice | expert per prompt", val["grid"])]
          if val else [])]))
    lg.info(f"apprentice {name}: {report['steps']} steps, loss {report['loss']:.4f}, +{ov['added']:,} parameters "
            f"({100 * ov['ratio']:.1f}% of the base UNet)"
            + (f", registered {registered['uri']} (version {registered['version']})" if registered else "")
            + (f"; val ({val['val.subjects']} subjects): identity {val['val.apprentice.identity']:.3f} "
               f"(base {val['val.base.identity']:.3f}, expert {val['val.expert.identity']:.3f}), overall "
               f"{val['val.apprentice.overall']:.3f}" if val else "")
            + f"; report {path}")
    return report
