"""The SuTI apprentice: training on G(lambda), inference, the MLflow pyfunc and Dream-SuTI.

Plain functions and classes; the Prefect flows (`flows/train.py`, `flows/generate.py`,
`flows/dreamsuti.py`) only wire them. Written once for every backbone
(:mod:`suti.models.backbone`): the tiny pixel-space world model and Stable Diffusion.

Training data G(lambda) are the filter stage's rows (``filter/deltas.jsonl``)::

    {"sample_key": <store key of the expert sample y_s>, "prompt": p_s, "delta": float,
     "cluster_id": ..., "demo_keys": [store keys of C_s], "demo_texts": [...], "description": ...}

Store layout of one training run ``<run>`` (``lam-0.02``, ``dreamsuti-<name>``, ...)::

    apprentice/<run>/last.ckpt    Lightning checkpoint, rewritten atomically every N steps
    apprentice/<run>/last.json    {"step": N, ...} of that checkpoint
    apprentice/<run>/model/       the exported model: apprentice.pt + backbone/ (what the
                                  pyfunc carries; `suti generate --model <run>` loads it)
    apprentice/<run>/samples.png  sample grid: demos | generated, one row per example
    apprentice/<run>/_DONE.json   written last: steps, loss, parameter overhead, ...

MLflow metrics (per step): ``apprentice.loss``, ``apprentice.steps_per_sec``,
``apprentice.lr``, ``apprentice.gate_abs_mean``; at the end ``apprentice.params_base``,
``apprentice.params_added``, ``apprentice.params_ratio``, ``apprentice.final_loss``.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from mlflow.pyfunc import PythonModel
from omegaconf import DictConfig, OmegaConf

from suti.models.apprentice import ApprenticeConfig, ApprenticeUNet, DemoMemory
from suti.models.backbone import Backbone, load_backbone, load_exported, text_to_image
from suti.models.diffusion import diffusion_loss

log = logging.getLogger("suti.apprentice")

MODEL_FILE = "apprentice.pt"
FORMAT = 1
METRIC_PREFIX = "apprentice"

__all__ = ["load_G", "cluster_rows", "training_rows", "run_name_for", "TrainSettings", "GBatches", "GDataModule", "ApprenticeLit", "train_apprentice",
           "Apprentice", "ApprenticePyfunc", "register_candidate", "dreamsuti", "needs_subprocess",
           "train_in_subprocess"]


# ---------------------------------------------------------------------------- G(lambda)


from suti.tasks.filter import load_G  # noqa: E402  (G(lambda) is the filter's; re-exported here)

SOURCES = ("G", "clusters")  # what an apprentice learns from: expert outputs (SuTI) | raw clusters (Re-Imagen)


def cluster_rows(store) -> list[dict]:
    """Re-Imagen's training data (the paper's baseline): the mined clusters themselves, no
    experts. Each image of a cluster is a target once, with its own caption as the prompt and
    the cluster's other images (and texts) as the demonstrations to draw from."""
    from suti.tasks.experts import load_clusters

    rows = []
    for c in load_clusters(store):
        keys, texts = list(c["images"]), list(c["texts"])
        if len(keys) < 2:
            continue
        for j, key in enumerate(keys):
            rows.append({"sample_key": key, "cluster_id": c["cluster_id"], "prompt": texts[j],
                         "demo_keys": keys[:j] + keys[j + 1:], "demo_texts": texts[:j] + texts[j + 1:],
                         "source": "clusters"})
    return rows


def training_rows(store, source: str, lam: float | None) -> list[dict]:
    """G(lambda) for the apprentice, the raw clusters for Re-Imagen."""
    if source == "clusters":
        return cluster_rows(store)
    if source != "G":
        from suti.config import ConfigError

        raise ConfigError(f"training source must be one of {list(SOURCES)}, got {source!r}")
    return load_G(store, lam)


def run_name_for(cfg: DictConfig, lam: float | None) -> str:
    """``apprentice.run_name`` or ``lam-<lambda>`` (``lam-none`` for all rows)."""
    name = cfg.apprentice.get("run_name")
    if name:
        return str(name)
    return "lam-none" if lam is None else f"lam-{float(lam):g}"


def rows_digest(rows: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["sample_key"], r["prompt"], r["demo_keys"], r.get("demo_texts")]).encode())
    return h.hexdigest()[:16]


def train_recipe(cfg: DictConfig, store, settings: "TrainSettings", rows_digest_: str, start: str | None = None) -> str:
    """Everything a trained apprentice depends on: the training settings (not how it is run
    or logged), the demo-attention architecture, the base model and the rows (G); for
    Dream-SuTI also the model it starts from. A finished run is reused only on a match."""
    from suti.store import digest

    how = {"progress", "log_every", "checkpoint_every", "accelerator", "strategy", "devices"}
    part = {"settings": {k: v for k, v in asdict(settings).items() if k not in how},
            "architecture": asdict(apprentice_config(cfg)),
            "base": (store.done_meta("foundation/base") or {}).get("recipe"),
            "backbone": OmegaConf.to_container(cfg.backbone, resolve=True), "rows": rows_digest_, "start": start}
    return digest(part)


# ---------------------------------------------------------------------------- settings


