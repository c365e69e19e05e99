"""Smoke training of every foundation model: what was saved, what was registered, what
the report says, and that the saved models load and score."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

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
    # the checks of these very models are reused too, without registering them again
    import mlflow

    from suti.tracking import setup_tracking

    setup_tracking(cfg)
    versions = {m: len(mlflow.MlflowClient().search_model_versions(f"name='suti-{m}'")) for m in MODELS}
    again = foundation_flow(overrides=ov)
    assert again["checks_reused"] and again["base"] == rep["base"]
    assert versions == {m: len(mlflow.MlflowClient().search_model_versions(f"name='suti-{m}'")) for m in MODELS}
    # a changed recipe is not reused: the rater retrains, the others stay
    changed = foundation_flow(overrides=[*ov, "foundation.rater.shift=1"])
    assert "rater" not in changed["reused"] and set(changed["reused"]) == set(MODELS) - {"rater"}
    assert not changed.get("checks_reused")
    restored = foundation_flow(overrides=ov)  # the session's shared store back to the default recipe
    # the default rater is not trained again: the foundation cache (SUTI_CACHE) kept it
    assert set(restored["reused"]) == set(MODELS) - {"rater"} and restored["cached"] == ["rater"]
    assert restored["seconds"]["rater"] == rep["seconds"]["rater"]


def test_a_second_workdir_takes_the_foundation_from_the_cache(smoke, tmp_path):
    """A user's second workdir trains nothing the first one trained with the same recipe."""
    from conftest import smoke_overrides
    from suti.flows.common import prepare
    from suti.flows.foundation import cache_root, foundation_flow
    from suti.flows.world import world_flow

    ov, cfg, store = smoke
    assert cache_root() is not None and str(cache_root()).startswith(os.environ["SUTI_CACHE"])
    ov2 = smoke_overrides(tmp_path / "second")
    world_flow(overrides=ov2)
    rep = foundation_flow(overrides=ov2)
    assert set(rep["cached"]) == set(MODELS) and rep["reused"] == []
    _, store2 = prepare(ov2)
    for m in MODELS:
        assert store2.get_bytes(f"foundation/{m}/model.pt") == store.get_bytes(f"foundation/{m}/model.pt")
    assert {"clip", "identity", "rater", "base"} <= set(rep) and "checks_reused" not in rep  # checked here


@pytest.mark.slow  # a second smoke world and foundation (~2 min)
def test_two_worker_processes_train_the_foundation_side_by_side(tmp_path, monkeypatch):
    """foundation.processes=2: CLIP then the base, identity then the rater, in two worker
    processes at one thread; the flow marks, caches, checks and registers them as usual."""
    from conftest import smoke_overrides
    from suti import keys as K
    from suti.flows.common import prepare
    from suti.flows.foundation import foundation_flow
    from suti.flows.world import world_flow
    from suti.tasks import foundation as F

    monkeypatch.setenv("SUTI_CACHE", str(tmp_path / "cache"))  # train, do not copy the session's models
    ov = smoke_overrides(tmp_path / "apart", "foundation.processes=2")
    world_flow(overrides=ov)
    rep = foundation_flow(overrides=ov)
    assert rep["cached"] == [] and rep["reused"] == []
    cfg, store = prepare(ov)
    logs = tmp_path / "apart" / "logs"
    for chain in (("clip", "base"), ("identity", "rater")):
        text = (logs / f"foundation-{'-'.join(chain)}.log").read_text()
        for m in chain:
            assert f"trained {m} in" in text
    for m in MODELS:
        assert store.done_meta(K.foundation_done(m))["recipe"] == F.recipe(cfg, m)
        assert rep["seconds"][m] > 0 and rep["loss"][m] == store.done_meta(K.foundation_done(m))["loss"]
    assert set(rep["registered"]) == set(MODELS) and rep["clip"]["retrieval_top1"] >= 0
    assert len(os.listdir(tmp_path / "cache" / "foundation")) == len(MODELS)  # each kept for other workdirs


def test_schedule_comes_from_the_backbone_yaml_only():
    from suti.config import ConfigError, compose
    from suti.models.diffusion import schedule_config

    tiny = compose(["workdir=/tmp/suti-unused"]).backbone
    assert schedule_config(tiny) == {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2",
                                     "prediction_type": "v_prediction"}
    sd = compose(["workdir=/tmp/suti-unused", "backbone=stable-diffusion", "backbone.path=/nowhere"]).backbone
    with pytest.raises(ConfigError, match="beta_schedule"):  # no schedule made up for a backbone that names none
        schedule_config(sd)


