"""The apprentice's training settings, architecture and sampling defaults, read from the config."""
from __future__ import annotations

import logging
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig

from suti.models.apprentice import ApprenticeConfig

log = logging.getLogger("suti.apprentice")


# ---------------------------------------------------------------------------- settings


@dataclass
class TrainSettings:
    """Everything a training run of the apprentice needs, read from ``cfg.apprentice`` by
    :meth:`from_cfg` (its defaults live in conf/apprentice/default.yaml only)."""

    steps: int  # optimizer steps
    batch_size: int  # examples per step (per device)
    demos: int  # demonstrations per example (sampled from the cluster C_s), at most
    demos_min: int | None  # fewest per example (the count is drawn from demos_min..demos); None: always demos
    targets_per_demo_set: int  # targets of one subject that share one demo set (and its demo pass) in a batch
    lr: float  # learning rate of the new demo layers
    train_base: bool  # also fine-tune the base UNet ...
    base_lr: float  # ... at this (lower) learning rate
    demo_grad: bool  # with train_base: the base also learns through the demo pass (False: demos encoded without grad)
    weight_decay: float  # AdamW weight decay (never on the gates)
    warmup_frac: float  # linear warm-up, then cosine decay to 5%
    grad_clip: float  # gradient-norm clipping (0: off)
    text_drop: float  # CFG dropout of the prompt
    demo_drop: float  # CFG dropout of all demos of an example
    demo_text_drop: float  # dropout of each demo's own text (text-less demos at inference)
    checkpoint_every: int  # steps between checkpoints written to the store
    log_every: int  # steps between MLflow metric logs
    accelerator: str  # Lightning accelerator
    strategy: str  # Lightning strategy: auto | ddp | fsdp | ...
    devices: Any  # Lightning devices
    precision: str  # Lightning precision (bf16-mixed on GPUs)
    seed: int  # batches, noise and new layers follow from it
    progress: bool  # progress bar (a log line every few steps otherwise)

    @classmethod
    def from_cfg(cls, cfg: DictConfig, dreamsuti: bool = False) -> "TrainSettings":
        a = cfg.apprentice
        kw = {f.name: a[f.name] for f in fields(cls) if f.name not in ("seed", "progress")}
        kw["seed"] = int(cfg.seed)
        kw["progress"] = bool(cfg.progress)
        if dreamsuti:
            kw.update(steps=a.dreamsuti_steps, lr=a.dreamsuti_lr, batch_size=a.dreamsuti_batch_size,
                      train_base=a.dreamsuti_train_base, base_lr=a.dreamsuti_lr, demos=1, demos_min=None,
                      targets_per_demo_set=1)
        out = cls(**kw)
        out.validate()
        return out

    def validate(self) -> None:
        from suti.config import ConfigError

        if self.steps < 0 or self.batch_size < 1 or self.demos < 1:
            raise ConfigError(f"apprentice: steps >= 0, batch_size >= 1, demos >= 1 needed, got {self.steps}, "
                              f"{self.batch_size}, {self.demos}")
        if self.demos_min is not None and not 1 <= self.demos_min <= self.demos:
            raise ConfigError(f"apprentice.demos_min must be in 1..demos ({self.demos}), got {self.demos_min}")
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
        return ApprenticeConfig(demo_sites=str(a.demo_sites), heads=int(a.heads), demo_timestep=int(a.demo_timestep),
                                demo_pool=int(a.demo_pool),
                                gate_init=float(a.gate_init), out_init=str(a.out_init))
    except ValueError as e:
        raise ConfigError(f"apprentice: {e}") from None


def sampling_defaults(cfg: DictConfig) -> dict:
    a = cfg.apprentice
    return {"guidance": float(a.guidance), "demo_guidance": None if a.demo_guidance is None else float(a.demo_guidance),
            "scheduler": str(a.scheduler), "steps": int(a.sample_steps),
            "num_images": int(a.num_images), "demos": int(a.demos),
            "precision": str(cfg.backbone.sample_precision)}
