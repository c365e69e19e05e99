"""`suti dreamsuti`: Dream-SuTI, the apprentice fine-tuned on ONE subject.

    suti dreamsuti --subject-dir photos/my_dog --subject-text "a corgi dog"
    suti dreamsuti --demo a.jpg --demo b.jpg --demo c.jpg --name my_dog apprentice.dreamsuti_steps=200
    suti generate --model dreamsuti-my_dog --demo a.jpg --prompt "a corgi dog in the snow" --out dog.png

Each step takes one of the subject's images as the demonstration and another as the
target (paper: 500 steps, ``apprentice.dreamsuti_steps``); afterwards one demo suffices.
Texts: ``--demo-text`` (one for all or one per image), else ``<image>.txt`` beside each
image in ``--subject-dir``, else ``--subject-text``. The tuned model is the store run
``dreamsuti-<name>`` and a pyfunc model logged in the MLflow run (``runs:/<id>/apprentice``).
"""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from pathlib import Path

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from suti.errors import UserError
from suti.flows.common import logger, prepare, write_report
from suti.tracking import log_params, mlflow_run

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
DEFAULT_SUBJECT_TEXT = "a photo of the subject"


def add_arguments(parser) -> None:
    parser.add_argument("--subject-dir", dest="subject_dir", default=None, metavar="DIR",
                        help="a folder with the subject's images (and optional <image>.txt texts)")
    parser.add_argument("--demo", action="append", default=[], metavar="IMG", help="an image of the subject (repeat)")
    parser.add_argument("--demo-text", dest="demo_text", action="append", default=[], metavar="TEXT",
                        help="text of the images: one for all, or one per image")
    parser.add_argument("--subject-text", dest="subject_text", default=None, metavar="TEXT",
                        help=f"text for images without one (default: {DEFAULT_SUBJECT_TEXT!r})")
    parser.add_argument("--name", default=None, help="subject name (default: the folder's name)")
    parser.add_argument("--model", default=None, metavar="URI", help="apprentice to start from (default: apprentice.model)")


def subject_files(subject_dir: str | None, demo: list[str] | None) -> list[Path]:
    """The subject's image files: ``--demo`` paths, then ``--subject-dir``'s images (sorted)."""
    files = [Path(p).expanduser() for p in (demo or [])]
    if subject_dir:
        d = Path(subject_dir).expanduser()
        if not d.exists():
            raise UserError(f"subject folder not found: {d}")
        if not d.is_dir():
            raise UserError(f"--subject-dir {d} is not a folder")
        files += sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UserError("give the subject's images: --subject-dir DIR or --demo IMG (at least 2)")
    if len(files) < 2:
        raise UserError(f"Dream-SuTI needs at least 2 images of the subject (one demo, one target), got {len(files)}")
    return files


def subject_texts(files: list[Path], demo_text: list[str] | None, subject_text: str | None) -> list[str]:
    texts = [str(t) for t in (demo_text or [])]
    if texts:
        if len(texts) == 1:
            return texts * len(files)
        if len(texts) != len(files):
            raise UserError(f"give one --demo-text for all images or one per image: {len(texts)} texts for "
                            f"{len(files)} images")
        return texts
    out = []
    for f in files:
        side = f.with_suffix(".txt")
        text = side.read_text().strip() if side.is_file() else ""
        out.append(text or (subject_text or DEFAULT_SUBJECT_TEXT))
    return out


def subject_name(name: str | None, subject_dir: str | None, files: list[Path]) -> str:
    raw = name or (Path(subject_dir).expanduser().resolve().name if subject_dir else files[0].stem)
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", raw).strip("-")
    if not clean:
        raise UserError(f"--name {raw!r} has no usable characters (letters, digits, _ and -)")
    return clean[:64]


@task(name="load-apprentice", task_run_name="load-{model}", cache_policy=NO_CACHE)
def load_apprentice(cfg, store, model: str):
    from suti.tasks.apprentice import load_apprentice

    return load_apprentice(model, cfg, store)


@task(name="dreamsuti-finetune", task_run_name="dreamsuti-{name}", cache_policy=NO_CACHE)
def finetune(cfg, store, apprentice, images, texts, name: str, run_id: str, force: bool) -> dict:
    from suti.tasks.apprentice import dreamsuti

    return dreamsuti(cfg, store, apprentice, images, texts, name, run_id, force)


@task(name="log-dreamsuti-model", task_run_name="log-model-{run_name}", cache_policy=NO_CACHE, retries=2)
def log_model(cfg, store, run_name: str, run_id: str) -> str:
    from suti.tasks.apprentice import cache_dir, download_prefix, log_pyfunc

    local = Path(tempfile.mkdtemp(prefix="dreamsuti-", dir=cache_dir(cfg)))
    try:
        download_prefix(store, f"apprentice/{run_name}/model", local / "model")
        return log_pyfunc(local / "model", run_id).model_uri
    finally:
        shutil.rmtree(local, ignore_errors=True)


@flow(name="dreamsuti", log_prints=True)
def dreamsuti_run(overrides: list[str], files: list[str], texts: list[str], name: str, model: str | None = None,
                  force: bool = False) -> dict:
    """The Prefect flow (deployable on a GPU pool): fine-tune, store, log the model."""
    from suti.imageio import read_image

    cfg, store = prepare(overrides)
    lg = logger()
    t0 = time.time()
    images = [read_image(f) for f in files]
    model = model or str(cfg.apprentice.model)
    with mlflow_run(cfg, f"dreamsuti:{name}") as rid:
        log_params(rid, {"dreamsuti.subject": name, "dreamsuti.images": len(images), "dreamsuti.base_model": model})
        apprentice = load_apprentice(cfg, store, model)
        record = finetune(cfg, store, apprentice, images, texts, name, rid, force)
        run_name = record["run_name"]
        model_uri = log_model(cfg, store, run_name, rid)
    report = {**record, "subject": name, "images": len(images), "base_model": model, "mlflow_run_id": rid,
              "model_uri": f"runs:/{rid}/apprentice", "logged_model": model_uri, "store_run": run_name,
              "wall_seconds": round(time.time() - t0, 1)}
    path = write_report(cfg, "dreamsuti", report)
    lg.info(f"Dream-SuTI {name}: {record['steps']} steps on {len(images)} images, loss {record['loss']:.4f}; "
            f"generate with --model {run_name}; report {path}")
    return report


def dreamsuti_flow(overrides: list[str] | None = None, force: bool = False, subject_dir: str | None = None,
                   demo: list[str] | None = None, demo_text: list[str] | None = None, subject_text: str | None = None,
                   name: str | None = None, model: str | None = None) -> dict:
    """Fine-tune the apprentice on one subject's images (see the module docstring)."""
    from suti.flows.common import prepare
    from suti.imageio import read_image

    files = subject_files(subject_dir, demo)
    texts = subject_texts(files, demo_text, subject_text)
    subject = subject_name(name, subject_dir, files)
    cfg, store = prepare(overrides)
    for f in files:  # every file problem is one line, before prefect and the model load
        read_image(f)
    from suti.tasks.apprentice import check_source

    check_source(model or str(cfg.apprentice.model), cfg, store)
    return dreamsuti_run(list(overrides or []), [str(f) for f in files], texts, subject, model, force)
