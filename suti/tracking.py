"""MLflow tracking: one MLflow run per flow run, the resolved config logged as params.

The active-run stack is thread-local: code inside mapped tasks passes `parent_run_id`
explicitly and uses `MlflowClient` calls with run ids, never the fluent active run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig

from suti.config import ConfigError, flat

log = logging.getLogger("suti.tracking")

PIP_REQUIREMENTS = ["torch==2.14.1", "diffusers==0.42.1", "open_clip_torch==3.3.0", "numpy", "pillow"]


def setup_tracking(cfg: DictConfig) -> str:
    """Configure MLflow from cfg.tracking; returns the experiment id. Fails with one line
    when the tracking URI cannot be reached."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = str(cfg.tracking.uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if uri.startswith("http"):
        _check_http(uri)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(cfg.tracking.experiment)
    if exp is None:
        kw = {}
        if cfg.tracking.get("artifact_location"):
            kw["artifact_location"] = str(cfg.tracking.artifact_location)
        return client.create_experiment(cfg.tracking.experiment, **kw)
    return exp.experiment_id


def _check_http(uri: str) -> None:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).read()
    except (urllib.error.URLError, OSError) as e:
        raise ConfigError(f"cannot reach MLflow tracking server {uri}: {getattr(e, 'reason', e)}") from None


@contextlib.contextmanager
def mlflow_run(cfg: DictConfig, name: str, parent_run_id: str | None = None, tags: dict | None = None,
               log_config: bool = True):
    """Start (or nest under `parent_run_id`) an MLflow run; yields the run id.

    Uses the client API so that it is safe inside worker threads."""
    import mlflow

    exp_id = setup_tracking(cfg)
    client = mlflow.MlflowClient()
    t = {"mlflow.runName": name, "suti.stage": name.split(":")[0], "suti.profile": str(cfg.get("profile_name", ""))}
    if parent_run_id:
        t["mlflow.parentRunId"] = parent_run_id
    t.update(tags or {})
    run = client.create_run(exp_id, tags=t, run_name=name)
    rid = run.info.run_id
    if log_config:
        log_params(rid, flat(cfg))
    status = "FAILED"
    try:
        yield rid
        status = "FINISHED"
    finally:
        client.set_terminated(rid, status)


def log_params(run_id: str, params: dict) -> None:
    import mlflow
    from mlflow.entities import Param

    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    client = mlflow.MlflowClient()
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i:i + 100])


def log_metrics(run_id: str, metrics: dict, step: int = 0) -> None:
    """Log a flat dict of numbers in one batch (50 single calls cost 25x more: NOTES)."""
    import time

    import mlflow
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v]
    client = mlflow.MlflowClient()
    for i in range(0, len(items), 500):
        client.log_batch(run_id, metrics=items[i:i + 500])


def log_json(run_id: str, obj, artifact_file: str) -> None:
    import mlflow

    mlflow.MlflowClient().log_text(run_id, json.dumps(obj, indent=2, default=str), artifact_file)


def log_bytes(run_id: str, data: bytes, artifact_path: str, filename: str) -> None:
    import mlflow

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / filename
        p.write_bytes(data)
        mlflow.MlflowClient().log_artifact(run_id, str(p), artifact_path)
