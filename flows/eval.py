"""`suti eval`: the paper's Table 1 on the world's held-out subjects (or a real DreamBench
folder with `eval.dreambench_dir=...`), the K-shot curve and DreamBench-v2 levels; records
for the rating page; all logged to MLflow and as Prefect artifacts.

Per-subject results are cached under `eval/<eval_id>/subjects/<sid>.json`, so a killed
evaluation resumes where it stopped."""
from __future__ import annotations

import io
import json
import time

import numpy as np
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from suti import keys as K
from suti.flows.common import logger, prepare, write_report
from suti.imageio import png_bytes
from suti.tasks import evaluate as E
from suti.tracking import log_bytes, log_json, log_metrics, mlflow_run

SCORE_KEYS = ("identity", "clip_i", "clip_t", "subject", "text", "photorealism", "overall")
GRID_PROMPTS = (0, 20)  # the grid's prompts per method: the first re-contextualization (jungle) and edit (red)


def add_arguments(parser) -> None:
    parser.add_argument("--model", default=None, help="apprentice to evaluate (default models:/suti-apprentice@candidate)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N subjects of the split")
    parser.add_argument("--split", default=None, choices=["val", "test"],
                        help="held-out split (default eval.split: test; sweeps and tuning read val)")
    parser.add_argument("--dreambench", default=None, help="a real DreamBench folder instead of the world")


