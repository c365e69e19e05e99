"""The apprentice's inference pipeline, beside the models it runs (as diffusers keeps its
pipelines beside its models): backbone + demo attention + sampling defaults; export to a
folder, load from one, encode demonstrations once, generate. Where a model comes from
(registry, MLflow run, store run) is :mod:`suti.tasks.apprentice.registry`'s business."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from suti.models.apprentice import ApprenticeConfig, ApprenticeUNet, DemoMemory
from suti.models.backbone import Backbone, load_exported, text_to_image

MODEL_FILE = "apprentice.pt"
FORMAT = 1

__all__ = ["Apprentice", "default_device", "MODEL_FILE", "FORMAT"]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Apprentice:
    """A trained apprentice ready to render: backbone + demo attention + sampling defaults.

    >>> app = Apprentice.from_dir("work/models/apprentice")   # or suti.tasks.apprentice.load_apprentice(uri, cfg)
    >>> images = app.generate(demos, ["Zorvex backpack", ...], "a Zorvex backpack in the snow")
    """

    SAMPLING = ("guidance", "scheduler", "steps", "num_images", "demos")

    def __init__(self, backbone: Backbone, model: ApprenticeUNet, defaults: dict, meta: dict | None = None):
        """`defaults`: the sampling settings it was trained for (`sampling_defaults(cfg)` of
        the `apprentice` config, saved with the export); no value is made up here."""
        missing = [k for k in self.SAMPLING if k not in (defaults or {})]
        if missing:
            raise ValueError(f"apprentice sampling defaults lack {', '.join(missing)} (from the apprentice config)")
        self.backbone, self.model = backbone, model.eval()
        self.defaults = dict(defaults)
        self.meta = dict(meta or {})
        # sampling precision of the UNet calls (exports made before it was a setting: fp32)
        self.backbone.sample_precision = str(self.defaults.get("precision", "fp32"))

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
                 steps: int | None = None, seed: int = 0, demo_guidance: float | None = None) -> list[np.ndarray]:
        """Render ``num_images`` images of the demos' subject following ``prompt``.

        Any number of demos (uint8 (H, W, 3), any size: center-cropped and resized), 0
        included: then the output is the base model's for the same seed (the gates only
        act through demos). CFG's unconditional branch has no text and no demos;
        ``demo_guidance`` scales the demos apart from the text (``text_to_image``; None: the
        export's default, itself None for one scale). Returns uint8 (R, R, 3) arrays."""
        n = int(num_images if num_images is not None else self.defaults["num_images"])
        if n < 1:
            raise ValueError("num_images must be >= 1")
        guidance = float(self.defaults["guidance"] if guidance is None else guidance)
        kind = str(scheduler or self.defaults["scheduler"])
        steps = int(steps or self.defaults["steps"])
        memory = self.encode_demos(demos, demo_texts)
        dg = self.defaults.get("demo_guidance") if demo_guidance is None else demo_guidance
        return list(text_to_image(self.backbone, self.model, prompt, n, guidance, kind, steps, seed, memory,
                                  demo_guidance=None if dg is None else float(dg)))
