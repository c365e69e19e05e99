"""Steps 1 and 2: group pages by source; decode, embed and caption every image."""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import urllib.parse

import numpy as np

from suti.tasks.mine.config import TRUTH_PREFIX, WORLD_PREFIX, torch_threads
from suti.tasks.mine.records import Candidate, ImageRecord, PageImage, ScoredCluster

log = logging.getLogger("suti.mine")


# ---------------------------------------------------------------- 1. grouping

def source_key(url: str) -> str:
    """The grouping key of a URL: lower-cased host (no 'www.', no port) + path (no trailing
    slash); query and fragment dropped, so every view of one product page groups together."""
    p = urllib.parse.urlsplit(url.strip())
    host = (p.hostname or "").lower()
    if host.startswith("www."):
        host = host[4:]
    path = re.sub(r"/+", "/", p.path or "/").rstrip("/")
    return f"{host}{path}" or url


def cluster_id_for(source: str) -> str:
    return "c" + hashlib.blake2b(source.encode(), digest_size=6).hexdigest()


def read_pages(store) -> list[dict]:
    """The web pages' index (`world/pages.jsonl`): the only text a mining step reads."""
    lines = store.get_bytes("world/pages.jsonl").decode().splitlines()
    return [json.loads(x) for x in lines if x.strip()]


def group_by_source(pages: list[dict]) -> list[Candidate]:
    """One candidate cluster per source (host + path), in order of first appearance."""
    groups: dict[str, Candidate] = {}
    for p in pages:
        src = source_key(p["url"])
        c = groups.get(src)
        if c is None:
            c = groups[src] = Candidate(cluster_id=cluster_id_for(src), source=src, url=p["url"], pages=[], images=[])
        c.pages.append(str(p.get("page", "")))
        c.images += [PageImage(key=e["key"], alt=e.get("alt") or "") for e in p.get("images", [])]
    return list(groups.values())


# ---------------------------------------------------------------- 2. images, embeddings, captions

def decode_image(data: bytes, resolution: int) -> np.ndarray:
    """PNG/JPEG bytes -> (R, R, 3) uint8; raises ValueError for anything unusable."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many kinds (UnidentifiedImageError, OSError, SyntaxError, ...)
        raise ValueError(f"undecodable image ({type(e).__name__}: {e})") from None
    if arr.shape != (resolution, resolution, 3):
        raise ValueError(f"wrong size {arr.shape[1]}x{arr.shape[0]}, expected {resolution}x{resolution}")
    return arr


def load_images(store, candidates: list[Candidate], resolution: int, warn=None):
    """Decode every image of every candidate. Returns (images (N, R, R, 3), owner index per
    image, [(keys, alts, unreadable)] per candidate). Unusable images are skipped with a warning."""
    from concurrent.futures import ThreadPoolExecutor

    from suti.store import StoreError

    warn = warn or log.warning
    flat = [(ci, im) for ci, c in enumerate(candidates) for im in c.images]

    def one(item):
        key = WORLD_PREFIX + item[1].key
        if key.startswith(TRUTH_PREFIX):  # a page must never point a miner at the truth
            return key, None, "points into world/truth/"
        try:
            return key, decode_image(store.get_bytes(key), resolution), None
        except (ValueError, StoreError) as e:
            return key, None, str(e)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, flat))
    per = [([], [], 0) for _ in candidates]
    images, owner = [], []
    for (ci, im), (key, arr, err) in zip(flat, results):
        keys, alts, bad = per[ci]
        if arr is None:
            warn(f"skipping image {key} of {candidates[ci].url}: {err}")
            per[ci] = (keys, alts, bad + 1)
            continue
        keys.append(key)
        alts.append(im.alt)
        images.append(arr)
        owner.append(ci)
    arr = np.stack(images) if images else np.zeros((0, resolution, resolution, 3), np.uint8)
    return arr, np.asarray(owner, dtype=np.int64), per


def mean_pairwise_cosine(emb: np.ndarray) -> float | None:
    """Mean cosine over the distinct pairs of L2-normalised rows (None for < 2 rows)."""
    n = len(emb)
    if n < 2:
        return None
    s = emb.astype(np.float64) @ emb.astype(np.float64).T
    return float((s.sum() - np.trace(s)) / (n * (n - 1)))


def _score_images(scorers, images: np.ndarray, batch_size: int):
    if not len(images):
        return np.zeros((0, 1), np.float32), [], []
    emb = np.concatenate([scorers.image_embed(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    labels, captions = [], []
    for i in range(0, len(images), batch_size):
        labels += scorers.labels(images[i:i + batch_size])
        captions += scorers.caption(images[i:i + batch_size])
    return emb, labels, captions


def score_candidates(store, scorers, candidates: list[Candidate], resolution: int, warn=None,
                     batch_size: int = 256, threads: int | None = 1
                     ) -> tuple[list[ScoredCluster], np.ndarray, list[ImageRecord]]:
    """Decode, embed, caption and label every readable image; mean pair similarity per cluster.
    Returns (scored clusters, embeddings (N, d) in image order, image records in the same order)."""
    images, owner, per = load_images(store, candidates, resolution, warn)
    with torch_threads(threads):
        emb, labels, captions = _score_images(scorers, images, batch_size)
    emb = emb.astype(np.float32)
    scored, records, start = [], [], 0
    for ci, c in enumerate(candidates):
        keys, alts, bad = per[ci]
        e = emb[start:start + len(keys)]
        scored.append(ScoredCluster(cluster_id=c.cluster_id, url=c.url, images=keys, alts=alts, unreadable=bad,
                                    mean_sim=mean_pairwise_cosine(e)))
        for j, k in enumerate(keys):
            records.append(ImageRecord(key=k, cluster_id=c.cluster_id, caption=captions[start + j], labels=labels[start + j]))
        start += len(keys)
    assert start == len(emb) and (len(owner) == 0 or owner[-1] == max(owner))
    return scored, emb, records
