"""Operations: the project on a real Prefect server, deployed from prefect.yaml.

A `prefect server start` subprocess (its own PREFECT_HOME under tmp, 127.0.0.1, a free
port; we stop exactly its PID), the work pools from ops/create-pools.sh, `prefect deploy`
from the repo root, a `prefect worker start --pool cpu` subprocess, and the smoke pipeline
run as a deployment until its flow run is COMPLETED.

The server tests are slow: ~1 min to start the server on a busy 2-core machine, the pipeline run itself minutes.
`prefect_server()` and `PrefectCLI` are reused by the Dask and fault tests.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from conftest import smoke_overrides
from servers import free_port, stop_process, wait_for_http

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect")
RUN_TIMEOUT = 25 * 60  # the smoke pipeline on a busy 2-core machine
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@dataclass
class PrefectServer:
    """A running `prefect server start`: its API URL, the env that points clients at it."""

    api_url: str
    env: dict
    home: Path
    pid: int

    def api(self, method: str, path: str, body: dict | None = None):
        """One REST call to the server's API; the JSON answer."""
        req = urllib.request.Request(self.api_url + path, method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read() or b"null")

    def cli(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        """`prefect --no-prompt ARGS` from the repo root, against this server."""
        p = subprocess.run([PREFECT, "--no-prompt", *args], cwd=ROOT, env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        return p

    def flow_run(self, run_id: str) -> dict:
        return self.api("GET", f"/flow_runs/{run_id}")

    def wait_flow_run(self, run_id: str, timeout: float, worker: subprocess.Popen | None = None) -> dict:
        """Poll a flow run until it is in a terminal state (or the worker died)."""
        deadline = time.monotonic() + timeout
        while True:
            fr = self.flow_run(run_id)
            if fr["state_type"] in TERMINAL:
                return fr
            if worker is not None and worker.poll() is not None:
                raise AssertionError(f"worker exited ({worker.returncode}) while the flow run was {fr['state_type']}")
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run {run_id} still {fr['state_type']} after {timeout:.0f} s")
            time.sleep(3)


def client_env(home: Path, api_url: str | None = None) -> dict:
    """The test's environment, cleaned for a Prefect process with its own home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
               MLFLOW_DISABLE_TELEMETRY="true", HF_HUB_OFFLINE="1", PREFECT_LOGGING_EXTRA_LOGGERS="suti",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


@contextlib.contextmanager
def prefect_server(tmp: Path, timeout: float = 300) -> Iterator[PrefectServer]:
    """`prefect server start` on 127.0.0.1:<free port> with PREFECT_HOME under `tmp`."""
    home = tmp / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp / "prefect-server.log", "wb")
    proc = subprocess.Popen([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=client_env(home), cwd=tmp, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    pid = proc.pid  # the server's own PID: the only process we stop
    try:
        wait_for_http(f"{url}/api/health", timeout=timeout, proc=proc, log=tmp / "prefect-server.log",
                      name="prefect server")
        yield PrefectServer(f"{url}/api", client_env(home, f"{url}/api"), home, pid)
    finally:
        stop_process(proc, grace=20)
        log.close()


@contextlib.contextmanager
def prefect_worker(server: PrefectServer, pool: str, log_path: Path, limit: int | None = None) -> Iterator[subprocess.Popen]:
    """`prefect worker start --pool POOL` polling every 2 s; stopped (its own PID) on exit."""
    env = {**server.env, "PREFECT_WORKER_QUERY_SECONDS": "2"}
    cmd = [PREFECT, "worker", "start", "--pool", pool, "--name", f"test-{pool}-{os.getpid()}"]
    if limit:
        cmd += ["--limit", str(limit)]
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=env, cwd=log_path.parent, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        stop_process(proc, grace=30)
        log.close()


def run_deployment_cli(server: PrefectServer, name: str, params: dict) -> str:
    """`prefect deployment run NAME --params JSON`; the flow run's id."""
    out = server.cli("deployment", "run", name, "--params", json.dumps(params)).stdout
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", out)
    assert m, out
    return m.group(1)


def deployments(server: PrefectServer) -> dict[str, dict]:
    """'<flow>/<deployment>' -> deployment, for everything on the server."""
    flows = {f["id"]: f["name"] for f in server.api("POST", "/flows/filter", {})}
    return {f"{flows[d['flow_id']]}/{d['name']}": d for d in server.api("POST", "/deployments/filter", {})}


def yaml_deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


# -- prefect.yaml, no server -------------------------------------------------------------

def test_prefect_yaml_declares_every_flow():
    deps = {d["name"]: d for d in yaml_deployments()}
    assert set(deps) == {"pipeline", "world", "foundation", "mine", "experts", "experts-shard", "filter", "sweep",
                         "train", "eval", "promote", "dreamsuti"}
    for name, d in deps.items():
        path, fn = d["entrypoint"].split(":")
        assert path.startswith("flows/") and path.endswith(".py"), d["entrypoint"]
        assert d["work_pool"]["name"] in ("cpu", "gpu")
        assert "overrides" in d["parameters"], name
        assert all(not s.get("active", True) for s in d.get("schedules") or []), f"{name}: a schedule is active"
    assert deps["experts-shard"]["entrypoint"] == "flows/experts.py:experts_shard_flow"
    assert deps["experts-shard"]["work_pool"]["name"] == "gpu"
    assert deps["pipeline"]["entrypoint"] == "flows/pipeline.py:pipeline_flow"
    for d in deps.values():  # every entrypoint file exists
        assert (ROOT / d["entrypoint"].split(":")[0]).is_file(), d["entrypoint"]


# -- against a real server ----------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with prefect_server(tmp_path_factory.mktemp("prefect-server")) as s:
        p = subprocess.run(["bash", str(ROOT / "ops/create-pools.sh"), "--gpus", "2"], env=s.env,
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr
        yield s


@pytest.mark.slow
def test_pools_and_gpu_guard(server):
    # idempotent: a second run with another GPU count updates, never duplicates
    p = subprocess.run(["bash", str(ROOT / "ops/create-pools.sh"), "--gpus", "3"], env=server.env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    pools = {w["name"]: w for w in server.api("POST", "/work_pools/filter", {})}
    assert pools["cpu"]["type"] == pools["gpu"]["type"] == "process"
    assert pools["cpu"]["concurrency_limit"] is None
    assert pools["gpu"]["concurrency_limit"] == 3
    gcl = server.api("GET", "/v2/concurrency_limits/gpu")
    assert gcl["limit"] == 3 and gcl["active"]


@pytest.mark.slow
def test_deploy_all(server):
    """`prefect --no-prompt deploy --all` registers every deployment of prefect.yaml."""
    p = server.cli("deploy", "--all", timeout=1200, check=False)
    found = deployments(server)
    missing = [d["name"] for d in yaml_deployments()
               if not any(k.endswith("/" + d["name"]) for k in found)]
    assert p.returncode == 0 and not missing, (f"deploy --all exited {p.returncode}; not deployed: {missing}\n"
                                               f"{p.stdout[-3000:]}\n{p.stderr[-2000:]}")
    for key, d in found.items():
        step = d["pull_steps"][0]["prefect.deployments.steps.set_working_directory"]
        assert Path(step["directory"]) == ROOT, key  # workers run in the project folder
        assert d["schedules"] == [] or not any(s["active"] for s in d["schedules"]), key
    assert found["train/train"]["global_concurrency_limit"]["limit"] == 1  # one training run per node


@pytest.mark.slow
def test_smoke_pipeline_runs_on_a_worker(server, tmp_path):
    name = "pipeline"
    server.cli("deploy", "--name", name, timeout=600)
    dep = deployments(server)[f"{name}/{name}"]
    assert dep["work_pool_name"] == "cpu"
    wd = tmp_path / "wd"
    with prefect_worker(server, "cpu", tmp_path / "worker.log") as worker:
        run_id = run_deployment_cli(server, f"{name}/{name}", {"overrides": smoke_overrides(wd)})
        fr = server.wait_flow_run(run_id, RUN_TIMEOUT, worker)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert fr["state_type"] == "COMPLETED", f"{fr['state_type']}: {fr['state']['message']}\n{log[-4000:]}"
    assert "set_working_directory" in log  # the pull step ran: `flows/...` resolved from the project folder
    # the flow's own task runs, plus those of its subflows
    flow_runs = server.api("POST", "/flow_runs/filter", {})
    ours = [f["id"] for f in flow_runs if f["id"] == run_id or f["parent_task_run_id"]]
    own = server.api("POST", "/task_runs/count", {"flow_runs": {"id": {"any_": [run_id]}}})
    total = server.api("POST", "/task_runs/count", {"flow_runs": {"id": {"any_": ours}},
                                                   "task_runs": {"state": {"type": {"any_": ["COMPLETED"]}}}})
    assert own >= 1 and total >= own
    # the run wrote where its overrides pointed
    assert json.loads((wd / "reports" / "world.json").read_text())["pages"] > 0
    assert json.loads((wd / "reports" / "run.json").read_text())["champion"]
    assert (wd / "store").is_dir() and (wd / "mlflow.db").exists()
