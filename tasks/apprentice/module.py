"""The apprentice's Lightning module and the callbacks of its training runs."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from suti.models.apprentice import ApprenticeUNet
from suti.models.backbone import Backbone
from suti.models.diffusion import diffusion_loss
from suti.tasks.apprentice.settings import TrainSettings

log = logging.getLogger("suti.apprentice")


METRIC_PREFIX = "apprentice"
TEXT_CACHE_BYTES = 1 << 30  # text states kept per training process (the tiny backbone's are 16 KB a string)


class TextStates:
    """The frozen text tower's states per string, computed once and kept (least recently
    used first out past ``max_bytes``). A G batch repeats its prompts and demo texts from a
    few thousand strings, so after the first steps a training step encodes almost none.

    Each new string is encoded alone, so its states never depend on which batch first
    asked for it: a resumed run gets the same tensors as an uninterrupted one."""

    def __init__(self, encode, max_bytes: int = TEXT_CACHE_BYTES):
        from collections import OrderedDict

        self.encode, self.max_bytes = encode, int(max_bytes)
        self._states: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = self.misses = 0

    def __call__(self, texts: list[str]) -> torch.Tensor:
        out = []
        for t in texts:
            v = self._states.get(t)
            if v is None:
                self.misses += 1
                v = self.encode([t])[0]
                self._states[t] = v
                self._bytes += v.numel() * v.element_size()
                while self._bytes > self.max_bytes and len(self._states) > 1:
                    _, old = self._states.popitem(last=False)
                    self._bytes -= old.numel() * old.element_size()
            else:
                self.hits += 1
                self._states.move_to_end(t)
            out.append(v)
        return torch.stack(out)


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
        self.texts = TextStates(backbone.encode_text)

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
        sets, k = mask.shape  # demo sets: one per target, or one per `targets_per_demo_set` targets
        with torch.no_grad():
            x0 = bb.encode_images(batch["target"])
            text = self.texts(batch["prompts"])
            demo_x = bb.encode_images(batch["demos"].flatten(0, 1)).unflatten(0, (sets, k))
            demo_t = self.texts([t for row in batch["demo_texts"] for t in row]).unflatten(0, (sets, k))
        b = len(x0)
        memory = self.app.encode_demos(demo_x, demo_t, mask, base_grad=self.settings.demo_grad)
        if sets != b:
            memory = memory.repeat_interleave(b // sets)  # target i reads set i // T
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


class StepTimer(L.Callback):
    """Counts steps run in this process and their wall time (steps/s of the whole run)."""

    def __init__(self):
        self.steps, self.t0, self.first_step = 0, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.t0 is None:
            self.t0, self.first_step = time.time(), trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1