@task(name="eval-subject", task_run_name="eval-{case.sid}", cache_policy=NO_CACHE)
def eval_subject(case, cfg, store, ctx: dict, eval_id: str) -> dict:
    """All methods on one subject: images, scores, records, K-shot and v2 levels."""
    key = f"eval/{eval_id}/subjects/{case.sid}.json"
    if store.exists(key):
        return store.get_json(key)
    R, n = cfg.world.resolution, int(cfg.eval.images_per_prompt)
    sc, app = ctx["scorers"], ctx["apprentice"]
    recs = E.dreambench_records(case.described, case.live)
    seeds = E.seeds_for(case, len(recs), cfg.seed)
    rr = [r for r in recs for _ in range(n)]
    demo_sets = [case.demos] * len(rr)
    images, secs, nbytes = {}, {}, {}
    images["oracle"] = E.oracle_images(case, recs, n, seeds, R)
    secs["oracle"], nbytes["oracle"] = 0.0, 0
    images["base"], secs["base"] = E.cached_base_images(cfg, store, ctx["backbone"], ctx["base_fp"], recs, n, seeds)
    nbytes["base"] = 0
    if "expert" in ctx["methods"]:
        images["expert"] = E.expert_images(cfg, store, case, recs, n, seeds, f"eval/{ctx['expert_id']}/experts",
                                           ctx["base_state"], ctx["clip"])
        secs["expert"], nbytes["expert"] = case.seconds["expert"], case.bytes["expert"]
    if ctx.get("reimagen") is not None:  # the same architecture trained on raw clusters, in context
        t = time.time()
        images["reimagen"] = E.apprentice_images(ctx["reimagen"], case, recs, n, seeds, cfg, k=int(cfg.apprentice.demos))
        secs["reimagen"], nbytes["reimagen"] = time.time() - t, 0
    if app is not None:
        t = time.time()
        images["apprentice"] = E.apprentice_images(app, case, recs, n, seeds, cfg, k=int(cfg.apprentice.demos))
        secs["apprentice"], nbytes["apprentice"] = time.time() - t, 0  # demos only: nothing stored per subject
        if "dreamsuti" in ctx["methods"]:
            from suti.tasks.apprentice import dreamsuti

            t = time.time()
            tuned_src = E.deepcopy_apprentice(app)
            rec = dreamsuti(cfg, store, tuned_src, list(case.demos), case.demo_texts, f"{eval_id}-{case.sid}")
            from suti.tasks.apprentice import load_apprentice

            tuned = load_apprentice(f"dreamsuti-{eval_id}-{case.sid}", cfg, store)
            images["dreamsuti"] = E.apprentice_images(tuned, case, recs, n, seeds, cfg, k=1)
            secs["dreamsuti"] = time.time() - t
            nbytes["dreamsuti"] = int(sum(v.numel() * v.element_size() for v in tuned.model.state_dict().values()))
            del rec
    result = {"sid": case.sid, "class": case.word, "prompts": len(recs), "prompt_protocol": E.PROMPT_PROTOCOL,
              "methods": {}}
    records = []
    for m, ims in images.items():
        s = E.score(sc, store, ims, rr, demo_sets)
        result["methods"][m] = {"scores": {k: v.tolist() for k, v in s.items()}, "seconds": secs[m], "bytes": nbytes[m]}
        if m != "oracle":
            for i, im in enumerate(ims):
                ik = f"eval/{eval_id}/images/{m}/{case.sid}/{i}.png"
                store.put_bytes(ik, png_bytes(im))
                # every method got this very prompt and seed for this slot (protocol "shared")
                records.append({"record_id": f"{m}-{case.sid}-{i}", "image_key": ik, "method": m, "subject_id": case.sid,
                                "slot": i, "prompt": rr[i]["text"], "clip_t_text": rr[i]["class_text"],
                                "seed": seeds[i // n], "demo_keys": case.demo_keys,
                                "auto": {k: int(s[k][i]) for k in ("subject", "text", "photorealism")}})
    result["records"] = records
    # K-shot: the apprentice with K = 0..5 demos on Table 1's first slots (same prompts, same
    # seeds), so K = 0 sits on the very slots of the base row
    if app is not None and cfg.eval.curves:  # the sweep skips the curves: it compares lambdas on Table 1 rows
        kp = recs[: int(cfg.eval.kshot_prompts)]
        result["kshot"] = _kshot(app, case, kp, n, seeds, sc, store, cfg)
        if ctx.get("reimagen") is not None:
            result["kshot_reimagen"] = _kshot(ctx["reimagen"], case, kp, n, seeds, sc, store, cfg)
        result["kshot_slots"] = len(kp) * n
        v2 = E.v2_records(case.described, cfg.seed)
        v2_seeds = E.seeds_for(case, len(v2), cfg.seed + 7)
        ims = E.apprentice_images(app, case, v2, n, v2_seeds, cfg, k=int(cfg.apprentice.demos))
        s = E.score(sc, store, ims, [r for r in v2 for _ in range(n)], [case.demos] * len(ims))
        result["v2"] = {"levels": [r["level"] for r in v2 for _ in range(n)], "overall": s["overall"].tolist()}
    grid_rows = [list(case.demos[:3]) + [images[m][j * n] for m in images for j in GRID_PROMPTS]]
    result["grid_methods"] = list(images)
    result["grid_row"] = [png_bytes(im).hex() for im in grid_rows[0]]
    store.put_json(key, result)
    return result


def _kshot(model, case, kp: list[dict], n: int, seeds: list[int], sc, store, cfg) -> dict:
    """Scores of an in-context model with K = 0..5 of the subject's demos on the given slots."""
    ks = {}
    for k in range(0, min(5, len(case.demos)) + 1):
        ims = E.apprentice_images(model, case, kp, n, seeds[: len(kp)], cfg, k=k)
        s = E.score(sc, store, ims, [r for r in kp for _ in range(n)], [case.demos] * len(ims))
        ks[str(k)] = {kk: s[kk].tolist() for kk in SCORE_KEYS}
    return ks


def _kshot_curve(results: list[dict], key: str) -> list[dict]:
    if not results or not all(key in r for r in results):
        return []
    return [{"k": int(k), **E.mean_scores([{kk: np.asarray(v) for kk, v in r[key][k].items()} for r in results])}
            for k in results[0][key]]


def aggregate(results: list[dict]) -> dict:
    methods = [m for m in E.METHODS if any(m in r["methods"] for r in results)]
    table = []
    for m in methods:
        parts = [{k: np.asarray(v) for k, v in r["methods"][m]["scores"].items()} for r in results if m in r["methods"]]
        row = {"method": m, **E.mean_scores(parts)}
        row["seconds_per_subject"] = float(np.mean([r["methods"][m]["seconds"] for r in results if m in r["methods"]]))
        row["bytes_per_subject"] = float(np.mean([r["methods"][m]["bytes"] for r in results if m in r["methods"]]))
        table.append(row)
    kshot = _kshot_curve(results, "kshot")
    zero = None
    if kshot and all("base" in r["methods"] for r in results):
        # K = 0 against the base row on the same slots (Table 1's first kshot_slots)
        a = np.concatenate([r["kshot"]["0"]["identity"] for r in results])
        b = np.concatenate([r["methods"]["base"]["scores"]["identity"][: r["kshot_slots"]] for r in results])
        d = a - b
        zero = {"slots": int(len(d)), "identity_k0": float(a.mean()), "identity_base": float(b.mean()),
                "identity_diff": float(d.mean()), "identity_max_abs_diff": float(np.abs(d).max())}
    v2 = []
    if all("v2" in r for r in results) and results:
        lv = np.concatenate([r["v2"]["levels"] for r in results])
        ov = np.concatenate([r["v2"]["overall"] for r in results])
        v2 = [{"level": int(l), "overall": float(ov[lv == l].mean())} for l in sorted(set(lv.tolist()))]
    return {"table": table, "kshot": kshot, "kshot_reimagen": _kshot_curve(results, "kshot_reimagen"), "v2_levels": v2,
            "zero_demos_vs_base": zero}


def apprentice_report(agg: dict, param_overhead: dict | None) -> dict:
    """Issue-4 figures from Table 1: share of the base-to-oracle identity gap each row closes, K-shot, Dream-SuTI.

    gap_closed = (identity(apprentice) - identity(base)) / (identity(oracle) - identity(base)); the same for
    the experts. ``checks`` states each floor of the apprentice issue with its measured value.
    """
    rows = {r["method"]: r for r in agg["table"]}

    def closed(m: str) -> float | None:
        if not {"oracle", "base", m} <= rows.keys():
            return None
        gap = rows["oracle"]["identity"] - rows["base"]["identity"]
        return float((rows[m]["identity"] - rows["base"]["identity"]) / gap) if abs(gap) > 1e-9 else None

    get = lambda m, k: rows[m][k] if m in rows else None  # noqa: E731
    rep = {"gap_closed": closed("apprentice"), "expert_gap_closed": closed("expert"),
           "reimagen_gap_closed": closed("reimagen"), "reimagen_identity": get("reimagen", "identity"),
           "reimagen_overall": get("reimagen", "overall"), "apprentice_overall": get("apprentice", "overall"),
           "clip_t": get("apprentice", "clip_t"), "expert_clip_t": get("expert", "clip_t"),
           "base_identity": get("base", "identity"), "oracle_identity": get("oracle", "identity"),
           "expert_identity": get("expert", "identity"), "apprentice_identity": get("apprentice", "identity"),
           "dreamsuti_identity": get("dreamsuti", "identity"),
           "base_clip_t": get("base", "clip_t"),
           "kshot": [{"k": r["k"], "identity": r["identity"], "clip_t": r["clip_t"], "overall": r.get("overall")}
                     for r in agg.get("kshot", [])],
           "kshot_reimagen": [{"k": r["k"], "identity": r["identity"], "clip_t": r["clip_t"]}
                              for r in agg.get("kshot_reimagen", [])],
           "zero_demos_vs_base": agg.get("zero_demos_vs_base"),
           "param_overhead": param_overhead}
    checks = {}
    if rep["gap_closed"] is not None:
        checks["gap_closed>=0.6"] = rep["gap_closed"] >= 0.6
    if rep["gap_closed"] is not None and rep["expert_gap_closed"]:
        checks["gap_closed>=0.9*expert_gap_closed"] = rep["gap_closed"] >= 0.9 * rep["expert_gap_closed"]
    if rep["clip_t"] is not None and rep["expert_clip_t"] is not None:
        checks["clip_t>=expert_clip_t-0.02"] = rep["clip_t"] >= rep["expert_clip_t"] - 0.02
    ks = {r["k"]: r for r in rep["kshot"]}
    z = rep["zero_demos_vs_base"]
    if z and not z.get("apprentice_base_trained"):
        # same slots, same prompts, same seeds, one sampling path: K = 0 is the base row. An apprentice
        # that fine-tuned its base has its own K = 0 (the diff then says what the trained base alone moved;
        # tests/test_apprentice_train.py checks that it equals that trained base sampled without demo layers)
        checks["zero_demos_equal_base"] = z["identity_max_abs_diff"] < 1e-6
    gap = (rep["oracle_identity"] - rep["base_identity"]) if rep["oracle_identity"] is not None \
        and rep["base_identity"] is not None else None
    if {0, 3} <= ks.keys() and gap is not None:
        checks["kshot_3_minus_0>=0.5*gap"] = ks[3]["identity"] - ks[0]["identity"] >= 0.5 * gap
    if {1, 3} <= ks.keys():
        checks["kshot_3>=kshot_1+0.02"] = ks[3]["identity"] >= ks[1]["identity"] + 0.02
    if {3, 5} <= ks.keys():
        checks["kshot_5>=kshot_3-0.01"] = ks[5]["identity"] >= ks[3]["identity"] - 0.01
    if rep["dreamsuti_identity"] is not None and rep["apprentice_identity"] is not None:
        checks["dreamsuti_beats_apprentice"] = rep["dreamsuti_identity"] > rep["apprentice_identity"]
    if rep["reimagen_identity"] is not None and rep["apprentice_identity"] is not None:
        checks["apprentice_beats_reimagen_identity"] = rep["apprentice_identity"] > rep["reimagen_identity"]
        checks["apprentice_beats_reimagen_overall"] = rep["apprentice_overall"] > rep["reimagen_overall"]
    rep["checks"] = checks
    return rep


def markdown_table(table: list[dict]) -> str:
    cols = ["method", "identity", "clip_i", "clip_t", "subject", "text", "photorealism", "overall",
            "seconds_per_subject", "bytes_per_subject"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in table:
        lines.append("| " + " | ".join(r["method"] if c == "method" else
                                       ("-" if r.get(c) is None else f"{r[c]:.3f}" if c not in ("bytes_per_subject",) else f"{r[c]:,.0f}")
                                       for c in cols) + " |")
    return "\n".join(lines)


@flow(name="eval", log_prints=True)
def eval_flow(overrides: list[str] | None = None, force: bool = False, model: str | None = None,
              limit: int | None = None, dreambench: str | None = None, parent_run_id: str | None = None,
              register_tags: bool = True, split: str | None = None) -> dict:
    import mlflow

    from suti.models.scorers import Scorers, load_state
    from suti.tasks.apprentice import load_apprentice
    from suti.models.backbone import load_backbone
    from suti.tasks.foundation import load_clip

    cfg, store = prepare(overrides)
    lg = logger()
    if dreambench:
        from omegaconf import open_dict

        with open_dict(cfg):
            cfg.eval.dreambench_dir = dreambench
    limit = limit if limit is not None else cfg.eval.limit
    split = split or str(cfg.eval.split)
    model = model or cfg.eval.model or "models:/suti-apprentice@candidate"
    sc = Scorers.load(store, cfg.backbone.clip_config, cfg.world.resolution)
    # only rows that need an apprentice load one (`eval.methods=[oracle,base,expert]` measures the world)
    needs_app = bool({"apprentice", "dreamsuti"} & set(cfg.eval.methods))
    app = load_apprentice(model, cfg, store) if needs_app else None
    version = _model_version(cfg, model) if needs_app else None
    reimagen = _load_reimagen(cfg, store, lg) if "reimagen" in cfg.eval.methods else None
    t0 = time.time()
    with mlflow_run(cfg, "eval", parent_run_id=parent_run_id, tags={"suti.model": model}) as rid:
        if cfg.eval.dreambench_dir:
            res = E.dreambench_eval(cfg, store, sc, app, load_backbone(cfg, store), limit, int(cfg.eval.images_per_prompt))
            log_json(rid, res, "eval_dreambench.json")
            path = write_report(cfg, "eval_dreambench", res)
            lg.info(f"DreamBench folder: {res['subjects']} subjects, {res['prompts']} prompts, {res['images']} images "
                    f"per method; report {path}")
            return res
        settings = E.eval_settings(cfg, store, split, limit)
        settings["reimagen"] = E.model_fingerprint(reimagen) if reimagen is not None else None
        model_id = f"v{version}" if version else E.model_fingerprint(app) if app is not None else "no-apprentice"
        eval_id = f"world-{split}-{model_id}-{E.settings_digest(settings)}"
        if force:
            store.delete(f"eval/{eval_id}")
        backbone = load_backbone(cfg, store)
        # the backbone already holds the CLIP text tower the experts fine-tune with: not loaded twice
        ctx = {"scorers": sc, "apprentice": app, "backbone": backbone, "base_fp": E.backbone_fingerprint(backbone),
               "clip": getattr(backbone, "clip", None) or load_clip(cfg, store),
               "base_state": load_state(store, K.BASE), "methods": list(settings["methods"]),
               "expert_id": f"experts-{E.settings_digest(E.expert_settings(cfg, store))}", "reimagen": reimagen}
        cases = E.subject_cases(cfg, store, sc, limit, split)
        lg.info(f"evaluating {len(cases)} held-out subjects x 25 prompts x {cfg.eval.images_per_prompt} images, "
                f"methods {ctx['methods']} (eval id {eval_id})")
        results = []
        for i, case in enumerate(cases):
            results.append(eval_subject(case, cfg, store, ctx, eval_id))
            lg.info(f"evaluated subject {i + 1}/{len(cases)} ({case.sid}, {case.word})")
        agg = aggregate(results)
        if agg["zero_demos_vs_base"] is not None and app is not None:
            agg["zero_demos_vs_base"]["apprentice_base_trained"] = bool(app.meta.get("train_base", False))
        records = [x for r in results for x in r["records"]]
        store.put_bytes(f"eval/{eval_id}/records.jsonl", "\n".join(json.dumps(x) for x in records).encode())
        grid = _grid([bytes.fromhex(h) for r in results[:8] for h in r["grid_row"]], len(results[0]["grid_row"]),
                     grid_labels(results[0]), [f"{r['sid']} {r['class']}" for r in results[:8]])
        store.put_bytes(f"eval/{eval_id}/grid.png", grid)
        log_bytes(rid, grid, "examples", "eval_grid.png")
        md = markdown_table(agg["table"])
        store.put_bytes(f"eval/{eval_id}/table.md", md.encode())
        for row in agg["table"]:
            row["prompt_protocol"] = E.PROMPT_PROTOCOL
        report = {**agg, "eval_id": eval_id, "model": model, "model_version": version, "model_id": model_id,
                  "split": split, "subject_ids": [c.sid for c in cases], "prompt_protocol": E.PROMPT_PROTOCOL,
                  "protocol": E.protocol_of(settings), "settings": settings, "subjects": len(cases),
                  "images_per_prompt": int(cfg.eval.images_per_prompt), "prompts_per_subject": 25,
                  "records": len(records), "mlflow_run_id": rid, "seconds": round(time.time() - t0, 1),
                  "grid": store.url(f"eval/{eval_id}/grid.png"),
                  "grid_columns": GRID_COLUMNS_DOC}
        metrics = {f"{r['method']}.{k}": r[k] for r in agg["table"] for k in SCORE_KEYS + ("seconds_per_subject", "bytes_per_subject")
                   if r.get(k) is not None}
        metrics.update({f"kshot.{r['k']}.{k}": r[k] for r in agg["kshot"] for k in ("identity", "overall")})
        metrics.update({f"kshot_reimagen.{r['k']}.identity": r["identity"] for r in agg["kshot_reimagen"]})
        metrics.update({f"v2.level{r['level']}.overall": r["overall"] for r in agg["v2_levels"]})
        log_metrics(rid, metrics)
        log_json(rid, report, "eval.json")
        mlflow.MlflowClient().log_text(rid, md, "eval_table.md")
        store.mark_done(f"eval/{eval_id}", {"run_id": rid, "records": len(records)})
        if version and register_tags:
            row = next(r for r in agg["table"] if r["method"] == "apprentice")
            c = mlflow.MlflowClient()
            proto = report["protocol"]
            # scores keyed by protocol: promotion compares two versions only on one protocol
            for k in ("overall", "identity", "clip_t"):
                c.set_model_version_tag("suti-apprentice", version, f"eval.{k}", f"{row[k]:.6f}")
                c.set_model_version_tag("suti-apprentice", version, f"eval.{proto}.{k}", f"{row[k]:.6f}")
            c.set_model_version_tag("suti-apprentice", version, "eval.protocol", proto)
            c.set_model_version_tag("suti-apprentice", version, "eval.split", split)
            c.set_model_version_tag("suti-apprentice", version, "eval.run_id", rid)
    create_markdown_artifact(key="eval-table", markdown=md, description="Table 1 on the world's held-out subjects")
    create_table_artifact(key="eval-kshot", table=agg["kshot"], description="K-shot curve")
    # reports/eval.json is Table 1 (test); a val evaluation (the sweep's, tuning) writes eval_val.json
    suffix = "" if split == "test" else f"_{split}"
    path = write_report(cfg, f"eval{suffix}", report)
    app_rep = apprentice_report(agg, app.model.param_overhead() if app is not None else None)
    # what the evaluated apprentice learnt from (its export's meta; older exports: None)
    # (a mixed run's meta counts G apart from the raw-cluster rows; older exports only in all)
    meta = app.meta if app is not None else {}
    app_rep["subjects_in_G"] = meta.get("subjects_G", meta.get("subjects"))
    app_rep["triples_in_G"] = meta.get("rows_G", meta.get("rows"))
    write_report(cfg, f"apprentice{suffix}", {**app_rep, "split": split, "subject_ids": report["subject_ids"],
                                              "eval_id": eval_id, "model": model, "model_version": version,
                                              "subjects": len(cases),
                                              "images_per_prompt": int(cfg.eval.images_per_prompt)})
    lg.info("\n" + md + f"\nreport {path}; apprentice checks {app_rep['checks']}")
    return report


def _load_reimagen(cfg, store, lg):
    """Table 1's Re-Imagen row: `reimagen.model`; without one the row is left out, and the
    log says how to make it."""
    from suti.errors import UserError
    from suti.tasks.apprentice import load_apprentice

    try:
        return load_apprentice(str(cfg.reimagen.model), cfg, store)
    except UserError as e:
        lg.warning(f"no Re-Imagen row: {e}; train it with `suti train --source clusters`")
        return None


def _model_version(cfg, model: str) -> str | None:
    if not model.startswith("models:/suti-apprentice"):
        return None
    import mlflow

    from suti.tracking import setup_tracking

    setup_tracking(cfg)
    c = mlflow.MlflowClient()
    ref = model.split("models:/suti-apprentice", 1)[1]
    if ref.startswith("@"):
        return c.get_model_version_by_alias("suti-apprentice", ref[1:]).version
    return ref.strip("/") or None


GRID_COLUMNS_DOC = ("3 demos | then per method (oracle, base, expert, reimagen, apprentice, dreamsuti; those run): "
                    "prompt 0 (jungle), prompt 20 (red)")


def grid_labels(result: dict) -> list[str]:
    """Column labels of the eval grid: the demos, then each method at each grid prompt."""
    names = {0: "jungle", 20: "red"}
    return ["demo 1", "demo 2", "demo 3"] + [f"{m} {names.get(j, j)}" for m in result.get("grid_methods", [])
                                             for j in GRID_PROMPTS]


def _grid(pngs: list[bytes], cols: int, labels: list[str] | None = None, row_labels: list[str] | None = None) -> bytes:
    from PIL import Image

    from suti.world.render import labelled_grid

    ims = [np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in pngs]
    buf = io.BytesIO()
    labelled_grid(ims, cols, labels or [], row_labels or [], scale=3).save(buf, format="PNG")
    return buf.getvalue()
