"""Shared fixtures: the real config composed and shrunk to the smoke profile, outputs
under tmp paths; one smoke world + foundation built once per test session."""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# Before prefect / mlflow are imported anywhere: keep their homes and caches out of ~.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="suti-tests-"))
for var, sub in (("PREFECT_HOME", "prefect"), ("MPLCONFIGDIR", "mpl"), ("XDG_CACHE_HOME", "cache"),
                 ("TORCHINDUCTOR_CACHE_DIR", "inductor"), ("SUTI_CACHE", "suti-cache")):
    os.environ.setdefault(var, str(_SESSION_HOME / sub))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.pop("PREFECT_API_URL", None)  # ephemeral mode unless a test starts a server

sys.path.insert(0, str(Path(__file__).parent))  # tests/servers.py


@pytest.fixture(scope="session", autouse=True)
def _stop_prefect_temporary_server():
    """Stop Prefect's temporary API server at the end of the session, while pytest still
    captures output: left to Prefect's atexit hook it logs "Stopping temporary server" to a
    console stream pytest has already closed ("--- Logging error ---" tracebacks). The log
    and event workers are drained first, so none of them sends to a stopped server."""
    yield
    server_mod = sys.modules.get("prefect.server.api.server")
    if server_mod is None:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        service.drain_all(timeout=30)
    for server in list(server_mod.SubprocessASGIServer._instances.values()):
        server.stop()


def smoke_overrides(workdir: Path, *extra: str) -> list[str]:
    """Overrides that point every output of a run at `workdir`."""
    return ["profile=smoke", f"workdir={workdir}", f"reports_dir={workdir / 'reports'}", "progress=false", *extra]


@pytest.fixture(scope="session")
def smoke(tmp_path_factory):
    """A smoke-profile world and foundation, built once: (overrides, cfg, store)."""
    from suti.flows.common import prepare
    from suti.flows.foundation import foundation_flow
    from suti.flows.world import world_flow

    wd = tmp_path_factory.mktemp("smoke")
    ov = smoke_overrides(wd)
    world_flow(overrides=ov)  # stage flows do not chain: each checks its inputs
    foundation_flow(overrides=ov)
    cfg, store = prepare(ov)
    return ov, cfg, store


def checkpoint_keys_hold(keys: list[str], train_base: bool) -> bool:
    """A checkpoint holds the demo layers, plus the base UNet exactly when it was trained
    (a frozen base stays out); never the frozen encoders."""
    demo = [k for k in keys if k.startswith("app.demo_layers.")]
    unet = [k for k in keys if k.startswith("app.unet.")]
    return bool(demo) and len(demo) + len(unet) == len(keys) and bool(unet) == bool(train_base)
