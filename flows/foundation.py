"""`suti foundation`: train the world's tiny CLIP, identity embedder, auto-rater and base
text-to-image model with Lightning, register them in MLflow, check them on held-out renders."""
from __future__ import annotations

import io
import logging
import time

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from suti import keys as K
from suti.flows.common import logger, prepare, write_report
from suti.flows.world import world_flow
from suti.tasks import foundation as F
from suti.tracking import PIP_REQUIREMENTS, log_bytes, log_json, log_metrics, mlflow_run

TRAINERS = {"clip": F.train_clip, "identity": F.train_identity, "rater": F.train_rater, "base": F.train_base}


@task(name="train-{model}", task_run_name="train-{model}", cache_policy=NO_CACHE)
def train_model(model: str, cfg, store, images, scenes) -> dict:
    t0 = time.time()
    out = TRAINERS[model](cfg, store, images, scenes)
    out["seconds"] = round(time.time() - t0, 1)
    store.mark_done(K.foundation_done(model), {"seconds": out["seconds"], "loss": out["loss"],
                                            "steps": int(cfg.foundation[model].steps),
                                            "recipe": F.recipe(cfg, model)})
    logger().info(f"trained {model} in {out['seconds']} s (loss {out['loss']:.4f})")
    return out


def register(run_id: str, cfg, store) -> dict:
    """Register each foundation model in the MLflow model registry (pickled torch modules)."""
    import mlflow

    from suti.models.scorers import Scorers

    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    versions = {}
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # pickle warning: we load our own models
    with mlflow.start_run(run_id=run_id):
        for name, module in (("clip", sc.clip), ("identity", sc.identity), ("rater", sc.rater),
                             ("base", F.load_base_unet(cfg, store))):
            info = mlflow.pytorch.log_model(module, name=f"suti-{name}", serialization_format="pickle",
                                            pip_requirements=PIP_REQUIREMENTS, registered_model_name=f"suti-{name}")
            versions[name] = str(info.registered_model_version)
    return versions


@flow(name="foundation", log_prints=True)
def foundation_flow(overrides: list[str] | None = None, force: bool = False) -> dict:
    cfg, store = prepare(overrides)
    lg = logger()
    world_flow(overrides)
    t_all = time.time()
    finished = {m: _finished(cfg, store, m) for m in F.MODELS}
    prev = store.get_fingerprinted(CHECKED, _fingerprint(cfg, store)) \
        if not force and all(finished.values()) else None
    if prev is not None:
        # every model and its checks are done: downstream stages do not redo the checks
        # (2 min each) nor register the same models again
        lg.info("foundation: every model and its checks finished earlier, reusing them")
        report = {**prev["report"], "reused": list(F.MODELS), "checks_reused": True}
        write_report(cfg, "foundation", report)
        return report
    images, scenes = F.load_pretrain(store)
    lg.info(f"pre-training corpus: {len(images)} renders")
    seconds, losses, reused = {}, {}, []
    with mlflow_run(cfg, "foundation") as rid:
        for model in F.MODELS:
            meta = store.done_meta(K.foundation_done(model))
            if finished[model] and not force:
                lg.info(f"{model}: finished earlier, reusing it")
                seconds[model], losses[model] = meta["seconds"], meta["loss"]
                reused.append(model)
                continue
            out = train_model(model, cfg, store, images, scenes)
            seconds[model], losses[model] = out["seconds"], out["loss"]
        seconds["total"] = round(sum(seconds[m] for m in F.MODELS), 1)
        lg.info("checking foundation models on held-out renders")
        t0 = time.time()
        res = F.evaluate(cfg, store, F.load_base_unet(cfg, store), F.untrained_unet(cfg))
        seconds["checks"] = round(time.time() - t0, 1)
        grid_png = io.BytesIO()
        res.pop("_grid").save(grid_png, format="PNG")
        store.put_bytes("foundation/examples/base_samples.png", grid_png.getvalue())
        log_bytes(rid, grid_png.getvalue(), "examples", "base_samples.png")
        prompts = res.pop("_prompts")
        versions = register(rid, cfg, store)
        report = {**res, "seconds": seconds, "loss": losses, "reused": reused, "registered": versions,
                  "profile": cfg.get("profile_name"), "mlflow_run_id": rid,
                  "wall_seconds": round(time.time() - t_all, 1),
                  "grid": store.url("foundation/examples/base_samples.png"),
                  "grid_rows": ["real renders", "base model", "untrained"], "grid_prompts": prompts}
        log_metrics(rid, {"clip.retrieval_top1": res["clip"]["retrieval_top1"], "identity.margin": res["identity"]["margin"] or float("nan"),
                          "identity.same_caption_margin": res["identity"]["same_caption_margin"],
                          "rater.class_acc": res["rater"]["class_acc"], "rater.context_acc": res["rater"]["context_acc"],
                          "base.class_acc": res["base"]["class_acc"], "base.clip_t": res["base"]["clip_t"],
                          "real.clip_t": res["real_clip_t"], "untrained.class_acc": res["untrained"]["class_acc"],
                          "untrained.clip_t": res["untrained"]["clip_t"],
                          **{f"seconds.{k}": v for k, v in seconds.items()}})
        log_json(rid, report, "foundation.json")
    path = write_report(cfg, "foundation", report)
    store.put_json(CHECKED, {"fingerprint": _fingerprint(cfg, store), "report": report})
    create_markdown_artifact(key="foundation-checks", markdown=_markdown(report), description="Foundation checks")
    lg.info(f"foundation: CLIP top-1 {res['clip']['retrieval_top1']:.3f}, identity margin {res['identity']['margin']} "
            f"(same caption {res['identity']['same_caption_margin']:.3f}), rater class {res['rater']['class_acc']:.3f} context {res['rater']['context_acc']:.3f}, base class "
            f"{res['base']['class_acc']:.3f} CLIP-T {res['base']['clip_t']:.3f} (real {res['real_clip_t']:.3f}); report {path}")
    return report


CHECKED = "foundation/checks.json"


def _finished(cfg, store, model: str) -> bool:
    """Trained with this recipe (its training section, and the world it learned from)."""
    meta = store.done_meta(K.foundation_done(model))
    return meta is not None and meta.get("recipe") == F.recipe(cfg, model)


def _fingerprint(cfg, store) -> str:
    """The trained models (their done markers) and the check settings the report came from."""
    from omegaconf import OmegaConf

    from suti.store import digest

    parts = {m: store.done_meta(K.foundation_done(m)) for m in F.MODELS}
    parts["eval"] = OmegaConf.to_container(cfg.foundation.eval, resolve=True)
    return digest(parts)


def _markdown(r: dict) -> str:
    return "\n".join([
        "| check | value |", "|---|---|",
        f"| CLIP image->caption top-1 (of {r['clip']['pool']}) | {r['clip']['retrieval_top1']:.3f} |",
        f"| identity margin | {r['identity']['margin']} |",
        f"| identity margin, same caption | {r['identity'].get('same_caption_margin')} |",
        f"| rater class / context acc | {r['rater']['class_acc']:.3f} / {r['rater']['context_acc']:.3f} |",
        f"| base class acc / CLIP-T (real) | {r['base']['class_acc']:.3f} / {r['base']['clip_t']:.3f} ({r['real_clip_t']:.3f}) |",
        f"| untrained class acc / CLIP-T | {r['untrained']['class_acc']:.3f} / {r['untrained']['clip_t']:.3f} |",
        f"| seconds (total) | {r['seconds']['total']} |",
    ])
