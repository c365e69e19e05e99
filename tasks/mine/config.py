"""The mining stage's options (`mine.*`), its store prefixes and small helpers."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable


PREFIX = "mine"
WORLD_PREFIX = "world/"
TRUTH_PREFIX = "world/truth/"
REASONS = ("kept", "too_small", "below_band", "above_band")


# ---------------------------------------------------------------- config

@dataclass
class MineConfig:
    """Options of the `mine` config key. Their values live in `conf/mine/default.yaml` only
    (suti/schema.py MineSchema types them); this class has no defaults of its own."""
    band: list[float] | None  # [lo, hi] on the mean intra-cluster CLIP cosine; None = calibrate
    min_images: int  # the paper drops clusters with fewer readable images
    shard_size: int  # clusters per output shard
    null_pairs: int  # random cross-page image pairs (different subjects) for the calibration
    null_clusters: int  # random pseudo-clusters of images from different pages
    null_quantile: float  # lo = this quantile of the pseudo-cluster means (the statistic we threshold)
    dup_images: int  # images copied with tiny pixel noise for the near-duplicate level
    dup_noise: int  # +- pixel noise of a near-identical copy (re-encoding, mirroring)
    dup_quantile: float  # hi = this quantile of the copy-pair cosines ...
    dup_margin: float  # ... minus this fraction of its gap to the median random pair (scale-free)
    merger: str  # rule | llm  (llm: `llm_complete` names the client)
    prompt_writer: str  # template | llm
    llm_complete: str | None  # "module:function", a complete(prompt: str) -> str; no network in our code
    batch_size: int  # images per scorer batch
    threads: int  # torch threads while scoring: tiny models need no more, and on a busy machine
    #               more threads than free cores stall inference (40x slower measured)

    @classmethod
    def from_cfg(cls, cfg) -> "MineConfig":
        """`cfg.mine` of a composed config (every key given; unknown or missing keys are one ConfigError)."""
        from omegaconf import OmegaConf

        from suti.config import ConfigError

        node = cfg.get("mine", None) if cfg is not None else None
        given = OmegaConf.to_container(node, resolve=True) if node is not None and not isinstance(node, dict) else dict(node or {})
        known = list(cls.__dataclass_fields__)
        unknown = set(given) - set(known)
        if unknown:
            raise ConfigError(f"unknown mine option(s) {', '.join(sorted(unknown))} (choose from {', '.join(sorted(known))})")
        missing = [k for k in known if k not in given]
        if missing:
            raise ConfigError(f"mine option(s) {', '.join(missing)} not set (conf/mine/default.yaml gives them all)")
        mc = cls(**given)
        mc.validate()
        return mc

    def validate(self) -> None:
        from suti.config import ConfigError

        if self.band is not None:
            b = list(self.band)
            if len(b) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b) or not -1 <= b[0] < b[1] <= 1:
                raise ConfigError(f"mine.band must be null or [lo, hi] with -1 <= lo < hi <= 1, got {self.band!r}")
            self.band = [float(b[0]), float(b[1])]
        if not isinstance(self.min_images, int) or self.min_images < 2:
            raise ConfigError(f"mine.min_images must be a whole number >= 2, got {self.min_images!r}")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"mine.threads must be a whole number >= 0 (0: torch's default), got {self.threads!r}")
        if not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ConfigError(f"mine.shard_size must be a whole number >= 1, got {self.shard_size!r}")
        for k in ("null_quantile", "dup_quantile"):
            if not 0 < getattr(self, k) < 1:
                raise ConfigError(f"mine.{k} must lie in (0, 1), got {getattr(self, k)!r}")
        if self.merger not in ("rule", "llm"):
            raise ConfigError(f"mine.merger must be rule or llm, got {self.merger!r}")
        if self.prompt_writer not in ("template", "llm"):
            raise ConfigError(f"mine.prompt_writer must be template or llm, got {self.prompt_writer!r}")
        if "llm" in (self.merger, self.prompt_writer) and not self.llm_complete:
            raise ConfigError("mine.llm_complete must name a 'module:function' complete(prompt) -> str for the llm merger/writer")


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch intra-op threads (None: leave as is), then restore."""
    import torch

    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_callable(spec: str) -> Callable[[str], str]:
    """Import 'module:function' (the pluggable LLM client)."""
    import importlib

    from suti.config import ConfigError

    mod, _, fn = spec.partition(":")
    try:
        return getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"cannot import mine.llm_complete {spec!r}: {e}") from None
