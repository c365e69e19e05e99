"""What an apprentice learns from (G(lambda) or the raw clusters), run names, and the recipe
that decides whether a finished run is reused."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from suti.tasks.apprentice.settings import TrainSettings, apprentice_config

log = logging.getLogger("suti.apprentice")


# ---------------------------------------------------------------------------- G(lambda)


from suti.tasks.filter import load_G  # noqa: F401  (G(lambda) is the filter's; re-exported here)

# what an apprentice learns from: expert outputs (SuTI) | G plus every mined cluster as extra
# subjects (real renders as targets) | the raw clusters alone (Re-Imagen)
SOURCES = ("G", "mix", "clusters")


def cluster_rows(store) -> list[dict]:
    """Re-Imagen's training data (the paper's baseline): the mined clusters themselves, no
    experts. Each image of a cluster is a target once, with its own caption as the prompt and
    the cluster's other images (and texts) as the demonstrations to draw from."""
    from suti.tasks.experts import load_clusters

    rows = []
    for c in load_clusters(store):
        keys, texts = list(c["images"]), list(c["texts"])
        if len(keys) < 2:
            continue
        for j, key in enumerate(keys):
            rows.append({"sample_key": key, "cluster_id": c["cluster_id"], "prompt": texts[j],
                         "demo_keys": keys[:j] + keys[j + 1:], "demo_texts": texts[:j] + texts[j + 1:],
                         "source": "clusters"})
    return rows


def training_rows(store, source: str, lam: float | None) -> list[dict]:
    """G(lambda) for the apprentice ("G"), G(lambda) plus the raw clusters ("mix"), the raw
    clusters for Re-Imagen ("clusters")."""
    if source not in SOURCES:
        from suti.config import ConfigError

        raise ConfigError(f"training source must be one of {list(SOURCES)}, got {source!r}")
    if source == "clusters":
        return cluster_rows(store)
    G = load_G(store, lam)
    return G + cluster_rows(store) if source == "mix" else G


def g_counts(rows: Sequence[dict]) -> tuple[int, int]:
    """(triples, subjects) of the rows that are expert outputs (G), leaving out raw-cluster rows."""
    g = [r for r in rows if r.get("source") != "clusters"]
    return len(g), len({r.get("cluster_id") for r in g})


def run_name_for(cfg: DictConfig, lam: float | None) -> str:
    """``apprentice.run_name`` or ``lam-<lambda>`` (``lam-none`` for all rows)."""
    name = cfg.apprentice.run_name
    if name:
        return str(name)
    return "lam-none" if lam is None else f"lam-{float(lam):g}"


def rows_digest(rows: Sequence[dict]) -> str:
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps([r["sample_key"], r["prompt"], r["demo_keys"], r.get("demo_texts")]).encode())
    return h.hexdigest()[:16]


def train_recipe(cfg: DictConfig, store, settings: "TrainSettings", rows_digest_: str, start: str | None = None) -> str:
    """Everything a trained apprentice depends on: the training settings (not how it is run
    or logged), the demo-attention architecture, the base model and the rows (G); for
    Dream-SuTI also the model it starts from. A finished run is reused only on a match."""
    from suti.store import digest

    how = {"progress", "log_every", "checkpoint_every", "accelerator", "strategy", "devices"}
    part = {"settings": {k: v for k, v in asdict(settings).items() if k not in how},
            "architecture": asdict(apprentice_config(cfg)),
            "base": (store.done_meta("foundation/base") or {}).get("recipe"),
            "backbone": OmegaConf.to_container(cfg.backbone, resolve=True), "rows": rows_digest_, "start": start}
    return digest(part)
