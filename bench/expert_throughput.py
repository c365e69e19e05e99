"""Experts per hour: `expert.method` full vs lora, 1 vs 2 concurrent workers. Prints JSON.

    .venv/bin/python bench/expert_throughput.py                      # builds a smoke store first
    .venv/bin/python bench/expert_throughput.py --store-uri file:///data/work/store --experts 8 \\
        --overrides expert.steps=150

The source store needs finished mining (`suti mine`); it is only read. Each setting trains
the same `--experts` clusters from scratch in a scratch store (the clusters' images, the
mined clusters and the base + CLIP weights are copied there) through the experts flow's
own mapping (`run_specs`: Prefect task mapping, ThreadPoolTaskRunner(num_workers)), so the
figure includes what the flow pays: model loads, sampling the unseen prompts, PNG writes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

SETTINGS = [("full", 1), ("full", 2), ("lora", 1), ("lora", 2)]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store-uri", help="a store with finished mining (default: build a smoke store in --workdir)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint of --store-uri")
    p.add_argument("--workdir", default="work/bench", help="scratch space (and the smoke store when building one)")
    p.add_argument("--experts", type=int, default=4, help="experts per setting")
    p.add_argument("--settings", default=",".join(f"{m}:{w}" for m, w in SETTINGS),
                   help="method:workers,... (default: %(default)s)")
    p.add_argument("--overrides", nargs="*", default=["profile=smoke"],
                   help="Hydra overrides for the experts (default: profile=smoke)")
    return p.parse_args(argv)


def source_store(args, wd: Path):
    from suti.store import open_store

    if args.store_uri:
        return open_store(args.store_uri, args.endpoint_url)
    from suti.flows.pipeline import pipeline_flow

    smoke = wd / "smoke"
    # the smoke CLIP is too weak for the calibrated band to keep more than a couple of
    # clusters: a wide band keeps every page with >= 3 images (throughput, not quality)
    ov = ["profile=smoke", f"workdir={smoke}", f"reports_dir={smoke / 'reports'}", "progress=false",
          "+mine.band=[-1.0,1.0]"]
    pipeline_flow(overrides=ov, until="mine")  # world -> foundation -> mine; reused when already there
    return open_store(f"file://{smoke / 'store'}")


def copy_inputs(src, dst, specs) -> int:
    """What experts read: mined clusters, base + CLIP weights, the clusters' images."""
    keys = [k for prefix in ("mine", "foundation/base", "foundation/clip") for k in src.list(prefix)]
    keys += [k for s in specs for k in s.image_keys]
    for k in keys:
        dst.put_bytes(k, src.get_bytes(k))
    return len(keys)


def main(argv=None) -> int:
    args = parse(argv)
    wd = Path(args.workdir).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    from suti.config import compose, setup_env

    setup_env(compose([f"workdir={wd}"]))  # caches and Prefect's home under the workdir
    from suti.flows.experts import run_specs
    from suti.store import open_store
    from suti.tasks.experts import expert_specs

    src = source_store(args, wd)
    specs = expert_specs(src, args.experts)
    scratch = Path(tempfile.mkdtemp(prefix="experts-", dir=wd))
    try:
        store = open_store(f"file://{scratch}")
        copied = copy_inputs(src, store, specs)
        rows = []
        for setting in args.settings.split(","):
            method, workers = setting.split(":")
            cfg = compose([*args.overrides, f"workdir={wd}", f"storage.uri=file://{scratch}", "storage.endpoint_url=null",
                           f"expert.method={method}", f"num_workers={workers}", "expert.runner=thread"])
            store.delete("experts") if store.list("experts") else None
            t0 = time.time()
            results = run_specs(specs, cfg, store)
            wall = time.time() - t0
            ok = [r for r in results if r.status == "trained"]
            rows.append({"method": method, "workers": int(workers), "experts": len(specs), "trained": len(ok),
                         "failed": sum(r.status == "failed" for r in results), "wall_seconds": round(wall, 1),
                         "experts_per_hour": round(3600 * len(ok) / wall, 1) if ok else 0.0,
                         "train_seconds_per_expert": round(sum(r.train_seconds for r in ok) / max(1, len(ok)), 2),
                         "sample_seconds_per_expert": round(sum(r.sample_seconds for r in ok) / max(1, len(ok)), 2)})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    out = {"bench": "expert_throughput", "store": src.uri, "inputs_copied": copied,
           "expert": {k: cfg.expert[k] for k in ("steps", "batch_size", "prompts_per_cluster", "samples_per_prompt",
                                                  "sample_steps", "scheduler", "lora_rank")},
           "resolution": int(cfg.world.resolution), "overrides": args.overrides,
           "machine": {"cpus": os.cpu_count(), "niceness": os.nice(0), "python": platform.python_version(),
                       "load_avg_1m": round(os.getloadavg()[0], 2)},
           "results": rows}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
