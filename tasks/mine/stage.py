"""The whole stage, plainly (no Prefect): the wiring that `flows/mine.py` runs as tasks."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from suti.tasks.mine.band import calibrate_band, select_clusters
from suti.tasks.mine.config import MineConfig, PREFIX
from suti.tasks.mine.describe import DescriptionMerger, describe_cluster, make_merger
from suti.tasks.mine.outputs import (begin_outputs, count_decisions, fingerprint, finish, load_clusters, mined_done,
                                     prompts_per_cluster, write_clusters, write_manifest, write_prompts)
from suti.tasks.mine.records import Band, Decision, ImageRecord, MinedCluster, ScoredCluster
from suti.tasks.mine.scoring import decode_image, group_by_source, read_pages, score_candidates
from suti.world.scene import stable_seed


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
