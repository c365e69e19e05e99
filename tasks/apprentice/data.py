"""Training batches of G: (demos, demo texts, prompt, target) examples from the store."""
from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch

from suti.tasks.apprentice.settings import TrainSettings

log = logging.getLogger("suti.apprentice")


# ---------------------------------------------------------------------------- data


class ImageSource:
    """Images by store key, decoded, center-cropped and resized to the backbone's resolution,
    kept in an LRU cache of at most ``cache_bytes``; ``preloaded`` arrays (Dream-SuTI's
    user images) bypass the store and stay."""

    def __init__(self, store, resolution: int, preloaded: dict[str, np.ndarray] | None = None,
                 cache_bytes: int = 2 << 30):
        from collections import OrderedDict

        from suti.imageio import prepare

        self.store, self.resolution, self.cache_bytes = store, resolution, int(cache_bytes)
        self._pinned = {k: prepare(v, resolution) for k, v in (preloaded or {}).items()}
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0

    def get(self, key: str) -> np.ndarray:
        img = self._pinned.get(key)
        if img is not None:
            return img
        img = self._cache.get(key)
        if img is not None:
            self._cache.move_to_end(key)
            return img
        from suti.imageio import decode_image_bytes, prepare

        img = prepare(decode_image_bytes(self.store.get_bytes(key), self.store.url(key)), self.resolution)
        self._cache[key] = img
        self._bytes += img.nbytes
        while self._bytes > self.cache_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= old.nbytes
        return img


class GBatches(torch.utils.data.IterableDataset):
    """Endless stream of whole batches over G(lambda). The batch of step ``s`` on rank
    ``r`` depends only on (seed, s, r): a resumed run sees the batches it would have seen.

    With ``targets_per_demo_set`` T > 1 a batch holds ``batch_size / T`` demo sets, each
    shared by T targets of one subject (the drawn row and T - 1 other rows of its cluster;
    no target is among its set's demos): the demo pass (the UNet's down stack over K demos)
    runs once per set. At T = 2 the default step measured 0.89x, and the apprentice trained
    worse at equal steps (bench/README.md). ``demos``, ``demo_texts`` and ``mask`` then have
    ``batch_size / T`` rows; target ``b`` reads set ``b // T``."""

    def __init__(self, rows: list[dict], images: ImageSource, settings: TrainSettings, start_step: int = 0,
                 rank: int = 0):
        if not rows:
            raise ValueError("G(lambda) is empty: nothing to train on")
        self.rows, self.images, self.s = rows, images, settings
        self.start_step, self.rank = int(start_step), int(rank)
        self.per_set = int(settings.targets_per_demo_set)
        self.peers: list[list[int]] = []  # per row, the other rows of its cluster (only when sets are shared)
        if self.per_set > 1:
            by_cluster: dict = {}
            for i, r in enumerate(rows):
                by_cluster.setdefault(r.get("cluster_id", i), []).append(i)
            self.peers = [[j for j in by_cluster[r.get("cluster_id", i)] if j != i] for i, r in enumerate(rows)]

    def __iter__(self):
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1

    def _targets(self, i: int, rng: np.random.Generator) -> list[int]:
        """Row ``i`` and the rows that share its demo set (``per_set`` in all)."""
        if self.per_set == 1:
            return [i]
        others = self.peers[i] or [i]
        pick = rng.choice(len(others), size=self.per_set - 1, replace=len(others) < self.per_set - 1)
        return [i] + [others[int(j)] for j in pick]

    def batch(self, step: int) -> dict:
        s, R, K = self.s, self.images.resolution, self.s.demos
        rng = np.random.default_rng([s.seed, int(step), self.rank])
        sets = s.batch_size // self.per_set
        idx = rng.integers(0, len(self.rows), sets)
        target = np.zeros((s.batch_size, R, R, 3), np.uint8)
        demos = np.zeros((sets, K, R, R, 3), np.uint8)
        mask = np.zeros((sets, K), bool)
        prompts, demo_texts = [], []
        for g, i in enumerate(idx):
            members = self._targets(int(i), rng)
            for m, j in enumerate(members):
                row = self.rows[j]
                target[g * self.per_set + m] = self.images.get(row["sample_key"])
                prompts.append("" if rng.random() < s.text_drop else str(row["prompt"]))
            row = self.rows[int(i)]
            own = {self.rows[j]["sample_key"] for j in members}  # never a shared set's demo and a target
            pairs = [(k, t) for k, t in zip(row["demo_keys"], row.get("demo_texts") or [""] * len(row["demo_keys"]))
                     if k not in own]
            n = min(K, len(pairs))
            if s.demos_min is not None and n > s.demos_min:  # a count per example, so fewer demos are seen too
                n = int(rng.integers(s.demos_min, n + 1))
            take = rng.choice(len(pairs), size=n, replace=False) if pairs else []
            drop_all = rng.random() < s.demo_drop
            row_texts = []
            for k, j in enumerate(take):
                key, text = pairs[int(j)]
                demos[g, k] = self.images.get(key)
                mask[g, k] = not drop_all
                row_texts.append("" if rng.random() < s.demo_text_drop else str(text))
            row_texts += [""] * (K - len(row_texts))
            demo_texts.append(row_texts)
        return {"target": torch.from_numpy(target), "prompts": prompts, "demos": torch.from_numpy(demos),
                "demo_texts": demo_texts, "mask": torch.from_numpy(mask)}


class GDataModule(L.LightningDataModule):
    """G(lambda) as a Lightning data module; the stream starts at the trainer's (restored) step."""

    def __init__(self, rows: list[dict], images: ImageSource, settings: TrainSettings):
        super().__init__()
        self.rows, self.images, self.settings = rows, images, settings
        self.start_step: int | None = None  # where the stream began (the restored step on resume)

    def train_dataloader(self):
        t = self.trainer
        start = t.global_step if t is not None else 0
        rank = t.global_rank if t is not None else 0
        self.start_step = int(start)
        ds = GBatches(self.rows, self.images, self.settings, start_step=start, rank=rank)
        return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=0)
