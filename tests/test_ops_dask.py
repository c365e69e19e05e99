"""Operations: experts on the Dask task runner give the same outputs as on the thread runner.

Two copies of the mined smoke store; the same experts (same seeds) trained once with
`expert.runner=thread num_workers=2` and once with `expert.runner=dask num_workers=2`
(LocalCluster, one process per worker). Both in subprocesses against one real Prefect
server: with the ephemeral server every Dask worker would start its own (NOTES).
Compared: every sample's pixels and each expert's final loss.
"""
from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from test_ops_faults import MINE, api, base_env, copy_store, mined, shard_cmd, shard_result  # noqa: F401 (fixtures)
from conftest import smoke_overrides

pytestmark = pytest.mark.slow

CLUSTERS = 4


def run_experts(wd: Path, runner: str, api_url: str, tmp: Path) -> dict:
    ov = smoke_overrides(wd, *MINE, f"expert.runner={runner}", "num_workers=2", f"expert.clusters={CLUSTERS}")
    p = subprocess.run(shard_cmd(ov, 0, 1), env=base_env(tmp, api_url), cwd=tmp, capture_output=True, text=True,
                       timeout=30 * 60)
    assert p.returncode == 0, f"{runner}: {p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return {r["cluster_id"]: r for r in shard_result(p.stdout)["results"]}


def pixels(wd: Path, cid: str) -> tuple[list[np.ndarray], dict]:
    rec = json.loads((wd / "store" / "experts" / cid / "record.json").read_text())
    imgs = [np.asarray(Image.open(io.BytesIO((wd / "store" / s["key"]).read_bytes())).convert("RGB"))
            for s in rec["samples"]]
    return imgs, rec


def test_dask_runner_matches_thread_runner(mined, api, tmp_path):  # noqa: F811
    runs = {}
    for runner in ("thread", "dask"):
        wd = tmp_path / runner
        copy_store(mined, wd)
        runs[runner] = run_experts(wd, runner, api, tmp_path)
    assert set(runs["thread"]) == set(runs["dask"]) and len(runs["thread"]) == CLUSTERS
    assert all(r["status"] == "trained" for rs in runs.values() for r in rs.values()), runs
    diffs = {}
    for cid in runs["thread"]:
        (a, ra), (b, rb) = pixels(tmp_path / "thread", cid), pixels(tmp_path / "dask", cid)
        assert len(a) == len(b) > 0
        assert ra["seed"] == rb["seed"]
        diffs[cid] = {"max_pixel_diff": max(int(np.abs(x.astype(int) - y.astype(int)).max()) for x, y in zip(a, b)),
                      "loss": (ra["final_loss"], rb["final_loss"])}
    assert all(d["max_pixel_diff"] == 0 and d["loss"][0] == d["loss"][1] for d in diffs.values()), diffs
