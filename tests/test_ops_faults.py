"""Operations: faults. A killed experts run resumes, a failing expert is isolated, a dead
shard is rerun alone, and bad input is one line on stderr with exit code 2 and nothing written.

(a)-(c) run `suti experts` / `experts_shard_flow` in subprocesses on copies of the smoke
store (mined once), against one real Prefect server (no ephemeral server per process);
they are slow. (d) runs every `suti` command with wrong values; the config cases are fast.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import smoke_overrides
from servers import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SUTI = str(BIN / "suti")


# -- helpers ---------------------------------------------------------------------------------

def base_env(tmp: Path, api_url: str | None = None) -> dict:
    """A clean environment for a subprocess: no inherited Prefect/MLflow/SUTI settings;
    with `api_url`, Prefect talks to that server, else each process has an ephemeral one."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SUTI_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1", MLFLOW_DISABLE_TELEMETRY="true",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120")
    if api_url:
        env.update(PREFECT_API_URL=api_url, PREFECT_HOME=str(tmp / "prefect-client"))
    return env


def copy_store(src_wd: Path, dst_wd: Path) -> None:
    """A fresh work directory whose store is a copy of `src_wd`'s (world, foundation, mine)."""
    dst_wd.mkdir(parents=True)
    shutil.copytree(src_wd / "store", dst_wd / "store", ignore=shutil.ignore_patterns("experts", "filter", "apprentice"))


def done_ids(wd: Path) -> set[str]:
    d = wd / "store" / "experts"
    return {p.parent.name for p in d.glob("*/_DONE.json")} if d.exists() else set()


