"""The Stable Diffusion backbone on tiny random components built from config (as
diffusers' own fast tests do), saved with `save_pretrained` and loaded back through
SDBackbone: the apprentice trains a few steps on it and generates. No weights download."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import checkpoint_keys_hold
from suti.config import compose
from suti.models.backbone import SDBackbone, load_backbone, load_exported
from suti.store import open_store

torch.set_num_threads(2)


def _bytes_to_unicode() -> list[str]:
    """GPT-2/CLIP byte -> printable unicode table (the BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def write_tiny_tokenizer_files(folder) -> None:
    """vocab.json (bytes, bytes + '</w>', specials) and merges.txt with a few merges."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in _bytes_to_unicode():
        vocab.setdefault(c, len(vocab))
    for c in _bytes_to_unicode():
        vocab.setdefault(c + "</w>", len(vocab))
    merges = ["t h", "th e</w>", "o f</w>"]
    for m in merges:
        vocab.setdefault(m.replace(" ", ""), len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 16}))


def build_tiny_sd(folder, tmp_path) -> None:
    """A diffusers SD folder of tiny random parts (diffusers' get_dummy_components)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=8)
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=8,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"])
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=2, pad_token_id=1, vocab_size=1000))
    write_tiny_tokenizer_files(tmp_path / "tokenizer-files")
    tokenizer = CLIPTokenizer.from_pretrained(tmp_path / "tokenizer-files", local_files_only=True)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False)
    for name, part in (("unet", unet), ("vae", vae), ("text_encoder", text_encoder), ("tokenizer", tokenizer),
                       ("scheduler", scheduler)):
        part.save_pretrained(folder / name)


def _blob(rng, colour, size=24) -> np.ndarray:
    """A coloured disc on a light background, placed at random (a "subject" view)."""
    img = np.full((size, size, 3), 235, np.uint8)
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, 8))]
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    return img


def write_rows(store, seed=0) -> list[dict]:
    """A tiny G: 3 subjects x 4 images; target = image 0, demos = the others."""
    from suti.imageio import png_bytes

    rng = np.random.default_rng(seed)
    rows = []
    for s, (word, colour) in enumerate((("red", (200, 30, 30)), ("green", (30, 160, 60)), ("blue", (40, 60, 200)))):
        keys = []
        for i in range(4):
            key = f"web/s{s}/{i}.png"
            store.put_bytes(key, png_bytes(_blob(rng, colour)))
            keys.append(key)
        rows.append({"sample_key": keys[0], "cluster_id": f"s{s}", "prompt": f"a {word} ball on the beach",
                     "delta": 0.05 * s, "demo_keys": keys[1:], "demo_texts": [f"a {word} ball"] * 3,
                     "description": f"{word} ball"})
    store.put_bytes("filter/deltas.jsonl", "\n".join(json.dumps(r) for r in rows).encode())
    store.mark_done("filter", {"rows": len(rows)})
    return rows


@pytest.fixture(scope="module")
def sd_world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sd")
    build_tiny_sd(tmp / "sd", tmp)
    return tmp


def test_sd_backbone_round_trips_images_and_text(sd_world):
    bb = SDBackbone.from_pretrained(sd_world / "sd")
    assert bb.resolution == 16 and bb.latent and bb.sample_shape(2) == (2, 4, 8, 8)
    states = bb.encode_text(["a red ball", ""])
    assert states.shape == (2, 16, 32)
    imgs = np.random.default_rng(0).integers(0, 255, (3, 40, 24, 3), dtype=np.uint8)  # any size: resized
    lat = bb.encode_images(imgs)
    assert lat.shape == (3, 4, 8, 8)
    out = bb.decode(lat)
    assert out.shape == (3, 16, 16, 3) and out.dtype == np.uint8
    assert bb.encode_images(imgs[:0]).shape == (0, 4, 8, 8)
    # Latents are never clipped or thresholded; the folder's betas are used.
    for kind in ("dpm", "ddim", "ddpm"):
        sched = bb.sampling_scheduler(kind, guidance=15.0)
        assert not sched.config.get("thresholding", False) and not sched.config.get("clip_sample", False)
        assert sched.config.beta_schedule == "scaled_linear"
    with pytest.raises(ValueError):
        bb.sampling_scheduler("euler")


def test_sd_folder_errors_are_one_line(tmp_path):
    from suti.config import ConfigError

    with pytest.raises(ConfigError) as e:
        SDBackbone.from_pretrained(tmp_path)
    assert "not a local diffusers Stable Diffusion folder" in str(e.value) and "\n" not in str(e.value)
    cfg = compose(["backbone=stable-diffusion", f"workdir={tmp_path}"])
    with pytest.raises(ConfigError, match="backbone.path"):
        load_backbone(cfg, None)


def test_apprentice_trains_and_generates_on_sd(sd_world, tmp_path):
    from suti.tasks import apprentice as A

    wd = tmp_path / "work"
    cfg = compose(["profile=smoke", f"workdir={wd}", "backbone=stable-diffusion", f"backbone.path={sd_world / 'sd'}",
                   "backbone.bundle=true", "progress=false", "apprentice.steps=3", "apprentice.batch_size=2",
                   "apprentice.sample_steps=2", "apprentice.grid_rows=1", "apprentice.checkpoint_every=2"])
    store = open_store(str(cfg.storage.uri))
    write_rows(store)
    rows = A.load_G(store, 0.01)  # delta > 0.01: the green and blue subjects
    assert [r["cluster_id"] for r in rows] == ["s1", "s2"]
    rec = A.train_apprentice(cfg, store, rows, "sd-test")
    assert rec["steps"] == 3 and rec["backbone"] == "stable-diffusion"
    assert 0 < rec["overhead"]["ratio"] < 1
    assert any(abs(g) > 0 for g in rec["gates"].values())  # the gates left 0
    ckpt = torch.load(store.local_path("apprentice/sd-test/last.ckpt"), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 3
    assert checkpoint_keys_hold(list(ckpt["state_dict"]), cfg.apprentice.train_base)
    assert store.exists("apprentice/sd-test/samples.png") and store.is_done("apprentice/sd-test")

    # The bundled model needs nothing from the original folder.
    shutil.move(sd_world / "sd", sd_world / "sd-moved")
    try:
        app = A.load_apprentice("sd-test", cfg, store, device="cpu")
    finally:
        shutil.move(sd_world / "sd-moved", sd_world / "sd")
    assert isinstance(app.backbone, SDBackbone) and app.backbone.resolution == 16
    demos = [_blob(np.random.default_rng(9), (30, 160, 60), size=30) for _ in range(2)]
    out = app.generate(demos, ["a green ball"] * 2, "a green ball in the snow", num_images=2, steps=2, seed=1)
    assert len(out) == 2 and all(o.shape == (16, 16, 3) and o.dtype == np.uint8 for o in out)
    # 0 demos: exactly the base model (closed gates give the same with demos).
    base = app.generate([], None, "a green ball", num_images=1, steps=2, seed=2, guidance=4.0)
    app.model.set_gates(0.0)
    closed = app.generate(demos, None, "a green ball", num_images=1, steps=2, seed=2, guidance=4.0)
    assert np.array_equal(base[0], closed[0])


def test_exported_tiny_and_sd_backbones_rebuild(sd_world, tmp_path):
    bb = SDBackbone.from_pretrained(sd_world / "sd")
    bb.export(tmp_path / "ref")
    again = load_exported(tmp_path / "ref")
    assert isinstance(again, SDBackbone) and again.path == bb.path and again.schedule == bb.schedule
