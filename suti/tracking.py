"""MLflow tracking: one MLflow run per flow run (nested under the `suti run` parent), the
config groups the stage uses logged as params, the git commit and Prefect flow run as tags.

The active-run stack is thread-local: code inside mapped tasks passes `parent_run_id`
explicitly and uses `MlflowClient` calls with run ids, never the fluent active run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
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
        if cfg.tracking.artifact_location:
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


# The config groups each stage's run logs as params (not all ~150 values on every run):
# what the stage reads. Top-level keys (`seed`, `profile_name`) are logged by every run.
STAGE_GROUPS = {
    "pipeline": ("pipeline", "sweep", "filter.sweep", "storage", "tracking"),
    "world": ("world",),
    "foundation": ("world.resolution", "backbone", "foundation"),
    "mine": ("mine",),
    "experts": ("backbone", "expert"),
    "filter": ("filter",),
    "sweep": ("filter.sweep", "sweep", "apprentice"),
    "lambda": ("sweep",),  # the nested train and eval runs log what they used
    "train": ("backbone", "apprentice"),
    "eval": ("eval",),
    "dreamsuti": ("backbone", "apprentice"),
    "promote": ("promote",),
}
TOP_LEVEL = ("seed", "profile_name")

# `suti run` opens one parent run; stage runs opened without a parent nest under it, and a
# stage opened again inside the same pipeline (the sweep re-checks the filter) reuses its run.
_PIPELINE: dict = {"run_id": None, "stages": {}}


def stage_params(cfg: DictConfig, stage: str, groups: tuple | None = None) -> dict:
    """The flattened config values of the groups `stage` uses (see STAGE_GROUPS)."""
    groups = STAGE_GROUPS.get(stage, ()) if groups is None else tuple(groups)
    every = flat(cfg)
    keep = lambda k: k in TOP_LEVEL or any(k == g or k.startswith(g + ".") for g in groups)  # noqa: E731
    return {k: v for k, v in every.items() if keep(k)}


def lambda_params(lam) -> dict:
    """The run's own lambda, under both names a user compares by (`lambda`, and the config
    key `filter.lambda_`, which would otherwise say the config's value, not this run's)."""
    value = "None" if lam is None else str(float(lam))
    return {"lambda": value, "filter.lambda_": value}


_GIT: dict | None = None


def git_tags() -> dict:
    """MLflow's source tags for the project checkout (empty outside a git work tree)."""
    global _GIT
    if _GIT is None:
        import subprocess

        root = Path(__file__).resolve().parents[1]
        _GIT = {}

        def git(*args):
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        try:
            commit = git("rev-parse", "HEAD")
            if commit:
                _GIT = {"mlflow.source.git.commit": commit, "mlflow.source.git.branch": git("rev-parse", "--abbrev-ref", "HEAD"),
                        "mlflow.source.git.repoURL": str(root),
                        "suti.git.dirty": str(bool(git("status", "--porcelain", "--untracked-files=no")))}
        except (OSError, subprocess.SubprocessError):
            pass
    return dict(_GIT)


def source_tags(name: str) -> dict:
    """Where a run came from: the git commit, the command, the user, the Prefect flow run."""
    import getpass
    import sys

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    tags = {"mlflow.source.type": "LOCAL", "mlflow.user": user, **git_tags(),
            "mlflow.source.name": "suti " + " ".join(sys.argv[1:2]) if Path(sys.argv[0]).name == "suti"
            else Path(sys.argv[0]).name or "python"}
    try:
        from prefect.runtime import flow_run

        if flow_run.id:
            tags.update({"prefect.flow_run_id": str(flow_run.id), "prefect.flow_run_name": str(flow_run.name),
                         "prefect.flow_name": str(flow_run.flow_name)})
            url = flow_run.ui_url
            if url and str(url).startswith("http"):  # no UI in ephemeral mode ("None/flow-runs/...")
                tags["prefect.flow_run_url"] = str(url)
    except Exception:  # outside a flow run, or Prefect not importable: no Prefect tags
        pass
    return tags