def expert_dirs(wd: Path) -> set[str]:
    d = wd / "store" / "experts"
    return {p.name for p in d.iterdir() if p.is_dir() and p.name != "examples"} if d.exists() else set()


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` (a worker dying), then stop what it had started (by PID)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    for c in children:
        with contextlib.suppress(psutil.NoSuchProcess):
            c.kill()


def wait_for(predicate, proc: subprocess.Popen, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout:.0f} s")
        time.sleep(0.2)


def check_samples(wd: Path, ids: set[str]) -> None:
    for cid in ids:
        rec = json.loads((wd / "store" / "experts" / cid / "record.json").read_text())
        assert rec["samples"], cid
        for s in rec["samples"]:
            Image.open(io.BytesIO((wd / "store" / s["key"]).read_bytes())).verify()  # a whole PNG


SHARD = """
import json, sys
from suti.flows.experts import experts_shard_flow
r = experts_shard_flow(overrides=json.loads(sys.argv[1]), shard=int(sys.argv[2]), num_shards=int(sys.argv[3]))
print("RESULT " + json.dumps(r))
"""


def shard_cmd(ov: list[str], shard: int, num_shards: int) -> list[str]:
    return [sys.executable, "-c", SHARD, json.dumps(ov), str(shard), str(num_shards)]


def shard_result(stdout: str) -> dict:
    line = [x for x in stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


# -- fixtures (slow part) ---------------------------------------------------------------------

# The smoke CLIP is too weak for the calibrated similarity band to keep more than a couple
# of clusters; these tests need clusters, not good ones: the band is left wide open.
MINE = ["mine.band=[-1.0,1.0]"]


@pytest.fixture(scope="module")
def mined(smoke, tmp_path_factory):
    """A work directory with the smoke world + foundation and mining done (wide band),
    apart from the shared smoke store. Each test copies its store."""
    from suti.flows.mine import mine_flow

    ov, cfg, store = smoke
    wd = tmp_path_factory.mktemp("mined") / "wd"
    copy_store(Path(cfg.workdir), wd)
    rep = mine_flow(overrides=smoke_overrides(wd, *MINE))
    assert rep["counts"]["kept"] >= 6, rep["counts"]
    return wd


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from test_ops_prefect_server import prefect_server

    with prefect_server(tmp_path_factory.mktemp("faults-server")) as s:
        yield s.api_url


def experts_overrides(wd: Path, *extra: str) -> list[str]:
    return smoke_overrides(wd, *MINE, "expert.check=false", *extra)


# -- (a) kill and resume ------------------------------------------------------------------------

@pytest.mark.slow
def test_killed_experts_run_resumes(mined, api, tmp_path):
    from suti.store import open_store
    from suti.tasks.experts import finished_experts

    wd = tmp_path / "wd"
    copy_store(mined, wd)
    ov = experts_overrides(wd, "expert.clusters=6", "num_workers=1")
    env = base_env(tmp_path, api)
    log = open(tmp_path / "first.log", "wb")
    proc = subprocess.Popen([SUTI, "experts", *ov], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: done_ids(wd), proc, 20 * 60, "first expert _DONE.json")
    finally:
        kill_tree(proc)
        log.close()
    done, dirs = done_ids(wd), expert_dirs(wd)
    assert 1 <= len(done) < 6, done
    # only complete experts are read; a half-written one (if the kill caught one) is not
    store = open_store(f"file://{wd}/store")
    assert {r["cluster_id"] for r in finished_experts(store)} == done
    check_samples(wd, done)

    p = subprocess.run([SUTI, "experts", *ov], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30 * 60)
    assert p.returncode == 0, p.stderr[-4000:]
    rep = json.loads((wd / "reports" / "experts.json").read_text())
    assert rep["experts"] == 6 and rep["failed"] == 0, rep
    assert rep["reused"] >= len(done) >= 1
    assert rep["trained"] + rep["reused"] == rep["experts"]
    assert len(done_ids(wd)) == 6
    check_samples(wd, done_ids(wd))
    # a planted half-written expert (samples, no marker) is never read
    (wd / "store/experts/zz-half/samples").mkdir(parents=True)
    (wd / "store/experts/zz-half/samples/0.png").write_bytes(b"\x89PNG trunc")
    assert "zz-half" not in {r["cluster_id"] for r in finished_experts(store)}


# -- (b) a failing expert is isolated ---------------------------------------------------------

@pytest.mark.slow
def test_failing_expert_is_isolated(mined, api, tmp_path):
    from suti.store import open_store
    from suti.tasks.experts import expert_specs

    wd = tmp_path / "wd"
    copy_store(mined, wd)
    bad = expert_specs(open_store(f"file://{wd}/store"), 3)[1].cluster_id
    env = {**base_env(tmp_path, api), "SUTI_FAIL_EXPERT": bad}
    p = subprocess.run([SUTI, "experts", *experts_overrides(wd, "expert.clusters=3", "num_workers=1")], env=env,
                       cwd=tmp_path, capture_output=True, text=True, timeout=30 * 60)
    assert p.returncode == 0, p.stderr[-4000:]
    rep = json.loads((wd / "reports" / "experts.json").read_text())
    assert rep["failed_ids"] == [bad] and rep["failed"] == 1 and rep["trained"] == 2, rep
    assert bad not in done_ids(wd) and len(done_ids(wd)) == 2
    assert "injected failure" in json.loads((wd / f"store/experts/{bad}/failed.json").read_text())["error"]


# -- (c) a dead shard is rerun alone ----------------------------------------------------------

@pytest.mark.slow
def test_dead_shard_is_rerun_alone(mined, api, tmp_path):
    from suti.store import open_store
    from suti.tasks.experts import expert_specs

    wd = tmp_path / "wd"
    copy_store(mined, wd)
    ov = experts_overrides(wd, "expert.clusters=6", "num_workers=1")
    specs = [s.cluster_id for s in expert_specs(open_store(f"file://{wd}/store"), 6)]
    mine0, mine1 = set(specs[0::2]), set(specs[1::2])
    env = base_env(tmp_path, api)
    logs = [open(tmp_path / f"shard{i}.log", "w+") for i in (0, 1)]
    shards = [subprocess.Popen(shard_cmd(ov, i, 2), env=env, cwd=tmp_path, stdout=logs[i], stderr=subprocess.STDOUT,
                               text=True) for i in (0, 1)]
    try:
        wait_for(lambda: done_ids(wd) & mine1, shards[1], 20 * 60, "shard 1's first expert")
        kill_tree(shards[1])  # its worker dies
        assert shards[0].wait(timeout=20 * 60) == 0, (tmp_path / "shard0.log").read_text()[-4000:]
    finally:
        for s in shards:
            if s.poll() is None:
                kill_tree(s)
        for f in logs:
            f.close()
    assert mine0 <= done_ids(wd)
    before = done_ids(wd) & mine1
    assert 1 <= len(before) < len(mine1)
    stamps = {c: (wd / f"store/experts/{c}/_DONE.json").stat().st_mtime_ns for c in done_ids(wd)}

    p = subprocess.run(shard_cmd(ov, 1, 2), env=env, cwd=tmp_path, capture_output=True, text=True, timeout=30 * 60)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    res = {r["cluster_id"]: r["status"] for r in shard_result(p.stdout)["results"]}
    assert set(res) == mine1  # only shard 1's experts
    assert {c for c, s in res.items() if s == "reused"} == before
    assert {c for c, s in res.items() if s == "trained"} == mine1 - before
    assert done_ids(wd) == mine0 | mine1
    assert all((wd / f"store/experts/{c}/_DONE.json").stat().st_mtime_ns == t for c, t in stamps.items())
    check_samples(wd, done_ids(wd))


# -- (d) bad input --------------------------------------------------------------------------

def _commands() -> list[str]:
    from suti.cli import COMMANDS, _exists

    return [c for c, (module, _, _) in COMMANDS.items() if _exists(module)]


CONFIG_CASES = {"steps": (["expert.steps=-1"], "expert.steps"), "backbone": (["backbone=nope"], "backbone"),
                "lambda": (["filter.lambda_=abc"], "filter.lambda_")}


def _args(command: str, tmp: Path) -> list[str]:
    """Valid command-specific flags, so that the bad value is the only problem."""
    demo = tmp / "inputs" / "demo.png"
    if not demo.exists():
        demo.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (200, 40, 40)).save(demo)
        Image.new("RGB", (32, 32), (40, 200, 40)).save(demo.parent / "demo2.png")
    return {"generate": ["--demo", str(demo), "--prompt", "a photo of it", "--out", str(tmp / "inputs" / "out.png")],
            "dreamsuti": ["--demo", str(demo), "--demo", str(demo.parent / "demo2.png"), "--name", "x"],
            "rate": ["--eval-id", "ev1"]}.get(command, [])


def _files(wd: Path) -> list[str]:
    return sorted(str(p.relative_to(wd)) for p in wd.rglob("*") if p.is_file()) if wd.exists() else []


def _bad_input(command: str, case: str, extra: list[str], tmp: Path, env_extra: dict | None = None,
               timeout: float = 300):
    wd = tmp / f"wd-{command}-{case}"
    env = {**base_env(tmp), **(env_extra or {})}  # no PREFECT_HOME: Prefect's home is the workdir, as for a user
    p = subprocess.run([SUTI, command, *_args(command, tmp), *smoke_overrides(wd), *extra], env=env, cwd=tmp,
                       capture_output=True, text=True, timeout=timeout)
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    problems = []
    if p.returncode != 2:
        problems.append(f"exit {p.returncode}")
    if len(lines) != 1:
        problems.append(f"{len(lines)} stderr lines")
    if "Traceback" in p.stderr + p.stdout:
        problems.append("traceback")
    if _files(wd):
        problems.append(f"wrote {_files(wd)[:3]}")
    return problems, (lines[-1] if lines else "")


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_wrong_config_value_is_one_line(case, tmp_path):
    bad = {}
    overrides, needle = CONFIG_CASES[case]
    for command in _commands():
        problems, line = _bad_input(command, case, overrides, tmp_path)
        if needle not in line:
            problems.append(f"message does not name {needle}")
        if problems:
            bad[command] = (problems, line)
    assert not bad, bad


@pytest.mark.slow
@pytest.mark.parametrize("case", ["s3", "tracking"])
def test_unreachable_service_is_one_line(case, tmp_path):
    port = free_port()  # nothing listens there
    extra = {"s3": ["storage=s3", "storage.uri=s3://suti-none/artifacts", f"storage.endpoint_url=http://127.0.0.1:{port}"],
             "tracking": ["tracking=server", f"tracking.uri=http://127.0.0.1:{port}"]}[case]
    bad, ok = {}, []
    for command in _commands():
        if case == "tracking" and command == "rate":
            continue  # serving the rating page needs no tracking server (`--push` does, after reading ratings)
        problems, line = _bad_input(command, case, extra, tmp_path,
                                    {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"})
        if problems:
            bad[command] = (problems, line)
        else:
            ok.append(command)
    assert not bad, f"ok: {ok}; not ok: {bad}"
