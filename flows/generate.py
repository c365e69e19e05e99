"""`suti generate`: render a subject from demonstrations + a prompt with the apprentice.

    suti generate --demo dog1.jpg --demo dog2.png --demo-text "a corgi" --demo-text "a corgi" \\
        --prompt "a corgi wearing a santa hat in the snow" --out out/corgi.png --num-images 4

* ``--demo IMG`` (repeat; any number, 0 = the base model): PNG/JPEG/... of any mode and
  size; grayscale, palette, RGBA (on white), 16-bit, CMYK are converted; non-square
  images are center-cropped, large ones shrunk (see :mod:`suti.imageio`).
* ``--demo-text TEXT``: none, one for all demos, or one per demo.
* ``--out PATH``: ``PATH`` for one image; for several, ``PATH_0.png``, ``PATH_1.png``, ... and
  ``PATH`` itself as a grid of them (one row, left to right); ``--grid`` also writes
  ``PATH_grid.png`` (demos | generated, labelled). An existing folder gets
  ``generated_<i>.png`` (and the grid ``generated.png``). The written paths are printed,
  one per line.
* ``--model``: ``models:/suti-apprentice@candidate`` (default: ``apprentice.model``), any
  ``models:/`` or ``runs:/`` URI, an exported model folder, or a training run name in the
  store (``lam-0.02``, ``dreamsuti-<name>``).

Bad input (a missing, corrupt or non-image demo, a directory, an empty prompt, an
unwritable ``--out``, a bad number) ends with one line on stderr and exit code 2, before
any model is loaded.
"""
from __future__ import annotations

import time
from pathlib import Path

from pydantic import BaseModel

from suti.errors import UserError
from suti.config import SCHEDULERS

MAX_IMAGES = 64


class GenerateRequest(BaseModel):
    """One `suti generate` call, validated."""

    demos: list[str] = []  # demo image paths
    demo_texts: list[str] | None = None  # one per demo (None: no texts)
    prompt: str
    out: str
    num_images: int | None = None  # None: apprentice.num_images
    seed: int = 0
    scheduler: str | None = None  # None: apprentice.scheduler
    steps: int | None = None  # None: apprentice.sample_steps
    guidance: float | None = None  # None: apprentice.guidance
    demo_guidance: float | None = None  # None: apprentice.demo_guidance the model was trained with
    model: str | None = None  # None: apprentice.model
    grid: bool = False


def add_arguments(parser) -> None:
    # Numbers are parsed here, not by argparse, so a bad value is one line (argparse adds usage).
    parser.add_argument("--demo", action="append", default=[], metavar="IMG", help="a demonstration image (repeat)")
    parser.add_argument("--demo-text", dest="demo_text", action="append", default=[], metavar="TEXT",
                        help="text of the demos: one for all, or one per --demo (repeat)")
    parser.add_argument("--prompt", default=None, help="what to render")
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="output .png; with several images PATH_0.png, PATH_1.png, ... and PATH as a grid of them "
                             "(a folder: generated_<i>.png and generated.png)")
    parser.add_argument("--num-images", dest="num_images", default=None, metavar="N",
                        help="images to render (default: apprentice.num_images, 4)")
    parser.add_argument("--seed", default=None, metavar="S")
    parser.add_argument("--scheduler", default=None, metavar="|".join(SCHEDULERS))
    parser.add_argument("--steps", default=None, metavar="N", help="sampling steps")
    parser.add_argument("--guidance", default=None, metavar="W", help="classifier-free guidance scale")
    parser.add_argument("--demo-guidance", dest="demo_guidance", default=None, metavar="W",
                        help="a separate guidance scale for the demos (then --guidance scales the text alone)")
    parser.add_argument("--model", default=None, metavar="URI",
                        help="models:/NAME@ALIAS, runs:/..., a model folder or a store run name")
    parser.add_argument("--grid", action="store_true", help="also write PATH_grid.png (demos | generated, labelled)")


def _number(name: str, value, cast, lo=None, hi=None):
    if value is None:
        return None
    try:
        v = cast(str(value).strip())
    except ValueError:
        raise UserError(f"{name} must be a {'whole ' if cast is int else ''}number, got {value!r}") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise UserError(f"{name} must be between {lo} and {hi}, got {value}")
    return v


