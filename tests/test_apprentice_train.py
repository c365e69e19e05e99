"""Apprentice training, registration and inference on the smoke world.

G(lambda) rows are built from the smoke world's real pages (a page with >= 4 images: its
first image is the target y_s with its alt-text as the prompt, the others are the demos)
and written to `filter/deltas.jsonl` of a temporary store holding a copy of the smoke
world and foundation; `suti train`'s flow trains on it and registers the candidate.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import checkpoint_keys_hold, smoke_overrides
from suti.store import open_store

torch.set_num_threads(2)

TRAIN_OVERRIDES = ("apprentice.source=G", "apprentice.steps=4", "apprentice.checkpoint_every=2", "apprentice.log_every=1",
                   "apprentice.sample_steps=2", "apprentice.grid_rows=2", "apprentice.num_images=2")


# ---------------------------------------------------------------------------- G rows from the world's pages


def rows_from_pages(store, min_images: int = 4) -> list[dict]:
    """Filter-format rows from the world's pages (stand-ins for expert samples)."""
    pages = [json.loads(x) for x in store.get_bytes("world/pages.jsonl").decode().splitlines() if x.strip()]
    rows = []
    for i, page in enumerate(p for p in pages if len(p["images"]) >= min_images):
        target, *demos = page["images"]
        rows.append({"sample_key": f"world/{target['key']}", "cluster_id": page["page"], "prompt": target["alt"],
                     "delta": round(0.01 * (i % 5), 3),  # 0, 0.01, ..., 0.04: lambda sweeps select subsets
                     "demo_keys": [f"world/{d['key']}" for d in demos], "demo_texts": [d["alt"] for d in demos],
                     "description": target["alt"]})
    return rows


def read_rgb(store, key: str) -> np.ndarray:
    return np.asarray(Image.open(store.local_path(key)).convert("RGB"))