@dataclass
class TrainSettings:
    """Everything a training run of the apprentice needs (from ``cfg.apprentice``)."""

    steps: int = 1500  # optimizer steps
    batch_size: int = 16  # examples per step (per device)
    demos: int = 3  # demonstrations per example (sampled from the cluster C_s)
    lr: float = 2e-4  # learning rate of the new demo layers
    train_base: bool = False  # also fine-tune the base UNet ...
    base_lr: float = 2e-5  # ... at this (lower) learning rate
    weight_decay: float = 0.01  # AdamW weight decay (never on the gates)
    warmup_frac: float = 0.05  # linear warm-up, then cosine decay to 5%
    grad_clip: float = 1.0  # gradient-norm clipping (0: off)
    text_drop: float = 0.1  # CFG dropout of the prompt
    demo_drop: float = 0.1  # CFG dropout of all demos of an example
    demo_text_drop: float = 0.1  # dropout of each demo's own text (text-less demos at inference)
    checkpoint_every: int = 200  # steps between checkpoints written to the store
    log_every: int = 20  # steps between MLflow metric logs
    accelerator: str = "auto"  # Lightning accelerator
    strategy: str = "auto"  # Lightning strategy: auto | ddp | fsdp | ...
    devices: Any = 1  # Lightning devices
    precision: str = "32-true"  # Lightning precision (bf16-mixed on GPUs)
    seed: int = 0  # batches, noise and new layers follow from it
    progress: bool = False  # progress bar (a log line every few steps otherwise)

    @classmethod
    def from_cfg(cls, cfg: DictConfig, dreamsuti: bool = False) -> "TrainSettings":
        a = cfg.apprentice
        s = cls()
        kw = {f: a.get(f, getattr(s, f)) for f in asdict(s) if f not in ("seed", "progress")}
        kw["seed"] = int(cfg.seed)
        kw["progress"] = bool(cfg.get("progress", False))
        if dreamsuti:
            kw.update(steps=a.get("dreamsuti_steps", 500), lr=a.get("dreamsuti_lr", 1e-5),
                      batch_size=a.get("dreamsuti_batch_size", 4), train_base=a.get("dreamsuti_train_base", True),
                      base_lr=a.get("dreamsuti_lr", 1e-5), demos=1)
        out = cls(**kw)
        out.validate()
        return out

    def validate(self) -> None:
        from suti.config import ConfigError

        if self.steps < 0 or self.batch_size < 1 or self.demos < 1:
            raise ConfigError(f"apprentice: steps >= 0, batch_size >= 1, demos >= 1 needed, got {self.steps}, "
                              f"{self.batch_size}, {self.demos}")
        for name in ("text_drop", "demo_drop", "demo_text_drop"):
            v = getattr(self, name)
            if not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"apprentice.{name} must be in [0, 1], got {v}")
        if self.checkpoint_every < 0 or self.log_every < 1:
            raise ConfigError("apprentice.checkpoint_every must be >= 0 and apprentice.log_every >= 1")


def apprentice_config(cfg: DictConfig) -> ApprenticeConfig:
    a = cfg.apprentice
    from suti.config import ConfigError

    try:
        return ApprenticeConfig(demo_sites=str(a.get("demo_sites", "down_up")), heads=int(a.get("heads", 4)),
                                demo_timestep=int(a.get("demo_timestep", 0)))
    except ValueError as e:
        raise ConfigError(f"apprentice: {e}") from None


def sampling_defaults(cfg: DictConfig) -> dict:
    a = cfg.apprentice
    return {"guidance": float(a.guidance), "scheduler": str(a.scheduler), "steps": int(a.sample_steps),
            "num_images": int(a.get("num_images", 4)), "demos": int(a.demos)}


# ---------------------------------------------------------------------------- data


class ImageSource:
    """Images by store key, decoded, center-cropped and resized to the backbone's resolution,
    kept in an LRU cache of at most ``cache_bytes``; ``preloaded`` arrays (Dream-SuTI's
    user images) bypass the store and stay."""

    def __init__(self, store, resolution: int, preloaded: dict[str, np.ndarray] | None = None,
                 cache_bytes: int = 2 << 30):
        from collections import OrderedDict

        from suti.imageio import prepare

        self.store, self.resolution, self.cache_bytes = store, resolution, int(cache_bytes)
        self._pinned = {k: prepare(v, resolution) for k, v in (preloaded or {}).items()}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> np.ndarray:
        img = self._pinned.get(key)
        if img is not None:
            return img
        img = self._cache.get(key)
        if img is not None:
            self._cache.move_to_end(key)
            return img
        from suti.imageio import decode_image_bytes, prepare

        img = prepare(decode_image_bytes(self.store.get_bytes(key), self.store.url(key)), self.resolution)
        self._cache[key] = img
        self._bytes += img.nbytes
        while self._bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
        return img


