"""Can demonstration attention learn to copy a subject at all? A foundation-free toy.

A tiny pixel UNet (the tiny backbone's layout, at 16 px) is first trained as a base on
discs of random colour with one fixed prompt, so the words cannot say which colour. Then
the apprentice (the real `ApprenticeUNet` and the real diffusion loss) learns from rows
whose K demos are other discs of the target's colour. Unseen colours are rendered once with
their own demos and once with another subject's demos; `colour_gain` = swap distance - own
distance (mean RGB of the disc to the subject's colour) is > 0 when the demos are read.

    .venv/bin/python bench/toy_reads_demos.py --recipe lr=2e-4 --recipe lr=1e-3 --recipe lr=1e-3,train_base=1

Each recipe is comma-separated `key=value` from `ToyRecipe`. Prints one JSON line per recipe.
The test `tests/test_reads_demos.py` runs this toy small.
"""
from __future__ import annotations

import argparse
import colorsys
import copy
import json
import sys
import time
from dataclasses import asdict, dataclass, fields

import numpy as np
import torch

R = 16
L, D = 4, 32  # prompt tokens and width of the toy's fixed text states


@dataclass
class ToyRecipe:
    base_steps: int = 400
    steps: int = 300
    lr: float = 1e-3
    train_base: int = 0
    base_lr: float = 1e-4
    demos: int = 3
    batch: int = 16
    gate_init: float = 0.0
    out_init: str = "random"
    demo_sites: str = "down_up"
    guidance: float = 3.0
    seed: int = 0

    @classmethod
    def parse(cls, text: str) -> "ToyRecipe":
        types = {f.name: f.type for f in fields(cls)}
        kw = {}
        for kv in filter(None, text.split(",")):
            k, v = kv.split("=", 1)
            if k not in types:
                raise SystemExit(f"unknown toy recipe key {k!r} (one of {', '.join(types)})")
            kw[k] = {"int": int, "float": float, "str": str}[str(types[k])](v)
        return cls(**kw)


def colour_of(rng) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(rng.random(), 0.6 + 0.4 * rng.random(), 0.55 + 0.4 * rng.random())) * 255


