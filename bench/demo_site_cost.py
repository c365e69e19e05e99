"""What demo attention costs per training step and per sampled image, by where it reads.

The default profile's UNet (untrained weights: the cost does not depend on them), wrapped
as the apprentice with each `demo_sites` / `demo_pool` setting, timed on the same inputs:
a training step (demo encoding + denoising forward + backward into the demo layers, batch 16,
K = 3 demos; the base frozen, or trained with or without a gradient through its demo pass) and a guided sampling pass (demos encoded once, 25 steps,
batch 4 with CFG). The settings are timed round-robin, so a busy machine slows each alike.
Prints JSON: seconds per step, seconds per sampled batch, added parameters, demo keys per site.

    .venv/bin/python bench/demo_site_cost.py --setting down_up:0 --setting all:0 --setting all:16 --setting all:8
    .venv/bin/python bench/demo_site_cost.py --setting down_up:0 --setting down_up:0:base --setting down_up:0:base-nodemograd
    .venv/bin/python bench/demo_site_cost.py --setting down_up:0:base --text   # + the text tower's share of a step

A setting is SITES:POOL[:BASE[:PRECISION]], BASE = frozen (default) | base (the base UNet trains too,
apprentice.train_base) | base-nodemograd (it trains, but the demo pass records no graph: apprentice.demo_grad=false);
PRECISION = fp32 (default) | bf16 (the forward passes under bfloat16 autocast, as Lightning's bf16-mixed).

    .venv/bin/python bench/demo_site_cost.py --setting down_up:0:base --setting down_up:0:base:bf16
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setting", action="append", default=[], metavar="SITES:POOL[:BASE[:PRECISION]]",
                    help="demo_sites:demo_pool[:frozen|base|base-nodemograd], e.g. all:16 (default: down_up:0 all:0 all:16)")
    ap.add_argument("--profile", default="default")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per setting (after one warm-up)")
    ap.add_argument("--train-steps", type=int, default=4, help="training steps per round")
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--demos", type=int, default=3)
    ap.add_argument("--text", action="store_true",
                    help="also time the batch's prompts and demo texts through the profile's text tower (untrained), "
                         "as the training step encodes them: each step anew vs the training's text cache")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default); 1 beside another torch job (two 2-thread jobs on 2 cores spin)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from suti.config import compose
    from suti.models.apprentice import ApprenticeConfig, ApprenticeUNet, DemoMemory
    from suti.tasks.foundation import untrained_unet

    torch.manual_seed(0)
    cfg = compose([f"profile={args.profile}", "workdir=/tmp/suti-demo-site-cost"])
    base = untrained_unet(cfg)
    R, C = int(cfg.world.resolution), int(base.config.in_channels)
    L, D = 32, int(base.config.cross_attention_dim)
    settings = []
    for s in args.setting or ["down_up:0", "all:0", "all:16"]:
        sites, pool, mode, prec = (s.split(":") + ["", "", ""])[:4]
        mode, prec = mode or "frozen", prec or "fp32"
        if mode not in ("frozen", "base", "base-nodemograd"):
            raise SystemExit(f"setting {s!r}: BASE must be frozen, base or base-nodemograd")
        if prec not in ("fp32", "bf16"):
            raise SystemExit(f"setting {s!r}: PRECISION must be fp32 or bf16 (autocast of the forward passes)")
        app = ApprenticeUNet(copy.deepcopy(base), ApprenticeConfig(demo_sites=sites, demo_pool=int(pool or 0),
                                                                    gate_init=1.0, out_init="zero"))
        app.freeze_base(mode == "frozen")
        params = list(app.demo_parameters()) + ([] if mode == "frozen" else list(app.unet.parameters()))
        opt = torch.optim.AdamW(params, lr=1e-3)
        settings.append({"name": s, "app": app, "opt": opt, "train": [], "sample": [],
                         "demo_grad": mode != "base-nodemograd", "bf16": prec == "bf16"})

    g = torch.Generator().manual_seed(1)
    B, K = args.batch, args.demos
    x = torch.randn(B, C, R, R, generator=g)
    text = torch.randn(B, L, D, generator=g)
    demos = torch.randn(B, K, C, R, R, generator=g)
    demo_text = torch.randn(B, K, L, D, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    n = 4  # sampled images per request, CFG doubles the batch

    def train_round(st) -> float:
        app, opt = st["app"], st["opt"]
        app.train()
        t0 = time.perf_counter()
        for _ in range(args.train_steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=st["bf16"]):
                mem = app.encode_demos(demos, demo_text, base_grad=st["demo_grad"])
                loss = (app(x, t, text, mem).float() - x).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - t0) / args.train_steps

    def sample_round(st) -> float:
        app = st["app"].eval()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=st["bf16"]):
            m = app.encode_demos(demos[:1], demo_text[:1]).detach().expand(n)
            mem = DemoMemory.cat([m.without_demos(), m])  # CFG layout [no demos; demos]
            xs = torch.randn(n, C, R, R, generator=torch.Generator().manual_seed(2))
            for i in range(args.sample_steps):
                ts = torch.full((2 * n,), 999 - i * (1000 // args.sample_steps))
                out = app(torch.cat([xs, xs]), ts, text[:2 * n], mem).float()
                xs = xs - 0.01 * out[n:]
        return time.perf_counter() - t0

    for rnd in range(args.rounds + 1):  # round 0 warms up
        for st in settings:
            tr, sa = train_round(st), sample_round(st)
            if rnd:
                st["train"].append(tr)
                st["sample"].append(sa)
        print(f"round {rnd}/{args.rounds} done", file=sys.stderr, flush=True)

    ref = min(settings[0]["train"])
    out = []
    for st in settings:
        app = st["app"]
        with torch.no_grad():
            mem = app.encode_demos(demos[:1], demo_text[:1])
        out.append({"setting": st["name"], "sites": len(app.sites), "added_params": app.param_overhead()["added"],
                    "demo_keys_per_site": {s: int(v.shape[1]) for s, v in mem.features.items()},
                    "train_s_per_step": round(min(st["train"]), 4),
                    "train_vs_first": round(min(st["train"]) / ref, 3),
                    "sample_s_per_request": round(min(st["sample"]), 4)})
    doc = {"benchmark": "demo_site_cost", "profile": args.profile, "batch": B, "demos": K,
           "resolution": R, "sample_steps": args.sample_steps, "images_per_request": n,
           "threads": torch.get_num_threads(), "results": out}
    if args.text:
        doc["text"] = text_cost(cfg, B, K, args.rounds, ref)
    print(json.dumps(doc, indent=2))
    return 0


def text_cost(cfg, batch: int, demos: int, rounds: int, step_s: float) -> dict:
    """A step's B prompts and B x K demo texts (world-like captions, a tenth empty as after dropout)
    through the text tower: encoded each step (the step before the cache) vs looked up in
    `tasks.apprentice.module.TextStates` once its strings are in it."""
    import numpy as np
    import torch

    from suti.models.clip import build_clip, text_hidden_states, tokenizer
    from suti.tasks.apprentice.module import TextStates

    name = str(cfg.backbone.clip_config)
    clip = build_clip(name, image_size=int(cfg.world.resolution)).eval()
    tok = tokenizer(name)
    rng = np.random.default_rng(0)
    words = "red blue green striped dotted robot toy mug plush star emblem on a wooden floor in the snow".split()
    pool = [" ".join(rng.choice(words, size=int(rng.integers(6, 16)))) for _ in range(200)] + [""] * 20
    batches = [[pool[int(i)] for i in rng.integers(0, len(pool), batch * (1 + demos))] for _ in range(rounds + 1)]
    cache = TextStates(lambda ts: text_hidden_states(clip, tok(list(ts))))
    with torch.no_grad():
        for b in batches:  # warm-up; fills the cache with every string of the pool the rounds use
            text_hidden_states(clip, tok(b[:batch]))
            text_hidden_states(clip, tok(b[batch:]))
            cache(b)
        t0 = time.perf_counter()
        for b in batches[1:]:
            text_hidden_states(clip, tok(b[:batch]))
            text_hidden_states(clip, tok(b[batch:]))
        anew = (time.perf_counter() - t0) / rounds
        t0 = time.perf_counter()
        for b in batches[1:]:
            cache(b[:batch])
            cache(b[batch:])
        cached = (time.perf_counter() - t0) / rounds
    return {"texts_per_step": batch * (1 + demos), "encoded_s_per_step": round(anew, 4),
            "cached_s_per_step": round(cached, 5), "encoded_vs_first_setting_step": round(anew / step_s, 3)}


if __name__ == "__main__":
    sys.exit(main())
