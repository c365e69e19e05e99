"""`suti rate`: the DreamBench-v2 human rating page, and the push of its answers to MLflow.

    suti rate --eval-id EVAL --rater alice --rater bob          # serve; prints one link per rater
    suti rate --eval-id EVAL --push --run-id <mlflow run id>    # aggregate answers into that run

Serving is not a pipeline stage, so it runs no Prefect flow and does not even import Prefect
(a serving process starts faster and has no Prefect exit hooks to run when it stops): it
serves the page until Ctrl-C (or SIGTERM) and ends cleanly; every answer is already committed to
``<workdir>/ratings/<eval_id>.sqlite``. ``--push`` is the Prefect flow ``rate-push``: it
logs ``human.*`` metrics and the raw answers (``ratings/<eval_id>.json``) into the
evaluation's MLflow run, next to the automatic scores.
"""
from __future__ import annotations

import importlib
import importlib.util
import signal
import sys
import threading
from pathlib import Path

from suti.errors import UserError
from suti.config import workdir
from suti.flows.common import logger, prepare, write_report
from suti.store import StoreError


def _ui():
    """The rating page's modules (``ui/``): the installed ``suti.ui`` package, else the
    source tree's ``ui/`` folder loaded by path under that name."""
    try:
        return importlib.import_module("suti.ui.app"), importlib.import_module("suti.ui.ratings")
    except ModuleNotFoundError as e:
        if e.name not in ("suti.ui", "suti.ui.app", "suti.ui.ratings"):
            raise
    ui_dir = Path(__file__).resolve().parents[1] / "ui"
    if not (ui_dir / "app.py").is_file():
        raise UserError(f"the rating page is not installed (no suti.ui package, no {ui_dir})")
    spec = importlib.util.spec_from_file_location("suti.ui", ui_dir / "__init__.py",
                                                  submodule_search_locations=[str(ui_dir)])
    pkg = importlib.util.module_from_spec(spec)
    sys.modules["suti.ui"] = pkg
    spec.loader.exec_module(pkg)
    return importlib.import_module("suti.ui.app"), importlib.import_module("suti.ui.ratings")


def add_arguments(parser) -> None:
    parser.add_argument("--eval-id", required=True, help="the evaluation to rate (eval/<id>/records.jsonl in the store)")
    parser.add_argument("--rater", action="append", dest="raters", metavar="NAME",
                        help="a rater to print a link for (repeat); default: the raters already known, else 'rater'")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free port)")
    parser.add_argument("--push", action="store_true", help="aggregate the answers into MLflow and exit (no server)")
    parser.add_argument("--run-id", default=None,
                        help="MLflow run to push into (the evaluation's run; default: run_id in eval/<id>/_DONE.json)")


def _open(store, eval_id: str, wd: Path, raters: list[str] | None):
    app_mod, ratings = _ui()
    try:
        return app_mod.open_rating(store, eval_id, wd, raters)
    except ratings.RatingError as e:
        raise UserError(str(e)) from None
    except StoreError as e:
        if not store.exists(ratings.records_key(eval_id)):
            raise UserError(f"no records for eval {eval_id!r} ({e}); run `suti eval` first") from None
        raise


def serve(store, eval_id: str, wd: Path, raters: list[str] | None = None, host: str = "127.0.0.1",
          port: int = 0, out=None) -> int:
    """Serve the rating page until Ctrl-C / SIGTERM; prints one link per rater."""
    out = out or sys.stdout
    app_mod, _ = _ui()
    app, db, records, tokens = _open(store, eval_id, wd, raters)
    try:
        server = app_mod.RatingServer(app, host, port)
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach it and has a link can rate (plain HTTP)",
              file=sys.stderr)
    main = threading.current_thread() is threading.main_thread()
    old = {}
    if main:  # SIGTERM ends as cleanly as Ctrl-C
        def on_term(signum, frame):
            raise KeyboardInterrupt
        # SIGINT too: a process started in the background by a non-interactive shell (`cmd &`,
        # as CI and nohup do) inherits SIGINT ignored, and Python then installs no Ctrl-C handler
        old = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGINT)}
    # Serving and the cleanup are in place before the links are printed: a rater (or a
    # test) that opens a link and presses Ctrl-C at once always gets the clean stop.
    try:
        server.start()
        print(f"rating page for eval {eval_id!r}: {len(records)} images; answers in {db.path}", file=out)
        for rater, token in tokens.items():
            print(f"  {rater}: {server.link(token)}", file=out)
        print("Ctrl-C stops the server; answers are saved as they are given.", file=out, flush=True)
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        for sig, handler in old.items():
            signal.signal(sig, handler)
    rows = db.rows()
    print(f"stopped; {len(rows)} answers from {len({r['rater'] for r in rows})} rater(s) in {db.path}", file=out, flush=True)
    return 0


def _find_run_id(store, eval_id: str, run_id: str | None) -> str:
    if run_id:
        return run_id
    meta = store.done_meta(f"eval/{eval_id}") or {}
    if isinstance(meta.get("run_id"), str) and meta["run_id"]:
        return meta["run_id"]
    raise UserError(f"--push needs --run-id (the MLflow run of eval {eval_id!r}); eval/{eval_id}/_DONE.json names none")


