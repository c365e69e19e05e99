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

from suti.tasks.mine.config import (MineConfig, PREFIX, REASONS, TRUTH_PREFIX, WORLD_PREFIX, load_callable,
                                    torch_threads)
from suti.tasks.mine.records import (Band, Candidate, Decision, ImageRecord, MergedDescription, MinedCluster,
                                     PageImage, ScoredCluster)
from suti.tasks.mine.scoring import (cluster_id_for, decode_image, group_by_source, load_images,
                                     mean_pairwise_cosine, read_pages, score_candidates, source_key)
from suti.tasks.mine.band import calibrate_band, calibrate_from_records, select_clusters
from suti.tasks.mine.describe import (CLASS_WORDS, DescriptionMerger, LLMDescriptionMerger, LLM_MERGE_PROMPT,
                                      RuleDescriptionMerger, brand_from_alts, demo_text, describe_cluster,
                                      make_merger, subject_phrase)
from suti.tasks.mine.outputs import (begin_outputs, cluster_grid, count_decisions, fingerprint, finish,
                                     load_clusters, load_prompts, mined_done, prompts_per_cluster, shard_key,
                                     write_clusters, write_manifest, write_prompts)
from suti.tasks.mine.truth import check_against_truth

__all__ = ["Band", "CLASS_WORDS", "Candidate", "Decision", "DescriptionMerger", "ImageRecord",
           "LLMDescriptionMerger", "LLM_MERGE_PROMPT", "MergedDescription", "MineConfig",
           "MinedCluster", "PREFIX", "PageImage", "REASONS", "RuleDescriptionMerger", "ScoredCluster",
           "TRUTH_PREFIX", "WORLD_PREFIX", "begin_outputs", "brand_from_alts", "calibrate_band",
           "calibrate_from_records", "check_against_truth", "cluster_grid", "cluster_id_for", "count_decisions",
           "decode_image", "demo_text", "describe_cluster", "fingerprint", "finish", "group_by_source",
           "load_callable", "load_clusters", "load_images", "load_prompts", "make_merger", "mean_pairwise_cosine",
           "mined_done", "prompts_per_cluster", "read_pages", "score_candidates", "select_clusters",
           "shard_key", "source_key", "subject_phrase", "torch_threads", "write_clusters", "write_manifest",
           "write_prompts"]
