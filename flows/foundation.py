"""`suti foundation`: train the world's tiny CLIP, identity embedder, auto-rater and base
text-to-image model with Lightning, register them in MLflow, check them on held-out renders."""
from __future__ import annotations

import io
import logging
import time

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from suti import keys as K
from suti.flows.common import logger, prepare, write_report
from suti.flows.stages import require
from suti.tasks import foundation as F
from suti.tracking import PIP_REQUIREMENTS, log_bytes, log_json, log_metrics, mlflow_run

TRAINERS = {"clip": F.train_clip, "identity": F.train_identity, "rater": F.train_rater, "base": F.train_base}


@task(name="train-{model}", task_run_name="train-{model}", cache_policy=NO_CACHE)
def train_model(model: str, cfg, store, images, scenes) -> dict:
    t0 = time.time()
    out = TRAINERS[model](cfg, store, images, scenes)
    out["seconds"] = round(time.time() - t0, 1)
    store.mark_done(K.foundation_done(model), {"seconds": out["seconds"], "loss": out["loss"],
                                            "steps": int(cfg.foundation[model].steps),
                                            "recipe": F.recipe(cfg, model)})
    logger().info(f"trained {model} in {out['seconds']} s (loss {out['loss']:.4f})")
    return out


def register(run_id: str, cfg, store) -> dict:
    """Register each foundation model in the MLflow model registry (pickled torch modules)."""
    import mlflow

    from suti.models.scorers import Scorers

    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    versions = {}
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # pickle warning: we load our own models
    with mlflow.start_run(run_id=run_id):
        for name, module in (("clip", sc.clip), ("identity", sc.identity), ("rater", sc.rater),
                             ("base", F.load_base_unet(cfg, store))):
            info = mlflow.pytorch.log_model(module, name=f"suti-{name}", serialization_format="pickle",
                                            pip_requirements=PIP_REQUIREMENTS, registered_model_name=f"suti-{name}")
            versions[name] = str(info.registered_model_version)
    return versions


@flow(name="foundation", log_prints=True)
def foundation_flow(overrides: list[str] | None = None, force: bool = False) -> dict:
    cfg, store = prepare(overrides)
    lg = logger()
    require("world", cfg, store, by="foundation")
    t_all = time.time()
    finished = {m: _finished(cfg, store, m) for m in F.MODELS}
    prev = store.get_fingerprinted(CHECKED, _fingerprint(cfg, store)) \
        if not force and all(finished.values()) else None
    if prev is not None:
        # every model and its checks are done: downstream stages do not redo the checks
        # (2 min each) nor register the same models again
        lg.info("foundation: every model and its checks finished earlier, reusing them")
        report = {**prev["report"], "reused": list(F.MODELS), "checks_reused": True}
        write_report(cfg, "foundation", report)
        return report
    images, scenes = F.load_pretrain(store)
    lg.info(f"pre-training corpus: {len(images)} renders")
    seconds, losses, reused, cached = {}, {}, [], []
    apart = train_apart(cfg, store, overrides, finished, force)
    with mlflow_run(cfg, "foundation") as rid:
        for model in F.MODELS:
            meta = store.done_meta(K.foundation_done(model))
            if model in apart:
                seconds[model], losses[model] = meta["seconds"], meta["loss"]
                to_cache(cfg, store, model)
                continue
            if finished[model] and not force:
                lg.info(f"{model}: finished earlier, reusing it")
                seconds[model], losses[model] = meta["seconds"], meta["loss"]
                reused.append(model)
                continue
            hit = None if force else from_cache(cfg, store, model)
            if hit is not None:
                lg.info(f"{model}: trained with this recipe in another workdir, copied from the cache {hit['path']}")
                seconds[model], losses[model] = hit["meta"]["seconds"], hit["meta"]["loss"]
                cached.append(model)
                continue
            out = train_model(model, cfg, store, images, scenes)
            seconds[model], losses[model] = out["seconds"], out["loss"]
            to_cache(cfg, store, model)
        seconds["total"] = round(sum(seconds[m] for m in F.MODELS), 1)
        lg.info("checking foundation models on held-out renders")
        t0 = time.time()
        res = F.evaluate(cfg, store, F.load_base_unet(cfg, store), F.untrained_unet(cfg))
        seconds["checks"] = round(time.time() - t0, 1)
        grid_png = io.BytesIO()
        res.pop("_grid").save(grid_png, format="PNG")
        store.put_bytes("foundation/examples/base_samples.png", grid_png.getvalue())
        log_bytes(rid, grid_png.getvalue(), "examples", "base_samples.png")
        prompts = res.pop("_prompts")
        versions = register(rid, cfg, store)
        report = {**res, "seconds": seconds, "loss": losses, "reused": reused, "cached": cached,
                  "cache": str(cache_root() or "off"), "registered": versions,
                  "profile": cfg.profile_name, "mlflow_run_id": rid,
                  "wall_seconds": round(time.time() - t_all, 1),
                  "grid": store.url("foundation/examples/base_samples.png"),
                  "grid_rows": ["real renders", "base model", "untrained"], "grid_prompts": prompts}
        log_metrics(rid, {"clip.retrieval_top1": res["clip"]["retrieval_top1"], "identity.margin": res["identity"]["margin"] or float("nan"),
                          "identity.same_caption_margin": res["identity"]["same_caption_margin"],
                          "rater.class_acc": res["rater"]["class_acc"], "rater.context_acc": res["rater"]["context_acc"],
                          "base.class_acc": res["base"]["class_acc"], "base.clip_t": res["base"]["clip_t"],
                          "real.clip_t": res["real_clip_t"], "untrained.class_acc": res["untrained"]["class_acc"],
                          "untrained.clip_t": res["untrained"]["clip_t"],
                          **{f"seconds.{k}": v for k, v in seconds.items()}})
        log_json(rid, report, "foundation.json")
    path = write_report(cfg, "foundation", report)
    store.put_json(CHECKED, {"fingerprint": _fingerprint(cfg, store), "report": report})
    create_markdown_artifact(key="foundation-checks", markdown=_markdown(report), description="Foundation checks")
    lg.info(f"foundation: CLIP top-1 {res['clip']['retrieval_top1']:.3f}, identity margin {res['identity']['margin']} "
            f"(same caption {res['identity']['same_caption_margin']:.3f}), rater class {res['rater']['class_acc']:.3f} context {res['rater']['context_acc']:.3f}, base class "
            f"{res['base']['class_acc']:.3f} CLIP-T {res['base']['clip_t']:.3f} (real {res['real_clip_t']:.3f}); report {path}")
    return report