class GBatches(torch.utils.data.IterableDataset):
    """Endless stream of whole batches over G(lambda). The batch of step ``s`` on rank
    ``r`` depends only on (seed, s, r): a resumed run sees the batches it would have seen."""

    def __init__(self, rows: list[dict], images: ImageSource, settings: TrainSettings, start_step: int = 0,
                 rank: int = 0):
        if not rows:
            raise ValueError("G(lambda) is empty: nothing to train on")
        self.rows, self.images, self.s = rows, images, settings
        self.start_step, self.rank = int(start_step), int(rank)

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1

    def batch(self, step: int) -> dict:
        s, R, K = self.s, self.images.resolution, self.s.demos
        rng = np.random.default_rng([s.seed, int(step), self.rank])
        idx = rng.integers(0, len(self.rows), s.batch_size)
        target = np.zeros((s.batch_size, R, R, 3), np.uint8)
        demos = np.zeros((s.batch_size, K, R, R, 3), np.uint8)
        mask = np.zeros((s.batch_size, K), bool)
        prompts, demo_texts = [], []
        for b, i in enumerate(idx):
            row = self.rows[int(i)]
            target[b] = self.images.get(row["sample_key"])
            prompts.append("" if rng.random() < s.text_drop else str(row["prompt"]))
            keys = list(row["demo_keys"])
            texts = list(row.get("demo_texts") or [""] * len(keys))
            take = rng.choice(len(keys), size=min(K, len(keys)), replace=False) if keys else []
            drop_all = rng.random() < s.demo_drop
            row_texts = []
            for k, j in enumerate(take):
                demos[b, k] = self.images.get(keys[int(j)])
                mask[b, k] = not drop_all
                row_texts.append("" if rng.random() < s.demo_text_drop else str(texts[int(j)]))
            row_texts += [""] * (K - len(row_texts))
            demo_texts.append(row_texts)
        return {"target": torch.from_numpy(target), "prompts": prompts, "demos": torch.from_numpy(demos),
                "demo_texts": demo_texts, "mask": torch.from_numpy(mask)}


class GDataModule(L.LightningDataModule):
    """G(lambda) as a Lightning data module; the stream starts at the trainer's (restored) step."""

    def __init__(self, rows: list[dict], images: ImageSource, settings: TrainSettings):
        super().__init__()
        self.rows, self.images, self.settings = rows, images, settings
        self.start_step: int | None = None  # where the stream began (the restored step on resume)

    def train_dataloader(self):
        t = self.trainer
        start = t.global_step if t is not None else 0
        rank = t.global_rank if t is not None else 0
        self.start_step = int(start)
        ds = GBatches(self.rows, self.images, self.settings, start_step=start, rank=rank)
        return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)


# ---------------------------------------------------------------------------- lightning module


class ApprenticeLit(L.LightningModule):
    """Denoising loss on y_s given p_s and the demos (their images and own texts).

    The backbone's frozen encoders (text tower, VAE) are kept out of the module's state;
    without ``train_base`` the base UNet is frozen and left out of checkpoints too."""

    def __init__(self, backbone: Backbone, app: ApprenticeUNet, settings: TrainSettings):
        super().__init__()
        self.app = app
        self.settings = settings
        self._backbone = [backbone]  # a list: not a submodule (frozen, not checkpointed)
        self.noise_scheduler = backbone.noise_scheduler()
        app.freeze_base(not settings.train_base)
        self.strict_loading = bool(settings.train_base)

    @property
    def backbone(self) -> Backbone:
        return self._backbone[0]

    def on_fit_start(self) -> None:
        for m in self.backbone.frozen_modules():
            m.to(self.device)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if not self.settings.train_base:
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("app.unet.")}

    def _generator(self) -> torch.Generator:
        # Noise and timesteps follow from (seed, step, rank): resumed runs reproduce them.
        g = torch.Generator(device=self.device)
        g.manual_seed(int(np.random.default_rng([self.settings.seed, self.global_step, self.global_rank, 7])
                          .integers(0, 2**62)))
        return g

    def training_step(self, batch, batch_idx):
        bb = self.backbone
        mask = batch["mask"]
        b, k = mask.shape
        with torch.no_grad():
            x0 = bb.encode_images(batch["target"])
            text = bb.encode_text(batch["prompts"])
            demo_x = bb.encode_images(batch["demos"].flatten(0, 1)).unflatten(0, (b, k))
            demo_t = bb.encode_text([t for row in batch["demo_texts"] for t in row]).unflatten(0, (b, k))
        memory = self.app.encode_demos(demo_x, demo_t, mask)
        g = self._generator()
        noise = torch.randn(x0.shape, generator=g, device=self.device, dtype=x0.dtype)
        n_train = self.noise_scheduler.config.num_train_timesteps
        t = torch.randint(0, n_train, (b,), generator=g, device=self.device)
        xt = self.noise_scheduler.add_noise(x0, noise, t)
        pred = self.app(xt, t, text, memory)
        loss = diffusion_loss(self.noise_scheduler, pred, x0, noise, t)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        return loss

    def configure_optimizers(self):
        s = self.settings
        gates = list(self.app.gate_parameters())
        gate_ids = {id(p) for p in gates}
        groups = [{"params": [p for p in self.app.demo_parameters() if id(p) not in gate_ids], "lr": s.lr,
                   "weight_decay": s.weight_decay},
                  {"params": gates, "lr": s.lr, "weight_decay": 0.0}]
        if s.train_base:
            groups.append({"params": [p for p in self.app.unet.parameters() if p.requires_grad], "lr": s.base_lr,
                           "weight_decay": s.weight_decay})
        opt = torch.optim.AdamW(groups)
        total = max(1, s.steps)
        warm = max(1, int(s.warmup_frac * total))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, total - warm)
            return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor), "interval": "step"}}


# ---------------------------------------------------------------------------- callbacks


