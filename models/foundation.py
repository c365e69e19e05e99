"""Lightning modules and batch streams for the world's foundation models:
tiny CLIP, identity embedder (DINO's role), auto-rater/captioner and the base
text-to-image UNet. Batches are drawn from in-memory uint8 arrays by seeded streams."""
from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from suti.models.clip import clip_loss, image_pixels, text_hidden_states
from suti.models.diffusion import diffusion_loss
from suti.models.convnet import ConvTrunk, to_unit
from suti.world import vocab as V

# ---------------------------------------------------------------- labels

RATER_HEADS = {  # head -> number of classes (single-label heads)
    "cls": len(V.CLASS_KEYS), "body": len(V.COLOUR_KEYS), "accent": len(V.COLOUR_KEYS),
    "pattern": len(V.PATTERNS), "context": len(V.CONTEXT_KEYS), "view": len(V.VIEW_KEYS),
    "style": len(V.STYLE_KEYS),
}
MULTI_HEADS = {"edits": V.EDIT_KEYS, "accessories": V.ACCESSORY_KEYS}


def effective_body(scene: dict) -> str:
    for e in scene["edits"]:
        if e in ("red", "purple"):
            return e
    return scene["subject"]["body"]


def scene_targets(scenes: list[dict]) -> dict[str, np.ndarray]:
    """Integer / multi-hot targets of the rater for a list of scene label dicts."""
    t = {
        "cls": [V.CLASS_KEYS.index(s["subject"]["cls"]) for s in scenes],
        "body": [V.COLOUR_KEYS.index(effective_body(s)) for s in scenes],
        "accent": [V.COLOUR_KEYS.index(s["subject"]["accent"]) for s in scenes],
        "pattern": [V.PATTERNS.index(s["subject"]["pattern"]) for s in scenes],
        "context": [V.CONTEXT_KEYS.index(s["context"]) for s in scenes],
        "view": [V.VIEW_KEYS.index(s["view"]) for s in scenes],
        "style": [V.STYLE_KEYS.index(s["style"]) for s in scenes],
    }
    out = {k: np.asarray(v, np.int64) for k, v in t.items()}
    for head, keys in MULTI_HEADS.items():
        out[head] = np.asarray([[float(k in s[head]) for k in keys] for s in scenes], np.float32)
    return out


# ---------------------------------------------------------------- streams

class BatchStream(torch.utils.data.IterableDataset):
    """Endless seeded stream of whole batches (the DataLoader runs with batch_size=None)."""

    def __init__(self, make_batch, seed: int):
        self.make_batch, self.seed = make_batch, seed

    def __iter__(self):
        rng = np.random.default_rng(self.seed)
        while True:
            yield self.make_batch(rng)


def loader(make_batch, seed: int):
    return torch.utils.data.DataLoader(BatchStream(make_batch, seed), batch_size=None, num_workers=0)


def jitter(images: np.ndarray, rng: np.random.Generator, shift: int) -> np.ndarray:
    """Each image moved by up to `shift` pixels in x and y (edges repeated): the rater sees
    subjects a little off their usual spot, so it learns shapes rather than pixel positions
    of the training subjects (measured without it: class accuracy 0.98 on training renders,
    0.86 on held-out subjects)."""
    if shift <= 0:
        return images
    n, r = len(images), images.shape[1]
    padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
    dx, dy = rng.integers(0, 2 * shift + 1, (2, n))
    return np.stack([padded[i, dy[i]:dy[i] + r, dx[i]:dx[i] + r] for i in range(n)])


