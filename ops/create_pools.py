"""Create (or update) the work pools prefect.yaml deploys to, and the GPU guard.

    PREFECT_API_URL=http://127.0.0.1:4200/api python ops/create_pools.py [--gpus N]

* ``cpu``: process pool (orchestration, world, mining, filtering, promotion), no limit.
* ``gpu``: process pool (expert shards, foundation, apprentice training, sweeps, eval).
  The guard Prefect recommends for GPUs: the pool's concurrency limit is the number of
  GPUs, each GPU has one worker started with ``--limit 1`` and its own
  ``CUDA_VISIBLE_DEVICES`` (``ops/start-gpu-workers.sh``), and a global concurrency
  limit ``gpu`` holds one slot per GPU for work that runs outside the pool
  (``with prefect.concurrency.sync.concurrency("gpu"): ...``).

Idempotent: a rerun updates the pools and limits. One process (the prefect CLI would
take six, ~15 s each on a busy 2-core machine). ``ops/create-pools.sh`` wraps it.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys

POOLS = {"cpu": None, "gpu": "gpus"}  # name -> which count limits it (None: unlimited)


def count_gpus() -> int:
    """GPUs that nvidia-smi lists on this node (at least 1: the pool needs a limit)."""
    if not shutil.which("nvidia-smi"):
        return 1
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 1
    return max(1, sum(line.startswith("GPU") for line in out.splitlines()))


async def create_pools(gpus: int) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    template = ProcessWorker.get_default_base_job_template()
    done = []
    async with get_client() as client:
        for name, limit_key in POOLS.items():
            limit = gpus if limit_key == "gpus" else None
            pool = await client.create_work_pool(
                WorkPoolCreate(name=name, type="process", base_job_template=template, concurrency_limit=limit),
                overwrite=True)
            done.append(f"work pool {pool.name}: process, concurrency limit {pool.concurrency_limit}")
        await client.upsert_global_concurrency_limit_by_name("gpu", gpus)
        done.append(f"global concurrency limit gpu: {gpus}")
    return done


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gpus", type=int, default=int(os.environ.get("SUTI_GPUS") or 0) or None,
                   help="GPUs behind the gpu pool (default: SUTI_GPUS, else nvidia-smi's count, at least 1)")
    args = p.parse_args(argv)
    if not os.environ.get("PREFECT_API_URL"):
        print("create-pools: set PREFECT_API_URL to your Prefect server's API (e.g. http://127.0.0.1:4200/api)",
              file=sys.stderr)
        return 2
    gpus = args.gpus or count_gpus()
    if gpus < 1:
        print(f"create-pools: --gpus must be >= 1, got {gpus}", file=sys.stderr)
        return 2
    try:
        for line in asyncio.run(create_pools(gpus)):
            print(line)
    except Exception as e:  # unreachable server, auth: one line
        print(f"create-pools: {type(e).__name__}: {' '.join(str(e).split())[:300]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