class StoreCheckpoint(L.Callback):
    """Every ``every`` steps (and at the last step) write ``<prefix>/last.ckpt`` to the
    store atomically (local save, then one atomic put) and ``<prefix>/last.json``."""

    def __init__(self, store, prefix: str, local_dir: Path, every: int, extra: dict | None = None):
        self.store, self.prefix, self.local_dir, self.every = store, prefix, Path(local_dir), int(every)
        self.extra = dict(extra or {})
        self.saved_step = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step >= trainer.max_steps or (self.every and step % self.every == 0):
            self.save(trainer)

    def save(self, trainer) -> None:
        step = trainer.global_step
        if step == self.saved_step:
            return
        self.local_dir.mkdir(parents=True, exist_ok=True)
        path = self.local_dir / "last.ckpt"
        trainer.save_checkpoint(path, weights_only=False)  # every rank: collective under FSDP
        if trainer.is_global_zero:
            self.store.put_file(f"{self.prefix}/last.ckpt", path)
            self.store.put_json(f"{self.prefix}/last.json", {"step": int(step), "time": time.time(), **self.extra})
            log.info(f"checkpoint at step {step}: {self.store.url(self.prefix + '/last.ckpt')}")
        self.saved_step = step


class MlflowMetrics(L.Callback):
    """Loss (mean over the window), steps/s, learning rate and mean |gate| to an MLflow run."""

    def __init__(self, run_id: str | None, every: int):
        self.run_id, self.every = run_id, max(1, int(every))
        self._losses: list[float] = []
        self._t = self._step = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.run_id or not trainer.is_global_zero:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self._losses.append(float(loss))
        step = trainer.global_step
        now = time.time()
        if self._t is None:
            self._t, self._step = now, step - 1
        if step % self.every == 0 or step >= trainer.max_steps:
            from suti.tracking import log_metrics

            gates = [float(torch.tanh(g.detach()).abs().mean()) for g in pl_module.app.gate_parameters()]
            rate = (step - self._step) / max(now - self._t, 1e-9)
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            log_metrics(self.run_id, {f"{METRIC_PREFIX}.loss": float(np.mean(self._losses)),
                                      f"{METRIC_PREFIX}.steps_per_sec": rate, f"{METRIC_PREFIX}.lr": lr,
                                      f"{METRIC_PREFIX}.gate_abs_mean": float(np.mean(gates))}, step)
            self._losses, self._t, self._step = [], now, step


