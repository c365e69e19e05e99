"""MLflow runs as `suti run` opens them: one parent, stage runs nested under it (a stage
opened twice is one run), tagged with the git commit and the Prefect flow run, each
logging only its own config groups; lambda runs with their own lambda and G(lambda)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import smoke_overrides

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_parent_nests_stages_with_source_and_prefect_tags(tmp_path):
    import mlflow
    from prefect import flow

    from suti.config import compose
    from suti.tracking import STAGE_GROUPS, lambda_run, mlflow_run, pipeline_run

    cfg = compose(smoke_overrides(tmp_path / "work"))

    @flow(name="tracking-probe", flow_run_name="probe run")
    def probe():
        with pipeline_run(cfg) as parent:
            with mlflow_run(cfg, "filter") as first:
                pass
            with mlflow_run(cfg, "filter") as again:  # the sweep re-checks the filter
                pass
            with mlflow_run(cfg, "sweep") as sweep:
                with lambda_run(cfg, sweep, None, [{"cluster_id": "a"}, {"cluster_id": "b"}], "d2") as lam:
                    pass
        return parent, first, again, sweep, lam

    parent, first, again, sweep, lam = probe()
    assert first == again
    client = mlflow.MlflowClient(tracking_uri=str(cfg.tracking.uri))
    runs = {r.info.run_id: r for r in client.search_runs([client.get_run(parent).info.experiment_id])}
    assert set(runs) == {parent, first, sweep, lam}  # one run per stage, none left open
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert runs[first].data.tags["mlflow.parentRunId"] == runs[sweep].data.tags["mlflow.parentRunId"] == parent
    assert runs[lam].data.tags["mlflow.parentRunId"] == sweep
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    for r in runs.values():
        t = r.data.tags
        assert t["mlflow.source.git.commit"] == commit and t["mlflow.source.type"] == "LOCAL"
        assert t["prefect.flow_run_name"] == "probe run" and len(t["prefect.flow_run_id"]) == 36
    # each run logs its own groups, not the whole config
    assert set(runs[first].data.params) == {"seed", "profile_name", *(k for k in runs[first].data.params
                                                                       if k.startswith("filter."))}
    assert not any(k.startswith(("world.", "expert.", "apprentice.")) for k in runs[first].data.params)
    assert all(k.split(".")[0] in {"seed", "profile_name", "sweep", "lambda", "filter", "G"}
               for k in runs[lam].data.params)
    p = runs[lam].data.params
    assert p["lambda"] == p["filter.lambda_"] == "None" and p["G.digest"] == "d2"
    assert runs[lam].data.metrics == {"G.size": 2.0, "G.clusters": 2.0}
    assert STAGE_GROUPS["train"] == ("backbone", "apprentice")
