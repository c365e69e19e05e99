"""Evaluation only: the mined clusters judged against the world's ground truth."""
from __future__ import annotations

import json
from collections import Counter

from suti.tasks.mine.config import TRUTH_PREFIX, WORLD_PREFIX
from suti.tasks.mine.records import MinedCluster


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
