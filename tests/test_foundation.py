"""Smoke training of every foundation model: what was saved, what was registered, what
the report says, and that the saved models load and score."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from suti.models.scorers import Scorers
from suti.tasks.foundation import MODELS, load_base_unet


def test_models_saved_and_marked_done(smoke):
    ov, cfg, store = smoke
    for m in MODELS:
        assert store.exists(f"foundation/{m}/model.pt"), m
        meta = store.done_meta(f"foundation/{m}")
        assert meta["steps"] == cfg.foundation[m].steps and meta["seconds"] > 0
    unet = load_base_unet(cfg, store)
    assert unet.config.sample_size == cfg.world.resolution and unet.config.cross_attention_dim == 128


def test_scorers_load_and_score(smoke):
    ov, cfg, store = smoke
    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    ims = store.get_array("world/pretrain/images.npy")[:6]
    e = sc.image_embed(ims)
    assert e.shape[0] == 6 and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    assert sc.identity_embed(ims).shape[0] == 6
    caps = sc.caption(ims)
    assert len(caps) == 6 and all(c.startswith("a ") for c in caps)
    assert sc.clip_t(ims, caps).shape == (6,)


def test_registered_in_mlflow(smoke):
    import mlflow

    ov, cfg, store = smoke
    mlflow.set_tracking_uri(cfg.tracking.uri)
    mlflow.set_registry_uri(cfg.tracking.uri)  # other tests point the process-wide registry elsewhere
    client = mlflow.MlflowClient()
    for m in MODELS:
        versions = client.search_model_versions(f"name='suti-{m}'")
        assert versions, m
        assert versions[0].run_id == json.loads((Path(cfg.reports_dir) / "foundation.json").read_text())["mlflow_run_id"] \
            or len(versions) > 1
    model = mlflow.pytorch.load_model("models:/suti-identity/1")
    assert sum(p.numel() for p in model.parameters()) > 0


def test_report_has_every_check(smoke):
    ov, cfg, store = smoke
    rep = json.loads((Path(cfg.reports_dir) / "foundation.json").read_text())
    assert 0 <= rep["clip"]["retrieval_top1"] <= 1
    assert "margin" in rep["identity"]
    assert {"class_acc", "context_acc"} <= set(rep["rater"])
    assert {"class_acc", "clip_t", "real_clip_t"} <= set(rep["base"])
    assert {"class_acc", "clip_t"} <= set(rep["untrained"])
    assert set(rep["seconds"]) >= {"clip", "identity", "rater", "base", "total"}
    assert store.exists("foundation/examples/base_samples.png")


def test_rerun_reuses_finished_models(smoke):
    from suti.flows.foundation import foundation_flow

    ov, cfg, store = smoke
    rep = foundation_flow(overrides=ov)
    assert set(rep["reused"]) == set(MODELS)