CHECKED = "foundation/checks.json"
CHAINS = (("clip", "base"), ("identity", "rater"))  # the base trains on CLIP's text tower; the others need nothing


def train_apart(cfg, store, overrides: list[str] | None, finished: dict, force: bool) -> list[str]:
    """With `foundation.processes=2`, train the models still to train as two chains
    (CLIP then the base; identity then the rater) in two worker processes at one torch
    thread each, side by side; returns the models they trained ([] when there is nothing
    to split: processes 1, or one chain left). Each worker logs to logs/foundation-*.log."""
    import subprocess
    import sys
    from pathlib import Path

    if int(cfg.foundation.processes) < 2:
        return []
    todo = {m for m in F.MODELS if force or not finished[m]}
    todo -= {m for m in todo if not force and from_cache(cfg, store, m) is not None}
    chains = [[m for m in chain if m in todo] for chain in CHAINS]
    chains = [c for c in chains if c]
    if len(chains) < 2:
        return []
    lg = logger()
    logs = Path(cfg.workdir).expanduser() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    try:
        for chain in chains:
            log_path = logs / f"foundation-{'-'.join(chain)}.log"
            cmd = [sys.executable, "-m", "suti.flows.foundation_worker", *[a for m in chain for a in ("--model", m)],
                   "--", *(overrides or []), "torch_threads=1"]
            with log_path.open("w") as out:
                procs.append((chain, log_path, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)))
            lg.info(f"foundation: training {' then '.join(chain)} in a worker process (1 thread), log {log_path}")
        while any(p.poll() is None for _, _, p in procs):
            time.sleep(30)
            for chain, log_path, p in procs:
                steps = [ln for ln in log_path.read_text(errors="replace").splitlines() if ": step " in ln or "trained " in ln]
                if p.poll() is None and steps:
                    lg.info(f"foundation worker {'+'.join(chain)}: {steps[-1].split(' - ')[-1]}")
    finally:  # an interrupted flow leaves no worker behind (a rerun trains what has no done marker)
        for _, _, p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for chain, log_path, p in procs:
        if p.returncode != 0:
            lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
            raise RuntimeError(f"foundation worker for {'+'.join(chain)} failed (exit {p.returncode}): "
                               f"{lines[-1] if lines else 'no output'} (log {log_path})")
    return [m for chain in chains for m in chain]


