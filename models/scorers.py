"""Scorers the pipeline judges with: CLIP (image-text, image-image), identity (DINO's
role) and the auto-rater/captioner. The in-world implementations load from the artifact
store (`foundation/<name>/model.pt`); all take (B, H, W, 3) uint8 arrays."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from suti import keys as K
from suti.models.clip import build_clip, image_pixels, text_hidden_states, tokenizer
from suti.models.foundation import MULTI_HEADS, RATER_HEADS, IdentityNet, RaterNet
from suti.world import vocab as V
from suti.world.scene import compose
from suti.world.vocab import PATTERN_PHRASE

HEAD_VOCAB = {"cls": V.CLASS_KEYS, "body": V.COLOUR_KEYS, "accent": V.COLOUR_KEYS, "pattern": V.PATTERNS,
              "context": V.CONTEXT_KEYS, "view": V.VIEW_KEYS, "style": V.STYLE_KEYS}


def save_module(store, key: str, module: torch.nn.Module, meta: dict) -> None:
    buf = io.BytesIO()
    torch.save({"state_dict": module.state_dict(), "meta": meta}, buf)
    store.put_bytes(key, buf.getvalue())


def load_state(store, key: str) -> dict:
    return torch.load(io.BytesIO(store.get_bytes(key)), map_location="cpu", weights_only=False)


def _batches(x, n=256):
    for i in range(0, len(x), n):
        yield x[i:i + n]


@dataclass
class Scorers:
    clip: torch.nn.Module
    identity: IdentityNet
    rater: RaterNet
    clip_name: str = "suti-tiny-clip"

    @classmethod
    def load(cls, store, clip_name: str = "suti-tiny-clip", resolution: int = 32) -> "Scorers":
        clip = build_clip(clip_name, image_size=resolution)
        clip.load_state_dict(load_state(store, K.CLIP)["state_dict"])
        ident_state = load_state(store, K.IDENTITY)
        ident = IdentityNet(**ident_state["meta"]["arch"])
        ident.load_state_dict(ident_state["state_dict"])
        rater_state = load_state(store, K.RATER)
        rater = RaterNet(**rater_state["meta"]["arch"])
        rater.load_state_dict(rater_state["state_dict"])
        return cls(clip.eval(), ident.eval(), rater.eval(), clip_name)

    # ---- CLIP
    @torch.no_grad()
    def image_embed(self, images: np.ndarray) -> np.ndarray:
        out = [F.normalize(self.clip.encode_image(image_pixels(torch.as_tensor(b))), dim=-1) for b in _batches(images)]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def text_embed(self, texts: list[str]) -> np.ndarray:
        tok = tokenizer(self.clip_name)
        out = [F.normalize(self.clip.encode_text(tok(list(b))), dim=-1) for b in _batches(texts)]
        return torch.cat(out).numpy()

    @torch.no_grad()
    def text_states(self, texts: list[str]) -> torch.Tensor:
        """Per-token text states: the UNet's conditioning."""
        return text_hidden_states(self.clip, tokenizer(self.clip_name)(list(texts)))

    def clip_t(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        """Per-image cosine between image i and text i (CLIP-T)."""
        return (self.image_embed(images) * self.text_embed(texts)).sum(1)

    # ---- identity
    @torch.no_grad()
    def identity_embed(self, images: np.ndarray) -> np.ndarray:
        return torch.cat([self.identity(torch.as_tensor(b)) for b in _batches(images)]).numpy()

    # ---- rater
    @torch.no_grad()
    def rate(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Per-image predictions: label indices per head, multi-label probabilities, and
        the photorealism probability."""
        outs = [self.rater(torch.as_tensor(b)) for b in _batches(images)]
        res = {k: torch.cat([o[k] for o in outs]).argmax(1).numpy() for k in RATER_HEADS}
        res.update({k: torch.sigmoid(torch.cat([o[k] for o in outs])).numpy() for k in MULTI_HEADS})
        res["real"] = torch.sigmoid(torch.cat([o["real"] for o in outs])).numpy()
        return res

    def labels(self, images: np.ndarray) -> list[dict]:
        """Predicted world labels, as names."""
        r = self.rate(images)
        out = []
        for i in range(len(images)):
            d = {k: HEAD_VOCAB[k][int(r[k][i])] for k in RATER_HEADS}
            for k, keys in MULTI_HEADS.items():
                d[k] = [keys[j] for j in range(len(keys)) if r[k][i][j] > 0.5]
            d["real"] = float(r["real"][i])
            out.append(d)
        return out

    def caption(self, images: np.ndarray) -> list[str]:
        """Generic captions written by the captioner ('a photo of a blue backpack with red
        stripes on the beach'): class-level, never a brand."""
        caps = []
        for d in self.labels(images):
            word = V.CLASSES[d["cls"]][0]
            pat = f" with {d['accent']} {PATTERN_PHRASE[d['pattern']]}" if d["pattern"] != "plain" else \
                f" with {d['accent']} details"
            caps.append(compose(f"{d['body']} {word}{pat}", d["context"], d["view"], tuple(d["accessories"]), d["style"]))
        return caps
