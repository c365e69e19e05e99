"""The pixel-space base text-to-image model and its sampler (DDPM / DDIM / DPM-Solver++,
classifier-free guidance). The sampler takes any `denoise(x, t, cond) -> eps` callable, so
the base model, experts and the apprentice share it."""
from __future__ import annotations

from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf


def build_unet(backbone: DictConfig, resolution: int, cross_attention_dim: int, seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    u = OmegaConf.to_container(backbone.unet, resolve=True)
    return UNet2DConditionModel(
        sample_size=resolution, in_channels=3, out_channels=3,
        block_out_channels=tuple(u["block_out_channels"]), layers_per_block=u["layers_per_block"],
        down_block_types=tuple(u["down_block_types"]), up_block_types=tuple(u["up_block_types"]),
        cross_attention_dim=cross_attention_dim, attention_head_dim=u["attention_head_dim"],
        norm_num_groups=u["norm_num_groups"],
    )


def make_scheduler(kind: str, num_train_timesteps: int = 1000, beta_schedule: str = "squaredcos_cap_v2",
                   prediction_type: str = "epsilon", thresholding: bool = False):
    """A sampling scheduler. `thresholding` is Imagen's dynamic thresholding, which keeps
    high classifier-free guidance (15-30, the paper's values) from saturating pixels."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    kw = dict(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type)
    if thresholding:
        kw.update(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
    if kind == "ddpm":
        return DDPMScheduler(**kw, clip_sample=not thresholding)
    if kind == "ddim":
        return DDIMScheduler(**kw, clip_sample=not thresholding, set_alpha_to_one=False)
    if kind == "dpm":
        # DPM-Solver++ does not clip its x0 predictions; with the cosine schedule the first
        # step's alpha_bar is ~2e-9 and an unclipped x0 blows up (measured: CLIP-T 0.13 vs
        # 0.24 with thresholding), so it always thresholds.
        kw.update(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1.0)
        return DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2,
                                           lower_order_final=True)
    raise ValueError(f"unknown scheduler {kind!r}")


def schedule_config(backbone) -> dict:
    """The noise schedule a backbone config names: what training and sampling must agree on.
    Every value comes from `conf/backbone/<name>.yaml` (a backbone trained here must name its
    beta schedule; a pipeline folder's scheduler config names its own)."""
    if backbone.beta_schedule is None:
        from suti.config import ConfigError

        raise ConfigError(f"backbone {backbone.name!r} trains its UNet here but names no beta_schedule "
                          f"(set backbone.beta_schedule, e.g. squaredcos_cap_v2)")
    return {"num_train_timesteps": int(backbone.num_train_timesteps),
            "beta_schedule": str(backbone.beta_schedule),
            "prediction_type": str(backbone.prediction_type)}


def guided_scheduler(kind: str, guidance: float, backbone):
    """The sampling scheduler for a guidance scale on `backbone`'s schedule: dynamic thresholding from 10 up."""
    return make_scheduler(kind, thresholding=guidance >= 10, **schedule_config(backbone))


def training_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network learns to predict at (x_t, t), per the scheduler's prediction type:
    the noise (epsilon), the velocity v = sqrt(a) eps - sqrt(1-a) x0 (v_prediction) or x0 (sample)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise ValueError(f"unknown prediction_type {kind!r}")


def diffusion_loss(scheduler, pred: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
                   min_snr_gamma: float = 0.0) -> torch.Tensor:
    """Mean squared error against `training_target`, optionally with Min-SNR-gamma weighting
    (Hang et al. 2023: each timestep's loss weighted by min(SNR, gamma) relative to the
    prediction type's own weighting, so that easy low-noise steps do not dominate training)."""
    err = (pred.float() - training_target(scheduler, x0, noise, t).float()).pow(2).mean(dim=tuple(range(1, pred.dim())))
    if min_snr_gamma and min_snr_gamma > 0:
        ab = scheduler.alphas_cumprod.to(t.device)[t].float()
        snr = ab / (1 - ab)
        w = snr.clamp(max=min_snr_gamma)
        kind = scheduler.config.prediction_type
        w = w / (snr + 1) if kind == "v_prediction" else (w / snr if kind == "epsilon" else w)
        err = err * w
    return err.mean()


def training_scheduler(backbone: DictConfig):
    return make_scheduler("ddpm", **schedule_config(backbone))


@torch.no_grad()
def sample(denoise: Callable, cond, uncond, shape: tuple, scheduler, steps: int, guidance: float,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Classifier-free guided sampling. `denoise(x, t, c)` returns the model output (eps, v or
    x0, as the scheduler's prediction_type says; guidance is linear in all three); `cond`/`uncond` are
    whatever `denoise` accepts (stacked along batch when guidance is used).
    Returns samples in [-1, 1]."""
    x = torch.randn(shape, generator=generator)
    if steps >= scheduler.config.num_train_timesteps or scheduler.__class__.__name__ == "DDPMScheduler":
        scheduler.set_timesteps(min(steps, scheduler.config.num_train_timesteps))
    else:
        scheduler.set_timesteps(steps)
    x = x * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        tt = torch.full((shape[0],), int(t), dtype=torch.long)
        if guidance and guidance != 1.0:
            eps_c = denoise(x, tt, cond)
            eps_u = denoise(x, tt, uncond)
            eps = eps_u + guidance * (eps_c - eps_u)
        else:
            eps = denoise(x, tt, cond)
        x = scheduler.step(eps, t, x, generator=generator).prev_sample if _takes_generator(scheduler) else \
            scheduler.step(eps, t, x).prev_sample
    return x.clamp(-1, 1)


def _takes_generator(scheduler) -> bool:
    import inspect

    return "generator" in inspect.signature(scheduler.step).parameters


def to_uint8(x: torch.Tensor) -> "numpy.ndarray":  # noqa: F821
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def check_schedule(cfg: DictConfig, meta: dict) -> None:
    """A base model sampled with another prediction type than it learned makes noise: refuse."""
    from suti.store import StoreError

    trained = (meta.get("schedule") or {}).get("prediction_type", "epsilon")
    wanted = schedule_config(cfg.backbone)["prediction_type"]
    if trained != wanted:
        raise StoreError(f"the stored base model predicts {trained!r} but backbone.prediction_type is {wanted!r}: "
                         f"run `suti foundation --force` or set backbone.prediction_type={trained}")
