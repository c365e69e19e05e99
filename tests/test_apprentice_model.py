"""Apprentice UNet (demonstration attention) on two tiny backbones built from config.

(a) a tiny pixel-space UNet2DConditionModel with random text states;
(b) tiny Stable-Diffusion components (latent UNet, AutoencoderKL, CLIPTextModel) as
    diffusers' own tests build them, demos encoded through VAE latents and the text tower.
"""

from __future__ import annotations

import copy

import pytest
import torch

from suti.models.apprentice import ApprenticeConfig, ApprenticeUNet, DemoAttention, DemoMemory

torch.set_num_threads(2)

ATOL = 1e-6


# ---------------------------------------------------------------------------- backbones
def make_pixel_unet(seed: int = 0, **overrides):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    kwargs = dict(
        sample_size=16,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        layers_per_block=1,
        attention_head_dim=4,
        norm_num_groups=8,
    )
    kwargs.update(overrides)
    return UNet2DConditionModel(**kwargs).eval()


def make_sd_components(seed: int = 0):
    """Tiny SD parts, as in diffusers' StableDiffusionPipeline fast tests."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=8,
    ).eval()
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=8,
    ).eval()
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        pad_token_id=1,
        vocab_size=1000,
    )
    text_encoder = CLIPTextModel(text_config).eval()
    return unet, vae, text_encoder


class PixelBackbone:
    """Inputs for the tiny pixel UNet: pixels and random text states."""

    name = "pixel"

    def __init__(self):
        self.unet = make_pixel_unet()
        self.L, self.D = 6, 32

    def fresh_unet(self, seed: int):
        return make_pixel_unet(seed)

    def images(self, *lead, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(*lead, 3, 16, 16, generator=g)

    def text(self, *lead, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 1000)
        return torch.randn(*lead, self.L, self.D, generator=g)


class SDBackbone:
    """Inputs for tiny SD: VAE latents of pixel images, CLIP text states of random ids."""

    name = "sd"

    def __init__(self):
        self.unet, self.vae, self.text_encoder = make_sd_components()
        self.L = 7

    def fresh_unet(self, seed: int):
        return make_sd_components(seed)[0]

    @torch.no_grad()
    def images(self, *lead, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        pixels = torch.rand(*lead, 3, 16, 16, generator=g) * 2 - 1
        flat = pixels.reshape(-1, 3, 16, 16)
        if flat.shape[0] == 0:  # K = 0: the VAE cannot run on an empty batch
            return torch.zeros(*lead, 4, 8, 8)
        latents = self.vae.encode(flat).latent_dist.mean * self.vae.config.scaling_factor
        return latents.reshape(*lead, *latents.shape[1:])

    @torch.no_grad()
    def text(self, *lead, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed + 1000)
        ids = torch.randint(3, 1000, (*lead, self.L), generator=g)
        if ids.numel() == 0:
            return torch.zeros(*lead, self.L, self.text_encoder.config.hidden_size)
        states = self.text_encoder(ids.reshape(-1, self.L)).last_hidden_state
        return states.reshape(*lead, self.L, states.shape[-1])


@pytest.fixture(scope="module", params=["pixel", "sd"])
def backbone(request):
    return PixelBackbone() if request.param == "pixel" else SDBackbone()


@pytest.fixture(scope="module")
def pixel():
    return PixelBackbone()


def make_apprentice(bb, **cfg) -> ApprenticeUNet:
    torch.manual_seed(123)
    return ApprenticeUNet(copy.deepcopy(bb.unet), ApprenticeConfig(**cfg)).eval()


def request_inputs(bb, batch: int, k: int, seed: int = 0):
    """Noisy sample, timestep, prompt states and K demos for `batch` requests."""
    sample = bb.images(batch, seed=seed + 1)
    t = torch.full((batch,), 500, dtype=torch.long)
    text = bb.text(batch, seed=seed + 2)
    demo_images = bb.images(batch, k, seed=seed + 3)
    demo_text = bb.text(batch, k, seed=seed + 4)
    return sample, t, text, demo_images, demo_text


def base_out(app: ApprenticeUNet, sample, t, text) -> torch.Tensor:
    return app.unet(sample, t, encoder_hidden_states=text).sample


# ---------------------------------------------------------------------------- structure
def test_sites_mapping_and_overhead(pixel):
    app = make_apprentice(pixel)
    assert set(app.sites) == {
        "down_blocks.1.attentions.0",
        "down_blocks.2.attentions.0",
        # Up blocks have layers_per_block + 1 transformers.
        "up_blocks.0.attentions.0",
        "up_blocks.0.attentions.1",
        "up_blocks.1.attentions.0",
        "up_blocks.1.attentions.1",
    }
    # Up sites read the DownStack features of the same resolution.
    assert app.site_source["up_blocks.0.attentions.0"] == "down_blocks.2.attentions.0"
    assert app.site_source["up_blocks.1.attentions.1"] == "down_blocks.1.attentions.0"
    ov = app.param_overhead()
    assert ov["base"] == sum(p.numel() for p in pixel.unet.parameters())
    assert ov["added"] > 0 and ov["added"] == sum(p.numel() for p in app.demo_parameters())
    assert ov["ratio"] == pytest.approx(ov["added"] / ov["base"])
    # The base weights are untouched and keep their state-dict keys.
    for (k1, v1), (k2, v2) in zip(pixel.unet.state_dict().items(), app.unet.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)

    mid = make_apprentice(pixel, demo_sites="down_up_mid")
    assert "mid_block.attentions.0" in mid.sites
    assert mid.param_overhead()["added"] > ov["added"]
    # "all": the highest resolution (plain DownBlock2D / UpBlock2D) gets demo attention too
    every = make_apprentice(pixel, demo_sites="all")
    extra = set(every.sites) - set(mid.sites)
    assert extra == {"down_blocks.0.resnets.0", "up_blocks.2.resnets.1"}
    assert every.site_source["up_blocks.2.resnets.1"] == "down_blocks.0.resnets.0"
    sample, t, text, demo_images, demo_text = request_inputs(pixel, 2, 3)
    with torch.no_grad():
        mem = every.encode_demos(demo_images, demo_text)
        assert mem.features["up_blocks.2.resnets.1"].shape[1] == 3 * sample.shape[-1] * sample.shape[-2]
        # gates at zero: still exactly the base; opened: the highest-resolution layers change the output
        assert torch.allclose(every(sample, t, text, mem), base_out(every, sample, t, text), atol=1e-5)
        every.set_gates(0.0)
        every.demo_layers["up_blocks__2__resnets__1"].gate.fill_(0.5)
        assert not torch.allclose(every(sample, t, text, mem), base_out(every, sample, t, text), atol=1e-4)
    # demo_pool: the 32 px site reads 3 x (pool x pool) averaged tokens; smaller sites are left as they are
    side = sample.shape[-1] // 2
    pooled = make_apprentice(pixel, demo_sites="all", demo_pool=side)
    pooled.load_state_dict(every.state_dict())
    with torch.no_grad():
        pm = pooled.encode_demos(demo_images, demo_text)
        assert pm.features["up_blocks.2.resnets.1"].shape[1] == 3 * side * side
        small = [s for s in every.sites if mem.features[s].shape[1] <= 3 * side * side]
        assert small and all(torch.equal(pm.features[s], mem.features[s]) for s in small)
        pooled.set_gates(0.0)
        pooled.demo_layers["up_blocks__2__resnets__1"].gate.fill_(0.5)
        out = pooled(sample, t, text, pm)
        assert torch.isfinite(out).all() and not torch.allclose(out, every(sample, t, text, mem), atol=1e-5)
    with pytest.raises(ValueError):
        ApprenticeConfig(demo_sites="everywhere")
    with pytest.raises(ValueError, match="demo_pool"):
        ApprenticeConfig(demo_pool=-1)


def test_up_site_without_down_attention_uses_resnet_features():
    # The full-resolution up block has attention but its down counterpart does not.
    unet = make_pixel_unet(
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    )
    app = ApprenticeUNet(unet, ApprenticeConfig()).eval()
    assert app.site_source["up_blocks.1.attentions.0"] == "down_blocks.0.resnets.0"
    app.set_gates(0.5)
    x, t = torch.randn(2, 3, 16, 16), torch.full((2,), 10)
    text = torch.randn(2, 6, 32)
    mem = app.encode_demos(torch.randn(2, 2, 3, 16, 16), torch.randn(2, 2, 6, 32))
    assert mem.features["up_blocks.1.attentions.0"].shape == (2, 2 * 16 * 16, 32)
    out = app(x, t, text, mem)
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_demo_attention_projects_differing_channels():
    torch.manual_seed(0)
    layer = DemoAttention(channels=32, demo_channels=64, heads=4)
    layer.gate.data.fill_(1.0)
    demo = layer.project_demo(torch.randn(2, 10, 64))
    assert demo.shape == (2, 10, 32)
    h = torch.randn(2, 32, 4, 4)
    y = layer(h, demo, torch.ones(2, 10, dtype=torch.bool))
    y.sum().backward()
    assert y.shape == h.shape and layer.proj.weight.grad is not None
    # Heads fall back to a divisor of the channel count.
    assert DemoAttention(channels=24, demo_channels=24, heads=5).heads == 4


# ---------------------------------------------------------------------------- identity at init
@pytest.mark.parametrize("k", [1, 3])
def test_init_equals_base(backbone, k):
    app = make_apprentice(backbone)
    sample, t, text, demo_images, demo_text = request_inputs(backbone, 2, k)
    with torch.no_grad():
        mem = app.encode_demos(demo_images, demo_text)
        assert mem.num_demos == k and mem.batch_size == 2
        out = app(sample, t, text, mem)
        base = base_out(app, sample, t, text)
    assert torch.allclose(out, base, atol=ATOL)


def test_init_equals_base_with_mid_sites(pixel):
    app = make_apprentice(pixel, demo_sites="down_up_mid")
    sample, t, text, demo_images, demo_text = request_inputs(pixel, 2, 3)
    with torch.no_grad():
        mem = app.encode_demos(demo_images, demo_text)
        assert "mid_block.attentions.0" in mem.features
        assert torch.allclose(app(sample, t, text, mem), base_out(app, sample, t, text), atol=ATOL)
        app.set_gates(0.5)
        assert not torch.allclose(app(sample, t, text, mem), base_out(app, sample, t, text), atol=1e-4)


@pytest.mark.parametrize("k", [0, 1, 3, 5])
def test_any_number_of_demos(backbone, k):
    app = make_apprentice(backbone)
    app.set_gates(0.5)
    sample, t, text, demo_images, demo_text = request_inputs(backbone, 2, k)
    with torch.no_grad():
        mem = app.encode_demos(demo_images, demo_text)
        out = app(sample, t, text, mem)
        base = base_out(app, sample, t, text)
    assert out.shape == sample.shape and torch.isfinite(out).all()
    for feats in mem.features.values():
        assert feats.shape[:1] == (2,) and feats.shape[1] % max(k, 1) == 0
    if k == 0:
        assert mem.is_empty()
        assert torch.allclose(out, base, atol=ATOL)
        with torch.no_grad():
            assert torch.allclose(app(sample, t, text, None), base, atol=ATOL)
            assert torch.allclose(app(sample, t, text, app.empty_memory(2)), base, atol=ATOL)
    else:
        assert not torch.allclose(out, base, atol=1e-4)


# ---------------------------------------------------------------------------- masking
def test_masked_demos_are_ignored(backbone):
    app = make_apprentice(backbone)
    app.set_gates(0.5)
    sample, t, text, demo_images, demo_text = request_inputs(backbone, 2, 3)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    garbage_images = demo_images.clone()
    garbage_images[0, 1] = float("nan")
    garbage_images[1, 2] = 1e4
    with torch.no_grad():
        mem = app.encode_demos(demo_images, demo_text, mask)
        out = app(sample, t, text, mem)
        # Garbage in the absent slots' inputs never reaches the memory.
        mem_garbage = app.encode_demos(garbage_images, demo_text, mask)
        assert torch.allclose(app(sample, t, text, mem_garbage), out, atol=ATOL)
        # Garbage written straight into the absent slots' tokens is masked out of attention.
        for name, feats in mem.features.items():
            per_demo = feats.shape[1] // 3
            feats = feats.clone()
            feats[0, per_demo : 2 * per_demo] = 50.0 * torch.randn(per_demo, feats.shape[-1])
            feats[1, 2 * per_demo :] = -30.0
            mem.features[name] = feats
        assert torch.allclose(app(sample, t, text, mem), out, atol=ATOL)
        # Same as giving only the present demos.
        keep = [[0, 2], [0, 1]]
        only_imgs = torch.stack([demo_images[b, keep[b]] for b in range(2)])
        only_text = torch.stack([demo_text[b, keep[b]] for b in range(2)])
        out_k2 = app(sample, t, text, app.encode_demos(only_imgs, only_text))
        assert torch.allclose(out_k2, out, atol=1e-5)


def test_row_without_demos_equals_base_row(backbone):
    app = make_apprentice(backbone)
    app.set_gates(0.5)
    sample, t, text, demo_images, demo_text = request_inputs(backbone, 2, 3)
    mask = torch.tensor([[False, False, False], [True, False, True]])
    with torch.no_grad():
        out = app(sample, t, text, app.encode_demos(demo_images, demo_text, mask))
        base = base_out(app, sample, t, text)
    assert torch.allclose(out[0], base[0], atol=ATOL)
    assert not torch.allclose(out[1], base[1], atol=1e-4)


# ---------------------------------------------------------------------------- gates on
def test_nonzero_gates_depend_on_demo_content(backbone):
    app = make_apprentice(backbone)
    app.set_gates(0.5)
    sample, t, text, demo_images, demo_text = request_inputs(backbone, 2, 3)
    other_images = backbone.images(2, 3, seed=77)
    other_text = backbone.text(2, 3, seed=78)
    with torch.no_grad():
        base = base_out(app, sample, t, text)
        out = app(sample, t, text, app.encode_demos(demo_images, demo_text))
        out_imgs = app(sample, t, text, app.encode_demos(other_images, demo_text))
        out_text = app(sample, t, text, app.encode_demos(demo_images, other_text))
        out_ts = app(sample, t, text, app.encode_demos(demo_images, demo_text, timestep=900))
    assert not torch.allclose(out, base, atol=1e-4)
    assert not torch.allclose(out, out_imgs, atol=1e-5)
    assert not torch.allclose(out, out_text, atol=1e-5)
    assert not torch.allclose(out, out_ts, atol=1e-5)


# ---------------------------------------------------------------------------- training
@pytest.mark.parametrize("freeze", [True, False])
def test_forward_backward(backbone, freeze):
    app = make_apprentice(backbone).train()
    app.freeze_base(freeze)
    sample, t, text, demo_images, demo_text = request_inputs(backbone, 2, 3)
    noise = torch.randn_like(sample)

    def step():
        app.zero_grad(set_to_none=True)
        mem = app.encode_demos(demo_images, demo_text)
        loss = torch.nn.functional.mse_loss(app(sample, t, text, mem), noise)
        loss.backward()
        return loss

    # At init only the gates see a gradient (tanh(0) = 0 scales the rest to zero).
    assert torch.isfinite(step())
    gates = list(app.gate_parameters())
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in gates)

    # With open gates every new parameter learns.
    app.set_gates(0.5)
    step()
    for name, p in app.demo_layers.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name
    base_grads = [p.grad for p in app.unet.parameters()]
    if freeze:
        assert all(g is None for g in base_grads)
    else:
        assert any(g is not None and g.abs().sum() > 0 for g in base_grads)
        # The DownStack used to encode demos is trained too (Re-Imagen).
        assert app.unet.conv_in.weight.grad is not None

    opt = torch.optim.AdamW(app.demo_parameters(), lr=1e-3)
    before = [p.detach().clone() for p in app.demo_parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, app.demo_parameters()))


def test_demo_pass_without_base_grad(backbone):
    """base_grad=False (apprentice.demo_grad=false): the demo memory is the same numbers, its
    gradient stops at the UNet's features (the demo projections still learn), and the base
    learns from the target pass alone (a different, still non-zero gradient)."""
    app = make_apprentice(backbone, gate_init=0.5).train()
    app.freeze_base(False)
    sample, t, text, demo_images, demo_text = request_inputs(backbone, 2, 3)
    noise = torch.randn_like(sample)
    with_grad = app.encode_demos(demo_images, demo_text)
    without = app.encode_demos(demo_images, demo_text, base_grad=False)
    for site in app.sites:
        assert torch.equal(with_grad.features[site], without.features[site])
        (g_unet,) = torch.autograd.grad(with_grad.features[site].sum(), [app.unet.conv_in.weight], allow_unused=True,
                                        retain_graph=True)
        assert g_unet is not None and g_unet.abs().sum() > 0, site
        if without.features[site].requires_grad:  # a projection (channels differ) still learns; the UNet does not
            (g_none,) = torch.autograd.grad(without.features[site].sum(), [app.unet.conv_in.weight],
                                            allow_unused=True, retain_graph=True)
            assert g_none is None, site

    def base_grads(base_grad: bool) -> list[torch.Tensor]:
        app.zero_grad(set_to_none=True)
        mem = app.encode_demos(demo_images, demo_text, base_grad=base_grad)
        torch.nn.functional.mse_loss(app(sample, t, text, mem), noise).backward()
        for name, p in app.demo_layers.named_parameters():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in app.unet.parameters()]

    full, stopped = base_grads(True), base_grads(False)
    assert any(not torch.allclose(a, b) for a, b in zip(full, stopped))
    assert any(b.abs().sum() > 0 for b in stopped)  # the target pass still trains the base


def test_zero_out_init_equals_base_and_trains_every_output_weight_at_once(pixel):
    """out_init=zero (ControlNet-style): open gates, zero output projection: the fresh
    apprentice is still the base, and at step 0 the output projections (not only the gates)
    get a gradient; after one step the demos change the output."""
    app = make_apprentice(pixel, gate_init=1.0, out_init="zero").train()
    app.freeze_base(True)
    sample, t, text, demo_images, demo_text = request_inputs(pixel, 2, 3)
    with torch.no_grad():
        out = app(sample, t, text, app.encode_demos(demo_images, demo_text))
        assert torch.allclose(out, base_out(app, sample, t, text), atol=ATOL)
    noise = torch.randn_like(sample)
    loss = torch.nn.functional.mse_loss(app(sample, t, text, app.encode_demos(demo_images, demo_text)), noise)
    loss.backward()
    for layer in app.demo_layers.values():
        assert layer.to_out.weight.grad is not None and layer.to_out.weight.grad.abs().sum() > 0
    torch.optim.SGD(app.demo_parameters(), lr=1.0).step()
    with torch.no_grad():
        own = app(sample, t, text, app.encode_demos(demo_images, demo_text))
        other = app(sample, t, text, app.encode_demos(demo_images.flip(0), demo_text.flip(0)))
    assert (own - other).abs().max() > 1e-4


def test_apprentice_config_rejects_bad_out_init():
    with pytest.raises(ValueError, match="out_init"):
        ApprenticeConfig(out_init="ones")
    with pytest.raises(ValueError, match="gate_init"):
        ApprenticeConfig(out_init="zero", gate_init=0.0)


# ---------------------------------------------------------------------------- persistence
def test_state_dict_round_trip(backbone):
    app = make_apprentice(backbone)
    with torch.no_grad():
        for p in app.demo_parameters():
            p.add_(0.1 * torch.randn_like(p))
        app.set_gates(0.7)
    sample, t, text, demo_images, demo_text = request_inputs(backbone, 2, 3)
    with torch.no_grad():
        ref = app(sample, t, text, app.encode_demos(demo_images, demo_text))

        # Full round trip: fresh apprentice around a fresh (differently seeded) UNet.
        fresh = ApprenticeUNet(backbone.fresh_unet(seed=99), ApprenticeConfig()).eval()
        assert not torch.allclose(fresh(sample, t, text, fresh.encode_demos(demo_images, demo_text)), ref, atol=1e-4)
        fresh.load_state_dict(app.state_dict())
        assert torch.allclose(fresh(sample, t, text, fresh.encode_demos(demo_images, demo_text)), ref, atol=ATOL)

        # New layers only, onto the same base UNet.
        sd = app.apprentice_state_dict()
        assert sd and not any(k.startswith("unet.") for k in sd)
        assert set(sd) == {k.removeprefix("demo_layers.") for k in app.state_dict() if k.startswith("demo_layers.")}
        other = ApprenticeUNet(copy.deepcopy(backbone.unet), ApprenticeConfig()).eval()
        other.load_apprentice_state_dict(sd)
        assert torch.allclose(other(sample, t, text, other.encode_demos(demo_images, demo_text)), ref, atol=ATOL)


# ---------------------------------------------------------------------------- memory reuse
def test_memory_broadcast_and_cfg_layouts(pixel):
    bb = pixel
    app = make_apprentice(bb)
    app.set_gates(0.5)
    sample, t, text, _, _ = request_inputs(bb, 4, 0)
    demo_images, demo_text = bb.images(1, 3, seed=5), bb.text(1, 3, seed=6)
    with torch.no_grad():
        mem1 = app.encode_demos(demo_images, demo_text).detach()
        out = app(sample, t, text, mem1)  # batch-1 memory, batch-4 samples
        explicit = app(sample, t, text, mem1.repeat_interleave(4))
        assert torch.allclose(out, explicit, atol=ATOL)
        for i in range(4):
            one = app(sample[i : i + 1], t[i : i + 1], text[i : i + 1], mem1)
            assert torch.allclose(out[i : i + 1], one, atol=1e-5)

        # CFG: [uncond; cond] halves; the unconditional half without demos equals the base.
        mem4 = mem1.expand(4)
        cfg_mem = DemoMemory.cat([mem4.without_demos(), mem4])
        x2, t2 = torch.cat([sample, sample]), torch.cat([t, t])
        text2 = torch.cat([torch.zeros_like(text), text])
        cfg = app(x2, t2, text2, cfg_mem)
        assert torch.allclose(cfg[4:], out, atol=1e-5)
        assert torch.allclose(cfg[:4], base_out(app, sample, t, torch.zeros_like(text)), atol=ATOL)
        tiled = app(x2, t2, torch.cat([text, text]), mem4.repeat(2))
        assert torch.allclose(tiled[:4], out, atol=1e-5) and torch.allclose(tiled[4:], out, atol=1e-5)

        # Requests with different numbers of demos batch together (padded, masked slots).
        mem_b = app.encode_demos(bb.images(1, 5, seed=8), bb.text(1, 5, seed=9))
        both = DemoMemory.cat([mem1, mem_b])
        assert both.num_demos == 5 and both.mask[0].tolist() == [True] * 3 + [False] * 2
        got = app(sample[:2], t[:2], text[:2], both)
        assert torch.allclose(got[0], out[0], atol=1e-5)
        assert torch.allclose(got[1:], app(sample[1:2], t[1:2], text[1:2], mem_b), atol=1e-5)

        with pytest.raises(ValueError):
            app(sample, t, text, DemoMemory.cat([mem1, mem1]))  # batch 2 vs 4: ambiguous


def test_deepcopy_and_pickle_rebind_hooks(pixel, tmp_path):
    # EMA copies are made with deepcopy; the copy's hooks must drive the copy's layers.
    app = make_apprentice(pixel)
    app.set_gates(0.5)
    sample, t, text, demo_images, demo_text = request_inputs(pixel, 2, 3)
    with torch.no_grad():
        ref = app(sample, t, text, app.encode_demos(demo_images, demo_text))
        ema = copy.deepcopy(app)
        assert torch.allclose(ema(sample, t, text, ema.encode_demos(demo_images, demo_text)), ref, atol=ATOL)
        ema.set_gates(0.0)
        assert torch.allclose(ema(sample, t, text, ema.encode_demos(demo_images, demo_text)),
                              base_out(app, sample, t, text), atol=ATOL)
        assert torch.allclose(app(sample, t, text, app.encode_demos(demo_images, demo_text)), ref, atol=ATOL)
        torch.save(app, tmp_path / "app.pt")
        loaded = torch.load(tmp_path / "app.pt", weights_only=False)
        assert torch.allclose(loaded(sample, t, text, loaded.encode_demos(demo_images, demo_text)), ref, atol=ATOL)


def test_bf16_sampling_stays_close_to_fp32_and_rejects_other_precisions(pixel):
    """`sample_precision: bf16` autocasts the UNet calls only: same noise, same scheduler,
    images within bf16's rounding of fp32's; the latent stays fp32."""
    from suti.models.backbone import sample_cfg
    from suti.models.diffusion import make_scheduler

    unet = pixel.unet.eval()
    text = pixel.text(2, seed=5)
    fn = lambda x, t, guided: unet(x, t, encoder_hidden_states=torch.cat([text, text]) if guided else text).sample  # noqa: E731
    out = {}
    for prec in ("fp32", "bf16"):
        sched = make_scheduler("ddim")
        out[prec] = sample_cfg(fn, (2, 3, 16, 16), sched, 4, 3.0, torch.Generator().manual_seed(0), "cpu",
                               precision=prec)
    assert out["bf16"].dtype == torch.float32
    diff = (out["bf16"] - out["fp32"]).abs()
    assert 0 < diff.max() < 0.1 * out["fp32"].abs().max()
    with pytest.raises(ValueError, match="fp32 or bf16"):
        sample_cfg(fn, (2, 3, 16, 16), sched, 2, 3.0, torch.Generator().manual_seed(0), "cpu", precision="fp16")