def discs(rng, colour: np.ndarray, n: int) -> torch.Tensor:
    """n discs of `colour` at random places and sizes on a light background, in [-1, 1]."""
    yy, xx = np.mgrid[:R, :R]
    out = np.full((n, R, R, 3), 235.0)
    for i in range(n):
        cy, cx = rng.integers(R // 4, R - R // 4, 2)
        r = rng.integers(R // 5, R // 3 + 1)
        out[i][(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
    return torch.from_numpy(out / 127.5 - 1).permute(0, 3, 1, 2).float()


def foreground(x: torch.Tensor) -> np.ndarray:
    """Mean RGB (0-255) of each image's non-background pixels."""
    px = ((x.clamp(-1, 1) + 1) * 127.5).permute(0, 2, 3, 1).reshape(x.shape[0], -1, 3).numpy()
    out = []
    for p in px:
        fg = p[p.mean(1) < 200]
        out.append((fg if len(fg) >= 4 else p).mean(0))
    return np.stack(out)


def make_unet(seed: int):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(sample_size=R, in_channels=3, out_channels=3, block_out_channels=(32, 64, 64),
                                layers_per_block=1, cross_attention_dim=D, attention_head_dim=4, norm_num_groups=16,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")


def train_base(rec: ToyRecipe, text: torch.Tensor):
    from suti.models.diffusion import diffusion_loss

    unet, sch = make_unet(rec.seed), scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3)
    rng = np.random.default_rng([rec.seed, 1])
    g = torch.Generator().manual_seed(rec.seed)
    for _ in range(rec.base_steps):
        x0 = torch.cat([discs(rng, colour_of(rng), 1) for _ in range(rec.batch)])
        cond = text.expand(rec.batch, -1, -1) * (torch.rand(rec.batch, 1, 1, generator=g) > 0.1)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (rec.batch,), generator=g)
        loss = diffusion_loss(sch, unet(sch.add_noise(x0, noise, t), t, cond).sample, x0, noise, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return unet.eval()


def subject_batch(rng, n: int, k: int):
    """n examples: a target disc and k demo discs of one new colour each."""
    targets, demos = [], []
    for _ in range(n):
        ims = discs(rng, colour_of(rng), k + 1)
        targets.append(ims[0])
        demos.append(ims[1:])
    return torch.stack(targets), torch.stack(demos)


def train_apprentice(rec: ToyRecipe, base, text: torch.Tensor):
    from suti.models.apprentice import ApprenticeConfig, ApprenticeUNet
    from suti.models.diffusion import diffusion_loss

    app = ApprenticeUNet(copy.deepcopy(base), ApprenticeConfig(demo_sites=rec.demo_sites, gate_init=rec.gate_init,
                                                                   out_init=rec.out_init))
    app.freeze_base(not rec.train_base)
    groups = [{"params": list(app.demo_parameters()), "lr": rec.lr}]
    if rec.train_base:
        groups.append({"params": list(app.unet.parameters()), "lr": rec.base_lr})
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sch = scheduler()
    rng = np.random.default_rng([rec.seed, 2])
    g = torch.Generator().manual_seed(rec.seed + 1)
    app.train()
    losses = []
    for _ in range(rec.steps):
        x0, demos = subject_batch(rng, rec.batch, rec.demos)
        keep = torch.rand(rec.batch, generator=g) > 0.1  # CFG dropout of the demos
        memory = app.encode_demos(demos, text[None].expand(rec.batch, rec.demos, -1, -1),
                                  keep[:, None].expand(-1, rec.demos))
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (rec.batch,), generator=g)
        loss = diffusion_loss(sch, app(sch.add_noise(x0, noise, t), t, text.expand(rec.batch, -1, -1), memory),
                              x0, noise, t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    return app.eval(), float(np.mean(losses[-50:]))


@torch.no_grad()
def render(app, demos: torch.Tensor, text: torch.Tensor, guidance: float, seed: int, n: int = 4) -> torch.Tensor:
    """n samples for one request (DDIM 20 steps, CFG whose unconditional half has no text, no demos)."""
    from diffusers import DDIMScheduler

    sch = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
                        clip_sample=True, set_alpha_to_one=False)
    sch.set_timesteps(20)
    k = demos.shape[0]
    mem = app.encode_demos(demos[None], text[None].expand(1, k, -1, -1)).expand(n)
    mem2 = type(mem).cat([mem.without_demos(), mem])
    text2 = torch.cat([torch.zeros(n, L, D), text.expand(n, -1, -1)])
    x = torch.randn((n, 3, R, R), generator=torch.Generator().manual_seed(seed))
    for t in sch.timesteps:
        tt = torch.full((2 * n,), int(t))
        u, c = app(torch.cat([x, x]), tt, text2, mem2).chunk(2)
        x = sch.step(u + guidance * (c - u), t, x).prev_sample
    return x


def evaluate(app, text: torch.Tensor, rec: ToyRecipe, subjects: int = 8, grid: str | None = None) -> dict:
    """Own vs swapped demos on `subjects` unseen colours; `grid`: a PNG, one row per subject
    (its demos | renders with its demos | renders with the next subject's demos)."""
    rng = np.random.default_rng([rec.seed, 3])
    cols = [colour_of(rng) for _ in range(subjects)]
    demos = [discs(rng, c, rec.demos) for c in cols]
    own, swap, diff, rows = [], [], [], []
    for i, c in enumerate(cols):
        a = render(app, demos[i], text, rec.guidance, seed=i)
        b = render(app, demos[(i + 1) % subjects], text, rec.guidance, seed=i)
        rows.append(torch.cat([demos[i], a, b]))
        own += list(np.linalg.norm(foreground(a) - c, axis=1))
        swap += list(np.linalg.norm(foreground(b) - c, axis=1))
        diff.append(float((a - b).abs().mean() * 127.5))
    if grid:
        from PIL import Image

        x = ((torch.stack(rows).clamp(-1, 1) + 1) * 127.5).round().byte()  # (S, N, 3, R, R)
        s_, n_ = x.shape[:2]
        img = x.permute(0, 3, 1, 4, 2).reshape(s_ * R, n_ * R, 3).numpy()
        Image.fromarray(img).resize((n_ * R * 4, s_ * R * 4), Image.NEAREST).save(grid)
    return {"own_dist": round(float(np.mean(own)), 2), "swap_dist": round(float(np.mean(swap)), 2),
            "colour_gain": round(float(np.mean(swap) - np.mean(own)), 2),
            "own_vs_swap_pixels": round(float(np.mean(diff)), 2), "subjects": subjects}


def run(rec: ToyRecipe, base_cache: dict | None = None, grid: str | None = None) -> dict:
    text = torch.randn(L, D, generator=torch.Generator().manual_seed(99))
    key = (rec.base_steps, rec.seed, rec.batch)
    t0 = time.time()
    base = (base_cache or {}).get(key) or train_base(rec, text)
    if base_cache is not None:
        base_cache[key] = base
    t1 = time.time()
    app, loss = train_apprentice(rec, base, text)
    t2 = time.time()
    gates = [round(float(torch.tanh(g)), 3) for g in app.gate_parameters()]
    return {"recipe": asdict(rec), "base_seconds": round(t1 - t0, 1), "train_seconds": round(t2 - t1, 1),
            "final_loss": round(loss, 4), "gates": gates, **evaluate(app, text, rec, grid=grid)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipe", action="append", default=[], help="e.g. lr=1e-3,train_base=1")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--grid", help="write <grid>-<i>.png per recipe: demos | own-demo renders | swapped-demo renders")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    cache: dict = {}
    for i, text in enumerate(args.recipe or [""]):
        grid = f"{args.grid}-{i}.png" if args.grid else None
        print(json.dumps(run(ToyRecipe.parse(text), cache, grid)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
