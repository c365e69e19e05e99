"""Step 6: sharded clusters, prompts and manifest, the done marker last; readers of them."""
from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from dataclasses import asdict

from suti import keys as K
from suti.store import digest
from suti.tasks.mine.config import MineConfig, PREFIX
from suti.tasks.mine.records import Band, Decision, MinedCluster, ScoredCluster
from suti.tasks.mine.scoring import decode_image


# ---------------------------------------------------------------- 6. outputs

def fingerprint(cfg, store, mc: MineConfig) -> str:
    """What the mined outputs depend on: mining options, prompts per cluster, seed, the world
    (its manifest digest) and the scorers (their training markers)."""
    world = store.get_json("world/manifest.json")["report"].get("sha256") if store.exists("world/manifest.json") else None
    scorers = {m: store.done_meta(K.foundation_done(m)) for m in ("clip", "rater")}
    parts = {"mine": asdict(mc), "prompts_per_cluster": prompts_per_cluster(cfg), "seed": int(cfg.seed),
             "resolution": int(cfg.world.resolution), "clip": str(cfg.backbone.clip_config), "world": world,
             "scorers": scorers, "pages": hashlib.sha256(store.get_bytes("world/pages.jsonl")).hexdigest()}
    return digest(parts)


def prompts_per_cluster(cfg) -> int:
    return int(cfg.expert.prompts_per_cluster)


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