def build_request(demo=None, demo_text=None, prompt=None, out=None, num_images=None, seed=None, scheduler=None,
                  steps=None, guidance=None, model=None, grid=False, demo_guidance=None) -> GenerateRequest:
    """Check the arguments (not the files yet); one-line :class:`UserError` otherwise."""
    if prompt is None:
        raise UserError("--prompt is required: what to render, e.g. --prompt 'a photo of it on the beach'")
    if not str(prompt).strip():
        raise UserError("--prompt is empty: give the text to render")
    if out is None or not str(out).strip():
        raise UserError("--out is required: a .png path for the generated images")
    demos = [str(d) for d in (demo or [])]
    texts = [str(t) for t in (demo_text or [])]
    if texts and len(texts) not in (1, len(demos)):
        raise UserError(f"give one --demo-text for all demos or one per --demo: {len(texts)} texts for "
                        f"{len(demos)} demos")
    if texts and not demos:
        raise UserError("--demo-text given without any --demo image")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise UserError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, got {scheduler!r}")
    return GenerateRequest(
        demos=demos, demo_texts=(texts * len(demos) if len(texts) == 1 else texts) or None, prompt=str(prompt).strip(),
        out=str(out), num_images=_number("--num-images", num_images, int, 1, MAX_IMAGES),
        seed=_number("--seed", seed, int, 0, 2**63 - 1) or 0, scheduler=scheduler,
        steps=_number("--steps", steps, int, 1, 1000), guidance=_number("--guidance", guidance, float, 0, 100),
        demo_guidance=_number("--demo-guidance", demo_guidance, float, 0, 100), model=model, grid=bool(grid))


def check_inputs(req: GenerateRequest) -> list:
    """Read every demo (converting what can be converted) and check --out; before any model."""
    from suti.imageio import check_writable, read_image

    images = [read_image(p) for p in req.demos]
    check_writable(req.out)
    return images


def sheet_path(out: str) -> Path:
    """Where the grid of several images goes: ``--out`` itself (a folder: ``generated.png``)."""
    p = Path(out).expanduser()
    return p / "generated.png" if p.is_dir() else p.with_suffix(".png")


_FLOW = None


def _flow():
    """The Prefect flow, built on first use (prefect is imported only once inputs are valid)."""
    global _FLOW
    if _FLOW is not None:
        return _FLOW
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    from suti.flows.common import logger, prepare

    @task(name="load-apprentice", task_run_name="load apprentice {model}", cache_policy=NO_CACHE)
    def load_apprentice(cfg, store, model: str):
        from suti.tasks.apprentice import load_apprentice

        return load_apprentice(model, cfg, store)

    @task(name="generate", task_run_name="render {n} image(s)", cache_policy=NO_CACHE)
    def render(apprentice, images, req: GenerateRequest, n: int) -> list:
        return apprentice.generate(images, req.demo_texts, req.prompt, num_images=n, guidance=req.guidance,
                                   scheduler=req.scheduler, steps=req.steps, seed=req.seed,
                                   demo_guidance=req.demo_guidance)

    @flow(name="generate", flow_run_name="generate: {req.prompt}", log_prints=True)
    def generate(overrides: list[str], req: GenerateRequest) -> list[str]:
        from suti.imageio import grid_path, save_grid, save_images

        cfg, store = prepare(overrides)
        lg = logger()
        images = check_inputs(req)
        model = req.model or str(cfg.apprentice.model)
        t0 = time.time()
        apprentice = load_apprentice(cfg, store, model)
        n = req.num_images or int(apprentice.defaults["num_images"])
        t1 = time.time()
        out = render(apprentice, images, req, n)
        t2 = time.time()
        paths = save_images(out, req.out)
        if len(out) > 1:  # o_0.png .. and o.png: the images side by side
            paths.append(save_grid([([], out)], apprentice.backbone.resolution, sheet_path(req.out)))
        if req.grid:
            paths.append(save_grid([(images, out)], apprentice.backbone.resolution, grid_path(req.out)))
        lg.info(f"generated {n} image(s) from {len(images)} demo(s) with {model} in {t2 - t1:.1f} s "
                f"(model load {t1 - t0:.1f} s): {', '.join(str(p) for p in paths)}")
        return [str(p) for p in paths]

    _FLOW = generate
    return _FLOW


def generate_flow(overrides: list[str] | None = None, force: bool = False, demo=None, demo_text=None, prompt=None,
                  out=None, num_images=None, seed=None, scheduler=None, steps=None, guidance=None, model=None,
                  grid: bool = False, demo_guidance=None) -> int:
    """`suti generate`: validate, then run the Prefect flow; prints the written paths."""
    from suti.flows.common import prepare

    req = build_request(demo, demo_text, prompt, out, num_images, seed, scheduler, steps, guidance, model, grid,
                        demo_guidance)
    cfg, store = prepare(overrides)  # a wrong override fails here, before the files are read
    check_inputs(req)  # every file problem is one line, before prefect and the model load
    from suti.tasks.apprentice import check_source

    check_source(req.model or str(cfg.apprentice.model), cfg, store)
    paths = _flow()(list(overrides or []), req)
    for p in paths:
        print(Path(p))
    return 0
