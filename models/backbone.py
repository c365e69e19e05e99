"""Backbones: one interface over the text-to-image models the apprentice is built on, so
training, sampling, experts and Dream-SuTI are written once.

* :class:`TinyBackbone`: the world's pixel-space UNet (``foundation/base/model.pt``)
  conditioned on the tiny open_clip text tower (``foundation/clip/model.pt``).
* :class:`SDBackbone`: any local diffusers Stable Diffusion folder (``unet/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, optionally ``scheduler/``): latent space through the
  VAE, latents scaled by ``vae.config.scaling_factor``. Never downloads anything.

Model space is what the UNet denoises: pixels in [-1, 1] for the tiny backbone, scaled
VAE latents for Stable Diffusion. Images cross the interface as uint8 (N, H, W, 3).

A backbone can :meth:`~Backbone.export` itself into a folder and be rebuilt from it with
:func:`load_exported` (the registered apprentice model carries its backbone that way).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from suti import keys as K

__all__ = ["Backbone", "TinyBackbone", "SDBackbone", "load_backbone", "load_exported", "sample_cfg"]

SCHEDULER_KINDS = ("dpm", "ddim", "ddpm")


def _as_pixels(images, device, dtype=torch.float32) -> torch.Tensor:
    """uint8 (N, H, W, 3) numpy/torch -> float (N, 3, H, W) in [-1, 1] on ``device``."""
    x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
    if x.dtype != torch.uint8:
        raise ValueError(f"images must be uint8 (N, H, W, 3), got {x.dtype}")
    if x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"images must be (N, H, W, 3), got {tuple(x.shape)}")
    return (x.to(device).permute(0, 3, 1, 2).to(dtype) / 127.5 - 1.0).contiguous()


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)


SAMPLE_PRECISIONS = ("fp32", "bf16")  # of the UNet calls while sampling (bf16: autocast)


def _to_uint8(x: torch.Tensor) -> np.ndarray:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


class Backbone:
    """What the apprentice needs from a text-to-image model.

    Attributes: ``name`` (config name), ``unet`` (a diffusers ``UNet2DConditionModel``),
    ``resolution`` (pixel side of the images it makes), ``device``.
    """

    name: str
    unet: torch.nn.Module
    resolution: int
    latent: bool = False  # True when model space is a VAE latent space (no pixel thresholding)
    sample_precision: str = "fp32"  # fp32 | bf16: autocast of the UNet calls while sampling (no grad)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    # -- encoders -------------------------------------------------------------
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Per-token text states (N, L, D): the UNet's ``encoder_hidden_states``."""
        raise NotImplementedError

    def encode_images(self, images) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> model-space tensor (N, C, h, w); resized to ``resolution``."""
        raise NotImplementedError

    def decode(self, x: torch.Tensor) -> np.ndarray:
        """Model-space tensor -> uint8 (N, H, W, 3)."""
        raise NotImplementedError

    def sample_shape(self, n: int) -> tuple[int, ...]:
        """Shape of ``n`` model-space samples (the initial noise)."""
        c = self.unet.config
        return (n, c.in_channels, c.sample_size, c.sample_size)

    # -- schedulers -----------------------------------------------------------
    def scheduler_config(self) -> dict:
        """Base noise-schedule settings (betas, timesteps, prediction type)."""
        raise NotImplementedError

    def noise_scheduler(self):
        """The DDPM scheduler of training (``add_noise``, ``get_velocity``)."""
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config({**self.scheduler_config(), "clip_sample": False})

    def sampling_scheduler(self, kind: str = "dpm", guidance: float = 0.0):
        """A fresh sampling scheduler: ``dpm`` (DPM-Solver++), ``ddim`` or ``ddpm``.

        In pixel space, guidance >= 10 turns on Imagen's dynamic thresholding (the
        paper's CFG 15-30 otherwise saturates pixels); latents are never clipped."""
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        if kind not in SCHEDULER_KINDS:
            raise ValueError(f"unknown scheduler {kind!r} (choose from {', '.join(SCHEDULER_KINDS)})")
        base = self.scheduler_config()
        pixel_thresholding = not self.latent and guidance >= 10
        clip = not self.latent and not pixel_thresholding
        extra: dict[str, Any] = {}
        # pixel-space DPM-Solver++ always thresholds: it never clips x0 otherwise, and the
        # cosine schedule's first step blows an unclipped x0 up (see models/diffusion.py)
        if pixel_thresholding or (kind == "dpm" and not self.latent):
            extra = dict(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
        if kind == "ddpm":
            return DDPMScheduler.from_config({**base, "clip_sample": clip, **extra})
        if kind == "ddim":
            return DDIMScheduler.from_config({**base, "clip_sample": clip, "set_alpha_to_one": False, **extra})
        return DPMSolverMultistepScheduler.from_config({**base, "algorithm_type": "dpmsolver++", "solver_order": 2,
                                                        "thresholding": False, "lower_order_final": True, **extra})

    # -- life cycle -----------------------------------------------------------
    def frozen_modules(self) -> list[torch.nn.Module]:
        """Encoders that never train (text tower, VAE)."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "Backbone":
        self.unet.to(device)
        for m in self.frozen_modules():
            m.to(device)
        return self

    def describe(self) -> dict:
        """Small JSON-able description (for MLflow params and model metadata)."""
        return {"name": self.name, "resolution": self.resolution, "latent": self.latent,
                "unet_params": sum(p.numel() for p in self.unet.parameters())}

    def export(self, directory: str | Path) -> None:
        """Write what :func:`load_exported` needs to rebuild this backbone."""
        raise NotImplementedError


# ---------------------------------------------------------------------------- tiny


class TinyBackbone(Backbone):
    """Pixel-space UNet on the tiny open_clip text tower (the embedded world's models)."""

    name = "tiny"
    latent = False

    def __init__(self, clip, clip_name: str, unet, schedule: dict, clip_config: dict | None = None):
        from suti.models.clip import register_model_configs, tokenizer

        self.clip = clip.eval().requires_grad_(False)
        self.clip_name = clip_name
        if clip_config is None:
            import open_clip

            register_model_configs()
            clip_config = open_clip.get_model_config(clip_name)
        self.clip_config = clip_config  # the architecture, exported with the weights
        self.unet = unet
        self.schedule = dict(schedule)
        self.resolution = int(unet.config.sample_size)
        self._tok = tokenizer(clip_name)

    @staticmethod
    def _schedule(backbone_cfg) -> dict:
        from suti.models.diffusion import schedule_config

        return schedule_config(backbone_cfg)

    @classmethod
    def from_store(cls, cfg, store) -> "TinyBackbone":
        """The foundation flow's CLIP + base UNet from the artifact store."""
        from diffusers import UNet2DConditionModel

        from suti.models.clip import build_clip
        from suti.models.scorers import load_state

        for key in (K.CLIP, K.BASE):
            if not store.exists(key):
                from suti.store import StoreError

                raise StoreError(f"missing artifact: {store.url(key)} (run `suti foundation` first)")
        from suti.models.diffusion import check_schedule

        state = load_state(store, K.BASE)
        check_schedule(cfg, state["meta"])
        unet = UNet2DConditionModel.from_config(state["meta"]["unet_config"])
        unet.load_state_dict(state["state_dict"])
        clip = build_clip(cfg.backbone.clip_config, image_size=int(unet.config.sample_size))
        clip.load_state_dict(load_state(store, K.CLIP)["state_dict"])
        return cls(clip, str(cfg.backbone.clip_config), unet.eval(), cls._schedule(cfg.backbone))

    @classmethod
    def from_dir(cls, directory: str | Path) -> "TinyBackbone":
        from diffusers import UNet2DConditionModel

        from suti.models.clip import build_clip

        import open_clip

        d = Path(directory)
        info = json.loads((d / "backbone.json").read_text())
        u = torch.load(d / "unet.pt", map_location="cpu", weights_only=False)
        unet = UNet2DConditionModel.from_config(u["unet_config"])
        unet.load_state_dict(u["state_dict"])
        # The exported architecture under its own registry name: later edits of the
        # project's model_configs/ cannot break a registered model.
        open_clip.add_model_config(str(d / "open_clip"))
        clip = build_clip(info["clip_registry_name"], image_size=int(unet.config.sample_size))
        clip.load_state_dict(torch.load(d / "clip.pt", map_location="cpu", weights_only=True))
        return cls(clip, info["clip_registry_name"], unet.eval(), info["schedule"], info["clip_arch"])

    def export(self, directory: str | Path) -> None:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save({k: v.cpu() for k, v in self.clip.state_dict().items()}, d / "clip.pt")
        torch.save({"unet_config": dict(self.unet.config),
                    "state_dict": {k: v.cpu() for k, v in self.unet.state_dict().items()}}, d / "unet.pt")
        arch = json.dumps(self.clip_config, sort_keys=True)
        registry_name = f"suti-exported-clip-{hashlib.sha256(arch.encode()).hexdigest()[:12]}"
        (d / "open_clip").mkdir(exist_ok=True)
        (d / "open_clip" / f"{registry_name}.json").write_text(arch)
        (d / "backbone.json").write_text(json.dumps({"name": self.name, "clip_config": self.clip_name,
                                                     "clip_registry_name": registry_name, "clip_arch": self.clip_config,
                                                     "schedule": self.schedule}, indent=2))

    def frozen_modules(self):
        return [self.clip]

    def scheduler_config(self) -> dict:
        return dict(self.schedule)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        from suti.models.clip import text_hidden_states

        dev = next(self.clip.parameters()).device
        return text_hidden_states(self.clip, self._tok(list(texts)).to(dev))

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        return _resize(_as_pixels(images, self.device), self.resolution)

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> np.ndarray:
        return _to_uint8(x)

    def describe(self) -> dict:
        return {**super().describe(), "clip_config": self.clip_name, **self.schedule}


# ---------------------------------------------------------------------------- stable diffusion


_SD_DEFAULT_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
                        "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "steps_offset": 1}


class SDBackbone(Backbone):
    """A local diffusers Stable Diffusion folder: latent UNet, VAE, CLIP text encoder."""

    name = "stable-diffusion"
    latent = True

    def __init__(self, unet, vae, text_encoder, tokenizer, schedule: dict, path: str | None = None):
        self.unet = unet
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.schedule = dict(schedule)
        self.path = path
        self.vae_scale = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(getattr(vae.config, "scaling_factor", 0.18215))
        self.resolution = int(unet.config.sample_size) * self.vae_scale

    @classmethod
    def from_pretrained(cls, path: str | Path, prediction_type: str | None = None) -> "SDBackbone":
        """Load ``unet/ vae/ text_encoder/ tokenizer/ [scheduler/]`` from a local folder."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        p = Path(path).expanduser()
        missing = [s for s in ("unet", "vae", "text_encoder", "tokenizer") if not (p / s).is_dir()]
        if missing:
            from suti.config import ConfigError

            raise ConfigError(f"backbone.path {p} is not a local diffusers Stable Diffusion folder "
                              f"(missing {', '.join(missing)}/)")
        kw = {"local_files_only": True}
        unet = UNet2DConditionModel.from_pretrained(p, subfolder="unet", **kw)
        vae = AutoencoderKL.from_pretrained(p, subfolder="vae", **kw)
        text_encoder = CLIPTextModel.from_pretrained(p, subfolder="text_encoder", **kw)
        tokenizer = CLIPTokenizer.from_pretrained(p, subfolder="tokenizer", **kw)
        schedule = dict(_SD_DEFAULT_SCHEDULE)
        sched_file = p / "scheduler" / "scheduler_config.json"
        if sched_file.is_file():
            raw = json.loads(sched_file.read_text())
            schedule.update({k: v for k, v in raw.items() if not k.startswith("_") and k in (
                "num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                "prediction_type", "steps_offset", "timestep_spacing")})
        if prediction_type:
            schedule["prediction_type"] = prediction_type
        return cls(unet.eval(), vae, text_encoder, tokenizer, schedule, str(p.resolve()))

    @classmethod
    def from_config(cls, backbone_cfg) -> "SDBackbone":
        from omegaconf import OmegaConf

        path = OmegaConf.select(backbone_cfg, "path", throw_on_missing=False)
        if path is None or OmegaConf.is_missing(backbone_cfg, "path"):
            from suti.config import ConfigError

            raise ConfigError("backbone=stable-diffusion needs backbone.path=<local diffusers folder>")
        return cls.from_pretrained(path, backbone_cfg.prediction_type)

    def export(self, directory: str | Path, bundle: bool = False) -> None:
        """``backbone.json`` pointing at the pipeline folder; with ``bundle`` the folder's
        parts are copied in (self-contained, but gigabytes for a real SD)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        info = {"name": self.name, "schedule": self.schedule, "path": self.path, "bundled": bool(bundle)}
        if bundle:
            if self.path is None:
                raise ValueError("cannot bundle a backbone that was not loaded from a folder")
            for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
                if (Path(self.path) / sub).is_dir():
                    shutil.copytree(Path(self.path) / sub, d / "pipeline" / sub, dirs_exist_ok=True)
            info["path"] = "pipeline"
        (d / "backbone.json").write_text(json.dumps(info, indent=2))

    @classmethod
    def from_dir(cls, directory: str | Path) -> "SDBackbone":
        d = Path(directory)
        info = json.loads((d / "backbone.json").read_text())
        path = d / info["path"] if info.get("bundled") else Path(info["path"])
        bb = cls.from_pretrained(path, info["schedule"].get("prediction_type"))
        bb.schedule = dict(info["schedule"])
        return bb

    def frozen_modules(self):
        return [self.vae, self.text_encoder]

    def scheduler_config(self) -> dict:
        return dict(self.schedule)

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        dev = next(self.text_encoder.parameters()).device
        ids = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(dev)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        dev = next(self.vae.parameters()).device
        x = _resize(_as_pixels(images, dev, self.vae.dtype), self.resolution)
        if x.shape[0] == 0:
            c = self.vae.config.latent_channels
            return x.new_zeros(0, c, self.resolution // self.vae_scale, self.resolution // self.vae_scale)
        # The posterior mean: deterministic latents (the VAE's noise adds nothing here).
        return self.vae.encode(x).latent_dist.mean * self.scaling_factor

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> np.ndarray:
        return _to_uint8(self.vae.decode(x.to(self.vae.dtype) / self.scaling_factor).sample)

    def describe(self) -> dict:
        return {**super().describe(), "path": self.path, **self.schedule}


# ---------------------------------------------------------------------------- factories


def load_backbone(cfg, store) -> Backbone:
    """The backbone named by ``cfg.backbone.name`` (``tiny``: from the store)."""
    from suti.config import ConfigError

    name, prec = cfg.backbone.name, str(cfg.backbone.sample_precision)
    if prec not in SAMPLE_PRECISIONS:
        raise ConfigError(f"backbone.sample_precision must be {' or '.join(SAMPLE_PRECISIONS)}, got {prec!r}")
    if name == "tiny":
        bb = TinyBackbone.from_store(cfg, store)
    elif name == "stable-diffusion":
        bb = SDBackbone.from_config(cfg.backbone)
    else:
        raise ConfigError(f"unknown backbone {name!r}")
    bb.sample_precision = prec
    return bb


def load_exported(directory: str | Path) -> Backbone:
    """Rebuild a backbone written by :meth:`Backbone.export`."""
    info = json.loads((Path(directory) / "backbone.json").read_text())
    if info["name"] == "tiny":
        return TinyBackbone.from_dir(directory)
    if info["name"] == "stable-diffusion":
        return SDBackbone.from_dir(directory)
    raise ValueError(f"unknown exported backbone {info['name']!r}")


# ---------------------------------------------------------------------------- sampling


@torch.no_grad()
def sample_cfg(eps_fn: Callable[[torch.Tensor, torch.Tensor, bool], torch.Tensor], shape: tuple, scheduler,
               steps: int, guidance: float, generator: torch.Generator | None, device: torch.device | str,
               dtype: torch.dtype = torch.float32, precision: str = "fp32",
               combine: Callable[[tuple], torch.Tensor] | None = None, branches: int = 2) -> torch.Tensor:
    """Classifier-free guided sampling on any device.

    ``eps_fn(x, t, guided)`` returns the model's prediction; with ``guided`` it gets the
    batch twice, [unconditional; conditional], and returns both halves stacked the same
    way (one UNet call per step). With ``combine``, the batch comes ``branches`` times and
    ``combine(chunks)`` makes the guided prediction from the ``branches`` predictions (e.g.
    separate demo and text scales). The initial noise is drawn on the CPU from ``generator``
    so a seed gives the same images on every device. ``precision="bf16"`` runs the model
    calls under bfloat16 autocast (the scheduler's arithmetic stays in ``dtype``). Returns
    model-space samples.
    """
    if precision not in SAMPLE_PRECISIONS:
        raise ValueError(f"sample precision must be {' or '.join(SAMPLE_PRECISIONS)}, got {precision!r}")
    raw_fn = eps_fn
    if precision == "bf16":
        dev_type = torch.device(device).type

        def eps_fn(x, t, is_guided):
            with torch.autocast(dev_type, dtype=torch.bfloat16):
                out = raw_fn(x, t, is_guided)
            return out.to(dtype)

    x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    scheduler.set_timesteps(min(int(steps), scheduler.config.num_train_timesteps), device=device)
    x = x * scheduler.init_noise_sigma
    guided = bool(guidance) and guidance != 1.0
    takes_gen = "generator" in inspect.signature(scheduler.step).parameters
    for t in scheduler.timesteps:
        xin = scheduler.scale_model_input(x, t)
        tt = torch.full((shape[0],), int(t), dtype=torch.long, device=device)
        if guided:
            nb = branches if combine is not None else 2
            chunks = eps_fn(torch.cat([xin] * nb), torch.cat([tt] * nb), True).chunk(nb)
            eps = combine(chunks) if combine is not None else chunks[0] + guidance * (chunks[1] - chunks[0])
        else:
            eps = eps_fn(xin, tt, False)
        step = scheduler.step(eps, t, x, generator=generator) if takes_gen else scheduler.step(eps, t, x)
        x = step.prev_sample
    return x


@torch.no_grad()
def text_to_image(backbone: Backbone, model_fn: Callable, prompt: str, num_images: int, guidance: float, kind: str,
                  steps: int, seed: int, memory=None, demo_guidance: float | None = None) -> np.ndarray:
    """``num_images`` images for one prompt with classifier-free guidance: the one sampling
    path of the base model, the apprentice (with or without demos) and the evaluation rows,
    so a seed and a prompt give the same noise, and a model with no demos the same images.

    ``model_fn(x, t, text_states, memory)`` returns the prediction; ``memory`` (batch 1 or
    None) is broadcast, and CFG's unconditional half gets neither text nor demos.

    ``demo_guidance`` (with demos): separate scales for the demos and the text, as
    InstructPix2Pix does for its image and text, from three predictions per step:
    eps = u + s_demo * (d - u) + s_text * (c - d), u = no text no demos, d = demos only,
    c = both, s_text = ``guidance``. ``demo_guidance == guidance`` is plain CFG (to float
    rounding); None keeps the two-branch path."""
    n, bb = int(num_images), backbone
    dev = bb.device
    text_c = bb.encode_text([prompt]).to(dev).expand(n, -1, -1)
    mem_n = memory.expand(n) if memory is not None else None
    guided = bool(guidance) and guidance != 1.0
    three = demo_guidance is not None and mem_n is not None and guided
    combine = None
    if guided:
        text_u = bb.encode_text([""]).to(dev).expand(n, -1, -1)
        text_2 = torch.cat([text_u, text_c])
        mem_2 = type(mem_n).cat([mem_n.without_demos(), mem_n]) if mem_n is not None else None
        if three:  # [no text, no demos; no text, demos; text, demos]
            text_2 = torch.cat([text_u, text_u, text_c])
            mem_2 = type(mem_n).cat([mem_n.without_demos(), mem_n, mem_n])
            s_d, s_t = float(demo_guidance), float(guidance)
            combine = lambda ch: ch[0] + s_d * (ch[1] - ch[0]) + s_t * (ch[2] - ch[1])  # noqa: E731

    def eps(x, t, is_guided):
        if is_guided:
            return model_fn(x, t, text_2, mem_2)
        return model_fn(x, t, text_c, mem_n)

    gen = torch.Generator().manual_seed(int(seed))
    dtype = next(bb.unet.parameters()).dtype
    x = sample_cfg(eps, bb.sample_shape(n), bb.sampling_scheduler(kind, guidance), steps, guidance, gen, dev, dtype,
                   bb.sample_precision, combine=combine, branches=3 if three else 2)
    return bb.decode(x)


def base_model_fn(backbone: Backbone) -> Callable:
    """The backbone's own UNet as a ``model_fn`` for :func:`text_to_image` (no demos)."""
    return lambda x, t, text, memory: backbone.unet(x, t, text).sample
