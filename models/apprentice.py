"""The SuTI apprentice: a diffusers UNet plus Re-Imagen-style demonstration attention.

The apprentice is the base text-to-image UNet with NEW attention layers placed after
every cross-attention transformer of the down and up stacks (optionally the mid block).
Each new layer attends from the current features to the features of the K
demonstrations (image, text) at the same site. Demonstrations are encoded by re-using
the UNet's own DownStack (conv_in, time embedding at a small fixed timestep, down blocks,
optionally the mid block) with each demo's own text as ``encoder_hidden_states``.

Everything is done with forward hooks on the UNet's existing modules, so the same code
serves any ``diffusers.UNet2DConditionModel`` (the tiny pixel-space backbone and Stable
Diffusion's latent UNet alike) and the base UNet's state-dict keys are unchanged.

Each new layer computes ``h + tanh(gate) * attn(norm(h), demo)`` with ``gate`` starting
at zero, so a freshly built apprentice reproduces the base UNet exactly.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ApprenticeConfig", "DemoMemory", "DemoAttention", "ApprenticeUNet"]

_DEMO_SITES = ("down_up", "down_up_mid", "all")


@dataclass
class ApprenticeConfig:
    """Where and how demonstration attention is added to a UNet."""

    # "down_up": after every down/up cross-attn transformer; "down_up_mid": also the mid block;
    # "all": down_up_mid plus the resolutions without attention (after the last resnet of every
    # plain down/up block: the highest resolution of the tiny backbone and of SD)
    demo_sites: str = "down_up"
    heads: int = 4  # attention heads per demo layer (reduced to the largest divisor of the site's channels if needed)
    demo_timestep: int = 0  # fixed diffusion timestep used to embed time while encoding (clean) demos
    # demo tokens per site at most demo_pool x demo_pool per demo (average-pooled when the site is larger), so the
    # highest resolution (demo_sites="all") can be read at a fraction of its full attention cost; 0: never pooled
    demo_pool: int = 0
    gate_init: float = 0.0  # initial gate value; 0 makes the apprentice start exactly as the base UNet
    # "random": default Linear init of the output projection (the gate alone makes a fresh
    # apprentice equal the base, and only the gates get a gradient at step 0); "zero": the
    # output projection starts at 0 (as ControlNet's zero convolutions), so with a non-zero
    # gate the fresh apprentice still equals the base and every output weight learns at once
    out_init: str = "random"

    def __post_init__(self) -> None:
        if self.out_init not in ("random", "zero"):
            raise ValueError(f"out_init must be 'random' or 'zero', got {self.out_init!r}")
        if self.out_init == "zero" and self.gate_init == 0.0:
            raise ValueError("out_init 'zero' with gate_init 0 gives the demo layers no gradient at all: "
                             "set gate_init (e.g. 1.0)")
        if self.demo_sites not in _DEMO_SITES:
            raise ValueError(f"demo_sites must be one of {_DEMO_SITES}, got {self.demo_sites!r}")
        if self.heads < 1:
            raise ValueError("heads must be >= 1")
        if self.demo_pool < 0:
            raise ValueError(f"demo_pool must be >= 0 (0: off), got {self.demo_pool}")


def _site_key(name: str) -> str:
    # ModuleDict keys may not contain dots.
    return name.replace(".", "__")


@dataclass
class DemoMemory:
    """Encoded demonstrations, computed once per request and reused at every step.

    ``features[site]`` has shape (B, K*h*w, C_site): the K demos' tokens at that hook
    site, demo-major (demo k owns tokens ``k*h*w .. (k+1)*h*w``). ``mask`` (B, K) says
    which demos are present; absent demos are excluded from attention.
    """

    features: dict[str, torch.Tensor]
    mask: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """Number of requests (rows) the memory holds."""
        return int(self.mask.shape[0])

    @property
    def num_demos(self) -> int:
        """K, the number of demo slots per row (present or not)."""
        return int(self.mask.shape[1])

    def is_empty(self) -> bool:
        """True when no row has any present demo (the apprentice then equals the base UNet)."""
        return self.num_demos == 0 or not bool(self.mask.any())

    def token_mask(self, site: str) -> torch.Tensor:
        """(B, K*h*w) boolean key mask for ``site``, expanded from the per-demo mask."""
        tokens = self.features[site].shape[1]
        per_demo = tokens // max(self.num_demos, 1)
        return self.mask.repeat_interleave(per_demo, dim=1)

    def _map(self, fn_feat, fn_mask) -> "DemoMemory":
        return DemoMemory({k: fn_feat(v) for k, v in self.features.items()}, fn_mask(self.mask), dict(self.meta))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "DemoMemory":
        """Move/cast the features (the mask only moves: it stays boolean)."""
        return self._map(lambda t: t.to(device=device, dtype=dtype), lambda m: m.to(device=device))

    def detach(self) -> "DemoMemory":
        """Memory cut from the autograd graph (for caching across denoising steps)."""
        return self._map(lambda t: t.detach(), lambda m: m)

    def expand(self, batch: int) -> "DemoMemory":
        """Broadcast a batch-1 memory to ``batch`` rows (a view: no copy)."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"can only broadcast a batch-1 memory, this one has batch {self.batch_size}")
        return self._map(lambda t: t.expand(batch, *t.shape[1:]), lambda m: m.expand(batch, -1))

    def repeat(self, times: int) -> "DemoMemory":
        """Tile the whole batch ``times`` times: [m; m; ...] (the CFG layout [uncond; cond])."""
        return self._map(lambda t: t.repeat(times, 1, 1), lambda m: m.repeat(times, 1))

    def repeat_interleave(self, times: int) -> "DemoMemory":
        """Repeat each row ``times`` times in place: several images per request."""
        return self._map(lambda t: t.repeat_interleave(times, dim=0), lambda m: m.repeat_interleave(times, dim=0))

    def without_demos(self) -> "DemoMemory":
        """Same shapes, every demo masked out (e.g. the unconditional branch of CFG)."""
        return self._map(lambda t: t, lambda m: torch.zeros_like(m))

    def select(self, index: torch.Tensor | Sequence[int] | slice) -> "DemoMemory":
        """Rows ``index`` of the memory."""
        return self._map(lambda t: t[index], lambda m: m[index])

    @classmethod
    def cat(cls, memories: Sequence["DemoMemory"]) -> "DemoMemory":
        """Concatenate along the batch; rows with fewer demos are padded with masked slots."""
        if not memories:
            raise ValueError("need at least one memory")
        sites = list(memories[0].features)
        if any(list(m.features) != sites for m in memories):
            raise ValueError("memories come from different apprentices (sites differ)")
        k_max = max(m.num_demos for m in memories)
        feats: dict[str, list[torch.Tensor]] = {s: [] for s in sites}
        masks = []
        for m in memories:
            pad_k = k_max - m.num_demos
            for s in sites:
                t = m.features[s]
                if pad_k:
                    per_demo = _tokens_per_demo(memories, s)
                    t = F.pad(t, (0, 0, 0, pad_k * per_demo))
                feats[s].append(t)
            masks.append(F.pad(m.mask, (0, pad_k), value=False) if pad_k else m.mask)
        return cls({s: torch.cat(v, 0) for s, v in feats.items()}, torch.cat(masks, 0), dict(memories[0].meta))