def test_training_target_follows_the_prediction_type():
    import torch

    from suti.models.diffusion import diffusion_loss, make_scheduler, training_target

    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    noise = torch.randn(4, 3, 8, 8)
    t = torch.tensor([5, 200, 600, 990])
    for kind in ("epsilon", "v_prediction", "sample"):
        s = make_scheduler("ddpm", prediction_type=kind)
        xt = s.add_noise(x0, noise, t)
        target = training_target(s, x0, noise, t)
        a = s.alphas_cumprod[t].view(-1, 1, 1, 1)
        # whatever the target, x0 comes back from (x_t, target) by the scheduler's own algebra
        if kind == "epsilon":
            rec = (xt - (1 - a).sqrt() * target) / a.sqrt()
        elif kind == "v_prediction":
            rec = a.sqrt() * xt - (1 - a).sqrt() * target
        else:
            rec = target
        assert torch.allclose(rec[:3], x0[:3], atol=1e-3), kind
        assert float(diffusion_loss(s, target, x0, noise, t)) < 1e-10
        assert float(diffusion_loss(s, target + 1, x0, noise, t)) > 0.99


def test_min_snr_weighting_damps_low_noise_steps():
    import torch

    from suti.models.diffusion import diffusion_loss, make_scheduler

    s = make_scheduler("ddpm", prediction_type="v_prediction")
    x0, noise = torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    pred = torch.ones(2, 3, 4, 4)  # the same error at both timesteps
    low, high = torch.tensor([2, 2]), torch.tensor([900, 900])
    plain = float(diffusion_loss(s, pred, x0, noise, low))
    assert float(diffusion_loss(s, pred, x0, noise, low, min_snr_gamma=5)) < 0.1 * plain
    # at high noise (SNR < gamma) v-prediction's Min-SNR weight is SNR / (SNR + 1) < 1, not 0
    w_high = float(diffusion_loss(s, pred, x0, noise, high, min_snr_gamma=5))
    assert 0.0 < w_high < 1.0


def test_rater_jitter_moves_images_within_bounds():
    from suti.models.foundation import jitter

    ims = np.random.default_rng(0).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)
    out = jitter(ims, rng, 2)
    assert out.shape == ims.shape and out.dtype == ims.dtype
    assert not np.array_equal(out, ims)
    assert np.array_equal(jitter(ims, rng, 0), ims)


def test_bf16_mixed_training_runs_the_forward_in_bf16_and_keeps_fp32_weights(monkeypatch):
    """`foundation.<model>.precision`: bf16-mixed autocasts the forward (the rater's convolutions
    compute in bf16), the weights and the optimizer stay fp32; `auto` follows the CPU's bf16
    instructions, and the recipe records the resolved precision, so a model trained in fp32 is
    not reused where auto now means bf16."""
    import torch

    import suti.models.foundation as MF
    from suti.config import compose
    from suti.tasks.foundation import recipe

    torch.manual_seed(0)
    net = MF.RaterNet(width=8)
    seen = []
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    rng = np.random.default_rng(0)
    scenes = [json.loads(line) for line in _pretrain_scene_lines(8)]
    targets = MF.scene_targets(scenes)
    ims = rng.integers(0, 255, (8, 32, 32, 3), dtype=np.uint8)

    def batch(_rng):
        fake = MF.corrupt(ims[:4], _rng)
        return (torch.as_tensor(ims), {k: torch.as_tensor(v) for k, v in targets.items()}, torch.as_tensor(fake),
                torch.cat([torch.ones(8), torch.zeros(4)]))

    before = [p.detach().clone() for p in net.parameters()]
    loss = MF.fit(MF.RaterLit(net, 1e-3, 3), MF.loader(batch, 0), 3, progress=False, precision="bf16-mixed")
    assert np.isfinite(loss)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters()))  # it trained

    for fast, want in ((True, "bf16-mixed"), (False, "32-true")):
        monkeypatch.setattr(MF, "fast_bf16_cpu", lambda fast=fast: fast)
        assert MF.resolve_precision("auto") == want
        cfg = compose(["workdir=/tmp/suti-unused", "foundation.rater.precision=auto"])
        assert recipe(cfg, "rater")["train"]["precision"] == want
    assert MF.resolve_precision("32-true") == "32-true"
    with pytest.raises(ValueError, match="32-true, bf16-mixed, auto"):
        MF.resolve_precision("fp16")


def _pretrain_scene_lines(n: int) -> list[str]:
    """n pre-training scenes as the world stores them (one JSON line each)."""
    from dataclasses import asdict

    from suti.world.scene import make_subject, random_scene

    rng = np.random.default_rng(0)
    scenes = [random_scene(rng, make_subject(rng, f"s{i}")) for i in range(n)]
    return [json.dumps({**sc.labels(), "subject": asdict(sc.subject)}) for sc in scenes]
