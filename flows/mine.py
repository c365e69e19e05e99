"""`suti mine`: mine subject clusters from the synthetic web (group by source, drop small
clusters, keep a calibrated band of mean CLIP similarity, describe with brand), write
unseen prompts per cluster; check purity / recall / brand retention against the world's
truth for the report only.

MLflow metrics of a mining run (stable names): pages, candidate_clusters, kept,
dropped.too_small, dropped.below_band, dropped.above_band, unreadable_images, band.lo,
band.hi, purity, recall, brand_kept, prompts, prompts.<skill>, prompts_repeated_within_cluster,
seconds.<step>.
"""
from __future__ import annotations

import time

from prefect import flow, task, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from suti.flows.common import logger, prepare, write_report
from suti.flows.stages import require
from suti.tasks import mine as M
from suti.tasks.prompts import make_writer, prompt_stats, write_all_prompts
from suti.tracking import log_bytes, log_json, log_metrics, mlflow_run


@task(name="group-candidates", task_run_name="group-pages-by-source", cache_policy=NO_CACHE, retries=2)
def group_task(store) -> tuple[int, list[M.Candidate]]:
    """Read the pages' index and group (image, alt-text) pairs by source host + path."""
    pages = M.read_pages(store)
    return len(pages), M.group_by_source(pages)


@task(name="score-candidates", task_run_name="embed-caption-{n_candidates}-candidates", cache_policy=NO_CACHE)
def score_task(cfg, store, candidates: list[M.Candidate], n_candidates: int) -> list[M.ScoredCluster]:
    """Decode (skip + count unusable images), embed, caption; write the work files."""
    from suti.models.scorers import Scorers

    lg = logger()
    mc = M.MineConfig.from_cfg(cfg)
    scorers = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    scored, emb, records = M.score_candidates(store, scorers, candidates, int(cfg.world.resolution), lg.warning,
                                              mc.batch_size, mc.threads)
    store.put_array(f"{M.PREFIX}/work/embeddings.npy", emb)
    store.put_bytes(f"{M.PREFIX}/work/images.jsonl", "".join(r.model_dump_json() + "\n" for r in records).encode())
    lg.info(f"embedded and captioned {len(records)} images of {n_candidates} candidate clusters "
            f"({sum(s.unreadable for s in scored)} unreadable skipped)")
    return scored


def _records(store) -> list[M.ImageRecord]:
    return [M.ImageRecord.model_validate_json(x) for x in store.get_bytes(f"{M.PREFIX}/work/images.jsonl").decode().splitlines()
            if x.strip()]


@task(name="calibrate-band", task_run_name="calibrate-band-{mode}", cache_policy=NO_CACHE)
def calibrate_task(cfg, store, scored: list[M.ScoredCluster], mode: str) -> M.Band:
    """The similarity band: calibrated without ground truth (or fixed by mine.band)."""
    from suti.models.scorers import Scorers

    mc = M.MineConfig.from_cfg(cfg)
    scorers = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    emb = store.get_array(f"{M.PREFIX}/work/embeddings.npy")
    return M.calibrate_from_records(store, scorers, scored, emb, _records(store), mc, int(cfg.seed),
                                    int(cfg.world.resolution))


@task(name="select-clusters", task_run_name="select-band-{lo:.3f}-{hi:.3f}", cache_policy=NO_CACHE)
def select_task(scored: list[M.ScoredCluster], band: M.Band, lo: float, hi: float, min_images: int) -> list[M.Decision]:
    return M.select_clusters(scored, band, min_images)


@task(name="describe-shard", task_run_name="describe-shard-{shard}", cache_policy=NO_CACHE)
def describe_task(cfg, store, shard: int, clusters: list[M.ScoredCluster]) -> list[M.MinedCluster]:
    """Merge alt-texts and captions into one subject description per kept cluster."""
    merger = M.make_merger(M.MineConfig.from_cfg(cfg))
    ids = {c.cluster_id for c in clusters}
    records = [r for r in _records(store) if r.cluster_id in ids]
    return [M.describe_cluster(c, records, merger) for c in clusters]


@task(name="write-prompts", task_run_name="unseen-prompts-{n}-per-cluster", cache_policy=NO_CACHE)
def prompts_task(cfg, clusters: list[M.MinedCluster], n: int) -> dict[str, list[dict]]:
    return write_all_prompts(clusters, n, int(cfg.seed), make_writer(M.MineConfig.from_cfg(cfg)))