def _push_inputs(overrides: list[str] | None, eval_id: str, run_id: str | None):
    """Everything a push needs, checked: (cfg, store, records, ratings db path, run id).
    Runs before the Prefect flow too, so a wrong id fails in one line, not in a flow run."""
    import mlflow

    from suti.tracking import setup_tracking

    cfg, store = prepare(overrides)
    _, ratings = _ui()
    try:
        records = ratings.load_records(store, eval_id)
    except ratings.RatingError as e:
        raise UserError(str(e)) from None
    except StoreError as e:
        raise UserError(f"no records for eval {eval_id!r} ({e})") from None
    path = ratings.db_path(workdir(cfg), eval_id)
    if not path.is_file():
        raise UserError(f"no ratings for eval {eval_id!r} yet ({path} is missing): serve the page first")
    run_id = _find_run_id(store, eval_id, run_id)
    setup_tracking(cfg)
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise UserError(f"no MLflow run {run_id!r} at {cfg.tracking.uri}") from None
    return cfg, store, records, path, run_id


def push_flow(overrides: list[str] | None = None, eval_id: str = "", run_id: str | None = None) -> dict:
    """Aggregate the answers of ``eval_id`` into MLflow run ``run_id`` (the Prefect flow
    ``rate-push``); returns the metrics."""
    from prefect import flow

    from suti.cli import _quiet_user_error_tracebacks

    _quiet_user_error_tracebacks()  # Prefect configured its handlers on import, after the CLI's filter
    return flow(name="rate-push", flow_run_name="push ratings of eval {eval_id}", log_prints=True)(_push)(
        overrides=overrides, eval_id=eval_id, run_id=run_id)


def _push(overrides: list[str] | None = None, eval_id: str = "", run_id: str | None = None) -> dict:
    import mlflow
    from prefect.artifacts import create_markdown_artifact

    from suti.tracking import log_json, log_metrics

    cfg, store, records, path, run_id = _push_inputs(overrides, eval_id, run_id)
    _, ratings = _ui()
    lg = logger()
    rows = ratings.RatingsDB(path, eval_id).rows()
    metrics, raw = ratings.aggregate(rows, records, eval_id)
    log_metrics(run_id, metrics)
    log_json(run_id, raw, f"ratings/{eval_id}.json")
    mlflow.MlflowClient().set_tag(run_id, "suti.human_ratings", eval_id)
    report = {"eval_id": eval_id, "run_id": run_id, "ratings_db": str(path), **metrics}
    write_report(cfg, f"rate_{eval_id}", report)
    create_markdown_artifact(key="human-ratings", markdown=_markdown(eval_id, metrics),
                             description=f"Human ratings of eval {eval_id}")
    if raw["orphan_answers"]:
        lg.warning(f"{raw['orphan_answers']} answers name records no longer in eval {eval_id!r}: left out")
    lg.info(f"pushed {int(metrics['human.ratings'])} answers from {int(metrics['human.raters'])} rater(s) into run "
            f"{run_id}: overall {metrics.get('human.overall', float('nan')):.3f}")
    return metrics


def _markdown(eval_id: str, m: dict) -> str:
    scores = ("subject", "text", "photorealism", "overall")
    methods = sorted({k.split(".")[1] for k in m if k.count(".") == 2 and k.endswith(".ratings")})
    lines = [f"# Human ratings: {eval_id}", "", f"{int(m['human.ratings'])} answers, {int(m['human.raters'])} rater(s)", "",
             "| method | answers | " + " | ".join(scores) + " |", "|---" * (len(scores) + 2) + "|"]
    for name, prefix in [("all", "human")] + [(x, f"human.{x}") for x in methods]:
        n = m["human.ratings"] if name == "all" else m[f"{prefix}.ratings"]
        lines.append(f"| {name} | {int(n)} | " + " | ".join(f"{m.get(f'{prefix}.{s}', float('nan')):.3f}" for s in scores) + " |")
    return "\n".join(lines)


def rate_flow(overrides: list[str] | None = None, force: bool = False, eval_id: str | None = None,
              raters: list[str] | None = None, host: str = "127.0.0.1", port: int = 0, push: bool = False,
              run_id: str | None = None) -> int:
    """`suti rate`: serve the rating page, or with ``push`` aggregate its answers into MLflow.
    ``force`` has no effect (answers are never redone; a push overwrites the metrics)."""
    if not eval_id:
        raise UserError("--eval-id is required")
    _, ratings = _ui()
    try:
        ratings.check_eval_id(eval_id)
        for r in raters or []:
            ratings.check_rater(r)
    except ratings.RatingError as e:
        raise UserError(str(e)) from None
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be 0-65535, got {port}")
    if push:
        _push_inputs(overrides, eval_id, run_id)  # fail fast, outside a flow run
        push_flow(overrides=overrides, eval_id=eval_id, run_id=run_id)
        return 0
    cfg, store = prepare(overrides)
    return serve(store, eval_id, workdir(cfg), raters, host, port)
