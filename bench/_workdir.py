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


def foundation_inputs(cfg, store):
    """What a foundation recipe bench trains and checks on: the workdir's pre-training renders
    (images, scenes) and the held-out check scenes with their renders, as the foundation checks use."""
    from suti.tasks import foundation as F

    images, scenes = F.load_pretrain(store)
    return (images, scenes, *F.heldout_checks(cfg, store, int(cfg.foundation.eval.heldout_renders)))


def parse_recipe(recipe: str) -> dict:
    """"k=v,k=v" -> {k: value}, values read as YAML (and 1e-4, a string to YAML 1.1, as a number)."""
    import yaml

    over = {}
    for kv in filter(None, recipe.split(",")):
        if "=" not in kv:
            raise SystemExit(f"recipe item {kv!r} is not key=value")
        k, v = kv.split("=", 1)
        val = yaml.safe_load(v)
        if isinstance(val, str):
            try:
                val = float(val)
            except ValueError:
                pass
        over[k.strip()] = val
    return over


def train_recipe(cfg, model: str, recipe: str, train_fn, images, scenes):
    """Train `model` (a `foundation` group) with `recipe` ("k=v,k=v" overrides) into a new
    temporary store: (overrides, merged config, store, train seconds)."""
    from omegaconf import OmegaConf

    from suti.store import open_store

    over = parse_recipe(recipe)
    rcfg = OmegaConf.merge(cfg, {"foundation": {model: over}})
    tmp = open_store(f"file://{tempfile.mkdtemp(prefix=f'bench-{model}-')}")
    t0 = time.time()
    train_fn(rcfg, tmp, images, scenes)
    return over, rcfg, tmp, time.time() - t0