@task(name="write-outputs", task_run_name="write-{n_clusters}-clusters", cache_policy=NO_CACHE, retries=2)
def write_task(store, clusters: list[M.MinedCluster], prompts: dict, band: M.Band, counts: dict, fp: str,
               shard_size: int, n_clusters: int) -> dict:
    """Shards, prompts, grid and manifest, then the done marker, last."""
    shards = M.write_clusters(store, clusters, shard_size)
    M.write_prompts(store, prompts)
    store.put_bytes(f"{M.PREFIX}/examples/clusters.png", M.cluster_grid(store, clusters))
    manifest = M.write_manifest(store, shards, len(clusters), band, counts, fp)
    M.finish(store, fp, len(clusters), counts)
    return manifest


@flow(name="mine", log_prints=True)
def mine_flow(overrides: list[str] | None = None, force: bool = False) -> dict:
    cfg, store = prepare(overrides)
    mc = M.MineConfig.from_cfg(cfg)  # wrong mine options fail before any work
    lg = logger()
    require("foundation", cfg, store, by="mine")
    t_all = time.time()
    fp = M.fingerprint(cfg, store, mc)
    manifest = None if force else M.mined_done(store, fp)
    seconds: dict[str, float] = {}
    if manifest is not None:
        lg.info(f"mining already done with this config ({manifest['clusters']} clusters): reusing it")
        clusters, prompts, rid = M.load_clusters(store), M.load_prompts(store), None
    else:
        M.begin_outputs(store)  # marker first: a half-rewritten output never reads as done
        with mlflow_run(cfg, "mine") as rid:
            t = time.time()
            n_pages, candidates = group_task(store)
            seconds["group"] = round(time.time() - t, 2)
            t = time.time()
            scored = score_task(cfg, store, candidates, len(candidates))
            seconds["score"] = round(time.time() - t, 2)
            t = time.time()
            band = calibrate_task(cfg, store, scored, "config" if mc.band is not None else "auto")
            seconds["calibrate"] = round(time.time() - t, 2)
            decisions = select_task(scored, band, band.lo, band.hi, mc.min_images)
            kept_ids = {d.cluster_id for d in decisions if d.reason == "kept"}
            kept = [s for s in scored if s.cluster_id in kept_ids]
            t = time.time()
            shards = [kept[i:i + mc.shard_size] for i in range(0, len(kept), mc.shard_size)]
            described = describe_task.map(unmapped(cfg), unmapped(store), list(range(len(shards))), shards)
            clusters = [c for part in described.result() for c in part]
            seconds["describe"] = round(time.time() - t, 2)
            t = time.time()
            prompts = prompts_task(cfg, clusters, M.prompts_per_cluster(cfg))
            seconds["prompts"] = round(time.time() - t, 2)
            counts = M.count_decisions(n_pages, len(candidates), scored, decisions)
            manifest = write_task(store, clusters, prompts, band, counts, fp, mc.shard_size, len(clusters))
            create_table_artifact(key="mine-clusters", table=_decision_table(decisions, scored),
                                  description="Candidate clusters kept / dropped, by reason")
    seconds["total"] = round(time.time() - t_all, 2)
    # evaluation only, the report's check: a corpus without the world's truth (a real one) has none
    check = (M.check_against_truth(store, clusters) if store.exists(M.TRUTH_PREFIX + "labels.jsonl")
             else {"purity": None, "recall": None, "brand_kept": None, "skipped": "no world truth in this store"})
    pstats = prompt_stats(prompts)
    report = {
        # the keys our checks read, then the detail
        "clusters_total": manifest["counts"]["candidate_clusters"], "clusters_kept": manifest["counts"]["kept"],
        "prompts_per_skill": pstats["per_skill"],
        "counts": manifest["counts"], "band": manifest["band"], "band_auto": manifest["band_auto"],
        "band_rule": manifest["band_rule"], "calibration": manifest["calibration"],
        "purity": check["purity"], "recall": check["recall"], "brand_kept": check["brand_kept"], "truth_check": check,
        "prompts": {"total": pstats["prompts"], "per_cluster": M.prompts_per_cluster(cfg), "per_skill": pstats["per_skill"],
                    "compositional": pstats["compositional"]},
        "prompts_repeated_within_cluster": pstats["repeated_within_cluster"],
        "shards": len(manifest["shards"]), "fingerprint": fp, "reused": rid is None, "seconds": seconds,
        "examples": [{"cluster_id": c.cluster_id, "description": c.description, "class_word": c.class_word,
                      "texts": c.texts[:2], "prompts": [p["text"] for p in prompts.get(c.cluster_id, [])]}
                     for c in clusters[:5]],
        "store": store.url(M.PREFIX), "grid": store.url(f"{M.PREFIX}/examples/clusters.png"),
        "profile": cfg.profile_name, "mlflow_run_id": rid,
    }
    if rid is not None:
        _log_to_mlflow(rid, report, store)
    path = write_report(cfg, "mine", report)
    create_markdown_artifact(key="mine-report", markdown=_markdown(report), description="Cluster mining")
    c = report["counts"]
    lg.info(f"mine: {c['kept']} of {c['candidate_clusters']} clusters kept (band [{report['band'][0]:.4f}, "
            f"{report['band'][1]:.4f}]), purity {_f(report['purity'])}, recall {_f(report['recall'])}, brand kept "
            f"{_f(report['brand_kept'])}, {pstats['prompts']} prompts; report {path}")
    return report


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _decision_table(decisions: list[M.Decision], scored: list[M.ScoredCluster]) -> list[dict]:
    unreadable = {s.cluster_id: s.unreadable for s in scored}
    rows = []
    for reason in M.REASONS:
        ds = [d for d in decisions if d.reason == reason]
        sims = [d.mean_sim for d in ds if d.mean_sim is not None]
        rows.append({"reason": reason, "clusters": len(ds), "images": sum(d.images for d in ds),
                     "unreadable_images": sum(unreadable[d.cluster_id] for d in ds),
                     "mean_sim_range": f"{min(sims):.3f}..{max(sims):.3f}" if sims else "-"})
    return rows


