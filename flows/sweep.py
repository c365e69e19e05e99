"""`suti sweep`: the lambda ablation. For each lambda: G(lambda) -> apprentice -> eval.
One parent MLflow run, one nested run per lambda (|G|, eval metrics, ratings pushed to it
later), the train and eval runs nested under that; a plot of overall score and |G|
against lambda on the parent. The best lambda's model keeps the `candidate` alias."""
from __future__ import annotations

import io
import time

from omegaconf import OmegaConf
from prefect import flow
from prefect.artifacts import create_table_artifact

from suti.flows.common import logger, prepare, write_report
from suti.tracking import lambda_run, log_bytes, log_json, log_metrics, mlflow_run


def sweep_overrides(cfg, overrides: list[str]) -> list[str]:
    """Each lambda's training and evaluation are sized by the `sweep` config."""
    s = cfg.sweep
    extra = []
    if s.steps is not None:
        extra.append(f"apprentice.steps={int(s.steps)}")
    if s.eval_limit is not None:
        extra.append(f"eval.limit={int(s.eval_limit)}")
    extra.append(f"eval.images_per_prompt={int(s.eval_images_per_prompt)}")
    extra.append("eval.methods=[base,apprentice]")
    extra.append("eval.split=val")  # lambda is chosen on val; Table 1 reports test
    extra.append("eval.curves=false")  # K-shot and v2 levels: not what the sweep compares
    return list(overrides or []) + extra


def plot(rows: list[dict]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["none" if r["lambda"] is None else str(r["lambda"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(labels, [r["overall"] for r in rows], "o-", color="#c0392b", label="overall (auto-rater)")
    ax.set_xlabel("lambda")
    ax.set_ylabel("overall score")
    ax2 = ax.twinx()
    ax2.bar(labels, [r["size"] for r in rows], alpha=0.25, color="#2c7fb8", label="|G(lambda)|")
    ax2.set_ylabel("|G|")
    fig.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


@flow(name="sweep", log_prints=True)
def sweep_flow(overrides: list[str] | None = None, force: bool = False) -> dict:
    import mlflow

    from suti.flows.eval import eval_flow
    from suti.flows.stages import require
    from suti.flows.train import train_flow
    from suti.tasks.apprentice import rows_digest
    from suti.tasks.filter import load_rows, select

    cfg, store = prepare(overrides)
    lg = logger()
    require("filter", cfg, store, by="sweep")
    rows_all = load_rows(store)
    lambdas = list(OmegaConf.to_container(cfg.filter.sweep))
    ov = sweep_overrides(cfg, overrides)
    t0 = time.time()
    out = []
    with mlflow_run(cfg, "sweep", tags={"suti.lambdas": str(lambdas)}) as parent:
        for lam in lambdas:
            G = select(rows_all, lam)
            size = len(G)
            name = f"sweep-lam{'none' if lam is None else lam}"
            with lambda_run(cfg, parent, lam, G, rows_digest(G), source=store.url("filter")) as lrid:
                if size == 0:
                    lg.warning(f"lambda={lam}: G is empty, nothing to train")
                    out.append({"lambda": lam, "size": 0, "overall": None, "mlflow_run_id": lrid})
                    continue
                tr = train_flow(overrides=ov, force=force, lam="none" if lam is None else lam, run_name=name,
                                parent_run_id=lrid)
                version = tr["registered"]["version"] if tr.get("registered") else None
                model = f"models:/suti-apprentice/{version}" if version else name
                ev = eval_flow(overrides=ov, model=model, parent_run_id=lrid)
                row = next(r for r in ev["table"] if r["method"] == "apprentice")
                log_metrics(lrid, {f"eval.{k}": v for k, v in row.items() if isinstance(v, float)})
                mlflow.MlflowClient().set_tag(lrid, "suti.eval_id", ev["eval_id"])
                out.append({"lambda": lam, "size": size, "overall": row["overall"], "identity": row["identity"],
                            "clip_t": row["clip_t"], "model_version": version, "eval_id": ev["eval_id"],
                            "split": ev["split"], "subject_ids": ev["subject_ids"],
                            "mlflow_run_id": lrid})
                lg.info(f"lambda={lam}: |G|={size}, overall {row['overall']:.3f}, identity {row['identity']:.3f}")
        done = [r for r in out if r["overall"] is not None]
        png = plot(done)
        store.put_bytes("sweep/overall_vs_lambda.png", png)
        log_bytes(parent, png, "plots", "overall_vs_lambda.png")
        best = max(done, key=lambda r: (r["overall"], r["identity"])) if done else None
        if best and best.get("model_version"):
            mlflow.MlflowClient().set_registered_model_alias("suti-apprentice", "candidate", best["model_version"])
        subject_ids = sorted({sid for r in out for sid in r.get("subject_ids", [])})
        report = {"split": "val", "subject_ids": subject_ids, "lambdas": out, "parent_run_id": parent, "best": best,
                  "seconds": round(time.time() - t0, 1), "plot": store.url("sweep/overall_vs_lambda.png")}
        log_json(parent, report, "sweep.json")
        if best:
            log_metrics(parent, {"best.overall": best["overall"]})
    create_table_artifact(key="lambda-sweep", table=[{k: r.get(k) for k in ("lambda", "size", "overall", "identity")}
                                                    for r in out], description="Lambda sweep")
    path = write_report(cfg, "sweep", report)
    lg.info(f"sweep: best lambda {best['lambda'] if best else None}; report {path}")
    return report
