"""The tiny open_clip CLIP of the world, built from a JSON model config in the registry
`models/model_configs/` (open_clip's own format, registered with `add_model_config`).

open_clip's BPE tokenizer ships with the package, so the vocabulary stays 49408.
"""
from __future__ import annotations

import logging
from importlib import resources

import torch
import torch.nn.functional as F

_REGISTERED = False


def register_model_configs() -> None:
    global _REGISTERED
    if not _REGISTERED:
        import open_clip

        open_clip.add_model_config(str(resources.files("suti.models") / "model_configs"))
        _REGISTERED = True


def build_clip(name: str = "suti-tiny-clip", image_size: int | None = None, seed: int = 0):
    """A randomly initialised CLIP from a registry config (no weights are ever downloaded)."""
    import open_clip

    register_model_configs()
    torch.manual_seed(seed)
    kw = {"force_image_size": image_size} if image_size else {}
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip warns "no pretrained weights": random init is the point here
    try:
        return open_clip.create_model(name, pretrained=None, **kw)
    finally:
        root.setLevel(level)


def tokenizer(name: str = "suti-tiny-clip"):
    import open_clip

    register_model_configs()
    return open_clip.get_tokenizer(name)


def text_hidden_states(model, tokens: torch.Tensor) -> torch.Tensor:
    """Per-token hidden states of the text tower (after ln_final), the UNet's conditioning.

    Same computation as open_clip's `encode_text` up to the pooling step."""
    x = model.token_embedding(tokens)
    x = x + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    return model.ln_final(x)


def image_pixels(images_uint8: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 -> CLIP input (B, 3, H, W), normalised with CLIP's statistics."""
    x = images_uint8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor([0.4815, 0.4578, 0.4082]).view(1, 3, 1, 1)
    std = torch.tensor([0.2686, 0.2613, 0.2758]).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_loss(img_emb: torch.Tensor, txt_emb: torch.Tensor, logit_scale: torch.Tensor,
              same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE. `same[i, j]` marks pairs with identical captions: they count as
    positives too, so duplicates in a batch are not pushed apart."""
    img_emb, txt_emb = F.normalize(img_emb, dim=-1), F.normalize(txt_emb, dim=-1)
    logits = logit_scale.exp().clamp(max=100) * img_emb @ txt_emb.t()
    if same is None:
        target = torch.arange(len(logits))
        return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    tgt = same.float() / same.float().sum(1, keepdim=True)
    return (-(tgt * logits.log_softmax(1)).sum(1).mean() - (tgt * logits.t().log_softmax(1)).sum(1).mean()) / 2
