"""Cluster mining: the first stage of SuTI's data engine. Plain functions; the Prefect flow
in `flows/mine.py` only wires them.

The paper groups WebLI's (image, alt-text) pairs by source URL, drops clusters with fewer
than 3 images and keeps those whose mean intra-cluster CLIP image similarity lies in
[0.82, 0.98] (below: different subjects; above: near duplicates); then it captions every
image and merges the alt-texts (brands, names) with the generic captions into one subject
description. Here:

1. `group_by_source`: one candidate cluster per normalised source (URL host + path).
2. `score_candidates`: decode every image robustly (a corrupt or wrong-size image is
   skipped, logged and counted), embed with CLIP, caption + label with the captioner, and
   the mean over distinct pairs of CLIP image cosines per cluster.
3. `calibrate_band`: our tiny CLIP's similarity scale differs from ViT-L/14's, so the band
   comes from an unsupervised rule (no ground truth; see its docstring) unless
   `mine.band` fixes it.
4. `select_clusters`, then `describe_cluster` through a `DescriptionMerger` (rule-based by
   default, any `complete(prompt) -> str` LLM pluggable).
5. `write_outputs`: sharded clusters + manifest + prompts, then the done marker, last.

Store layout under `mine/`:
  clusters/shard-00000.jsonl   one mined cluster per line (`MinedCluster`)
  manifest.json                shards, counts, band + calibration
  prompts.jsonl                unseen prompts per cluster (tasks/prompts.py)
  work/embeddings.npy          CLIP image embeddings of every readable image
  work/images.jsonl            per readable image: key, cluster, caption, predicted labels
  examples/clusters.png        a grid a person can look at
  _DONE.json                   written last: fingerprint of the config and inputs

Ground truth (`world/truth/*`) is read only by `check_against_truth`, the report's
evaluation of the mined clusters, never by a pipeline step.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import re
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel

from suti.store import digest
from suti.world import vocab as V
from suti.world.scene import Subject, appearance_phrase, compose, stable_seed

log = logging.getLogger("suti.mine")

PREFIX = "mine"
WORLD_PREFIX = "world/"
TRUTH_PREFIX = "world/truth/"
REASONS = ("kept", "too_small", "below_band", "above_band")


# ---------------------------------------------------------------- config

@dataclass
class MineConfig:
    """Options of the `mine` config key (defaults here; `conf/mine/default.yaml` mirrors them)."""
    band: list[float] | None = None  # [lo, hi] on the mean intra-cluster CLIP cosine; None = calibrate
    min_images: int = 3  # the paper drops clusters with fewer readable images
    shard_size: int = 256  # clusters per output shard
    null_pairs: int = 20000  # random cross-page image pairs (different subjects) for the calibration
    null_clusters: int = 2000  # random pseudo-clusters of images from different pages
    null_quantile: float = 0.99  # lo = this quantile of the pseudo-cluster means (the statistic we threshold)
    dup_images: int = 500  # images copied with tiny pixel noise for the near-duplicate level
    dup_noise: int = 6  # +- pixel noise of a near-identical copy (re-encoding, mirroring)
    dup_quantile: float = 0.01  # hi = this quantile of the copy-pair cosines ...
    dup_margin: float = 0.02  # ... minus this fraction of its gap to the median random pair (scale-free)
    merger: str = "rule"  # rule | llm  (llm: `llm_complete` names the client)
    prompt_writer: str = "template"  # template | llm
    llm_complete: str | None = None  # "module:function", a complete(prompt: str) -> str; no network in our code
    batch_size: int = 256  # images per scorer batch
    threads: int = 1  # torch threads while scoring: tiny models need no more, and on a busy machine
    #                   more threads than free cores stall inference (40x slower measured)

    @classmethod
    def from_cfg(cls, cfg) -> "MineConfig":
        """Defaults overridden by `cfg.mine` (absent keys keep their defaults)."""
        from omegaconf import OmegaConf

        node = cfg.get("mine", None) if cfg is not None else None
        given = OmegaConf.to_container(node, resolve=True) if node is not None and not isinstance(node, dict) else dict(node or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(given) - known
        if unknown:
            from suti.config import ConfigError

            raise ConfigError(f"unknown mine option(s) {', '.join(sorted(unknown))} (choose from {', '.join(sorted(known))})")
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


# ---------------------------------------------------------------- records

class PageImage(BaseModel):
    key: str  # world-relative key, "web/<page>/<k>.png"
    alt: str = ""


class Candidate(BaseModel):
    """One candidate cluster: every (image, alt-text) pair of one source."""
    cluster_id: str
    source: str  # host + path: the grouping key
    url: str  # first URL seen for this source
    pages: list[str]
    images: list[PageImage]


class ScoredCluster(BaseModel):
    """A candidate after decoding and embedding its images."""
    cluster_id: str
    url: str
    images: list[str]  # store keys of the readable images ("world/web/p00012/0.png")
    alts: list[str]  # their alt-texts
    unreadable: int = 0  # images skipped (corrupt, undecodable, wrong size, missing)
    mean_sim: float | None = None  # mean CLIP cosine over distinct pairs (None below 2 images)


class Band(BaseModel):
    lo: float
    hi: float
    auto: bool  # True when calibrated, False when mine.band fixed it
    rule: str
    calibration: dict


class Decision(BaseModel):
    cluster_id: str
    reason: Literal["kept", "too_small", "below_band", "above_band"]
    images: int
    mean_sim: float | None = None


class ImageRecord(BaseModel):
    """What the captioner made of one readable image."""
    key: str
    cluster_id: str
    caption: str
    labels: dict


class MergedDescription(BaseModel):
    description: str  # "Zorvex blue backpack with red stripes"
    brand: str = ""  # "" when no name recurs
    class_word: str  # "backpack"
    attributes: dict = {}  # cls / body / accent / pattern keys when known (prompts edit them)


class MinedCluster(BaseModel):
    cluster_id: str
    url: str
    images: list[str]
    texts: list[str]  # one demo text per image
    description: str
    class_word: str
    brand: str
    mean_sim: float
    attributes: dict = {}


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


# ---------------------------------------------------------------- 3. the band

def _near_duplicate(img: np.ndarray, rng: np.random.Generator, noise: int) -> np.ndarray:
    """A near-identical copy: small pixel noise, as re-encoding or a mirror site leaves."""
    d = rng.integers(-noise, noise + 1, img.shape)
    return np.clip(img.astype(np.int32) + d, 0, 255).astype(np.uint8)


def calibrate_band(emb: np.ndarray, image_cluster: np.ndarray, cluster_sizes: list[int], images: np.ndarray | None,
                   scorers, mc: MineConfig, seed: int) -> Band:
    """The similarity band for this CLIP, without ground truth.

    lo: images from different pages show different subjects (a web page is one product, a
    random pair of pages is two). Pseudo-clusters of k images drawn from k different
    candidate clusters (k follows the candidate size distribution, >= min_images) give the
    null distribution of the very statistic we threshold (a mean over pairs), and
    lo = its `null_quantile`. Single random pairs are recorded too.
    hi: near-identical copies (pixel noise +-dup_noise) of random images give the
    near-duplicate level d (their `dup_quantile` cosine); hi sits just below it:
    hi = d - dup_margin * (d - median random pair), a margin in the scorer's own scale.
    With `mine.band` set, that band is used and the numbers are still recorded.
    """
    rng = np.random.default_rng(stable_seed("mine-calibration", seed))
    n = len(emb)
    cal: dict = {"images": int(n)}
    random_median = 0.0
    owners = np.asarray(image_cluster)
    if n >= 4 and len(set(owners.tolist())) >= 3:
        a, b = rng.integers(0, n, mc.null_pairs), rng.integers(0, n, mc.null_pairs)
        ok = owners[a] != owners[b]
        pair = (emb[a[ok]] * emb[b[ok]]).sum(1)
        cal["random_pairs"] = _summary(pair, (0.5, 0.9, 0.95, 0.99))
        random_median = float(np.median(pair))
        by_owner: dict[int, list[int]] = {}
        for i, o in enumerate(owners.tolist()):
            by_owner.setdefault(o, []).append(i)
        groups = list(by_owner.values())
        sizes = [s for s in cluster_sizes if s >= mc.min_images] or [mc.min_images]
        means = []
        for _ in range(mc.null_clusters):
            k = min(int(rng.choice(sizes)), len(groups))
            picks = rng.choice(len(groups), size=k, replace=False)
            idx = [groups[int(g)][int(rng.integers(len(groups[int(g)])))] for g in picks]
            means.append(mean_pairwise_cosine(emb[idx]))
        means = np.asarray(means)
        cal["pseudo_cluster_means"] = _summary(means, (0.5, 0.9, 0.95, 0.99, 0.999))
        lo = float(np.quantile(means, mc.null_quantile))
    else:
        lo = 0.0
        cal["note"] = "too few images to calibrate lo; lo = 0"
    if images is not None and len(images):
        idx = rng.choice(len(images), size=min(mc.dup_images, len(images)), replace=False)
        orig = images[idx]
        copies = np.stack([_near_duplicate(im, rng, mc.dup_noise) for im in orig])
        with torch_threads(mc.threads):
            e0, e1 = scorers.image_embed(orig), scorers.image_embed(copies)
        dup = (e0 * e1).sum(1)
        cal["near_duplicate_pairs"] = _summary(dup, (0.001, 0.01, 0.05, 0.5))
        level = float(np.quantile(dup, mc.dup_quantile))
        hi = level - mc.dup_margin * max(level - random_median, 0.0)
    else:
        hi = 1.0
    hi = min(hi, 1.0)
    if hi <= lo:  # a degenerate scorer (e.g. untrained): keep the band ordered, say so
        cal["warning"] = f"calibrated hi {hi:.4f} <= lo {lo:.4f}; band collapsed to [lo, lo + 1e-3]"
        hi = lo + 1e-3
    rule = (f"lo = q{mc.null_quantile:g} of mean cosine of {mc.null_clusters} pseudo-clusters drawn from different "
            f"pages; hi = d - {mc.dup_margin:g} * (d - median random-pair cosine), d = q{mc.dup_quantile:g} of "
            f"cosine(image, copy with +-{mc.dup_noise} px noise)")
    cal.update(auto_band=[round(lo, 6), round(hi, 6)], null_quantile=mc.null_quantile, dup_quantile=mc.dup_quantile,
               dup_margin=mc.dup_margin, dup_noise=mc.dup_noise)
    if mc.band is not None:
        return Band(lo=mc.band[0], hi=mc.band[1], auto=False, rule="mine.band (config)", calibration=cal)
    return Band(lo=lo, hi=hi, auto=True, rule=rule, calibration=cal)


def _summary(x: np.ndarray, qs) -> dict:
    x = np.asarray(x, dtype=np.float64)
    out = {"n": int(len(x)), "mean": round(float(x.mean()), 6), "std": round(float(x.std()), 6)}
    out.update({f"q{q:g}": round(float(np.quantile(x, q)), 6) for q in qs})
    return out


# ---------------------------------------------------------------- 4. selection

def select_clusters(scored: list[ScoredCluster], band: Band, min_images: int = 3) -> list[Decision]:
    """Keep clusters with >= min_images readable images and mean similarity in [lo, hi]."""
    out = []
    for s in scored:
        n = len(s.images)
        if n < min_images or s.mean_sim is None:
            reason = "too_small"
        elif s.mean_sim < band.lo:
            reason = "below_band"
        elif s.mean_sim > band.hi:
            reason = "above_band"
        else:
            reason = "kept"
        out.append(Decision(cluster_id=s.cluster_id, reason=reason, images=n, mean_sim=s.mean_sim))
    return out


# ---------------------------------------------------------------- 5. descriptions

def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


# Words a shop's alt-text uses that are not a name: the world's whole vocabulary plus shop talk.
GENERIC_WORDS: frozenset[str] = frozenset(
    w for phrase in [*(c[0] for c in V.CLASSES.values()), *V.CLASS_KEYS, *V.COLOUR_KEYS, *V.PATTERNS,
                     *V.PATTERN_PHRASE.values(), *V.CONTEXTS.values(), *V.CONTEXT_KEYS, *V.EDITS.values(),
                     *V.ACCESSORIES.values(), *V.STYLES.values(), *V.VIEWS.values(),
                     "the a an new buy online by for sale shop store official product products photo image img picture "
                     "studio shot view of with and in on at our best top edition collection original classic gift"]
    for w in _words(phrase))
CLASS_WORDS = {v[0]: k for k, v in V.CLASSES.items()}  # "teddy bear" -> "plushie"
_CONTEXT_PHRASES = sorted((p for p in V.CONTEXTS.values() if p), key=len, reverse=True)


def brand_from_alts(alts: list[str], url: str = "") -> str:
    """The name a cluster's alt-texts keep repeating: capitalised tokens that are not generic
    vocabulary, counted once per alt-text; the URL (host + path) breaks ties and may confirm a
    name seen once. '' when nothing recurs."""
    counts: Counter = Counter()
    first: dict[str, str] = {}
    for alt in alts:
        seen = set()
        for tok in re.findall(r"[A-Za-z][A-Za-z0-9'&]*", alt or ""):
            low = tok.lower()
            if tok[0].isupper() and low not in GENERIC_WORDS and len(low) > 1 and low not in seen:
                seen.add(low)
                counts[low] += 1
                first.setdefault(low, tok)
    if not counts:
        return ""
    url_words = set(_words(source_key(url))) if url else set()
    best = max(counts, key=lambda w: (counts[w] + (0.5 if w in url_words else 0.0), -list(first).index(w)))
    if counts[best] >= 2 or best in url_words or len(alts) == 1:
        return first[best][0].upper() + first[best][1:]
    return ""


def _alt_mentions(alts: list[str], vocab: dict[str, str]) -> list[str]:
    """Vocabulary keys mentioned by alt-texts (context phrases removed first: 'pink fabric'
    is a background, not the product's colour), one vote per alt-text."""
    out = []
    for alt in alts:
        low = " " + " ".join(_words(alt)) + " "
        for phrase in _CONTEXT_PHRASES:
            low = low.replace(" " + " ".join(_words(phrase)) + " ", " ")
        hits = [key for word, key in vocab.items() if f" {word} " in low]
        if len(hits) == 1:  # an alt-text naming two classes/colours says nothing certain
            out.append(hits[0])
    return out


def _majority(votes: list[str], default: str) -> str:
    if not votes:
        return default
    c = Counter(votes)
    top = max(c.values())
    return next(v for v in votes if c[v] == top)  # ties: first seen, deterministic


def subject_phrase(attributes: dict, brand: str, edits: tuple[str, ...] = ()) -> str:
    """'Zorvex blue backpack with red stripes'; with edits ('shiny', 'red', 'cube') the
    edit words lead and a colour edit replaces the body colour: 'red Zorvex backpack with ...'."""
    subj = Subject(id="", cls=attributes["cls"], body=attributes["body"], accent=attributes["accent"],
                   pattern=attributes["pattern"], w=1.0, h=1.0, variant=0, brand=brand)
    colour = [e for e in edits if e in ("red", "purple")]
    lead = [V.EDITS[e] for e in edits if e not in ("red", "purple")] + colour
    plain = appearance_phrase(subj, colours=True)  # "blue backpack with red stripes"
    if colour:
        plain = plain[len(subj.body) + 1:]  # drop the body colour: the edit names the new one
    return " ".join([*lead, *([brand] if brand else []), plain])


@runtime_checkable
class DescriptionMerger(Protocol):
    """Merges a cluster's alt-texts and generic captions into one subject description."""

    def merge(self, url: str, alts: list[str], captions: list[str], labels: list[dict]) -> MergedDescription: ...


class RuleDescriptionMerger:
    """Brand = the capitalised non-generic name the alt-texts repeat; class, colours and pattern
    = majority votes of the captioner's per-image labels plus what alt-texts say outright
    ('Zorvex backpack - blue'). Output: 'Zorvex blue backpack with red stripes'."""

    def __init__(self, alt_weight: int = 3):
        self.alt_weight = alt_weight  # votes per alt-text naming the class/colour (the shop knows its product)

    def merge(self, url: str, alts: list[str], captions: list[str], labels: list[dict]) -> MergedDescription:
        brand = brand_from_alts(alts, url)
        w = self.alt_weight
        cls = _majority([d["cls"] for d in labels] + _alt_mentions(alts, CLASS_WORDS) * w, V.CLASS_KEYS[0])
        body = _majority([d["body"] for d in labels] + _alt_mentions(alts, {c: c for c in V.COLOUR_KEYS}) * w,
                         V.COLOUR_KEYS[0])
        accents = [d["accent"] for d in labels if d["accent"] != body]
        accent = _majority(accents, next(c for c in V.COLOUR_KEYS if c != body))
        pattern = _majority([d["pattern"] for d in labels], "plain")
        attrs = {"cls": cls, "body": body, "accent": accent, "pattern": pattern}
        return MergedDescription(description=subject_phrase(attrs, brand), brand=brand, class_word=V.CLASSES[cls][0],
                                 attributes=attrs)


LLM_MERGE_PROMPT = """You write one short product description for a text-to-image dataset.
The same product appears in several web images. Their alt-texts (written by the shop, they
name the brand) and generic captions (written by a captioner, they describe the look but
never know the brand) are below. Write ONE noun phrase that keeps the brand or name exactly
as spelled in the alt-texts and adds the class, main colour and pattern from the captions,
e.g. "Zorvex blue backpack with red stripes". Answer with the phrase only.

Page: {url}
Alt-texts:
{alts}
Captions:
{captions}
Description:"""


class LLMDescriptionMerger:
    """The same merge asked of any LLM through `complete(prompt) -> str` (no client or network
    here: pass one in). The rule-based merge supplies brand, class word and attributes and
    is the fallback when the answer is empty or drops the brand."""

    def __init__(self, complete: Callable[[str], str], fallback: DescriptionMerger | None = None):
        self.complete = complete
        self.fallback = fallback or RuleDescriptionMerger()

    def merge(self, url: str, alts: list[str], captions: list[str], labels: list[dict]) -> MergedDescription:
        base = self.fallback.merge(url, alts, captions, labels)
        prompt = LLM_MERGE_PROMPT.format(url=url, alts="\n".join(f"- {a}" for a in alts),
                                         captions="\n".join(f"- {c}" for c in captions))
        answer = _first_line(self.complete(prompt))
        if not answer or (base.brand and base.brand.lower() not in answer.lower()):
            return base
        return base.model_copy(update={"description": answer})


def _first_line(text: str | None) -> str:
    for line in (text or "").splitlines():
        line = line.strip().strip('"').strip("'").strip()
        if line.lower().startswith("description:"):
            line = line.split(":", 1)[1].strip()
        if line:
            return line.rstrip(".")
    return ""


def make_merger(mc: MineConfig) -> DescriptionMerger:
    if mc.merger == "llm":
        return LLMDescriptionMerger(load_callable(mc.llm_complete))
    return RuleDescriptionMerger()


def demo_text(description: str, labels: dict) -> str:
    """The text beside one demonstration image: the description in the image's predicted
    context, view, accessories and style ('a Zorvex blue backpack ... on the beach')."""
    ctx = labels.get("context", "studio")
    return compose(description, ctx if ctx in V.CONTEXTS else "studio", labels.get("view", "front"),
                   tuple(a for a in labels.get("accessories", []) if a in V.ACCESSORIES), labels.get("style", "photo"))


def describe_cluster(s: ScoredCluster, records: list[ImageRecord], merger: DescriptionMerger) -> MinedCluster:
    """One kept cluster -> its mined record (description, per-image texts, class word, brand)."""
    by_key = {r.key: r for r in records}
    recs = [by_key[k] for k in s.images]
    m = merger.merge(s.url, s.alts, [r.caption for r in recs], [r.labels for r in recs])
    return MinedCluster(cluster_id=s.cluster_id, url=s.url, images=list(s.images),
                        texts=[demo_text(m.description, r.labels) for r in recs], description=m.description,
                        class_word=m.class_word, brand=m.brand, mean_sim=round(float(s.mean_sim), 6),
                        attributes=m.attributes)


# ---------------------------------------------------------------- 6. outputs

def fingerprint(cfg, store, mc: MineConfig) -> str:
    """What the mined outputs depend on: mining options, prompts per cluster, seed, the world
    (its manifest digest) and the scorers (their training markers)."""
    world = store.get_json("world/manifest.json")["report"].get("sha256") if store.exists("world/manifest.json") else None
    scorers = {m: store.done_meta(f"foundation/{m}") for m in ("clip", "rater")}
    parts = {"mine": asdict(mc), "prompts_per_cluster": prompts_per_cluster(cfg), "seed": int(cfg.seed),
             "resolution": int(cfg.world.resolution), "clip": str(cfg.backbone.clip_config), "world": world,
             "scorers": scorers, "pages": hashlib.sha256(store.get_bytes("world/pages.jsonl")).hexdigest()}
    return digest(parts)


def prompts_per_cluster(cfg) -> int:
    return int(cfg.get("expert", {}).get("prompts_per_cluster", 4) or 4)


def shard_key(i: int) -> str:
    return f"{PREFIX}/clusters/shard-{i:05d}.jsonl"


def begin_outputs(store) -> None:
    """Before writing: drop the marker first (a half-rewritten output is never 'done'), then the old files."""
    if store.exists(f"{PREFIX}/_DONE.json"):
        store.delete(f"{PREFIX}/_DONE.json")
    for sub in ("clusters", "manifest.json", "prompts.jsonl"):
        if store.exists(f"{PREFIX}/{sub}") or store.list(f"{PREFIX}/{sub}"):
            store.delete(f"{PREFIX}/{sub}")


def write_clusters(store, clusters: list[MinedCluster], shard_size: int) -> list[str]:
    shards = []
    for i in range(0, max(len(clusters), 1), shard_size):
        key = shard_key(len(shards))
        store.put_bytes(key, "".join(c.model_dump_json() + "\n" for c in clusters[i:i + shard_size]).encode())
        shards.append(key)
    return shards


def write_prompts(store, prompts: dict[str, list[dict]]) -> str:
    key = f"{PREFIX}/prompts.jsonl"
    store.put_bytes(key, "".join(json.dumps({"cluster_id": cid, "prompts": ps}) + "\n" for cid, ps in prompts.items()).encode())
    return key


def write_manifest(store, shards: list[str], clusters: int, band: Band, counts: dict, fp: str) -> dict:
    m = {"shards": shards, "clusters": clusters, "band": [band.lo, band.hi], "band_auto": band.auto,
         "band_rule": band.rule, "calibration": band.calibration, "counts": counts, "prompts": f"{PREFIX}/prompts.jsonl",
         "fingerprint": fp}
    store.put_json(f"{PREFIX}/manifest.json", m)
    return m


def finish(store, fp: str, clusters: int, counts: dict) -> None:
    """The done marker, written last."""
    store.mark_done(PREFIX, {"fingerprint": fp, "clusters": clusters, "counts": counts})


def mined_done(store, fp: str) -> dict | None:
    """The manifest when finished mining with this fingerprint is in the store."""
    meta = store.done_meta(PREFIX)
    if meta is None or meta.get("fingerprint") != fp:
        return None
    return store.get_json(f"{PREFIX}/manifest.json")


def load_clusters(store) -> list[MinedCluster]:
    """The mined clusters (for later stages). Refuses an unfinished mining output."""
    from suti.store import StoreError

    if not store.is_done(PREFIX):
        raise StoreError(f"no finished mining output in {store.url(PREFIX)}: run `suti mine` first")
    m = store.get_json(f"{PREFIX}/manifest.json")
    out = []
    for key in m["shards"]:
        out += [MinedCluster.model_validate_json(x) for x in store.get_bytes(key).decode().splitlines() if x.strip()]
    return out


def load_prompts(store) -> dict[str, list[dict]]:
    """cluster_id -> prompt records (for later stages)."""
    from suti.store import StoreError

    if not store.is_done(PREFIX):
        raise StoreError(f"no finished mining output in {store.url(PREFIX)}: run `suti mine` first")
    rows = [json.loads(x) for x in store.get_bytes(f"{PREFIX}/prompts.jsonl").decode().splitlines() if x.strip()]
    return {r["cluster_id"]: r["prompts"] for r in rows}


def count_decisions(pages: int, candidates: int, scored: list[ScoredCluster], decisions: list[Decision]) -> dict:
    c = Counter(d.reason for d in decisions)
    return {"pages": pages, "candidate_clusters": candidates, "images": sum(len(s.images) + s.unreadable for s in scored),
            "unreadable_images": sum(s.unreadable for s in scored),
            "clusters_with_unreadable_images": sum(1 for s in scored if s.unreadable),
            "dropped": {"too_small": c["too_small"], "below_band": c["below_band"], "above_band": c["above_band"]},
            "kept": c["kept"]}


def cluster_grid(store, clusters: list[MinedCluster], rows: int = 6, cols: int = 8, scale: int = 3) -> bytes:
    """PNG: one row per cluster (its first images) with its description on the right."""
    from PIL import Image, ImageDraw

    picked = clusters[:rows]
    if not picked:
        im = Image.new("RGB", (400, 40), (255, 255, 255))
        ImageDraw.Draw(im).text((8, 12), "no clusters kept", fill=(0, 0, 0))
    else:
        ims = [[decode_image(store.get_bytes(k), _res(store, k)) for k in c.images[:cols]] for c in picked]
        r = ims[0][0].shape[0] * scale
        pad, text_w = 2, 460
        im = Image.new("RGB", (cols * (r + pad) + pad + text_w, len(picked) * (r + pad) + pad), (255, 255, 255))
        d = ImageDraw.Draw(im)
        for i, (c, row) in enumerate(zip(picked, ims)):
            y = pad + i * (r + pad)
            for j, a in enumerate(row):
                im.paste(Image.fromarray(a).resize((r, r), Image.NEAREST), (pad + j * (r + pad), y))
            d.text((cols * (r + pad) + 8, y + r // 2 - 12), c.description[:70], fill=(0, 0, 0))
            d.text((cols * (r + pad) + 8, y + r // 2 + 2), f"{c.cluster_id}  mean sim {c.mean_sim:.3f}", fill=(90, 90, 90))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def _res(store, key: str) -> int:
    from PIL import Image

    with Image.open(io.BytesIO(store.get_bytes(key))) as im:
        return im.size[0]


# ---------------------------------------------------------------- the whole stage, plainly

@dataclass
class MineResult:
    manifest: dict
    clusters: list[MinedCluster] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    reused: bool = False


def mine_corpus(cfg, store, force: bool = False, warn=None, merger: DescriptionMerger | None = None,
                writer=None) -> MineResult:
    """Mine `store`'s web pages end to end (no Prefect): what `flows/mine.py` wires as tasks.
    Reuses a finished output with the same fingerprint unless `force`."""
    from suti.models.scorers import Scorers
    from suti.tasks.prompts import make_writer, write_all_prompts

    mc = MineConfig.from_cfg(cfg)
    fp = fingerprint(cfg, store, mc)
    if not force and (m := mined_done(store, fp)) is not None:
        return MineResult(manifest=m, clusters=load_clusters(store), reused=True)
    pages = read_pages(store)
    candidates = group_by_source(pages)
    scorers = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    scored, emb, records = score_candidates(store, scorers, candidates, int(cfg.world.resolution), warn, mc.batch_size,
                                            mc.threads)
    band = calibrate_from_records(store, scorers, scored, emb, records, mc, int(cfg.seed), int(cfg.world.resolution))
    decisions = select_clusters(scored, band, mc.min_images)
    kept_ids = {d.cluster_id for d in decisions if d.reason == "kept"}
    merger = merger or make_merger(mc)
    clusters = [describe_cluster(s, records, merger) for s in scored if s.cluster_id in kept_ids]
    counts = count_decisions(len(pages), len(candidates), scored, decisions)
    prompts = write_all_prompts(clusters, prompts_per_cluster(cfg), int(cfg.seed), writer or make_writer(mc))
    begin_outputs(store)
    store.put_array(f"{PREFIX}/work/embeddings.npy", emb)
    store.put_bytes(f"{PREFIX}/work/images.jsonl", "".join(r.model_dump_json() + "\n" for r in records).encode())
    shards = write_clusters(store, clusters, mc.shard_size)
    write_prompts(store, prompts)
    manifest = write_manifest(store, shards, len(clusters), band, counts, fp)
    finish(store, fp, len(clusters), counts)
    return MineResult(manifest=manifest, clusters=clusters, decisions=decisions)


def calibrate_from_records(store, scorers, scored: list[ScoredCluster], emb: np.ndarray, records: list[ImageRecord],
                           mc: MineConfig, seed: int, resolution: int) -> Band:
    """`calibrate_band` fed from the scoring step's outputs (images for the near-duplicate
    copies are decoded again from the store: a small random sample)."""
    cid_index = {s.cluster_id: i for i, s in enumerate(scored)}
    owners = np.asarray([cid_index[r.cluster_id] for r in records], dtype=np.int64)
    rng = np.random.default_rng(stable_seed("mine-dup-sample", seed))
    pick = rng.choice(len(records), size=min(mc.dup_images, len(records)), replace=False) if records else []
    images = np.stack([decode_image(store.get_bytes(records[int(i)].key), resolution) for i in pick]) if len(pick) else None
    return calibrate_band(emb, owners, [len(s.images) for s in scored], images, scorers, mc, seed)


# ---------------------------------------------------------------- evaluation only

def check_against_truth(store, clusters: list[MinedCluster]) -> dict:
    """EVALUATION ONLY (the report's check; no pipeline step calls it): purity, recall and
    brand retention of the mined clusters, judged by the world's ground truth."""
    labels = [json.loads(x) for x in store.get_bytes(TRUTH_PREFIX + "labels.jsonl").decode().splitlines() if x.strip()]
    subjects = {s["id"]: s for s in (json.loads(x) for x in store.get_bytes(TRUTH_PREFIX + "subjects.jsonl").decode().splitlines()
                                     if x.strip())}
    by_key = {WORLD_PREFIX + lab["key"]: lab for lab in labels}
    page_images: Counter = Counter()
    page_kind: dict[str, str] = {}
    for lab in labels:
        page_images[lab["page"]] += 1
        page_kind[lab["page"]] = lab["kind"]
    true_clusters = {p for p, n in page_images.items() if page_kind[p] == "subject" and n >= 3}
    pure, brand_hits, kept_true, impure_kinds = 0, 0, set(), Counter()
    for c in clusters:
        labs = [by_key[k] for k in c.images if k in by_key]
        sids = {lab["subject_id"] for lab in labs}
        dup = any(lab["near_duplicate"] or lab["kind"] == "duplicate" for lab in labs)
        if len(sids) == 1 and not dup and labs:
            pure += 1
        else:
            impure_kinds[labs[0]["kind"] if labs else "unknown"] += 1
        if labs:
            top = Counter(lab["subject_id"] for lab in labs).most_common(1)[0][0]
            brand = subjects.get(top, {}).get("brand", "")
            if brand and brand.lower() in c.description.lower():
                brand_hits += 1
        kept_true |= {lab["page"] for lab in labs if lab["page"] in true_clusters and len(sids) == 1}
    n = len(clusters)
    return {"purity": pure / n if n else None, "recall": len(kept_true) / len(true_clusters) if true_clusters else None,
            "brand_kept": brand_hits / n if n else None, "true_clusters": len(true_clusters), "kept_true": len(kept_true),
            "impure_by_kind": dict(impure_kinds)}
