"""Training runs of the apprentice: fit with store checkpoints and resume, export, the
multi-device subprocess, Dream-SuTI and the subprocess entry (`python -m suti.tasks.apprentice`)."""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from suti.models.apprentice import ApprenticeUNet
from suti.models.backbone import Backbone, load_backbone
from suti.models.pipeline import Apprentice, default_device
from suti.tasks.apprentice.data import GDataModule, ImageSource
from suti.tasks.apprentice.files import cache_dir, upload_dir
from suti.tasks.apprentice.module import METRIC_PREFIX, ApprenticeLit, MlflowMetrics, StoreCheckpoint, StepTimer
from suti.tasks.apprentice.rows import SOURCES, g_counts, rows_digest, train_recipe, training_rows
from suti.tasks.apprentice.settings import TrainSettings, apprentice_config, sampling_defaults

log = logging.getLogger("suti.apprentice")


# ---------------------------------------------------------------------------- training


def fit_apprentice(backbone: Backbone, app: ApprenticeUNet, rows: list[dict], images: ImageSource,
                   settings: TrainSettings, store, prefix: str, local_dir: Path, run_id: str | None = None,
                   ckpt_extra: dict | None = None) -> dict:
    """Lightning fit of ``app`` on ``rows`` with store checkpoints; resumes from
    ``<prefix>/last.ckpt`` when it is there. Returns step counts, loss and speed."""
    from suti.models.foundation import StepLog

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    app.train()  # (a loaded UNet comes in eval mode)
    lit = ApprenticeLit(backbone, app, settings)
    dm = GDataModule(rows, images, settings)
    ckpt_path, resumed_from = None, 0
    if store.exists(f"{prefix}/last.ckpt"):
        ckpt_path = local_dir / "resume.ckpt"
        store.get_file(f"{prefix}/last.ckpt", ckpt_path)
        resumed_from = int(store.get_json(f"{prefix}/last.json").get("step", 0)) if store.exists(
            f"{prefix}/last.json") else -1
        log.info(f"{prefix}: resuming from the checkpoint at step {resumed_from}")
    timer = StepTimer()
    callbacks = [StoreCheckpoint(store, prefix, local_dir, settings.checkpoint_every, ckpt_extra),
                 MlflowMetrics(run_id, settings.log_every), timer,
                 StepLog(prefix, settings.steps, max(1, min(settings.log_every, max(1, settings.steps // 10))))]
    trainer = L.Trainer(max_steps=settings.steps, accelerator=settings.accelerator, devices=settings.devices,
                        strategy=settings.strategy, precision=settings.precision, logger=False,
                        callbacks=callbacks, enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=settings.progress and sys.stderr.isatty(),
                        gradient_clip_val=settings.grad_clip or None, num_sanity_val_steps=0,
                        use_distributed_sampler=False, log_every_n_steps=max(1, settings.log_every))
    if settings.steps > 0:
        trainer.fit(lit, datamodule=dm, ckpt_path=str(ckpt_path) if ckpt_path else None, weights_only=False)
    loss = trainer.callback_metrics.get("train/loss")
    seconds = (time.time() - timer.t0) if timer.t0 else 0.0
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
    if timer.first_step is not None:
        resumed_from = int(timer.first_step)  # the restored step itself (last.json may lag the checkpoint)
    return {"global_zero": trainer.is_global_zero, "steps": int(trainer.global_step), "resumed_from": resumed_from,
            "steps_run": timer.steps, "first_step": timer.first_step, "data_start_step": dm.start_step,
            "loss": float(loss) if loss is not None else float("nan"),
            "train_seconds": round(seconds, 2), "steps_per_sec": round(timer.steps / seconds, 3) if seconds else None}


def _launched_rank() -> int:
    """Global rank of a process Lightning launched for DDP (0 in the launching process)."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK"):
        if int(os.environ.get(var, "0") or 0) > 0:
            return 1
    return 0


def train_apprentice(cfg: DictConfig, store, rows: list[dict], run_name: str, run_id: str | None = None,
                     force: bool = False) -> dict:
    """Train the apprentice on ``rows`` (G(lambda)) as run ``run_name``; export the model
    to ``apprentice/<run>/model``, a sample grid and the done marker. Reruns reuse a
    finished run (same steps and rows) and resume an interrupted one from its checkpoint.

    Returns the run's record (also the done marker's metadata); on non-zero DDP ranks {}.
    """
    prefix = f"apprentice/{run_name}"
    settings = TrainSettings.from_cfg(cfg)
    digest = rows_digest(rows)
    if not rows:
        from suti.errors import UserError

        raise UserError("G(lambda) is empty: no expert sample passed the filter (lower lambda or run more experts)")
    if _launched_rank() > 0:  # a DDP worker relaunched by Lightning: rank 0 owns the store's run state
        force = False
    elif force:
        store.delete(prefix)
    warm = _warm_start(cfg, store, run_name)
    recipe = train_recipe(cfg, store, settings, digest, start=warm["fingerprint"] if warm else None)
    meta = store.done_meta(prefix)
    if meta is not None and meta.get("recipe") == recipe:
        log.info(f"{prefix}: finished earlier ({meta['steps']} steps, same recipe), reusing it")
        return {**meta, "reused": True}
    if _launched_rank() == 0:
        if store.exists(f"{prefix}/last.json"):
            last = store.get_json(f"{prefix}/last.json")
            if last.get("recipe") != recipe:
                log.warning(f"{prefix}: the checkpoint was trained with another recipe or rows; starting over")
                store.delete(prefix)
        if store.exists(f"{prefix}/_DONE.json"):
            store.delete(f"{prefix}/_DONE.json")  # the run changes: not finished until marked again

    t0 = time.time()
    backbone = load_backbone(cfg, store)
    torch.manual_seed(settings.seed)  # the new layers' initialisation
    app = ApprenticeUNet(backbone.unet, apprentice_config(cfg))
    if warm:
        _load_warm(app, warm)
        log.info(f"{prefix}: warm start from {warm['source']} (its base UNet and demo layers)")
    images = ImageSource(store, backbone.resolution)
    fit = fit_apprentice(backbone, app, rows, images, settings, store, prefix, cache_dir(cfg, run_name), run_id,
                         {"rows_digest": digest, "recipe": recipe})
    if not fit["global_zero"]:
        return {}
    rows_G, subjects_G = g_counts(rows)
    apprentice = Apprentice(backbone, app, sampling_defaults(cfg),
                            {"run_name": run_name, "rows": len(rows), "subjects": _subjects(rows), "steps": fit["steps"],
                             "rows_G": rows_G, "subjects_G": subjects_G,
                             "train_base": settings.train_base or bool(warm and warm["train_base"]),
                             "init_from": warm["source"] if warm else None, "backbone": backbone.describe()})
    apprentice.to(default_device())
    record = _finish_run(cfg, store, apprentice, rows, images, prefix, run_id, fit,
                         {"rows": len(rows), "subjects": _subjects(rows), "rows_digest": digest, "recipe": recipe,
                          "run_name": run_name})
    record["seconds"] = round(time.time() - t0, 1)
    store.mark_done(prefix, record)
    return record


def _warm_start(cfg: DictConfig, store, run_name: str) -> dict | None:
    """``apprentice.init_from``: the trained apprentice this run starts from (its whole state:
    base UNet and demo layers), with its content fingerprint (part of the recipe, so another
    start model trains anew). None when unset. A one-line UserError when it names no model,
    names this very run, or has another demo-attention architecture or base."""
    from suti.errors import UserError
    from suti.tasks.apprentice.registry import load_apprentice
    from suti.tasks.evaluate import model_fingerprint

    source = cfg.apprentice.init_from
    if source is None or not str(source).strip():
        return None
    source = str(source).strip()
    if source == run_name:
        raise UserError(f"apprentice.init_from={source!r} is the run being trained: name another model")
    start = load_apprentice(source, cfg, store, device="cpu")
    mine, theirs = apprentice_config(cfg), start.model.config
    for key in ("demo_sites", "heads", "demo_timestep", "demo_pool"):
        if getattr(mine, key) != getattr(theirs, key):
            raise UserError(f"apprentice.init_from={source}: its {key} is {getattr(theirs, key)!r}, this config's "
                            f"{getattr(mine, key)!r}; warm start needs the same demo-attention architecture")
    return {"source": source, "state": start.model.state_dict(), "fingerprint": model_fingerprint(start),
            "train_base": bool(start.meta.get("train_base", False))}


def _load_warm(app: ApprenticeUNet, warm: dict) -> None:
    """Load the start model's state into the fresh apprentice; another backbone (other
    parameter names or shapes) is a one-line UserError, not a state-dict traceback."""
    from suti.errors import UserError

    shapes = {k: tuple(v.shape) for k, v in app.state_dict().items()}
    if shapes != {k: tuple(v.shape) for k, v in warm["state"].items()}:
        raise UserError(f"apprentice.init_from={warm['source']}: its UNet is not this config's backbone (other shapes)")
    app.load_state_dict(warm["state"])


def _subjects(rows: Sequence[dict]) -> int:
    """Distinct subjects (clusters) the rows teach: the paper's |clusters| beside |triples|."""
    return len({r.get("cluster_id", r["sample_key"]) for r in rows})


def _finish_run(cfg, store, apprentice: "Apprentice", rows, images: ImageSource, prefix: str, run_id: str | None,
                fit: dict, extra: dict) -> dict:
    """Export the model, render the sample grid, log the end-of-run metrics."""
    local = Path(tempfile.mkdtemp(prefix="apprentice-export-", dir=cache_dir(cfg)))
    try:
        apprentice.export(local / "model", bundle=bool(cfg.backbone.bundle))
        store.delete(f"{prefix}/model")
        upload_dir(store, local / "model", f"{prefix}/model")
    finally:
        shutil.rmtree(local, ignore_errors=True)
    overhead = apprentice.model.param_overhead()
    gates = {site: float(torch.tanh(layer.gate.detach()).item()) for site, layer in apprentice.model.demo_layers.items()}
    grid_png = sample_grid(apprentice, rows, images, int(cfg.apprentice.grid_rows), seed=int(cfg.seed))
    store.put_bytes(f"{prefix}/samples.png", grid_png)
    record = {**extra, "steps": fit["steps"], "resumed_from": fit["resumed_from"], "steps_run": fit["steps_run"],
              "data_start_step": fit["data_start_step"],
              "loss": fit["loss"], "train_seconds": fit["train_seconds"], "steps_per_sec": fit["steps_per_sec"],
              "overhead": overhead, "gates": gates, "model": store.url(f"{prefix}/model"),
              "samples": store.url(f"{prefix}/samples.png"), "backbone": apprentice.backbone.name}
    if run_id:
        from suti.tracking import log_bytes, log_json, log_metrics

        log_metrics(run_id, {f"{METRIC_PREFIX}.params_base": overhead["base"],
                             f"{METRIC_PREFIX}.params_added": overhead["added"],
                             f"{METRIC_PREFIX}.params_ratio": overhead["ratio"],
                             f"{METRIC_PREFIX}.final_loss": fit["loss"]}, fit["steps"])
        log_bytes(run_id, grid_png, "examples", "apprentice_samples.png")
        log_json(run_id, record, "apprentice.json")
    return record


def sample_grid(apprentice: "Apprentice", rows: list[dict], images: ImageSource, n_rows: int, seed: int = 0,
                per_row: int = 2) -> bytes:
    """PNG: one row per example of G (first rows of distinct clusters): demos | generated."""
    from suti.imageio import grid_rows

    picked, seen = [], set()
    for r in rows:
        cid = r.get("cluster_id", r["sample_key"])
        if cid in seen:
            continue
        seen.add(cid)
        picked.append(r)
        if len(picked) >= n_rows:
            break
    out = []
    k = int(apprentice.defaults["demos"])
    for i, r in enumerate(picked):
        keys = list(r["demo_keys"])[:k]
        demos = [images.get(key) for key in keys]
        texts = list(r.get("demo_texts") or [""] * len(keys))[:k]
        gen = apprentice.generate(demos, texts, r["prompt"], num_images=per_row, seed=seed + i)
        out.append((demos, gen))
    buf = io.BytesIO()
    grid_rows(out, apprentice.backbone.resolution, scale=2).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- multi-device


def needs_subprocess(cfg: DictConfig) -> bool:
    """Multi-device Lightning relaunches ``sys.argv[0]`` (a Prefect flow would start
    again, NOTES): such runs train in a subprocess of this module instead."""
    a = cfg.apprentice
    devices = a.devices
    single = devices in (1, "1") or (isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices)) and len(devices) == 1
    return not single or str(a.strategy) not in ("auto", "single_device")


def train_in_subprocess(cfg: DictConfig, store, lam: float | None, run_name: str, run_id: str | None,
                        force: bool = False, source: str = "G") -> dict:
    """Run :func:`train_apprentice` as ``python -m suti.tasks.apprentice`` (DDP/FSDP)."""
    import subprocess

    d = cache_dir(cfg, run_name)
    conf = d / "config.yaml"
    conf.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    cmd = [sys.executable, "-m", "suti.tasks.apprentice", "--config", str(conf), "--run-name", run_name,
           "--lam", "none" if lam is None else repr(float(lam)), "--source", source]
    if run_id:
        cmd += ["--run-id", run_id]
    if force:
        cmd.append("--force")
    log.info(f"training {run_name} in a subprocess: {' '.join(cmd)}")
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise RuntimeError(f"apprentice training subprocess failed with exit code {proc.returncode}")
    meta = store.done_meta(f"apprentice/{run_name}")
    if meta is None:
        raise RuntimeError(f"apprentice training subprocess ended without finishing apprentice/{run_name}")
    return meta


# ---------------------------------------------------------------------------- Dream-SuTI


def dreamsuti(cfg: DictConfig, store, apprentice: Apprentice, images: Sequence[np.ndarray], texts: Sequence[str],
              name: str, run_id: str | None = None, force: bool = False) -> dict:
    """Dream-SuTI: fine-tune the apprentice on ONE subject: each example takes one of its
    images as the demo and another as the target (``apprentice.dreamsuti_steps``, paper
    500). Saved as run ``dreamsuti-<name>``; afterwards one demo suffices.

    ``apprentice`` is tuned in place (``copy.deepcopy`` it first to keep the original)."""
    from suti.errors import UserError

    if len(images) < 2:
        raise UserError(f"Dream-SuTI needs at least 2 images of the subject (one demo, one target), got {len(images)}")
    if len(texts) != len(images):
        raise ValueError("one text per image needed")
    settings = TrainSettings.from_cfg(cfg, dreamsuti=True)
    run_name = f"dreamsuti-{name}"
    prefix = f"apprentice/{run_name}"
    keys = [f"subject/{i}" for i in range(len(images))]
    rows = [{"sample_key": keys[j], "prompt": texts[j], "cluster_id": name,
             "demo_keys": [keys[i] for i in range(len(keys)) if i != j],
             "demo_texts": [texts[i] for i in range(len(keys)) if i != j]} for j in range(len(keys))]
    src = ImageSource(store, apprentice.backbone.resolution, dict(zip(keys, images)))
    digest = hashlib.sha256(b"".join(src.get(k).tobytes() for k in keys) + json.dumps(list(texts)).encode()).hexdigest()[:16]
    from suti.tasks.evaluate import model_fingerprint

    recipe = train_recipe(cfg, store, settings, digest, start=model_fingerprint(apprentice))
    if force:
        store.delete(prefix)
    meta = store.done_meta(prefix)
    if meta is not None and meta.get("recipe") == recipe:
        return {**meta, "reused": True}
    if store.exists(f"{prefix}/last.json") and store.get_json(f"{prefix}/last.json").get("recipe") != recipe:
        store.delete(prefix)  # another subject, start model or recipe under the same name: start over
    t0 = time.time()
    model = apprentice.model.cpu()
    apprentice.backbone.to("cpu")
    fit = fit_apprentice(apprentice.backbone, model, rows, src, settings, store, prefix, cache_dir(cfg, run_name),
                         run_id, {"rows_digest": digest, "recipe": recipe})
    if not fit["global_zero"]:
        return {}
    tuned = Apprentice(apprentice.backbone, model, {**apprentice.defaults, "demos": 1},
                       {**apprentice.meta, "run_name": run_name, "dreamsuti": name, "train_base": settings.train_base
                        or apprentice.meta.get("train_base", False), "steps": fit["steps"]}).to(default_device())
    record = _finish_run(cfg, store, tuned, rows, src, prefix, run_id, fit,
                         {"rows": len(rows), "rows_digest": digest, "recipe": recipe, "run_name": run_name,
                          "images": len(images)})
    record["seconds"] = round(time.time() - t0, 1)
    store.mark_done(prefix, record)
    return record


# ---------------------------------------------------------------------------- subprocess entry


def main(argv: list[str] | None = None) -> int:
    """``python -m suti.tasks.apprentice --config resolved.yaml --run-name N [--lam L]``:
    one training run (the multi-device path; also what a killed run is resumed with)."""
    p = argparse.ArgumentParser(prog="python -m suti.tasks.apprentice")
    p.add_argument("--config", required=True, help="a resolved config YAML")
    p.add_argument("--run-name", required=True)
    p.add_argument("--lam", default="none", help="lambda of G(lambda); 'none' = every row")
    p.add_argument("--source", default="G", choices=SOURCES, help="G(lambda) (SuTI), G(lambda) + the raw clusters, or the raw clusters (Re-Imagen)")
    p.add_argument("--run-id", default=None, help="MLflow run to log metrics to")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from suti.config import setup_env
    from suti.store import open_store

    cfg = OmegaConf.load(args.config)
    setup_env(cfg)
    store = open_store(str(cfg.storage.uri), cfg.storage.endpoint_url)
    lam = None if args.lam.lower() in ("none", "null") else float(args.lam)
    if args.run_id:
        from suti.tracking import setup_tracking

        setup_tracking(cfg)
    record = train_apprentice(cfg, store, training_rows(store, args.source, lam), args.run_name, args.run_id,
                              args.force)
    if record:
        print(json.dumps({k: record.get(k) for k in ("steps", "resumed_from", "steps_run", "data_start_step")}))
    return 0