class _StepTimer(L.Callback):
    """Counts steps run in this process and their wall time (steps/s of the whole run)."""

    def __init__(self):
        self.steps, self.t0, self.first_step = 0, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.t0 is None:
            self.t0, self.first_step = time.time(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1


# ---------------------------------------------------------------------------- training


def _local_dir(cfg: DictConfig, *parts: str) -> Path:
    from suti.config import workdir

    d = workdir(cfg).joinpath(".cache", "apprentice", *parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def _download_prefix(store, prefix: str, dest: Path) -> Path:
    """Copy every object under ``prefix`` to ``dest`` (same relative layout)."""
    keys = store.list(prefix)
    if not keys:
        from suti.store import StoreError

        raise StoreError(f"missing artifact: {store.url(prefix)}")
    for key in keys:
        rel = key[len(prefix):].lstrip("/")
        store.get_file(key, dest / rel)
    return dest


def _upload_dir(store, src: Path, prefix: str) -> None:
    for p in sorted(src.rglob("*")):
        if p.is_file():
            store.put_file(f"{prefix}/{p.relative_to(src).as_posix()}", p)


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
    timer = _StepTimer()
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
        from suti.cli import UserError

        raise UserError("G(lambda) is empty: no expert sample passed the filter (lower lambda or run more experts)")
    if _launched_rank() > 0:  # a DDP worker relaunched by Lightning: rank 0 owns the store's run state
        force = False
    elif force:
        store.delete(prefix)
    recipe = train_recipe(cfg, store, settings, digest)
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
    images = ImageSource(store, backbone.resolution)
    fit = fit_apprentice(backbone, app, rows, images, settings, store, prefix, _local_dir(cfg, run_name), run_id,
                         {"rows_digest": digest, "recipe": recipe})
    if not fit["global_zero"]:
        return {}
    apprentice = Apprentice(backbone, app, sampling_defaults(cfg),
                            {"run_name": run_name, "rows": len(rows), "steps": fit["steps"],
                             "train_base": settings.train_base, "backbone": backbone.describe()})
    apprentice.to(default_device())
    record = _finish_run(cfg, store, apprentice, rows, images, prefix, run_id, fit,
                         {"rows": len(rows), "rows_digest": digest, "recipe": recipe, "run_name": run_name})
    record["seconds"] = round(time.time() - t0, 1)
    store.mark_done(prefix, record)
    return record


def _finish_run(cfg, store, apprentice: "Apprentice", rows, images: ImageSource, prefix: str, run_id: str | None,
                fit: dict, extra: dict) -> dict:
    """Export the model, render the sample grid, log the end-of-run metrics."""
    local = Path(tempfile.mkdtemp(prefix="apprentice-export-", dir=_local_dir(cfg)))
    try:
        apprentice.export(local / "model", bundle=bool(cfg.backbone.get("bundle", False)))
        store.delete(f"{prefix}/model")
        _upload_dir(store, local / "model", f"{prefix}/model")
    finally:
        shutil.rmtree(local, ignore_errors=True)
    overhead = apprentice.model.param_overhead()
    gates = {site: float(torch.tanh(layer.gate.detach()).item()) for site, layer in apprentice.model.demo_layers.items()}
    grid_png = sample_grid(apprentice, rows, images, int(cfg.apprentice.get("grid_rows", 4)), seed=int(cfg.seed))
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
    k = apprentice.defaults.get("demos", 3)
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
    devices = a.get("devices", 1)
    single = devices in (1, "1") or (isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices)) and len(devices) == 1
    return not single or str(a.get("strategy", "auto")) not in ("auto", "single_device")


def train_in_subprocess(cfg: DictConfig, store, lam: float | None, run_name: str, run_id: str | None,
                        force: bool = False, source: str = "G") -> dict:
    """Run :func:`train_apprentice` as ``python -m suti.tasks.apprentice`` (DDP/FSDP)."""
    import subprocess

    d = _local_dir(cfg, run_name)
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


# ---------------------------------------------------------------------------- inference


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Apprentice:
    """A trained apprentice ready to render: backbone + demo attention + sampling defaults.

    >>> app = Apprentice.load("models:/suti-apprentice@candidate", cfg)
    >>> images = app.generate(demos, ["Zorvex backpack", ...], "a Zorvex backpack in the snow")
    """

    def __init__(self, backbone: Backbone, model: ApprenticeUNet, defaults: dict | None = None,
                 meta: dict | None = None):
        self.backbone, self.model = backbone, model.eval()
        self.defaults = {"guidance": 15.0, "scheduler": "dpm", "steps": 25, "num_images": 4, "demos": 3,
                         **(defaults or {})}
        self.meta = dict(meta or {})

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> "Apprentice":
        self.backbone.to(device)
        self.model.to(device)
        return self

    # -- persistence ----------------------------------------------------------
    def export(self, directory: str | Path, bundle: bool = False) -> Path:
        """``apprentice.pt`` (new layers, config, defaults; the UNet when it was trained) +
        ``backbone/`` (see :meth:`Backbone.export`)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        if self.backbone.name == "stable-diffusion":
            self.backbone.export(d / "backbone", bundle=bundle)
        else:
            self.backbone.export(d / "backbone")
        cpu = lambda sd: {k: v.detach().cpu() for k, v in sd.items()}  # noqa: E731
        train_base = bool(self.meta.get("train_base", False))
        torch.save({"format": FORMAT, "config": asdict(self.model.config),
                    "demo_layers": cpu(self.model.apprentice_state_dict()),
                    "unet": cpu(self.model.unet.state_dict()) if train_base else None,
                    "defaults": self.defaults, "meta": self.meta}, d / MODEL_FILE)
        return d

    @classmethod
    def from_dir(cls, directory: str | Path, device: str | torch.device | None = None) -> "Apprentice":
        d = Path(directory)
        state = torch.load(d / MODEL_FILE, map_location="cpu", weights_only=False)
        if state.get("format") != FORMAT:
            raise ValueError(f"{d / MODEL_FILE}: unknown apprentice format {state.get('format')!r}")
        backbone = load_exported(d / "backbone")
        if state.get("unet") is not None:
            backbone.unet.load_state_dict(state["unet"])
        model = ApprenticeUNet(backbone.unet, ApprenticeConfig(**state["config"]))
        model.load_apprentice_state_dict(state["demo_layers"])
        app = cls(backbone, model, state.get("defaults"), state.get("meta"))
        return app.to(device or default_device())

    @classmethod
    def load(cls, source: str, cfg: DictConfig | None = None, store=None,
             device: str | torch.device | None = None) -> "Apprentice":
        """From ``models:/name@alias`` / ``models:/name/version`` / ``runs:/id/path`` (the
        registered pyfunc), a local exported folder, or a training run name in the store."""
        from suti.cli import UserError

        source = str(source).strip()
        if source.startswith(("models:/", "runs:/")):
            return cls._from_mlflow(source, cfg, device)
        p = Path(source).expanduser()
        if p.is_dir():
            if not (p / MODEL_FILE).is_file():
                raise UserError(f"{p} is not an exported apprentice (no {MODEL_FILE})")
            return cls.from_dir(p, device)
        if store is not None and "/" not in source.strip("/") and store.exists(f"apprentice/{source}/model/{MODEL_FILE}"):
            if cfg is None:
                raise ValueError("loading a store run needs the config (for the local cache folder)")
            # A private copy per load (concurrent loads never share files); everything is in
            # memory once loaded, so the copy goes away.
            dest = Path(tempfile.mkdtemp(prefix=f"{source}-", dir=_local_dir(cfg, "models")))
            try:
                _download_prefix(store, f"apprentice/{source}/model", dest)
                return cls.from_dir(dest, device)
            finally:
                shutil.rmtree(dest, ignore_errors=True)
        where = f" or a trained run in {store.url('apprentice')}" if store is not None else ""
        raise UserError(f"no apprentice model {source!r}: give models:/NAME@ALIAS, runs:/ID/PATH, a model folder{where}")

    @staticmethod
    def check_source(source: str, cfg: DictConfig | None = None, store=None) -> None:
        """Fail with one line when ``source`` names no model (before any flow starts)."""
        from suti.cli import UserError

        source = str(source).strip()
        if not source:
            raise UserError("--model is empty")
        if source.startswith("models:/"):
            import mlflow
            from mlflow.exceptions import MlflowException

            if cfg is not None:
                from suti.tracking import setup_tracking

                setup_tracking(cfg)
            ref = source[len("models:/"):].strip("/")
            client = mlflow.MlflowClient()
            try:
                if "@" in ref:
                    name, alias = ref.split("@", 1)
                    client.get_model_version_by_alias(name, alias)
                elif "/" in ref:
                    name, version = ref.rsplit("/", 1)
                    client.get_model_version(name, version)
                else:
                    raise UserError(f"model URI {source} needs a version or alias: models:/NAME@ALIAS or models:/NAME/N")
            except MlflowException as e:
                msg = " ".join(str(e).split())[:200]
                raise UserError(f"no registered model {source} ({msg}); train one with `suti train`") from None
            return
        if source.startswith("runs:/"):
            return
        p = Path(source).expanduser()
        if p.is_dir():
            if not (p / MODEL_FILE).is_file():
                raise UserError(f"{p} is not an exported apprentice (no {MODEL_FILE})")
            return
        if store is not None and "/" not in source.strip("/") and store.exists(f"apprentice/{source}/model/{MODEL_FILE}"):
            return
        where = f" or a trained run in {store.url('apprentice')}" if store is not None else ""
        raise UserError(f"no apprentice model {source!r}: give models:/NAME@ALIAS, runs:/ID/PATH, a model folder{where}")

    @classmethod
    def _from_mlflow(cls, uri: str, cfg: DictConfig | None, device) -> "Apprentice":
        import mlflow
        from mlflow.exceptions import MlflowException

        from suti.cli import UserError

        if cfg is not None:
            from suti.tracking import setup_tracking

            setup_tracking(cfg)
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        try:
            model = mlflow.pyfunc.load_model(uri)
        except (MlflowException, OSError) as e:
            msg = " ".join(str(e).split())
            raise UserError(f"cannot load {uri}: {msg[:300]} (train one with `suti train`)") from None
        inner = model.unwrap_python_model()
        if not isinstance(inner, ApprenticePyfunc):
            raise UserError(f"{uri} is not a SuTI apprentice model")
        app = inner.apprentice
        return app.to(device) if device is not None else app

    # -- generation -----------------------------------------------------------
    @torch.no_grad()
    def encode_demos(self, demos: Sequence[np.ndarray], demo_texts: Sequence[str] | None = None) -> DemoMemory | None:
        """The request's DemoMemory (batch 1), computed once and reused at every step and
        for every image; None without demos."""
        demos = list(demos or [])
        if not demos:
            return None
        from suti.imageio import prepare

        texts = [""] * len(demos) if demo_texts is None else [str(t) for t in demo_texts]
        if len(texts) != len(demos):
            raise ValueError(f"{len(texts)} demo texts for {len(demos)} demo images")
        R = self.backbone.resolution
        pixels = np.stack([prepare(np.asarray(d, np.uint8), R) for d in demos])
        x = self.backbone.encode_images(pixels).to(self.device)
        t = self.backbone.encode_text(texts).to(self.device)
        return self.model.encode_demos(x[None], t[None]).detach()

    @torch.no_grad()
    def generate(self, demos: Sequence[np.ndarray] = (), demo_texts: Sequence[str] | None = None, prompt: str = "",
                 num_images: int | None = None, guidance: float | None = None, scheduler: str | None = None,
                 steps: int | None = None, seed: int = 0) -> list[np.ndarray]:
        """Render ``num_images`` images of the demos' subject following ``prompt``.

        Any number of demos (uint8 (H, W, 3), any size: center-cropped and resized), 0
        included: then the output is the base model's for the same seed (the gates only
        act through demos). CFG's unconditional branch has no text and no demos.
        Returns uint8 (R, R, 3) arrays."""
        n = int(num_images if num_images is not None else self.defaults["num_images"])
        if n < 1:
            raise ValueError("num_images must be >= 1")
        guidance = float(self.defaults["guidance"] if guidance is None else guidance)
        kind = str(scheduler or self.defaults["scheduler"])
        steps = int(steps or self.defaults["steps"])
        memory = self.encode_demos(demos, demo_texts)
        return list(text_to_image(self.backbone, self.model, prompt, n, guidance, kind, steps, seed, memory))


# ---------------------------------------------------------------------------- MLflow pyfunc

class ApprenticePyfunc(PythonModel):
    """MLflow pyfunc: demos + prompt in, base64 PNGs out.

    Input (see :func:`model_signature`): one request per row of a DataFrame
    (``dataframe_records`` / ``dataframe_split``), or ``inputs`` as a list of request dicts
    or one dict; ``prompt`` (str) and ``demos`` (list of base64 image files: PNG, JPEG, ...),
    optional ``demo_texts`` (list of str), ``num_images``, ``seed``, ``guidance``, ``steps``,
    ``scheduler``. Output: a DataFrame with one row per request, ``prompt`` and ``images``
    (list of base64 PNG strings). A malformed request raises a one-line MlflowException
    (INVALID_PARAMETER_VALUE: HTTP 400 from the scoring server).
    """

    # The input is checked in predict() (a DataFrame, a dict or a list of dicts): no type-hint
    # validation by MLflow (which would also warn about the missing hints).
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.apprentice = Apprentice.from_dir(context.artifacts["apprentice"])

    @staticmethod
    def requests(model_input) -> list[dict]:
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            reqs = model_input.to_dict(orient="records")
        elif isinstance(model_input, dict):
            if isinstance(model_input.get("prompt"), str):
                reqs = [model_input]
            else:
                cols = {k: (v.tolist() if isinstance(v, np.ndarray) else list(v) if isinstance(v, (list, tuple)) else [v])
                        for k, v in model_input.items()}
                if len({len(v) for v in cols.values()}) > 1:
                    raise ValueError("the request's columns have different lengths")
                reqs = pd.DataFrame(cols).to_dict(orient="records")
        elif isinstance(model_input, (list, tuple)):
            if not all(isinstance(r, dict) for r in model_input):
                raise ValueError("'inputs' must be a request object or a list of request objects")
            reqs = [dict(r) for r in model_input]
        else:
            raise ValueError(f"unsupported input {type(model_input).__name__}: a DataFrame, dict or list of dicts")

        def norm(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            return v

        return [{k: norm(v) for k, v in r.items()} for r in reqs]

    def predict(self, context, model_input, params=None):
        from suti.cli import UserError

        try:
            return self._predict(model_input, params)
        except (UserError, ValueError, TypeError) as e:  # the request's fault: one line, HTTP 400
            raise bad_request(" ".join(str(e).split()) or e.__class__.__name__) from None

    def _predict(self, model_input, params=None):
        import pandas as pd

        from suti.imageio import b64_png, from_b64

        def missing(v) -> bool:
            return v is None or (isinstance(v, float) and math.isnan(v))

        reqs = self.requests(model_input)
        if not reqs:
            raise ValueError("no request: give at least one row with a 'prompt'")
        checked = []
        for i, r in enumerate(reqs):  # every request is checked before any image is rendered
            unknown = sorted(set(r) - set(REQUEST_FIELDS))
            if unknown:
                raise ValueError(f"request {i}: unknown field(s) {', '.join(map(str, unknown))} "
                                 f"(known: {', '.join(REQUEST_FIELDS)})")
            prompt = r.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"request {i}: 'prompt' must be a non-empty string")
            demos_b64 = r.get("demos")
            if isinstance(demos_b64, str):
                demos_b64 = [demos_b64]
            if not missing(demos_b64) and not isinstance(demos_b64, (list, tuple)):
                raise ValueError(f"request {i}: 'demos' must be a list of base64 image strings")
            demos = [from_b64(s, f"request {i} demo {j}") for j, s in enumerate([] if missing(demos_b64) else demos_b64)]
            texts = r.get("demo_texts")
            texts = None if missing(texts) else [texts] * len(demos) if isinstance(texts, str) else list(texts)
            if texts is not None and len(texts) != len(demos):
                raise ValueError(f"request {i}: {len(texts)} demo_texts for {len(demos)} demos")

            def opt(name, cast, lo=None, hi=None):
                v = r.get(name, (params or {}).get(name))
                if missing(v):
                    return None
                try:
                    v = cast(v)
                except (TypeError, ValueError):
                    raise ValueError(f"request {i}: '{name}' must be a {cast.__name__}, got {v!r}") from None
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    raise ValueError(f"request {i}: '{name}' must be between {lo} and {hi}, got {v}")
                return v

            scheduler = opt("scheduler", str)
            if scheduler is not None and scheduler not in ("ddpm", "ddim", "dpm"):
                raise ValueError(f"request {i}: 'scheduler' must be ddpm, ddim or dpm, got {scheduler!r}")
            checked.append(dict(demos=demos, texts=texts, prompt=prompt, num_images=opt("num_images", int, 1, 64),
                                guidance=opt("guidance", float, 0, 100), scheduler=scheduler,
                                steps=opt("steps", int, 1, 1000), seed=opt("seed", int, 0) or 0))
        out = []
        for c in checked:
            imgs = self.apprentice.generate(c["demos"], c["texts"], c["prompt"], num_images=c["num_images"],
                                            guidance=c["guidance"], scheduler=c["scheduler"], steps=c["steps"],
                                            seed=c["seed"])
            out.append({"prompt": c["prompt"], "images": [b64_png(im) for im in imgs]})
        return pd.DataFrame(out, columns=["prompt", "images"])


def bad_request(message: str) -> Exception:
    """A malformed request: an MlflowException (INVALID_PARAMETER_VALUE, so the scoring
    server answers HTTP 400) that is also a ValueError for Python callers."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class BadRequest(MlflowException, ValueError):
        pass

    return BadRequest(message, error_code=INVALID_PARAMETER_VALUE)