def _tokens_per_demo(memories: Sequence[DemoMemory], site: str) -> int:
    for m in memories:
        if m.num_demos:
            return m.features[site].shape[1] // m.num_demos
    return 0


class DemoAttention(nn.Module):
    """Gated attention from UNet features (queries) to demonstration tokens (keys/values).

    ``out = h + tanh(gate) * attn(LN(h), LN(proj(demo)))``; ``proj`` maps the source
    features' channels to this site's channels when they differ (up-stack sites read the
    down-stack features of the same resolution).
    """

    def __init__(self, channels: int, demo_channels: int, heads: int, gate_init: float = 0.0,
                 zero_out: bool = False):
        super().__init__()
        # Largest head count <= heads that divides the channels, so any backbone works.
        heads = max(h for h in range(1, min(heads, channels) + 1) if channels % h == 0)
        self.heads = heads
        self.channels = channels
        self.demo_channels = demo_channels
        self.proj = nn.Linear(demo_channels, channels) if demo_channels != channels else nn.Identity()
        self.norm_q = nn.LayerNorm(channels)
        self.norm_kv = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.to_out = nn.Linear(channels, channels)
        if zero_out:
            nn.init.zeros_(self.to_out.weight)
            nn.init.zeros_(self.to_out.bias)
        self.gate = nn.Parameter(torch.full((1,), float(gate_init)))

    def project_demo(self, demo: torch.Tensor) -> torch.Tensor:
        """Map (B, T, demo_channels) source tokens to this site's channels."""
        return self.proj(demo)

    def forward(self, hidden: torch.Tensor, demo: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """hidden (N, C, H, W) or (N, T, C); demo (N, S, C); token_mask (N, S) bool, True = attend."""
        spatial = hidden.dim() == 4
        if spatial:
            n, c, hh, ww = hidden.shape
            x = hidden.flatten(2).transpose(1, 2)
        else:
            x = hidden
        n, t, c = x.shape
        d = c // self.heads
        q = self.to_q(self.norm_q(x)).view(n, t, self.heads, d).transpose(1, 2)
        kv = self.norm_kv(demo.to(x.dtype))
        s = kv.shape[1]
        k = self.to_k(kv).view(n, s, self.heads, d).transpose(1, 2)
        v = self.to_v(kv).view(n, s, self.heads, d).transpose(1, 2)
        # Rows with no present demo would softmax over nothing (NaN); let them attend to
        # everything and zero their contribution below, so they equal the base exactly.
        has_any = token_mask.any(dim=1)
        keep = token_mask | ~has_any[:, None]
        # no mask when every token is attended (the usual case): the fused kernels need none
        attn_mask = None if bool(keep.all()) else keep[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.to_out(out.transpose(1, 2).reshape(n, t, c))
        out = out * has_any.to(out.dtype)[:, None, None]
        y = x + torch.tanh(self.gate).to(x.dtype) * out
        if spatial:
            y = y.transpose(1, 2).reshape(n, c, hh, ww)
        return y


class _StopDemoPass(Exception):
    """Raised by a hook to end the demo-encoding pass once the DownStack has run."""


def _replace_sample(output: Any, new: torch.Tensor) -> Any:
    # Transformer2DModel returns (sample,) with return_dict=False (how UNet blocks call it)
    # or a Transformer2DModelOutput; keep whichever form we got.
    if isinstance(output, tuple):
        return (new, *output[1:])
    if hasattr(output, "sample"):
        output.sample = new
        return output
    return new


def _get_sample(output: Any) -> torch.Tensor:
    if isinstance(output, tuple):
        return output[0]
    if hasattr(output, "sample"):
        return output.sample
    return output


def _module_channels(module: nn.Module) -> int:
    for attr in ("out_channels", "in_channels"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the channel count of {type(module).__name__}")


class _SiteHook:
    """Forward hook on a site/source module: records demo features or injects demo attention."""

    def __init__(self, owner: "ApprenticeUNet", name: str):
        self.owner = owner
        self.name = name
        self.key = _site_key(name)

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        owner = self.owner
        mode = owner._mode
        if mode == "record" and self.name in owner.sources:
            owner._records[self.name] = _get_sample(output)
            return None
        if mode == "inject" and self.name in owner.sites:
            memory = owner._memory
            demo = memory.features[self.name]
            new = owner.demo_layers[self.key](_get_sample(output), demo, memory.token_mask(self.name).to(demo.device))
            return _replace_sample(output, new)
        return None  # plain UNet behaviour (also during checkpoint recomputation)


class _StopHook:
    """Forward pre-hook that ends the demo pass once the needed DownStack has run."""

    def __init__(self, owner: "ApprenticeUNet"):
        self.owner = owner

    def __call__(self, module: nn.Module, args: Any) -> None:
        if self.owner._mode == "record":
            raise _StopDemoPass()


class ApprenticeUNet(nn.Module):
    """A ``UNet2DConditionModel`` with demonstration attention (the SuTI apprentice).

    The wrapped UNet is kept as ``self.unet`` with its weights untouched; the new layers
    live in ``self.demo_layers`` (one :class:`DemoAttention` per hook site).
    """

    def __init__(self, unet: nn.Module, config: ApprenticeConfig | None = None):
        super().__init__()
        self.config = config or ApprenticeConfig()
        self.unet = unet
        self._mode: str | None = None  # None: plain UNet; "record": demo pass; "inject": apprentice pass
        self._memory: DemoMemory | None = None
        self._records: dict[str, torch.Tensor] = {}

        self.sites, self.sources, self.site_source = self._plan_sites()
        ref = next(unet.parameters())
        self.demo_layers = nn.ModuleDict(
            {
                _site_key(site): DemoAttention(
                    _module_channels(module),
                    _module_channels(self.sources[self.site_source[site]]),
                    self.config.heads,
                    self.config.gate_init,
                    zero_out=self.config.out_init == "zero",
                )
                for site, module in self.sites.items()
            }
        ).to(device=ref.device, dtype=ref.dtype)
        self._install_hooks()

    # ------------------------------------------------------------------ structure
    def _plan_sites(self) -> tuple[dict[str, nn.Module], dict[str, nn.Module], dict[str, str]]:
        """Find hook sites and, for each, which DownStack module provides its demo features."""
        unet = self.unet
        every = self.config.demo_sites == "all"
        sites: dict[str, nn.Module] = {}
        sources: dict[str, nn.Module] = {}
        site_source: dict[str, str] = {}

        # Resolution level of each down block: number of downsamplers before it.
        level, down_levels = 0, []
        for blk in unet.down_blocks:
            down_levels.append(level)
            if getattr(blk, "downsamplers", None):
                level += 1
        deepest = level

        # Per level, the last DownStack feature before downsampling: the last cross-attn
        # transformer if the block has one, else its last resnet (so every up site at a
        # resolution has a counterpart even where the down block has no attention).
        level_source: dict[int, str] = {}
        for i, blk in enumerate(unet.down_blocks):
            attns = getattr(blk, "attentions", None)
            for j, attn in enumerate(attns or []):
                name = f"down_blocks.{i}.attentions.{j}"
                sites[name] = attn
                sources[name] = attn
                site_source[name] = name
            if attns:
                level_source[down_levels[i]] = f"down_blocks.{i}.attentions.{len(attns) - 1}"
            else:
                name = f"down_blocks.{i}.resnets.{len(blk.resnets) - 1}"
                sources[name] = blk.resnets[-1]
                level_source[down_levels[i]] = name
                if every:
                    sites[name] = blk.resnets[-1]
                    site_source[name] = name

        if self.config.demo_sites in ("down_up_mid", "all") and unet.mid_block is not None:
            for j, attn in enumerate(getattr(unet.mid_block, "attentions", None) or []):
                name = f"mid_block.attentions.{j}"
                sites[name] = attn
                sources[name] = attn
                site_source[name] = name

        level = deepest
        for i, blk in enumerate(unet.up_blocks):
            attns = getattr(blk, "attentions", None) or []
            # plain up blocks get one site after their last resnet when every resolution is asked for
            here = [(f"up_blocks.{i}.attentions.{j}", a) for j, a in enumerate(attns)] or (
                [(f"up_blocks.{i}.resnets.{len(blk.resnets) - 1}", blk.resnets[-1])] if every else [])
            for name, module in here:
                if level not in level_source:
                    # Unusual layouts: fall back to the nearest resolution the DownStack has.
                    nearest = min(level_source, key=lambda lv: abs(lv - level))
                    site_source[name] = level_source[nearest]
                else:
                    site_source[name] = level_source[level]
                sites[name] = module
            if getattr(blk, "upsamplers", None):
                level -= 1
        if not sites:
            raise ValueError("the UNet has no cross-attention transformers to attach demo attention to")
        return sites, sources, site_source

    def _install_hooks(self) -> None:
        # Hooks are small callable objects holding a reference to this apprentice (not
        # closures), so copy.deepcopy (EMA copies) and pickling rebind them to the copy.
        for name, module in {**self.sources, **self.sites}.items():
            module.register_forward_hook(_SiteHook(self, name))
        # End the demo pass as soon as the DownStack (and the mid block, if used) has run:
        # the up stack is not needed to encode demonstrations.
        unet = self.unet
        needs_mid = any(s.startswith("mid_block.") for s in self.sites)
        stop_at = unet.up_blocks[0] if (needs_mid or unet.mid_block is None) else unet.mid_block
        stop_at.register_forward_pre_hook(_StopHook(self))

    @contextmanager
    def _state(self, mode: str | None, memory: DemoMemory | None = None):
        # The hooks read this state; restore it even if the UNet raises.
        prev = (self._mode, self._memory)
        self._mode, self._memory = mode, memory
        try:
            yield
        finally:
            self._mode, self._memory = prev
            self._records = {}

    # ------------------------------------------------------------------ demos
    def encode_demos(
        self,
        demo_images: torch.Tensor,
        demo_text_states: torch.Tensor,
        demo_mask: torch.Tensor | None = None,
        timestep: int | float | None = None,
        base_grad: bool = True,
    ) -> DemoMemory:
        """Encode K demonstrations per request with the UNet's own DownStack (Re-Imagen).

        Args:
            demo_images: (B, K, C, H, W) in the UNet's input space (pixels for the tiny
                backbone, VAE latents for Stable Diffusion). Clean, not noised.
            demo_text_states: (B, K, L, D) text-encoder hidden states of each demo's own text.
            demo_mask: (B, K) bool, True where a demo is present (default: all present).
                Absent demos are not encoded and never attended to.
            timestep: timestep embedded for the demo pass (default ``config.demo_timestep``).
            base_grad: whether the UNet's own pass over the demos records a graph (only
                matters when the base trains): False stops the gradient at the UNet's
                features, so the base learns from the target pass alone and a training
                step skips the demo pass's backward; the demo projections still learn.

        Returns:
            A :class:`DemoMemory` with one (B, K*h*w, C) tensor per hook site; reuse it at
            every denoising step (``.detach()`` it for sampling).
        """
        if demo_images.dim() != 5 or demo_text_states.dim() != 4:
            raise ValueError("demo_images must be (B, K, C, H, W) and demo_text_states (B, K, L, D)")
        b, k = demo_images.shape[:2]
        if demo_text_states.shape[:2] != (b, k):
            raise ValueError(f"demo_text_states batch/K {tuple(demo_text_states.shape[:2])} != images {(b, k)}")
        device = demo_images.device
        if demo_mask is None:
            demo_mask = torch.ones(b, k, dtype=torch.bool, device=device)
        demo_mask = demo_mask.to(device=device, dtype=torch.bool)
        if timestep is None:
            timestep = self.config.demo_timestep
        dtype = next(self.demo_layers.parameters()).dtype

        flat_mask = demo_mask.reshape(-1)
        present = flat_mask.nonzero(as_tuple=True)[0]
        records: dict[str, torch.Tensor] = {}
        if present.numel():
            # Encode only the present demos: saves work, and garbage (even NaN) in absent
            # slots can never leak into the memory.
            images = demo_images.reshape(b * k, *demo_images.shape[2:])[present]
            texts = demo_text_states.reshape(b * k, *demo_text_states.shape[2:])[present]
            t = torch.full((images.shape[0],), timestep, device=device, dtype=torch.long)
            with self._state("record"), torch.set_grad_enabled(torch.is_grad_enabled() and base_grad):
                try:
                    self.unet(images, t, encoder_hidden_states=texts, return_dict=False)
                except _StopDemoPass:
                    pass
                records = dict(self._records)
            missing = set(self.sources) - set(records)
            if missing:
                raise RuntimeError(f"demo pass did not reach {sorted(missing)}")

        features: dict[str, torch.Tensor] = {}
        for site in self.sites:
            layer = self.demo_layers[_site_key(site)]
            src_name = self.site_source[site]
            if present.numel():
                src = records[src_name]  # (P, C_src, h, w)
                side = self.config.demo_pool
                if side and max(src.shape[-2:]) > side:
                    src = F.adaptive_avg_pool2d(src, (min(side, src.shape[-2]), min(side, src.shape[-1])))
                hw = src.shape[-2] * src.shape[-1]
                tokens = layer.project_demo(src.flatten(2).transpose(1, 2))  # (P, h*w, C)
                full = tokens.new_zeros(b * k, hw, tokens.shape[-1])
                full = full.index_copy(0, present, tokens)
                features[site] = full.reshape(b, k * hw, tokens.shape[-1])
            else:
                features[site] = torch.zeros(b, 0, layer.channels, device=device, dtype=dtype)
        mask = demo_mask if present.numel() else torch.zeros(b, 0, dtype=torch.bool, device=device)
        return DemoMemory(features, mask, {"timestep": timestep})

    def empty_memory(self, batch: int = 1) -> DemoMemory:
        """A memory with no demos: the apprentice then behaves exactly as the base UNet."""
        ref = next(self.demo_layers.parameters())
        return DemoMemory(
            {s: torch.zeros(batch, 0, self.demo_layers[_site_key(s)].channels, device=ref.device, dtype=ref.dtype)
             for s in self.sites},
            torch.zeros(batch, 0, dtype=torch.bool, device=ref.device),
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        memory: DemoMemory | None = None,
        **unet_kwargs: Any,
    ) -> torch.Tensor:
        """Noise prediction of the apprentice (same as ``unet(...).sample``).

        ``memory`` may have the same batch as ``sample`` or batch 1 (broadcast); use
        ``memory.repeat`` / ``repeat_interleave`` / ``DemoMemory.cat`` for other layouts
        (e.g. CFG). ``None`` or an empty memory gives exactly the base UNet's output.
        Extra keyword arguments go to the UNet (e.g. ``added_cond_kwargs``).
        """
        unet_kwargs["return_dict"] = False
        if memory is None or memory.is_empty():
            with self._state(None):
                return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **unet_kwargs)[0]
        n = sample.shape[0]
        if memory.batch_size != n:
            if memory.batch_size != 1:
                raise ValueError(
                    f"memory batch {memory.batch_size} does not match sample batch {n}; "
                    "use memory.repeat(...) / repeat_interleave(...) / DemoMemory.cat(...)"
                )
            memory = memory.expand(n)
        if set(memory.features) != set(self.sites):
            raise ValueError("memory sites do not match this apprentice's sites")
        with self._state("inject", memory):
            return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **unet_kwargs)[0]

    # ------------------------------------------------------------------ parameters
    def demo_parameters(self) -> Iterator[nn.Parameter]:
        """Only the new (demonstration attention) parameters."""
        return self.demo_layers.parameters()

    def gate_parameters(self) -> Iterator[nn.Parameter]:
        """The per-layer gates (one scalar per site)."""
        return (layer.gate for layer in self.demo_layers.values())

    @torch.no_grad()
    def set_gates(self, value: float) -> None:
        """Set every gate to ``value`` (0 = base UNet behaviour)."""
        for g in self.gate_parameters():
            g.fill_(value)

    def param_overhead(self) -> dict[str, float]:
        """Parameter counts: ``base`` (UNet), ``added`` (demo layers), ``ratio`` = added / base."""
        base = sum(p.numel() for p in self.unet.parameters())
        added = sum(p.numel() for p in self.demo_parameters())
        return {"base": base, "added": added, "ratio": added / base if base else math.inf}

    def freeze_base(self, frozen: bool = True) -> None:
        """Freeze (or unfreeze) the base UNet's parameters; demo layers stay trainable."""
        self.unet.requires_grad_(not frozen)

    def apprentice_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict of the new layers only (keys relative to ``demo_layers``)."""
        return self.demo_layers.state_dict()

    def load_apprentice_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True):
        """Load new-layer weights saved by :meth:`apprentice_state_dict`."""
        return self.demo_layers.load_state_dict(state_dict, strict=strict)
