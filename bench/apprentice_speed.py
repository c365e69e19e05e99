"""Per-subject cost, measured side by side in one process: the apprentice (encode the
demos + N images) vs an expert (fine-tune on the same demos + N images), the apprentice
with its demo encoding cached (computed once per request, the default) vs recomputed at
every denoising step, and the peak resident memory of each. Prints JSON.

    .venv/bin/python bench/apprentice_speed.py                      # runs the smoke pipeline first
    .venv/bin/python bench/apprentice_speed.py --workdir work --model models:/suti-apprentice@candidate

With `--workdir` pointing at a finished run (its store, MLflow db), nothing is trained but
the experts this benchmark times. Held-out subjects' demos are the inputs.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path


def peak_rss_reset() -> None:
    """Reset the kernel's peak-RSS counter for this process (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=None, help="a finished run's workdir (default: a smoke pipeline in work/bench)")
    p.add_argument("--model", default="models:/suti-apprentice@candidate", help="apprentice to time")
    p.add_argument("--subjects", type=int, default=2, help="held-out subjects to time")
    p.add_argument("--images", type=int, default=4, help="images per subject (paper: 4)")
    p.add_argument("--steps", type=int, default=None,
                   help="the apprentice's sampling steps (default: its export's; bench/sampling_cost.py scores them on val)")
    p.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides (e.g. profile=smoke)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(argv)
    from suti.config import compose, setup_env

    if args.workdir:
        ov = [f"workdir={Path(args.workdir).resolve()}", *args.overrides]
    else:
        wd = Path("work/bench/speed").resolve()
        ov = ["profile=smoke", f"workdir={wd}", f"reports_dir={wd / 'reports'}", "progress=false", *args.overrides]
    cfg = compose(ov)
    setup_env(cfg)
    import numpy as np

    from suti.flows.common import prepare
    from suti.models.scorers import load_state
    from suti.tasks.apprentice import load_apprentice
    from suti.tasks.evaluate import _record, load_png
    from suti.tasks.experts import ExpertSpec, run_expert
    from suti.tasks.foundation import load_clip

    if not args.workdir:
        from suti.flows.pipeline import pipeline_flow

        pipeline_flow(overrides=ov)
    cfg, store = prepare(ov)
    app = load_apprentice(args.model, cfg, store, device="cpu")
    if args.steps is not None:
        app.defaults["steps"] = int(args.steps)
    base_state = load_state(store, "foundation/base/model.pt")
    clip = load_clip(cfg, store)
    subjects = store.get_json("world/heldout/index.json")["subjects"][: args.subjects]
    R = int(cfg.world.resolution)
    rows = []
    for s in subjects:
        keys = [f"world/{k}" for k in s["demos"]][: int(cfg.apprentice.demos)]
        demos = [load_png(store.get_bytes(k), R) for k in keys]
        texts = [f"a photo of a {s['class']}"] * len(demos)
        prompt = f"a {s['class']} in the snow"
        kw = dict(num_images=args.images, seed=0)
        app.generate(demos, texts, prompt, num_images=1, steps=2)  # warm-up (first-call allocations)
        peak_rss_reset()
        t0 = time.time()
        app.generate(demos, texts, prompt, **kw)
        t_app = time.time() - t0
        mem_app = peak_rss_mb()
        # not cached: re-encode the demos at every denoising step
        orig = app.model.forward

        def recompute(*a, **k):
            app.encode_demos(demos, texts)
            return orig(*a, **k)

        app.model.forward = recompute
        t0 = time.time()
        app.generate(demos, texts, prompt, **kw)
        t_uncached = time.time() - t0
        app.model.forward = orig
        # expert: fine-tune on the same demos, then the same number of images
        rec = _record(_subject_stub(s, cfg), {"context": "snow"})  # a DreamBench prompt record
        spec = ExpertSpec(cluster_id=f"bench-{s['id']}", image_keys=keys, texts=texts, prompts=[rec])
        store.delete(f"bench/experts/{spec.cluster_id}")  # time a fresh expert every run
        peak_rss_reset()
        t0 = time.time()
        run_expert(spec, cfg, store, base_state, clip, root="bench/experts", samples_per_prompt=args.images)
        t_exp = time.time() - t0
        mem_exp = peak_rss_mb()
        rows.append({"subject": s["id"], "apprentice_seconds": round(t_app, 3), "apprentice_uncached_seconds": round(t_uncached, 3),
                     "expert_seconds": round(t_exp, 3), "apprentice_peak_rss_mb": round(mem_app, 1),
                     "expert_peak_rss_mb": round(mem_exp, 1)})
        print(f"{s['id']}: apprentice {t_app:.2f}s (uncached {t_uncached:.2f}s), expert {t_exp:.2f}s", file=sys.stderr)
    a = float(np.mean([r["apprentice_seconds"] for r in rows]))
    e = float(np.mean([r["expert_seconds"] for r in rows]))
    out = {"benchmark": "apprentice_speed", "profile": cfg.profile_name, "model": args.model,
           "images_per_subject": args.images, "expert_steps": int(cfg.expert.steps), "expert_method": cfg.expert.method,
           "sample_steps": int(app.defaults["steps"]), "apprentice_seconds_per_subject": a,
           "apprentice_uncached_seconds_per_subject": float(np.mean([r["apprentice_uncached_seconds"] for r in rows])),
           "expert_seconds_per_subject": e, "speed_ratio": e / a if a > 0 else None, "subjects": rows,
           "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()}}
    print(json.dumps(out, indent=2))
    return 0


def _subject_stub(s: dict, cfg):
    """A class-word-only subject for the prompt record (the expert's prompt text)."""
    from suti.tasks.judge import class_key_of
    from suti.world.scene import Subject

    return Subject(s["id"], class_key_of(s["class"]) or "backpack", "gray", "black", "plain", 1.0, 1.0, 0, "")


if __name__ == "__main__":
    sys.exit(main())
