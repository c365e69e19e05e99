"""Compose the Hydra config once (CLI or flow entry) and validate it before any work.

Hydra's global state is not thread-safe (NOTES): compose here, pass the DictConfig down.
"""
from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

OmegaConf.register_new_resolver("abspath", lambda p: str(Path(p).expanduser().resolve()), replace=True)

BACKBONES = ("tiny", "stable-diffusion")
SCHEDULERS = ("ddpm", "ddim", "dpm")
TRAIN_PRECISIONS = ("32-true", "bf16-mixed", "auto")  # a foundation model's; auto: bf16-mixed on a CPU with AMX / AVX-512 BF16


class ConfigError(ValueError):
    """A wrong configuration value; its message is one line for the user."""


def conf_dir() -> str:
    return str(resources.files("suti.conf"))


def compose(overrides: list[str] | None = None) -> DictConfig:
    """Compose conf/config.yaml with Hydra overrides (`profile=smoke expert.steps=50`)."""
    from hydra import compose as hcompose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=conf_dir(), version_base="1.3"):
            cfg = hcompose(config_name="config", overrides=list(overrides or []))
        OmegaConf.resolve(cfg)
        cfg = typed(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        msg = " ".join(str(e).split())
        m = re.search(r"Could not find '([^/']+)/([^']+)' Available options in '[^']+': (.*?) Config search", msg)
        if m:
            msg = f"unknown {m.group(1)} {m.group(2)!r} (choose from {', '.join(m.group(3).split())})"
        raise ConfigError(msg) from None
    finally:
        GlobalHydra.instance().clear()
    validate(cfg)
    return cfg


def typed(cfg: DictConfig) -> DictConfig:
    """The composed YAML merged into the typed schema (suti/schema.py): wrong types and
    unknown keys raise here; a key the YAML leaves unset is named."""
    from suti.schema import SutiSchema

    from omegaconf.errors import ConfigKeyError, ValidationError

    try:
        out = OmegaConf.merge(OmegaConf.structured(SutiSchema), cfg)
    except ConfigKeyError as e:
        raise ConfigError(f"unknown config key {e.full_key!r} (no such option in conf/)") from None
    except ValidationError as e:
        what = str(e).splitlines()[0].split(" full_key:")[0]
        m = re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", what)
        kinds = {"Integer": "a whole number", "Float": "a number", "Boolean": "true or false"}
        m = m or re.match(r"Value '(.*)' is not a valid (bool)", what)
        kinds["bool"] = kinds["Boolean"]
        if m and m.group(2) in kinds:
            raise ConfigError(f"{e.full_key} must be {kinds[m.group(2)]}, got {m.group(1)!r}") from None
        raise ConfigError(f"{e.full_key}: {what}") from None
    # backbone.path may stay `???` until a command loads the backbone (it names it then)
    missing = sorted(set(OmegaConf.missing_keys(out)) - {"backbone.path"})
    if missing:
        raise ConfigError(f"missing config value(s): {', '.join(missing)}")
    return out


def _num(cfg, path: str, lo=None, hi=None, integer=False):
    v = OmegaConf.select(cfg, path)
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (integer and not isinstance(v, int)):
        raise ConfigError(f"{path} must be a {'whole ' if integer else ''}number, got {v!r}")
    if lo is not None and v < lo:
        raise ConfigError(f"{path} must be >= {lo}, got {v}")
    if hi is not None and v > hi:
        raise ConfigError(f"{path} must be <= {hi}, got {v}")


def validate(cfg: DictConfig) -> None:
    """Catch wrong values before any work starts (one-line ConfigError)."""
    if cfg.backbone.name not in BACKBONES:
        raise ConfigError(f"unknown backbone {cfg.backbone.name!r} (choose from {', '.join(BACKBONES)})")
    _num(cfg, "world.resolution", 16, 512, True)
    if cfg.world.resolution % 8:
        raise ConfigError(f"world.resolution must be a multiple of 8, got {cfg.world.resolution}")
    for key in ("world.page_subjects", "world.heldout_subjects", "world.pretrain_images", "world.pretrain_subjects"):
        _num(cfg, key, 1, None, True)
    for key in ("world.mixed_pages", "world.duplicate_pages", "world.small_pages", "world.demos_per_heldout"):
        _num(cfg, key, 0, None, True)
    _num(cfg, "world.val_subjects", 1, max(1, int(cfg.world.heldout_subjects) - 1), True)  # both splits non-empty
    _num(cfg, "foundation.identity.hard_batches", 0, 1)
    for model in ("clip", "identity", "rater", "base"):
        _num(cfg, f"foundation.{model}.steps", 0, None, True)
        _num(cfg, f"foundation.{model}.lr", 0)
        if cfg.foundation[model].precision not in TRAIN_PRECISIONS:
            raise ConfigError(f"foundation.{model}.precision must be {', '.join(TRAIN_PRECISIONS)}, "
                              f"got {cfg.foundation[model].precision!r}")
    _num(cfg, "foundation.base.min_snr_gamma", 0)
    _num(cfg, "foundation.rater.shift", 0, 16, True)
    if cfg.backbone.prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ConfigError(f"backbone.prediction_type must be epsilon, v_prediction or sample, "
                          f"got {cfg.backbone.prediction_type!r}")
    _num(cfg, "expert.samples_per_prompt", 1, None, True)
    _num(cfg, "expert.compare_clusters", 0, None, True)
    _num(cfg, "expert.steps", 0, None, True)
    _num(cfg, "expert.lr", 0)
    _num(cfg, "expert.guidance", 0)
    _num(cfg, "expert.prompts_per_cluster", 1, None, True)
    _num(cfg, "apprentice.steps", 0, None, True)
    _num(cfg, "apprentice.demos", 1, 16, True)
    _num(cfg, "apprentice.demos_min", 1, int(cfg.apprentice.demos), True)  # null: always `demos`
    _num(cfg, "apprentice.targets_per_demo_set", 1, int(cfg.apprentice.batch_size), True)
    if int(cfg.apprentice.batch_size) % int(cfg.apprentice.targets_per_demo_set):
        raise ConfigError(f"apprentice.targets_per_demo_set must divide apprentice.batch_size "
                          f"({cfg.apprentice.batch_size}), got {cfg.apprentice.targets_per_demo_set}")
    if cfg.apprentice.source not in ("G", "mix"):
        raise ConfigError(f"apprentice.source must be G or mix, got {cfg.apprentice.source!r} (the raw clusters "
                          "alone are `suti train --source clusters`, the Re-Imagen baseline)")
    _num(cfg, "apprentice.guidance", 0)
    _num(cfg, "eval.demo_guidance", 0, 100)
    _num(cfg, "apprentice.demo_guidance", 0, 100)
    _num(cfg, "apprentice.val_check_subjects", 0, None, True)
    _num(cfg, "apprentice.val_check_prompts", 1, 25, True)
    _num(cfg, "filter.lambda_", -1, 1)
    for v in cfg.filter.sweep:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ConfigError(f"filter.sweep values must be numbers or null, got {v!r}")
    _num(cfg, "num_workers", 1, 64, True)
    _num(cfg, "torch_threads", 1, 256, True)
    _num(cfg, "foundation.processes", 1, 2, True)
    _num(cfg, "eval.images_per_prompt", 1, 64, True)
    _num(cfg, "eval.limit", 1, None, True)
    _num(cfg, "sweep.steps", 1, None, True)
    _num(cfg, "sweep.eval_limit", 1, None, True)
    _num(cfg, "sweep.eval_images_per_prompt", 1, 64, True)
    _num(cfg, "pipeline.eval_limit", 1, None, True)
    final = OmegaConf.select(cfg, "pipeline.final_lambda")
    if not (final is None or final in ("best", "config", "none") or
            (isinstance(final, (int, float)) and not isinstance(final, bool) and -1 <= final <= 1)):
        raise ConfigError(f"pipeline.final_lambda must be best, config, none or a number in [-1, 1], got {final!r}")
    for m in cfg.eval.methods:
        if m not in ("oracle", "base", "expert", "reimagen", "apprentice", "dreamsuti"):
            raise ConfigError(f"eval.methods: unknown method {m!r}")
    if cfg.eval.split not in ("val", "test"):
        raise ConfigError(f"eval.split must be val or test, got {cfg.eval.split!r}")
    _num(cfg, "eval.kshot_prompts", 1, 25, True)
    if cfg.expert.runner not in ("thread", "dask", "deployment"):
        raise ConfigError(f"expert.runner must be thread, dask or deployment, got {cfg.expert.runner!r}")
    if cfg.expert.method not in ("full", "lora"):
        raise ConfigError(f"expert.method must be full or lora, got {cfg.expert.method!r}")
    for key in ("expert.scheduler", "apprentice.scheduler", "foundation.eval.scheduler"):
        if OmegaConf.select(cfg, key) not in SCHEDULERS:
            raise ConfigError(f"{key} must be one of {', '.join(SCHEDULERS)}, got {OmegaConf.select(cfg, key)!r}")
    uri = str(cfg.storage.uri)
    if not (uri.startswith("file://") or uri.startswith("s3://")):
        raise ConfigError(f"storage.uri must be file://... or s3://..., got {uri!r}")


def workdir(cfg: DictConfig) -> Path:
    p = Path(cfg.workdir).expanduser().resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p


def flat(cfg: DictConfig) -> dict:
    """Flattened `a.b.c -> value` view, for MLflow params."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def setup_env(cfg: DictConfig) -> Path:
    """Point every library's home and cache into the work directory; before importing prefect."""
    wd = workdir(cfg)
    for var, sub in (("PREFECT_HOME", ".prefect"), ("MPLCONFIGDIR", ".cache/matplotlib"),
                     ("XDG_CACHE_HOME", ".cache"), ("TORCHINDUCTOR_CACHE_DIR", ".cache/inductor")):
        if var not in os.environ:
            (wd / sub).mkdir(parents=True, exist_ok=True)
            os.environ[var] = str(wd / sub)
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "suti")  # our progress lines reach the console and the UI
    # a busy 2-core machine can take longer than the default 20 s to start the ephemeral server
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "300")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging

    logging.getLogger("suti").setLevel(logging.INFO)  # progress lines (counts, s/step) are INFO
    if cfg.torch_threads:
        import torch

        torch.set_num_threads(int(cfg.torch_threads))
    return wd
