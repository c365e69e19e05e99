"""What the workdir benches share: open a workdir read-only, and train one foundation model
with a recipe of overrides into a temporary store."""
from __future__ import annotations

import tempfile
import time


def open_workdir(workdir: str, profile: str = "default"):
    """(config, store) of a workdir, as `suti` composes them (its store is only read)."""
    from suti.config import compose
    from suti.store import open_store

    cfg = compose([f"profile={profile}", f"workdir={workdir}", "progress=false"])
    return cfg, open_store(str(cfg.storage.uri))


def train_recipe(cfg, model: str, recipe: str, train_fn, images, scenes):
    """Train `model` (a `foundation` group) with `recipe` ("k=v,k=v" overrides) into a new
    temporary store: (overrides, merged config, store, train seconds)."""
    import yaml
    from omegaconf import OmegaConf

    from suti.store import open_store

    over = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in recipe.split(",") if kv)}
    rcfg = OmegaConf.merge(cfg, {"foundation": {model: over}})
    tmp = open_store(f"file://{tempfile.mkdtemp(prefix=f'bench-{model}-')}")
    t0 = time.time()
    train_fn(rcfg, tmp, images, scenes)
    return over, rcfg, tmp, time.time() - t0