def _log_to_mlflow(rid: str, report: dict, store) -> None:
    c = report["counts"]
    metrics = {"pages": c["pages"], "candidate_clusters": c["candidate_clusters"], "kept": c["kept"],
               "unreadable_images": c["unreadable_images"], "band.lo": report["band"][0], "band.hi": report["band"][1],
               **{f"dropped.{k}": v for k, v in c["dropped"].items()},
               "prompts": report["prompts"]["total"], "prompts_repeated_within_cluster": report["prompts_repeated_within_cluster"],
               **{f"prompts.{k}": v for k, v in report["prompts"]["per_skill"].items()},
               **{f"seconds.{k}": v for k, v in report["seconds"].items()}}
    for k in ("purity", "recall", "brand_kept"):
        if report[k] is not None:
            metrics[k] = report[k]
    log_metrics(rid, metrics)
    log_json(rid, report, "mine.json")
    log_bytes(rid, store.get_bytes(f"{M.PREFIX}/examples/clusters.png"), "examples", "clusters.png")


def _markdown(r: dict) -> str:
    c = r["counts"]
    lines = [
        f"**Cluster mining** ({'reused' if r['reused'] else 'fresh'})", "",
        "| what | value |", "|---|---|",
        f"| pages / candidate clusters | {c['pages']} / {c['candidate_clusters']} |",
        f"| dropped: too small / below band / above band | {c['dropped']['too_small']} / {c['dropped']['below_band']} / "
        f"{c['dropped']['above_band']} |",
        f"| unreadable images skipped | {c['unreadable_images']} |",
        f"| kept | {c['kept']} |",
        f"| band ({'calibrated' if r['band_auto'] else 'config'}) | [{r['band'][0]:.4f}, {r['band'][1]:.4f}] |",
        f"| purity / recall / brand kept (truth check) | {_f(r['purity'])} / {_f(r['recall'])} / {_f(r['brand_kept'])} |",
        f"| prompts (repeats within a cluster) | {r['prompts']['total']} ({r['prompts_repeated_within_cluster']}) |",
        "", f"Band rule: {r['band_rule']}", "", "Examples:", "",
    ]
    lines += [f"- `{e['cluster_id']}` {e['description']}: " + "; ".join(e["prompts"][:2]) for e in r["examples"]]
    return "\n".join(lines)
