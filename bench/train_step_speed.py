"""Do channels-last memory, bf16 autocast or `torch.compile` make the foundation's CPU training steps cheaper?

The default profile's rater (ConvTrunk, the batch of real + corrupted renders the rater
trains on) and base UNet (batch of the base recipe, text states of the tiny CLIP width), at
untrained weights (the cost does not depend on them), each timed as a full AdamW training
step (forward, backward, step) in every mode: `eager` (how they train today),
`channels_last` (inputs and weights in NHWC), `bf16` (the forward under bfloat16 autocast,
fp32 weights and optimizer: Lightning's `bf16-mixed`; pays only on CPUs with AVX-512 BF16 or
AMX, which `cpu_flags` reports) and `compile` (`torch.compile`, inductor, compiled once
before timing; the compile seconds are reported apart). Modes are timed
round-robin, so a busy machine slows each alike. Prints JSON: seconds per step per mode
and the ratio to eager, plus the largest difference of one step's loss to eager's (the
same math must give the same loss).

    .venv/bin/python bench/train_step_speed.py --model rater --model base --mode eager --mode channels_last --mode compile
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time


def rater_case(cfg, torch):
    from suti.models.foundation import RaterNet

    c = cfg.foundation.rater
    torch.manual_seed(0)
    net = RaterNet(width=int(c.width))
    r = int(cfg.world.resolution)
    g = torch.Generator().manual_seed(1)
    n = int(c.batch_size) + int(c.batch_size) // 2  # real renders + the corrupted half, one pass
    images = torch.randint(0, 255, (n, r, r, 3), generator=g, dtype=torch.uint8)

    def loss_fn(model, x):
        out = model(x)
        return sum(v.float().pow(2).mean() for v in out.values())

    return net, (images,), loss_fn


def base_case(cfg, torch):
    from suti.tasks.foundation import untrained_unet

    c = cfg.foundation.base
    unet = untrained_unet(cfg).train()
    r, ch = int(cfg.world.resolution), int(unet.config.in_channels)
    d = int(unet.config.cross_attention_dim)
    g = torch.Generator().manual_seed(1)
    b = int(c.batch_size)
    x = torch.randn(b, ch, r, r, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    text = torch.randn(b, 16, d, generator=g)

    def loss_fn(model, x, t, text):
        return model(x, t, encoder_hidden_states=text, return_dict=False)[0].pow(2).mean()

    return unet, (x, t, text), loss_fn


def clip_case(cfg, torch):
    from suti.models.clip import build_clip, clip_loss, image_pixels, tokenizer

    c = cfg.foundation.clip
    r = int(cfg.world.resolution)
    model = build_clip(cfg.backbone.clip_config, image_size=r, seed=0)
    g = torch.Generator().manual_seed(1)
    b = int(c.batch_size)
    images = torch.randint(0, 255, (b, r, r, 3), generator=g, dtype=torch.uint8)
    tokens = tokenizer(cfg.backbone.clip_config)([f"a photo of thing number {i}" for i in range(b)])

    def loss_fn(model, images, tokens):
        same = (tokens[:, None, :] == tokens[None, :, :]).all(-1)
        return clip_loss(model.encode_image(image_pixels(images)), model.encode_text(tokens), model.logit_scale, same)

    return model, (images, tokens), loss_fn


CASES = {"rater": rater_case, "base": base_case, "clip": clip_case}
MODES = ["eager", "channels_last", "bf16", "bf16_channels_last", "compile"]


def cpu_flags() -> list[str]:
    """The CPU's bf16 matrix features (empty: bf16 autocast has no fast kernels here)."""
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")})


def autocast_fn(fn, torch):
    def run(*a):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(*a)
        return out.float()
    return run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", choices=sorted(CASES), default=[])
    ap.add_argument("--mode", action="append", choices=MODES, default=[])
    ap.add_argument("--profile", default="default")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per mode (after one warm-up)")
    ap.add_argument("--steps", type=int, default=3, help="training steps per round")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from suti.config import compose

    cfg = compose([f"profile={args.profile}", "workdir=/tmp/suti-train-step-speed"])
    modes = args.mode or MODES
    results = []
    for name in args.model or ["rater", "base", "clip"]:
        model0, inputs, loss_fn = CASES[name](cfg, torch)
        runs = []
        for mode in modes:
            model = copy.deepcopy(model0).train()
            xs = tuple(x.contiguous(memory_format=torch.channels_last)
                       if mode.endswith("channels_last") and x.dim() == 4 and x.is_floating_point() else x for x in inputs)
            if mode.endswith("channels_last"):
                model = model.to(memory_format=torch.channels_last)
            fn = loss_fn
            compile_s = None
            if mode.startswith("bf16"):
                fn = autocast_fn(loss_fn, torch)
            if mode == "compile":
                t0 = time.perf_counter()
                fn = torch.compile(loss_fn)
                fn(model, *xs).backward()  # compiles forward and backward
                model.zero_grad(set_to_none=True)
                compile_s = round(time.perf_counter() - t0, 1)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
            first = fn(copy.deepcopy(model0) if mode == "eager" else model, *xs).item()  # the same weights: same loss
            runs.append({"mode": mode, "model": model, "xs": xs, "fn": fn, "opt": opt, "times": [],
                         "first_loss": first, "compile_s": compile_s})
        for rnd in range(args.rounds + 1):  # round 0 warms up
            for r in runs:
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    loss = r["fn"](r["model"], *r["xs"])
                    r["opt"].zero_grad(set_to_none=True)
                    loss.backward()
                    r["opt"].step()
                if rnd:
                    r["times"].append((time.perf_counter() - t0) / args.steps)
            print(f"{name}: round {rnd}/{args.rounds} done", file=sys.stderr, flush=True)
        ref = min(runs[0]["times"])
        for r in runs:
            results.append({"model": name, "mode": r["mode"], "s_per_step": round(min(r["times"]), 4),
                            "vs_first": round(min(r["times"]) / ref, 3), "compile_s": r["compile_s"],
                            "first_loss_diff": abs(r["first_loss"] - runs[0]["first_loss"])})
    print(json.dumps({"benchmark": "train_step_speed", "profile": args.profile, "threads": torch.get_num_threads(),
                      "cpu_flags": cpu_flags(),
                      "steps_per_round": args.steps, "rounds": args.rounds, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