def _finished(cfg, store, model: str) -> bool:
    """Trained with this recipe (its training section, and the world it learned from)."""
    meta = store.done_meta(K.foundation_done(model))
    return meta is not None and meta.get("recipe") == F.recipe(cfg, model)


def cache_root():
    """The foundation cache shared by a user's workdirs (`SUTI_CACHE`, default
    `~/.cache/suti`; `SUTI_CACHE=off` turns it off): trained models by recipe."""
    import os
    from pathlib import Path

    root = os.environ.get("SUTI_CACHE") or str(Path.home() / ".cache" / "suti")
    return None if root.lower() in ("off", "none", "0") else Path(root) / "foundation"


def cache_key(cfg, store, model: str) -> str:
    """Everything a trained model depends on: its recipe, the whole world config, and for the
    base model the text encoder it was trained with."""
    from dataclasses import asdict

    from suti.store import digest
    from suti.world.corpus import world_config

    parts = {"recipe": F.recipe(cfg, model), "world": asdict(world_config(cfg)), "clip": str(cfg.backbone.clip_config)}
    if model == "base":
        parts["text_encoder"] = F.recipe(cfg, "clip")
    return f"{model}-{digest(parts)[:20]}"


def from_cache(cfg, store, model: str) -> dict | None:
    """Copy a cached model with this recipe into the store (weights, then the done marker)."""
    import json

    root = cache_root()
    d = root / cache_key(cfg, store, model) if root else None
    if d is None or not (d / "done.json").is_file():
        return None
    try:
        meta = json.loads((d / "done.json").read_text())
        store.put_bytes(K.foundation_model(model), (d / "model.pt").read_bytes())
    except (OSError, ValueError) as e:
        logger().warning(f"{model}: unreadable cache entry {d} ({e}); training it")
        return None
    store.mark_done(K.foundation_done(model), {**meta, "from_cache": str(d)})
    return {"meta": meta, "path": str(d)}


def to_cache(cfg, store, model: str) -> None:
    """Keep a freshly trained model for the user's other workdirs (written to a temporary
    folder, renamed into place: a half-written entry is never read)."""
    import json
    import shutil
    import tempfile

    root = cache_root()
    if root is None:
        return
    d = root / cache_key(cfg, store, model)
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=root)
        with open(f"{tmp}/model.pt", "wb") as f:
            f.write(store.get_bytes(K.foundation_model(model)))
        with open(f"{tmp}/done.json", "w") as f:
            json.dump(store.done_meta(K.foundation_done(model)), f)
        if d.exists():
            shutil.rmtree(tmp)
        else:
            import os

            os.replace(tmp, d)
    except OSError as e:
        logger().warning(f"{model}: could not write the foundation cache {root} ({e})")


def models_finished(cfg, store) -> bool:
    """Every foundation model trained with this config's recipe (what downstream stages read)."""
    return all(_finished(cfg, store, m) for m in F.MODELS)


def _fingerprint(cfg, store) -> str:
    """The trained models (their done markers) and the check settings the report came from."""
    from omegaconf import OmegaConf

    from suti.store import digest

    parts = {m: store.done_meta(K.foundation_done(m)) for m in F.MODELS}
    parts["eval"] = OmegaConf.to_container(cfg.foundation.eval, resolve=True)
    return digest(parts)


def _markdown(r: dict) -> str:
    return "\n".join([
        "| check | value |", "|---|---|",
        f"| CLIP image->caption top-1 (of {r['clip']['pool']}) | {r['clip']['retrieval_top1']:.3f} |",
        f"| identity margin | {r['identity']['margin']} |",
        f"| identity margin, same caption | {r['identity'].get('same_caption_margin')} |",
        f"| rater class / context acc | {r['rater']['class_acc']:.3f} / {r['rater']['context_acc']:.3f} |",
        f"| base class acc / CLIP-T (real) | {r['base']['class_acc']:.3f} / {r['base']['clip_t']:.3f} ({r['real_clip_t']:.3f}) |",
        f"| untrained class acc / CLIP-T | {r['untrained']['class_acc']:.3f} / {r['untrained']['clip_t']:.3f} |",
        f"| seconds (total) | {r['seconds']['total']} |",
    ])
