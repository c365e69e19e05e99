"""CLI polish: `suti --version`, `suti status` (finished stages from the store's markers),
`generate --help` naming the files it writes, and reports kept per workdir."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from conftest import smoke_overrides

SUTI = Path(sys.executable).with_name("suti")


def suti(*args: str, cwd=None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(SUTI), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})


def test_version_and_generate_help():
    p = suti("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"suti {version('suti')}", p.stderr
    h = suti("generate", "--help")
    assert h.returncode == 0, h.stderr
    text = " ".join(h.stdout.split())
    assert "PATH_0.png, PATH_1.png, ... and PATH as a grid of them" in text
    top = suti("--help")
    assert "status" in top.stdout and "serve" in top.stdout and "--version" in top.stdout


def test_status_reads_the_markers_and_writes_nothing(smoke, tmp_path):
    empty = tmp_path / "never-run"
    p = suti("status", f"workdir={empty}")
    assert p.returncode == 0, p.stderr
    lines = {ln.split()[0]: ln.split()[1] for ln in p.stdout.splitlines()[1:-1]}
    assert list(lines) == ["world", "foundation", "mine", "experts", "filter", "sweep", "apprentice", "eval"]
    assert set(lines.values()) == {"missing"} and "0/8 stages finished" in p.stdout
    assert not empty.exists()  # read-only: not even the workdir's cache folders

    ov, cfg, store = smoke  # the session's smoke world + foundation
    p = suti("status", *ov)
    assert p.returncode == 0, p.stderr
    rows = {ln.split()[0]: ln.split(None, 2)[1:] for ln in p.stdout.splitlines()[1:-1]}
    assert rows["world"][0] == "done" and rows["foundation"] == ["done", "4/4 models (clip, identity, rater, base)"]
    assert rows["mine"][0] == rows["experts"][0] == rows["eval"][0] == "missing"
    assert "2/8 stages finished" in p.stdout
    bad = suti("status", "workdir=x", "storage.uri=ftp://nope")
    assert bad.returncode == 2 and bad.stderr.startswith("suti: error: ") and len(bad.stderr.splitlines()) == 1


def test_two_workdirs_from_one_folder_keep_their_own_reports(tmp_path, monkeypatch):
    from suti.config import compose
    from suti.flows.common import write_report

    monkeypatch.chdir(tmp_path)  # both run from the same folder, with relative workdirs
    paths = {}
    for wd in ("smoke-run", "default-run"):
        cfg = compose(["profile=smoke", f"workdir={wd}"])  # reports_dir left at its default
        assert Path(cfg.reports_dir) == Path(wd) / "reports"
        paths[wd] = write_report(cfg, "world", {"workdir": wd})
    for wd, p in paths.items():
        assert p.resolve() == (tmp_path / wd / "reports" / "world.json")
        assert json.loads(p.read_text()) == {"workdir": wd}
    assert not (tmp_path / "reports").exists()
    # the smoke fixtures' explicit reports_dir is the same place
    assert compose(smoke_overrides(tmp_path / "w")).reports_dir == str(tmp_path / "w" / "reports")
