"""Reusable helpers for tests that need a real background server.

Not a conftest: import what you need, e.g. ``from servers import moto_server``
(pytest's default "prepend" import mode puts ``tests/`` on ``sys.path`` while
``tests/`` has no ``__init__.py``; with one, use ``from tests.servers import ...``).

Servers bind to 127.0.0.1 on a free port, and we stop exactly the process we
started (by its own PID), never anything found by name.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Iterator

__all__ = ["free_port", "mlflow_server", "moto_server", "stop_process", "wait_for_http"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (nothing listens on it now)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None,
                  log=None, name: str = "server") -> None:
    """Poll ``url`` until any HTTP answer arrives (an error status counts as up).

    Raises RuntimeError if ``proc`` exits first or ``timeout`` seconds pass; with ``log`` (the
    server's log file) the error names the server and ends with the log's last 2000 characters.
    """
    try:
        _poll_http(url, timeout, proc)
    except RuntimeError as e:
        if log is None:
            raise
        from pathlib import Path

        pid = f" (pid {proc.pid})" if proc is not None else ""
        raise RuntimeError(f"{name}{pid} did not start: {e}\n"
                           f"{Path(log).read_text(errors='replace')[-2000:]}") from None


def _poll_http(url: str, timeout: float, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return  # it answered, just not with 2xx
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"no answer from {url} within {timeout:.0f} s")
        time.sleep(0.1)


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop exactly ``proc``: terminate, wait up to ``grace`` s, then kill."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=grace)


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    """Set environment variables for the block, restoring the old values after."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def moto_server(timeout: float = 30.0) -> Iterator[str]:
    """Run a moto S3 server (``python -m moto.server``) and yield its endpoint URL.

    While the block runs, AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY are ``testing``
    and AWS_DEFAULT_REGION is ``us-east-1`` (moto accepts any credentials).
    The server's output goes to a temp log, quoted in the error if it fails to start.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile(mode="w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    pid = proc.pid  # the server's own PID: the only process we will stop
    try:
        try:
            wait_for_http(f"{url}/moto-api/", timeout=timeout, proc=proc)
        except RuntimeError as exc:
            log.seek(0)
            tail = log.read()[-2000:].decode("utf-8", "replace")
            raise RuntimeError(f"moto server (pid {pid}) did not start: {exc}\n{tail}") from None
        with _env(
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        ):
            yield url
    finally:
        stop_process(proc)
        log.close()


@contextlib.contextmanager
def mlflow_server(tmp, artifacts_destination: str | None = None, env: dict | None = None,
                  timeout: float = 300.0) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite backend in ``tmp``, one uvicorn worker: the default
    starts one per core, ~2.9 GB) on a free loopback port; yields its URL. ``mlflow server``
    runs uvicorn as its child: both are stopped, by PID, children first."""
    from pathlib import Path

    import psutil

    tmp = Path(tmp)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp / "mlflow-server.log"
    log = open(log_path, "wb")
    dest = artifacts_destination or (tmp / "mlflow-artifacts").as_uri()
    proc = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server",
                             "--backend-store-uri", f"sqlite:///{tmp / 'mlflow-server.db'}",
                             "--artifacts-destination", dest, "--workers", "1",
                             "--host", "127.0.0.1", "--port", str(port)],
                            env=env if env is not None else {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
                            cwd=tmp, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    children: list = []
    try:
        wait_for_http(f"{url}/health", timeout=timeout, proc=proc, log=log_path, name="mlflow server")
        children = psutil.Process(proc.pid).children(recursive=True)  # its uvicorn, started by it
        yield url
    finally:
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.terminate()
        psutil.wait_procs(children, timeout=15)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        stop_process(proc, grace=15)
        log.close()