REQUEST_FIELDS = ("prompt", "demos", "demo_texts", "num_images", "seed", "guidance", "steps", "scheduler")


def model_signature():
    """The pyfunc's signature: one request per row, `prompt` required, the rest optional."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import AnyType, Array, ColSpec, Schema

    inputs = Schema([ColSpec(DataType.string, "prompt"),
                     ColSpec(Array(DataType.string), "demos", required=False),
                     ColSpec(Array(DataType.string), "demo_texts", required=False),
                     # numbers as AnyType: records that leave one out make it NaN (a float column), which
                     # a long column refuses, and a double column refuses ints; predict checks and casts them
                     ColSpec(AnyType(), "num_images", required=False),
                     ColSpec(AnyType(), "seed", required=False),
                     ColSpec(AnyType(), "guidance", required=False),
                     ColSpec(AnyType(), "steps", required=False),
                     ColSpec(DataType.string, "scheduler", required=False)])
    outputs = Schema([ColSpec(DataType.string, "prompt"), ColSpec(Array(DataType.string), "images")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> dict:
    """A request the model answers quickly (one image, two steps), with one small demo."""
    from suti.imageio import b64_png

    demo = np.zeros((16, 16, 3), np.uint8)
    demo[4:12, 4:12] = (200, 60, 40)
    return {"prompt": "a photo of it on the beach", "demos": [b64_png(demo)], "demo_texts": ["a red box"],
            "num_images": 1, "steps": 2, "seed": 0}


def package_code(dest: Path) -> Path:
    """The `suti` package as installed (suti + its mapped sub-packages), copied to
    ``dest/suti``: the model's ``code_paths``, so it loads where suti is not installed."""
    import importlib.util

    root = dest / "suti"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(Path(importlib.util.find_spec("suti").submodule_search_locations[0]), root, ignore=skip)
    for sub in ("flows", "tasks", "models", "world", "conf", "ui"):
        spec = importlib.util.find_spec(f"suti.{sub}")
        if spec is not None and spec.submodule_search_locations:
            src = Path(list(spec.submodule_search_locations)[0])
            if src.resolve() != (root / sub).resolve():
                shutil.copytree(src, root / sub, ignore=skip, dirs_exist_ok=True)
    return root


