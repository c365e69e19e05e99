"""Steps 3 and 4: the similarity band (calibrated without ground truth) and the selection."""
from __future__ import annotations


import numpy as np

from suti.tasks.mine.config import MineConfig, torch_threads
from suti.tasks.mine.records import Band, Decision, ImageRecord, ScoredCluster
from suti.tasks.mine.scoring import decode_image, mean_pairwise_cosine
from suti.world.scene import stable_seed


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