def write_G(store, rows: list[dict]) -> None:
    store.put_bytes("filter/deltas.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    store.mark_done("filter", {"rows": len(rows)})


def copy_world(smoke_store, dest_root: Path) -> None:
    """The smoke world + foundation (not other stages' outputs) into a fresh store folder."""
    for part in ("world", "foundation"):
        shutil.copytree(smoke_store.root / part, dest_root / part)


_TRAINED: dict = {}


def trained_world(smoke, tmp_path_factory) -> dict:
    """Train + register the apprentice once per session (shared with test_generate_cli.py)."""
    if "world" in _TRAINED:
        return _TRAINED["world"]
    _, _, smoke_store = smoke
    wd = tmp_path_factory.mktemp("apprentice")
    copy_world(smoke_store, wd / "store")
    ov = smoke_overrides(wd, f"tracking.artifact_location=file://{wd}/mlartifacts", *TRAIN_OVERRIDES)
    from suti.flows.common import prepare
    from suti.flows.train import train_flow

    cfg, store = prepare(ov)
    rows = rows_from_pages(store)
    write_G(store, rows)
    report = train_flow(overrides=ov, lam=None)
    _TRAINED["world"] = {"overrides": ov, "cfg": cfg, "store": store, "rows": rows, "report": report, "workdir": wd}
    return _TRAINED["world"]


@pytest.fixture(scope="session")
def trained(smoke, tmp_path_factory):
    return trained_world(smoke, tmp_path_factory)


# ---------------------------------------------------------------------------- G(lambda) and batches (no fixture)


def test_load_G_keeps_rows_above_lambda(tmp_path):
    from suti.store import StoreError
    from suti.tasks.apprentice import load_G

    store = open_store(str(tmp_path / "store"))
    with pytest.raises(StoreError, match="filter/deltas.jsonl"):
        load_G(store, None)
    rows = [{"sample_key": f"y{i}", "prompt": "p", "delta": d, "demo_keys": ["a", "b"], "demo_texts": ["", ""]}
            for i, d in enumerate([-0.1, 0.0, 0.02, 0.021, 0.5])]
    write_G(store, rows)
    assert [r["sample_key"] for r in load_G(store, None)] == ["y0", "y1", "y2", "y3", "y4"]
    assert [r["sample_key"] for r in load_G(store, 0.02)] == ["y3", "y4"]  # strictly greater
    assert [r["sample_key"] for r in load_G(store, -1)] == ["y0", "y1", "y2", "y3", "y4"]


def settings_with(**changes):
    """The default config's training settings with some fields changed."""
    from dataclasses import replace

    from suti.config import compose
    from suti.tasks.apprentice import TrainSettings

    return replace(TrainSettings.from_cfg(compose(["workdir=/tmp/suti-unused"])), **changes)


def test_batches_are_deterministic_per_step_with_cfg_dropout(tmp_path):
    from suti.tasks.apprentice import GBatches, ImageSource

    rng = np.random.default_rng(0)
    imgs = {f"k{i}": rng.integers(0, 255, (20, 28, 3), dtype=np.uint8) for i in range(6)}
    rows = [{"sample_key": "k0", "prompt": "a red mug", "demo_keys": ["k1", "k2", "k3", "k4"],
             "demo_texts": ["t1", "t2", "t3", "t4"]},
            {"sample_key": "k5", "prompt": "a blue bowl", "demo_keys": ["k1"], "demo_texts": ["only"]}]
    src = ImageSource(None, 16, imgs)
    s = settings_with(batch_size=8, demos=3, text_drop=0.0, demo_drop=0.0, demo_text_drop=0.0, seed=3)
    ds = GBatches(rows, src, s)
    a, b, c = ds.batch(5), ds.batch(5), ds.batch(6)
    assert torch.equal(a["target"], b["target"]) and a["prompts"] == b["prompts"] and torch.equal(a["mask"], b["mask"])
    assert a["target"].shape == (8, 16, 16, 3) and a["demos"].shape == (8, 3, 16, 16, 3)
    assert not (torch.equal(a["target"], c["target"]) and torch.equal(a["demos"], c["demos"]))
    for i, p in enumerate(a["prompts"]):  # a 1-image cluster fills one slot, the rest are masked out
        assert a["mask"][i].tolist() == ([True] * 3 if p == "a red mug" else [True, False, False])
        assert all(t for t, m in zip(a["demo_texts"][i], a["mask"][i]) if m)
    # Resumed streams start at the restored step and see the same batches.
    resumed = next(iter(GBatches(rows, src, s, start_step=5)))
    assert torch.equal(resumed["demos"], a["demos"])
    dropped = GBatches(rows, src, settings_with(batch_size=8, demos=3, text_drop=1.0, demo_drop=1.0, demo_text_drop=1.0))
    d = dropped.batch(0)
    assert set(d["prompts"]) == {""} and not d["mask"].any() and {t for r in d["demo_texts"] for t in r} == {""}
    # demos_min: each example draws its demo count from demos_min..demos (a 1-image cluster still gives 1).
    var = GBatches(rows, src, settings_with(batch_size=64, demos=3, demos_min=1, text_drop=0.0, demo_drop=0.0,
                                           demo_text_drop=0.0, seed=3)).batch(0)
    counts = {(p, int(m.sum())) for p, m in zip(var["prompts"], var["mask"])}
    assert {n for p, n in counts if p == "a red mug"} == {1, 2, 3} and {n for p, n in counts if p == "a blue bowl"} == {1}
    for i, m in enumerate(var["mask"]):  # the masked-out slots carry neither an image nor a text
        assert not var["demos"][i][~m].any() and all(not t for t, k in zip(var["demo_texts"][i], m) if not k)


# ---------------------------------------------------------------------------- the smoke training run


def test_training_run_saved_checkpoint_model_and_metrics(trained):
    import mlflow

    store, report = trained["store"], trained["report"]
    assert report["steps"] == 4 and report["rows"] == len(trained["rows"]) > 0 and report["run_name"] == "lam-none"
    ov = report["overhead"]
    assert ov["added"] > 0 and ov["base"] > ov["added"] and ov["ratio"] == pytest.approx(ov["added"] / ov["base"])
    saved = json.loads((trained["workdir"] / "reports" / "train.json").read_text())
    assert saved["registered"]["uri"] == "models:/suti-apprentice@candidate" and saved["overhead"] == ov

    prefix = "apprentice/lam-none"
    assert store.is_done(prefix) and store.get_json(f"{prefix}/last.json")["step"] == 4
    ckpt = torch.load(store.local_path(f"{prefix}/last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    keys = list(ckpt["state_dict"])
    assert checkpoint_keys_hold(keys, trained["cfg"].apprentice.train_base)
    gates = [v for k, v in ckpt["state_dict"].items() if k.endswith(".gate")]
    assert len(gates) == len(report["gates"]) and all(float(g.abs()) > 0 for g in gates)  # moved from 0
    files = {k.split("/model/", 1)[1] for k in store.list(f"{prefix}/model")}
    assert {"apprentice.pt", "backbone/backbone.json", "backbone/clip.pt", "backbone/unet.pt"} <= files
    grid = Image.open(store.local_path(f"{prefix}/samples.png"))
    assert grid.size[0] > grid.size[1] > 0

    from suti.tracking import setup_tracking

    setup_tracking(trained["cfg"])
    client = mlflow.MlflowClient()
    run = client.get_run(report["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["apprentice.demos"] == "3"
    losses = client.get_metric_history(run.info.run_id, "apprentice.loss")
    assert [m.step for m in losses] == [1, 2, 3, 4] and all(np.isfinite(m.value) for m in losses)
    assert client.get_metric_history(run.info.run_id, "apprentice.steps_per_sec")
    assert run.data.metrics["apprentice.params_ratio"] == pytest.approx(ov["ratio"])
    examples = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "examples")}
    assert {"apprentice_samples.png", "val_grid.png"} <= examples
    # G's lambda and size, and the val check: val subjects only, every row scored, a grid
    assert run.data.metrics["G.size"] == len(trained["rows"]) and "lambda" in " ".join(run.data.params)
    val = report["val_check"]
    idx = store.get_json("world/heldout/index.json")["subjects"]
    val_ids = [s["id"] for s in idx if s["split"] == "val"]
    assert val["subject_ids"] == val_ids[:1] and val["val.subjects"] == 1 and val["val.prompts"] == 2
    for m in ("oracle", "base", "expert", "apprentice"):
        assert -1.0 <= run.data.metrics[f"val.{m}.identity"] <= 1.0
        assert 0.0 <= run.data.metrics[f"val.{m}.overall"] <= 1.0
    assert run.data.metrics["val.oracle.identity"] > run.data.metrics["val.base.identity"]
    assert run.data.metrics["val.gap_closed"] == pytest.approx(val["val.gap_closed"])
    vg = Image.open(store.local_path(f"{prefix}/val_grid.png"))
    assert vg.size[0] > vg.size[1] > 0  # 1 row: 3 demos + (apprentice, expert) x 2 prompts


def test_registered_candidate_loads_and_generates(trained):
    import mlflow

    from suti.imageio import b64_png, from_b64
    from suti.tracking import setup_tracking

    setup_tracking(trained["cfg"])
    version = mlflow.MlflowClient().get_model_version_by_alias("suti-apprentice", "candidate")
    assert version.tags["run_name"] == "lam-none"
    model = mlflow.pyfunc.load_model("models:/suti-apprentice@candidate")
    store, row = trained["store"], trained["rows"][0]
    demos = [b64_png(read_rgb(store, k)) for k in row["demo_keys"][:3]]
    import pandas as pd

    out = model.predict(pd.DataFrame([{"prompt": row["prompt"], "demos": demos, "num_images": 2, "seed": 1, "steps": 2},
                                      {"prompt": "a photo", "demos": [], "num_images": 1, "steps": 2}]))
    assert list(out.columns) == ["prompt", "images"] and [len(x) for x in out["images"]] == [2, 1]
    for s in out["images"][0] + out["images"][1]:
        img = from_b64(s)
        assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    one = model.predict({"prompt": row["prompt"], "demos": demos, "num_images": 2, "seed": 1, "steps": 2})
    assert one["images"][0] == out["images"][0]  # same request, same seed: same images
    with pytest.raises(ValueError, match="prompt"):
        model.predict({"prompt": "  ", "demos": demos})
    # a separate demo scale is a request field too (checked like the others)
    dg = model.predict({"prompt": row["prompt"], "demos": demos, "num_images": 1, "seed": 1, "steps": 2,
                        "demo_guidance": 2.0})
    assert from_b64(dg["images"][0][0]).shape == (32, 32, 3)
    with pytest.raises(ValueError, match="demo_guidance"):
        model.predict({"prompt": row["prompt"], "demos": demos, "demo_guidance": -1})


def test_zero_demos_is_the_apprentices_own_base(trained):
    from omegaconf import OmegaConf

    from suti.models.apprentice import ApprenticeUNet
    from suti.models.backbone import TinyBackbone
    from suti.tasks.apprentice import Apprentice, apprentice_config, load_apprentice
    from suti.tasks.foundation import generate_base

    cfg, store, row = trained["cfg"], trained["store"], trained["rows"][0]
    app = load_apprentice("lam-none", cfg, store, device="cpu")
    assert any(float(g.detach().abs()) > 0 for g in app.model.gate_parameters())
    base_bb = TinyBackbone.from_store(cfg, store)
    own = app.model.unet.state_dict()
    moved = [k for k, v in base_bb.unet.state_dict().items() if not torch.equal(v, own[k])]
    assert bool(moved) == bool(cfg.apprentice.train_base)  # a frozen base is the foundation's, bit for bit
    base_bb.unet.load_state_dict(own)  # the apprentice's own base (the foundation's, or the one it trained)
    base = Apprentice(base_bb, ApprenticeUNet(base_bb.unet, apprentice_config(cfg)), app.defaults).to("cpu")
    kw = dict(num_images=2, seed=5, steps=3, guidance=5.0)
    got = app.generate([], None, "a teddy bear on the beach", **kw)
    ref = base.generate([], None, "a teddy bear on the beach", **kw)
    assert all(np.array_equal(a, b) for a, b in zip(got, ref))
    # The foundation's own sampler (CFG as two UNet calls, not one batch): same up to float noise.
    fb = generate_base(base_bb.unet, base_bb.clip, base_bb.clip_name, ["a teddy bear on the beach"] * 2,
                       OmegaConf.create({"scheduler": "dpm", "sample_steps": 3, "guidance": 5.0}), seed=5,
                       backbone=cfg.backbone)
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(got, fb)) <= 6
    # Table 1's base row samples on the apprentice's own path: K = 0 is the base row, bit for bit.
    from suti.tasks.evaluate import base_images

    ecfg = OmegaConf.merge(cfg, {"eval": {"guidance": 5.0, "scheduler": "dpm", "sample_steps": 3}})
    base_row = base_images(ecfg, base_bb, [{"text": "a teddy bear on the beach"}], 2, [5])
    assert all(np.array_equal(a, b) for a, b in zip(got, base_row))
    # Cached base images: sampled once per (base model, sampler, prompt, seed, n), then read back
    # unchanged (a second call with a backbone that cannot sample still returns them).
    from suti.tasks.evaluate import backbone_fingerprint, cached_base_images

    class NoSampling:
        def __getattr__(self, name):
            raise AssertionError(f"the cached base row was resampled ({name})")

    fp = backbone_fingerprint(base_bb)
    recs = [{"text": "a teddy bear on the beach"}, {"text": "a teddy bear in the snow"}]
    first, secs = cached_base_images(ecfg, store, base_bb, fp, recs, 2, [5, 6])
    assert np.array_equal(first[:2], base_row) and secs > 0
    again, secs2 = cached_base_images(ecfg, store, NoSampling(), fp, recs, 2, [5, 6])
    assert np.array_equal(again, first) and secs2 == secs
    # another seed, sampler or base model is sampled anew
    other_cfg = OmegaConf.merge(ecfg, {"eval": {"sample_steps": 2}})
    for c, f, seeds in ((ecfg, fp, [5, 7]), (other_cfg, fp, [5, 6]), (ecfg, fp + "x", [5, 6])):
        with pytest.raises(AssertionError, match="resampled"):
            cached_base_images(c, store, NoSampling(), f, recs, 2, seeds)
    saved = base_bb.unet.conv_out.bias.detach().clone()
    base_bb.unet.conv_out.bias.data[0] += 1.0
    assert backbone_fingerprint(base_bb) != fp
    base_bb.unet.conv_out.bias.data.copy_(saved)
    # Demos do act once the gates are open (the equality above is not vacuous).
    demos = [read_rgb(store, k) for k in row["demo_keys"][:3]]
    app.model.set_gates(0.5)
    opened = app.generate(demos, row["demo_texts"][:3], "a teddy bear on the beach", **kw)
    assert not all(np.array_equal(a, b) for a, b in zip(opened, got))


def test_separate_demo_guidance(trained):
    """InstructPix2Pix-style scales: demo_guidance == guidance is plain CFG (three branches
    instead of two, so equal up to float rounding); another demo scale changes the images;
    with no demos there is nothing to scale and the output is the plain one."""
    from suti.tasks.apprentice import load_apprentice

    cfg, store, row = trained["cfg"], trained["store"], trained["rows"][0]
    app = load_apprentice("lam-none", cfg, store, device="cpu")
    app.model.set_gates(0.5)
    assert app.defaults["demo_guidance"] == float(cfg.apprentice.demo_guidance)  # the model's own default
    app.defaults["demo_guidance"] = None  # plain CFG: one scale for text and demos
    demos = [read_rgb(store, k) for k in row["demo_keys"][:3]]
    kw = dict(num_images=2, seed=3, steps=3, guidance=5.0)
    plain = app.generate(demos, row["demo_texts"][:3], "a teddy bear on the beach", **kw)
    same = app.generate(demos, row["demo_texts"][:3], "a teddy bear on the beach", demo_guidance=5.0, **kw)
    assert max(int(np.abs(a.astype(int) - b.astype(int)).max()) for a, b in zip(plain, same)) <= 2
    strong = app.generate(demos, row["demo_texts"][:3], "a teddy bear on the beach", demo_guidance=12.0, **kw)
    assert np.mean([np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(plain, strong)]) > 0.5
    none = app.generate([], None, "a teddy bear on the beach", demo_guidance=12.0, **kw)
    ref = app.generate([], None, "a teddy bear on the beach", **kw)
    assert all(np.array_equal(a, b) for a, b in zip(none, ref))


def test_demo_memory_is_computed_once_per_request(trained, monkeypatch):
    from suti.tasks.apprentice import load_apprentice

    app = load_apprentice("lam-none", trained["cfg"], trained["store"], device="cpu")
    calls = []
    real = app.model.encode_demos
    monkeypatch.setattr(app.model, "encode_demos", lambda *a, **k: calls.append(1) or real(*a, **k))
    rng = np.random.default_rng(0)
    demos = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(5)]  # any size, 5 demos
    out = app.generate(demos, None, "a mug in the snow", num_images=3, steps=3, seed=0)
    assert len(calls) == 1 and len(out) == 3 and out[0].shape == (32, 32, 3)
    for kind in ("ddim", "ddpm"):
        assert app.generate(demos[:1], ["a mug"], "a mug", num_images=1, steps=2, scheduler=kind)[0].shape == (32, 32, 3)


def test_frozen_base_stays_the_foundations(trained):
    """train_base=false: only the demo layers train and are checkpointed; with no demos the
    apprentice is the foundation base, so Table 1's K = 0 is its base row bit for bit."""
    from omegaconf import OmegaConf

    from suti.models.backbone import TinyBackbone
    from suti.tasks.apprentice import load_apprentice, load_G, train_apprentice

    cfg = OmegaConf.merge(trained["cfg"], {"apprentice": {"train_base": False, "steps": 2}})
    store = trained["store"]
    rec = train_apprentice(cfg, store, load_G(store, None), "frozen-check")
    assert rec["steps_run"] == 2
    ckpt = torch.load(store.local_path("apprentice/frozen-check/last.ckpt"), map_location="cpu", weights_only=False)
    assert checkpoint_keys_hold(list(ckpt["state_dict"]), False)
    app = load_apprentice("frozen-check", cfg, store, device="cpu")
    foundation = TinyBackbone.from_store(cfg, store).unet.state_dict()
    assert all(torch.equal(v, foundation[k]) for k, v in app.model.unet.state_dict().items())
    assert not app.meta.get("train_base")  # what the eval reads to hold K = 0 to the base row


def test_rerun_reuses_the_finished_run(trained):
    from suti.tasks.apprentice import load_G, train_apprentice

    t0 = time.time()
    rec = train_apprentice(trained["cfg"], trained["store"], load_G(trained["store"], None), "lam-none")
    assert rec["reused"] and rec["steps"] == 4 and time.time() - t0 < 5


def test_changed_recipe_retrains(trained):
    """A finished run is reused only when its whole recipe matches: a changed lr retrains."""
    from omegaconf import OmegaConf

    from suti.tasks.apprentice import load_G, train_apprentice

    cfg, store = trained["cfg"], trained["store"]
    rows = load_G(store, None)
    first = train_apprentice(cfg, store, rows, "recipe-check")
    assert not first.get("reused") and train_apprentice(cfg, store, rows, "recipe-check")["reused"]
    lr2 = OmegaConf.merge(cfg, {"apprentice": {"lr": float(cfg.apprentice.lr) * 2}})
    again = train_apprentice(lr2, store, rows, "recipe-check")
    assert not again.get("reused") and again["recipe"] != first["recipe"] and again["steps_run"] == again["steps"]
    demos3 = OmegaConf.merge(cfg, {"apprentice": {"demos": int(cfg.apprentice.demos) + 1}})
    assert not train_apprentice(demos3, store, rows, "recipe-check").get("reused")


def test_warm_start_from_a_trained_apprentice(trained):
    """apprentice.init_from: the run starts from another apprentice's weights (its demo
    layers, gates included), its fingerprint keys the recipe, and bad starts fail in one line."""
    from omegaconf import OmegaConf

    from suti.errors import UserError
    from suti.tasks.apprentice import load_apprentice, load_G, train_apprentice

    cfg, store = trained["cfg"], trained["store"]
    rows = load_G(store, None)
    start = load_apprentice("lam-none", cfg, store, device="cpu")
    zero = OmegaConf.merge(cfg, {"apprentice": {"steps": 0, "init_from": "lam-none"}})
    rec = train_apprentice(zero, store, rows, "warm-check")
    warm = load_apprentice("warm-check", cfg, store, device="cpu")
    assert warm.meta["init_from"] == "lam-none"
    for k, v in start.model.apprentice_state_dict().items():  # 0 steps: exactly the start's demo layers
        assert torch.equal(warm.model.apprentice_state_dict()[k], v), k
    cold = train_apprentice(OmegaConf.merge(cfg, {"apprentice": {"steps": 0}}), store, rows, "cold-check")
    assert cold["recipe"] != rec["recipe"]  # the start model is part of the recipe
    assert train_apprentice(zero, store, rows, "warm-check")["reused"]
    with pytest.raises(UserError, match="is the run being trained"):
        train_apprentice(OmegaConf.merge(cfg, {"apprentice": {"init_from": "warm-check"}}), store, rows, "warm-check")
    with pytest.raises(UserError, match="no apprentice model"):
        train_apprentice(OmegaConf.merge(cfg, {"apprentice": {"init_from": "nope"}}), store, rows, "warm-check2")
    other = OmegaConf.merge(zero, {"apprentice": {"demo_sites": "down_up_mid"}})
    with pytest.raises(UserError, match="demo_sites"):
        train_apprentice(other, store, rows, "warm-check3")


def test_dreamsuti_finetunes_on_one_subject(trained):
    from suti.tasks.apprentice import dreamsuti, load_apprentice
    from omegaconf import OmegaConf

    cfg, store = trained["cfg"], trained["store"]
    cfg = OmegaConf.merge(cfg, {"apprentice": {"dreamsuti_steps": 2, "dreamsuti_batch_size": 2, "grid_rows": 1}})
    index = store.get_json("world/heldout/index.json")["subjects"][0]
    images = [read_rgb(store, f"world/{k}") for k in index["demos"]]
    app = load_apprentice("lam-none", cfg, store, device="cpu")
    before = {k: v.clone() for k, v in app.model.unet.state_dict().items()}
    rec = dreamsuti(cfg, store, app, images, [f"a {index['class']}"] * len(images), "h000")
    assert rec["run_name"] == "dreamsuti-h000" and rec["steps"] == 2 and store.is_done("apprentice/dreamsuti-h000")
    tuned = load_apprentice("dreamsuti-h000", cfg, store, device="cpu")
    assert tuned.defaults["demos"] == 1 and tuned.meta["dreamsuti"] == "h000"
    changed = [k for k, v in tuned.model.unet.state_dict().items() if not torch.equal(v, before[k])]
    assert changed  # Dream-SuTI fine-tunes the whole apprentice (dreamsuti_train_base)
    out = tuned.generate(images[:1], None, f"a {index['class']} in the snow", num_images=1, steps=2)
    assert out[0].shape == (32, 32, 3)
    from suti.errors import UserError

    with pytest.raises(UserError, match="at least 2 images"):
        dreamsuti(cfg, store, app, images[:1], ["x"], "one")


def test_text_states_encode_each_string_once_and_equal_the_batched_tower(trained):
    """The training step's text cache: a string repeated across batches is encoded once, its
    states equal the text tower's on a whole batch, and they do not depend on the batch that
    first asked for them (a resumed run sees the same tensors)."""
    from suti.models.backbone import load_backbone
    from suti.tasks.apprentice.module import TextStates

    bb = load_backbone(trained["cfg"], trained["store"])
    texts = [r["prompt"] for r in trained["rows"][:6]] + ["", "a photo of a toy"]
    calls = []

    def encode(batch):
        calls.append(list(batch))
        return bb.encode_text(batch)

    with torch.no_grad():
        cache = TextStates(encode)
        first = cache(texts + texts[:3])
        again = cache(list(reversed(texts)))
        batched = bb.encode_text(texts)
        other = TextStates(bb.encode_text)
        other(texts[4:])  # another order of first requests
        reordered = other(texts)
    assert sorted(c[0] for c in calls) == sorted(set(texts)) and all(len(c) == 1 for c in calls)
    assert (cache.misses, cache.hits) == (len(set(texts)), 2 * len(texts) + 3 - len(set(texts)))
    assert torch.allclose(first[: len(texts)], batched, atol=1e-5)
    assert torch.equal(first[len(texts):], first[:3]) and torch.equal(again, first[: len(texts)].flip(0))
    assert torch.equal(reordered, first[: len(texts)])
    small = TextStates(bb.encode_text, max_bytes=2 * first[0].numel() * first[0].element_size())
    small(texts)
    assert len(small._states) == 2 and list(small._states) == texts[-2:]


def test_a_demo_set_shared_by_two_targets_trains_like_two_copies_of_it(trained):
    """`apprentice.targets_per_demo_set: 2`: a batch of 4 holds 2 demo sets, each with two
    targets of its own subject, neither of them among the set's demos; the training loss
    equals that of the same batch with every set copied once per target (the demo pass runs
    half as often, the math is the same)."""
    from dataclasses import replace

    from suti.models.apprentice import ApprenticeUNet
    from suti.models.backbone import load_backbone
    from suti.tasks.apprentice import GBatches, ImageSource
    from suti.tasks.apprentice.module import ApprenticeLit
    from suti.tasks.apprentice.settings import apprentice_config

    cfg, store = trained["cfg"], trained["store"]
    pages = [json.loads(x) for x in store.get_bytes("world/pages.jsonl").decode().splitlines() if x.strip()]
    rows = []
    for page in [p for p in pages if len(p["images"]) >= 4][:3]:  # every image of a page a target once
        keys = [f"world/{im['key']}" for im in page["images"]]
        for j, key in enumerate(keys):
            rows.append({"sample_key": key, "cluster_id": page["page"], "prompt": page["images"][j]["alt"],
                         "demo_keys": keys[:j] + keys[j + 1:], "demo_texts": ["d"] * (len(keys) - 1)})
    bb = load_backbone(cfg, store)
    images = ImageSource(store, bb.resolution)
    owner = {images.get(r["sample_key"]).tobytes(): r["cluster_id"] for r in rows}
    shared = replace(settings_with(batch_size=4, demos=3, text_drop=0.0, demo_drop=0.0, demo_text_drop=0.0, seed=1),
                     targets_per_demo_set=2)
    batch = GBatches(rows, images, shared).batch(0)
    assert batch["target"].shape[0] == 4 and batch["demos"].shape[:2] == (2, 3) and batch["mask"].all()
    for g in range(2):
        targets = [batch["target"][2 * g + m].numpy().tobytes() for m in range(2)]
        demos = [d.numpy().tobytes() for d in batch["demos"][g]]
        assert len({owner[t] for t in targets + demos}) == 1  # one subject per set
        assert not set(targets) & set(demos)  # no target is shown as its own demo

    torch.manual_seed(0)
    app = ApprenticeUNet(bb.unet, apprentice_config(cfg))
    copied = {**batch, "demos": batch["demos"].repeat_interleave(2, 0), "mask": batch["mask"].repeat_interleave(2, 0),
              "demo_texts": [t for t in batch["demo_texts"] for _ in range(2)]}
    with torch.no_grad():
        one = ApprenticeLit(bb, app, shared).training_step(batch, 0)
        two = ApprenticeLit(bb, app, replace(shared, targets_per_demo_set=1)).training_step(copied, 0)
    assert torch.isfinite(one) and torch.allclose(one, two, atol=1e-6)


# ---------------------------------------------------------------------------- kill and resume


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint(trained, tmp_path):
    """SIGKILL a training subprocess mid-way; the rerun continues from the checkpoint's step."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.merge(trained["cfg"], {"apprentice": {"steps": 14, "checkpoint_every": 2, "log_every": 2,
                                                          "grid_rows": 1}})
    conf = tmp_path / "config.yaml"
    conf.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    store = trained["store"]
    cmd = [sys.executable, "-m", "suti.tasks.apprentice", "--config", str(conf), "--run-name", "killed", "--lam", "0.02"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if store.exists("apprentice/killed/last.json") and store.get_json("apprentice/killed/last.json")["step"] >= 4:
                break
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint within 300 s")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    # The checkpoint itself says where training stopped (last.json is written just after it).
    step = torch.load(store.local_path("apprentice/killed/last.ckpt"), map_location="cpu", weights_only=False)["global_step"]
    assert 4 <= step < 14 and not store.is_done("apprentice/killed")

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # Training went on from the checkpoint's step (not 0), and so did the batch stream.
    assert result == {"steps": 14, "resumed_from": step, "steps_run": 14 - step, "data_start_step": step}
    ckpt = torch.load(store.local_path("apprentice/killed/last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 14 and store.get_json("apprentice/killed/_DONE.json")["resumed_from"] == step


# ---------------------------------------------------------------------------- serving


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_images(trained, tmp_path):
    """`mlflow models serve` on the registered candidate: demos + prompt in, PNGs out."""
    import urllib.request

    from servers import free_port, wait_for_http

    from suti.imageio import b64_png, from_b64

    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": str(trained["cfg"].tracking.uri), "HF_HUB_OFFLINE": "1",
           # the scoring server runs `uvicorn` from PATH: the venv's bin, as in an activated venv
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(tmp_path / "serve.log", "wb")
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", "models:/suti-apprentice@candidate",
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=300, proc=proc)
        row = trained["rows"][0]
        body = {"dataframe_records": [{"prompt": row["prompt"], "num_images": 2, "steps": 2, "seed": 0,
                                       "demos": [b64_png(read_rgb(trained["store"], k)) for k in row["demo_keys"][:2]]}]}
        req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(req, timeout=300).read())
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server and its workers: the group we started
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    images = answer["predictions"][0]["images"]
    assert len(images) == 2 and all(from_b64(s).shape == (32, 32, 3) for s in images)


# ---------------------------------------------------------------------------- multi-device


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_trains_in_a_subprocess(trained):
    """strategy=ddp, devices=2 (gloo on CPU): trained in a subprocess (Lightning relaunches its
    entry script), each rank on its own batches, checkpoints and the model from rank 0."""
    from omegaconf import OmegaConf

    from suti.tasks.apprentice import needs_subprocess, train_in_subprocess

    cfg = OmegaConf.merge(trained["cfg"], {"apprentice": {"steps": 4, "devices": 2, "strategy": "ddp",
                                                          "accelerator": "cpu", "checkpoint_every": 2,
                                                          "grid_rows": 1}})
    assert needs_subprocess(cfg) and not needs_subprocess(trained["cfg"])
    rec = train_in_subprocess(cfg, trained["store"], 0.02, "ddp", None, force=True)
    assert rec["steps"] == 4 and rec["steps_run"] == 4 and rec["rows"] == len([r for r in trained["rows"]
                                                                                if r["delta"] > 0.02])
    ckpt = torch.load(trained["store"].local_path("apprentice/ddp/last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and checkpoint_keys_hold(list(ckpt["state_dict"]), cfg.apprentice.train_base)