def pip_requirements() -> list[str]:
    from suti.tracking import PIP_REQUIREMENTS

    return list(PIP_REQUIREMENTS) + ["mlflow==3.17.2", "pandas", "transformers==5.24.0", "lightning==2.6.6",
                                     "omegaconf==2.3.1", "hydra-core==1.3.8", "pydantic==2.14.4", "fastapi", "uvicorn"]


def log_pyfunc(model_dir: str | Path, run_id: str, registered_name: str | None = None) -> Any:
    """Log an exported apprentice folder as a pyfunc model in ``run_id`` (optionally
    registered), with its signature, an input example and the suti code."""
    import mlflow
    import pandas as pd

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    code = Path(tempfile.mkdtemp(prefix="suti-code-"))
    try:
        with mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(name="apprentice", python_model=ApprenticePyfunc(),
                                           artifacts={"apprentice": str(model_dir)},
                                           pip_requirements=pip_requirements(),
                                           code_paths=[str(package_code(code))], signature=model_signature(),
                                           input_example=pd.DataFrame([input_example()]),
                                           registered_model_name=registered_name)
    finally:
        shutil.rmtree(code, ignore_errors=True)


def register_candidate(cfg: DictConfig, store, run_name: str, run_id: str, tags: dict | None = None) -> dict:
    """Log ``apprentice/<run>/model`` as a pyfunc in the MLflow run, register it as
    ``apprentice.model_name`` and point ``apprentice.alias`` (``candidate``) at it."""
    import mlflow

    name = str(cfg.apprentice.get("model_name", "suti-apprentice"))
    alias = str(cfg.apprentice.get("alias", "candidate"))
    digest = hashlib.sha256(store.get_bytes(f"apprentice/{run_name}/model/{MODEL_FILE}")).hexdigest()[:16]
    tags = {**(tags or {}), "run_name": run_name, "model_digest": digest}
    client = mlflow.MlflowClient()
    version, model_uri = _registered_version(client, name, tags), None
    if version is None:  # a rerun of a finished run re-points the alias instead of duplicating it
        local = Path(tempfile.mkdtemp(prefix="register-", dir=_local_dir(cfg)))
        try:
            _download_prefix(store, f"apprentice/{run_name}/model", local / "model")
            info = log_pyfunc(local / "model", run_id, name)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        version, model_uri = str(info.registered_model_version), info.model_uri
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, str(v))
    client.set_registered_model_alias(name, alias, version)
    got = client.get_model_version_by_alias(name, alias)  # read it back
    return {"name": name, "version": str(got.version), "alias": alias, "uri": f"models:/{name}@{alias}",
            "model_uri": model_uri or got.source, "reused": model_uri is None}