def corrupt(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Artifact-ridden versions of real renders: the photorealism head's negatives
    (noise, blur, blends, shuffled patches, colour smears: what a bad sampler makes)."""
    out = images.astype(np.float32).copy()
    n, r = len(out), out.shape[1]
    for i in range(n):
        k = int(rng.integers(0, 5))
        if k == 0:
            out[i] += rng.normal(0, rng.uniform(25, 70), out[i].shape)
        elif k == 1:
            small = out[i].reshape(r // 4, 4, r // 4, 4, 3).mean((1, 3))
            out[i] = np.repeat(np.repeat(small, 4, 0), 4, 1) + rng.normal(0, 10, out[i].shape)
        elif k == 2:
            out[i] = 0.5 * out[i] + 0.5 * out[int(rng.integers(n))][::-1]
        elif k == 3:
            p = r // 4
            tiles = out[i].reshape(4, p, 4, p, 3).transpose(0, 2, 1, 3, 4).reshape(16, p, p, 3)
            tiles = tiles[rng.permutation(16)]
            out[i] = tiles.reshape(4, 4, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(r, r, 3)
        else:
            out[i] = out[i] * rng.uniform(0.3, 1.7, (1, 1, 3)) + rng.normal(0, 40, (r // 8, r // 8, 3)).repeat(8, 0).repeat(8, 1)
    return np.clip(out, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- modules

class _Lit(L.LightningModule):
    """Shared optimizer: AdamW with a short warm-up and cosine decay over max_steps."""

    lr: float
    max_steps: int

    def configure_optimizers(self):
        opt = torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr, weight_decay=0.01)
        warm = max(1, self.max_steps // 20)

        def f(step):
            if step < warm:
                return (step + 1) / warm
            t = (step - warm) / max(1, self.max_steps - warm)
            return 0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * min(1.0, t)))

        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, f),
                                                   "interval": "step"}}


class ClipLit(_Lit):
    def __init__(self, clip, lr: float, max_steps: int):
        super().__init__()
        self.clip, self.lr, self.max_steps = clip, lr, max_steps

    def training_step(self, batch, _):
        images, tokens = batch
        same = (tokens[:, None, :] == tokens[None, :, :]).all(-1)
        loss = clip_loss(self.clip.encode_image(image_pixels(images)), self.clip.encode_text(tokens),
                         self.clip.logit_scale, same)
        self.log("train/loss", loss, prog_bar=True)
        return loss


class IdentityNet(nn.Module):
    """Instance-level embedder: renders of one subject close, other subjects apart."""

    def __init__(self, width: int = 32, embed_dim: int = 128):
        super().__init__()
        self.trunk = ConvTrunk(width)
        self.head = nn.Sequential(nn.Linear(self.trunk.out_dim, 256), nn.ReLU(), nn.Linear(256, embed_dim))

    def forward(self, images_uint8):
        return F.normalize(self.head(self.trunk(to_unit(images_uint8))), dim=-1)


class IdentityLit(_Lit):
    def __init__(self, net: IdentityNet, lr: float, max_steps: int, temperature: float):
        super().__init__()
        self.net, self.lr, self.max_steps, self.t = net, lr, max_steps, temperature

    def training_step(self, batch, _):
        images, ids = batch
        z = self.net(images)
        sim = z @ z.t() / self.t
        eye = torch.eye(len(z), dtype=torch.bool)
        pos = (ids[:, None] == ids[None, :]) & ~eye
        logprob = sim.masked_fill(eye, -1e9).log_softmax(1)
        loss = -(logprob * pos).sum(1).div(pos.sum(1).clamp(min=1)).mean()  # supervised contrastive
        self.log("train/loss", loss, prog_bar=True)
        return loss


class RaterNet(nn.Module):
    """Auto-rater / captioner: predicts every world factor of an image, plus whether it
    looks like a clean render (photorealism, DreamBench-v2's third question)."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.trunk = ConvTrunk(width)
        d = self.trunk.out_dim
        self.heads = nn.ModuleDict({k: nn.Linear(d, n) for k, n in RATER_HEADS.items()})
        self.multi = nn.ModuleDict({k: nn.Linear(d, len(v)) for k, v in MULTI_HEADS.items()})
        self.real = nn.Linear(d, 1)

    def forward(self, images_uint8):
        h = self.trunk(to_unit(images_uint8))
        out = {k: m(h) for k, m in self.heads.items()}
        out.update({k: m(h) for k, m in self.multi.items()})
        out["real"] = self.real(h).squeeze(1)
        return out


class RaterLit(_Lit):
    def __init__(self, net: RaterNet, lr: float, max_steps: int):
        super().__init__()
        self.net, self.lr, self.max_steps = net, lr, max_steps

    def training_step(self, batch, _):
        images, targets, fake, real_label = batch
        # one forward pass over real + fake: separate passes let BatchNorm's batch statistics
        # tell them apart in training, which does not carry over to eval mode (measured: the
        # photorealism head then called every real render fake)
        both = self.net(torch.cat([images, fake]))
        n = len(images)
        out = {k: v[:n] for k, v in both.items()}
        loss = sum(F.cross_entropy(out[k], targets[k]) for k in RATER_HEADS)
        loss = loss + sum(F.binary_cross_entropy_with_logits(out[k], targets[k]) for k in MULTI_HEADS)
        loss = loss + F.binary_cross_entropy_with_logits(both["real"], real_label)
        self.log("train/loss", loss, prog_bar=True)
        return loss


class BaseLit(_Lit):
    """Pixel-space text-to-image UNet on the frozen tiny CLIP text tower (Imagen's recipe:
    a frozen text encoder, generic captions only)."""

    def __init__(self, unet, clip, noise_scheduler, lr: float, max_steps: int, ema_decay: float = 0.999,
                 min_snr_gamma: float = 0.0):
        super().__init__()
        import copy

        self.unet, self.lr, self.max_steps = unet, lr, max_steps
        self.clip = [clip]  # a list: frozen, and not part of this module's state_dict
        self.noise_scheduler = noise_scheduler
        self.ema_decay = ema_decay
        self.min_snr_gamma = min_snr_gamma
        # EMA of the weights: what gets saved and sampled (sharper samples from short runs)
        self.ema = [copy.deepcopy(unet).requires_grad_(False)] if ema_decay else None

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.ema is None:
            return
        step = self.global_step
        d = min(self.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(self.ema[0].parameters(), self.unet.parameters()):
                pe.mul_(d).add_(p.detach(), alpha=1 - d)

    def final_unet(self):
        """The EMA weights when kept, else the trained weights."""
        return self.ema[0] if self.ema is not None else self.unet

    def training_step(self, batch, _):
        images, tokens = batch
        with torch.no_grad():
            states = text_hidden_states(self.clip[0], tokens)
        x0 = to_unit(images)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(x0),))
        xt = self.noise_scheduler.add_noise(x0, noise, t)
        loss = diffusion_loss(self.noise_scheduler, self.unet(xt, t, states).sample, x0, noise, t, self.min_snr_gamma)
        self.log("train/loss", loss, prog_bar=True)
        return loss


class StepLog(L.Callback):
    """A log line every `every` steps with the count, loss and speed: readable in Prefect's
    UI and in a log file, where a progress bar is not."""

    def __init__(self, name: str, total: int, every: int = 100):
        import logging
        import time

        self.name, self.total, self.every = name, total, every
        self._log, self._time, self.t0 = logging.getLogger("suti.train"), time.time, None

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if self.t0 is None:
            self.t0 = self._time()
        step = trainer.global_step
        if step % self.every == 0 or step == self.total:
            loss = trainer.callback_metrics.get("train/loss")
            rate = (self._time() - self.t0) / max(1, step)
            self._log.info(f"{self.name}: step {step}/{self.total} loss {float(loss) if loss is not None else float('nan'):.4f}"
                          f" ({rate:.3f} s/step, ~{rate * (self.total - step):.0f} s left)")


def fast_bf16_cpu() -> bool:
    """Whether this CPU has bf16 matrix instructions (AMX or AVX-512 BF16): without them,
    bf16 autocast is emulated and slower than fp32 (bench/train_step_speed.py)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(f.read().split())
    except OSError:
        return False
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def resolve_precision(precision: str) -> str:
    """A foundation model's training precision as Lightning takes it: `auto` is bf16-mixed on a
    CPU with fast bf16 kernels, else 32-true."""
    from suti.config import TRAIN_PRECISIONS

    if precision not in TRAIN_PRECISIONS:
        raise ValueError(f"training precision must be {', '.join(TRAIN_PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16-mixed" if fast_bf16_cpu() else "32-true"
    return precision


def fit(module: L.LightningModule, train_loader, max_steps: int, progress: bool = True, logger=None,
        name: str | None = None, callbacks: list | None = None, precision: str = "32-true") -> float:
    """Run a Lightning fit for `max_steps` at a Lightning `precision` (32-true, or bf16-mixed:
    the forward under bf16 autocast, fp32 weights and optimizer); returns the last logged loss."""
    import logging
    import sys

    for name_ in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name_).setLevel(logging.WARNING)  # GPU/TPU availability banners on every fit
    cbs = list(callbacks or []) + [StepLog(name or module.__class__.__name__, max_steps, max(10, max_steps // 20))]
    trainer = L.Trainer(max_steps=max_steps, accelerator="cpu", devices=1, logger=logger or False, callbacks=cbs,
                        precision=resolve_precision(precision),
                        enable_checkpointing=False, enable_model_summary=False,
                        enable_progress_bar=progress and sys.stderr.isatty(),
                        log_every_n_steps=max(1, min(50, max_steps // 10)), num_sanity_val_steps=0)
    if max_steps > 0:
        trainer.fit(module, train_loader)
    v = trainer.callback_metrics.get("train/loss")
    return float(v) if v is not None else float("nan")