@contextlib.contextmanager
def mlflow_run(cfg: DictConfig, name: str, parent_run_id: str | None = None, tags: dict | None = None,
               log_config: bool = True, params: dict | None = None, groups: tuple | None = None):
    """Start (or nest under `parent_run_id`, else under the `suti run` parent) an MLflow run;
    yields the run id. Logs the config groups the stage uses (`groups`, default
    STAGE_GROUPS[stage]) and `params`, and tags the git commit and the Prefect flow run.

    Uses the client API so that it is safe inside worker threads."""
    import mlflow

    exp_id = setup_tracking(cfg)
    client = mlflow.MlflowClient()
    stage = name.split(":")[0]
    parent = parent_run_id or _PIPELINE["run_id"]
    key = (stage, name) if parent_run_id is None and _PIPELINE["run_id"] else None
    t = {"mlflow.runName": name, "suti.stage": stage, "suti.profile": str(cfg.profile_name),
         **source_tags(name)}
    if parent:
        t["mlflow.parentRunId"] = parent
    t.update(tags or {})
    rid = _PIPELINE["stages"].get(key) if key else None
    if rid:  # the same stage again in this `suti run`: one run, not two
        client.update_run(rid, status="RUNNING")
        for k, v in t.items():
            client.set_tag(rid, k, str(v))
    else:
        rid = client.create_run(exp_id, tags=t, run_name=name).info.run_id
        if key:
            _PIPELINE["stages"][key] = rid
    values = {**(stage_params(cfg, stage, groups) if log_config else {}), **(params or {})}
    if values:
        log_params(rid, values)
    status = "FAILED"
    try:
        yield rid
        status = "FINISHED"
    finally:
        client.set_terminated(rid, status)


@contextlib.contextmanager
def pipeline_run(cfg: DictConfig, tags: dict | None = None):
    """The parent MLflow run of one `suti run`: every stage run opened inside nests under it."""
    if _PIPELINE["run_id"]:  # already inside a pipeline (a deployment calling the pipeline twice)
        yield _PIPELINE["run_id"]
        return
    with mlflow_run(cfg, "pipeline", tags=tags) as rid:
        _PIPELINE.update(run_id=rid, stages={})
        try:
            yield rid
        finally:
            _PIPELINE.update(run_id=None, stages={})


@contextlib.contextmanager
def lambda_run(cfg: DictConfig, parent_run_id: str, lam, rows: list[dict], digest: str, source: str | None = None):
    """One lambda of a sweep, nested under the sweep's run: `lambda` (and `filter.lambda_`,
    this run's own) and the sweep config as params, |G| and its clusters as metrics, G(lambda)
    as the input dataset. Yields the run id."""
    with mlflow_run(cfg, f"lambda={lam}", parent_run_id=parent_run_id, tags={"suti.lambda": str(lam)},
                    groups=STAGE_GROUPS["lambda"], params={**lambda_params(lam), "G.digest": digest}) as rid:
        log_metrics(rid, {"G.size": len(rows), "G.clusters": len({r.get("cluster_id") for r in rows})})
        log_dataset(rid, rows, lam, digest, source=source)
        yield rid


def log_dataset(run_id: str, rows: list[dict], lam, digest: str, source: str | None = None,
                context: str = "training") -> None:
    """G(lambda) as the run's input dataset: name, digest, size and lambda, so a model
    version traces back to the data it learned from."""
    import mlflow
    import pandas as pd
    from mlflow.entities import DatasetInput, InputTag

    cols = ("sample_key", "cluster_id", "prompt", "delta")
    df = pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=list(cols))
    lam_s = "None" if lam is None else str(float(lam))
    with warnings.catch_warnings():  # a file:// source "can be interpreted in multiple ways": both the same class
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(df, source=source, name=f"G(lambda={lam_s})", digest=digest)
    tags = [InputTag("mlflow.data.context", context), InputTag("lambda", lam_s), InputTag("size", str(len(rows)))]
    mlflow.MlflowClient().log_inputs(run_id, datasets=[DatasetInput(ds._to_mlflow_entity(), tags=tags)])


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