def _registered_version(client, name: str, tags: dict) -> str | None:
    """The registered version carrying exactly these run tags, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    want = {k: str(tags[k]) for k in ("run_name", "model_digest")}
    for v in sorted(versions, key=lambda v: -int(v.version)):
        if all(v.tags.get(k) == val for k, val in want.items()):
            return str(v.version)
    return None


# ---------------------------------------------------------------------------- Dream-SuTI


def dreamsuti(cfg: DictConfig, store, apprentice: Apprentice, images: Sequence[np.ndarray], texts: Sequence[str],
              name: str, run_id: str | None = None, force: bool = False) -> dict:
    """Dream-SuTI: fine-tune the apprentice on ONE subject: each example takes one of its
    images as the demo and another as the target (``apprentice.dreamsuti_steps``, paper
    500). Saved as run ``dreamsuti-<name>``; afterwards one demo suffices.

    ``apprentice`` is tuned in place (``copy.deepcopy`` it first to keep the original)."""
    from suti.cli import UserError

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
    fit = fit_apprentice(apprentice.backbone, model, rows, src, settings, store, prefix, _local_dir(cfg, run_name),
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


def _main(argv: list[str] | None = None) -> int:
    """``python -m suti.tasks.apprentice --config resolved.yaml --run-name N [--lam L]``:
    one training run (the multi-device path; also what a killed run is resumed with)."""
    p = argparse.ArgumentParser(prog="python -m suti.tasks.apprentice")
    p.add_argument("--config", required=True, help="a resolved config YAML")
    p.add_argument("--run-name", required=True)
    p.add_argument("--lam", default="none", help="lambda of G(lambda); 'none' = every row")
    p.add_argument("--source", default="G", choices=SOURCES, help="G(lambda) (SuTI) or the raw clusters (Re-Imagen)")
    p.add_argument("--run-id", default=None, help="MLflow run to log metrics to")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from suti.config import setup_env
    from suti.store import open_store

    cfg = OmegaConf.load(args.config)
    setup_env(cfg)
    store = open_store(str(cfg.storage.uri), cfg.storage.get("endpoint_url"))
    lam = None if args.lam.lower() in ("none", "null") else float(args.lam)
    if args.run_id:
        from suti.tracking import setup_tracking

        setup_tracking(cfg)
    record = train_apprentice(cfg, store, training_rows(store, args.source, lam), args.run_name, args.run_id,
                              args.force)
    if record:
        print(json.dumps({k: record.get(k) for k in ("steps", "resumed_from", "steps_run", "data_start_step")}))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
