"""`suti serve`: the registered apprentice behind MLflow's scoring server, in this process.

    suti serve                                             # models:/suti-apprentice@champion
    suti serve models:/suti-apprentice@candidate --port 5001
    curl -s http://127.0.0.1:5000/invocations -H 'Content-Type: application/json' \\
         -d '{"inputs": [{"prompt": "a backpack in the snow", "demos": ["<base64 PNG>"]}]}'

The app is MLflow's own (`mlflow.pyfunc.scoring_server`: `/invocations`, `/ping`,
`/health`, `/version`; `dataframe_records`, `dataframe_split` and `inputs` requests), run
on uvicorn inside this process, so it needs no `uvicorn` on PATH and no second Python
environment. One difference: an error reply is one JSON line `{"error_code", "message"}`
without the server-side traceback MLflow adds (a malformed request is HTTP 400).
Loopback only by default; Ctrl-C stops it.
"""
from __future__ import annotations

import json
import socket
import sys

DEFAULT_MODEL = "models:/suti-apprentice@champion"


def add_arguments(parser) -> None:
    parser.usage = "suti serve [MODEL] [key=value ...] [--host HOST] [--port PORT]"
    parser.description = (f"{parser.description}. MODEL: a models:/NAME@ALIAS, models:/NAME/VERSION or "
                           f"runs:/ID/PATH URI (default {DEFAULT_MODEL}); key=value: Hydra overrides "
                           "(e.g. workdir=...). POST /invocations; GET /ping.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", default="5000", metavar="PORT", help="port to listen on (0: any free port; default 5000)")


def split_model(overrides: list[str]) -> tuple[str, list[str]]:
    """`suti serve MODEL key=value ...`: the model URI and the Hydra overrides."""
    from suti.cli import OVERRIDE
    from suti.errors import UserError

    models = [o for o in overrides if not OVERRIDE.match(o)]
    if len(models) > 1:
        raise UserError(f"give one MODEL to serve, got {len(models)}: {' '.join(models)}")
    return (models[0] if models else DEFAULT_MODEL), [o for o in overrides if OVERRIDE.match(o)]


def one_line_errors(app) -> None:
    """Error replies as one JSON line: MLflow's message without its stack trace and without
    the echo of the whole request (base64 images) it prefixes to prediction errors."""
    from fastapi.responses import Response

    @app.middleware("http")
    async def _errors(request, call_next):
        resp = await call_next(request)
        if resp.status_code < 400:
            return resp
        body = b"".join([chunk async for chunk in resp.body_iterator])
        try:
            err = json.loads(body)
            code, msg = err.get("error_code", "BAD_REQUEST"), str(err.get("message", ""))
        except (ValueError, AttributeError):
            code, msg = ("BAD_REQUEST" if resp.status_code < 500 else "INTERNAL_ERROR"), body.decode("utf-8", "replace")
        if "\nError: " in msg:  # "Failed to predict data '<the whole request>'. \nError: <why>"
            msg = msg.split("\nError: ", 1)[1]
        msg = " ".join(msg.split())[:500] or f"HTTP {resp.status_code}"
        return Response(content=json.dumps({"error_code": code, "message": msg}), status_code=resp.status_code,
                        media_type="application/json")


def _port(value) -> int:
    from suti.errors import UserError

    try:
        port = int(str(value).strip())
    except ValueError:
        raise UserError(f"--port must be a whole number, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise UserError(f"--port must be 0-65535, got {port}")
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    return port


def serve(overrides: list[str] | None = None, force: bool = False, host: str = "127.0.0.1", port="5000",
          out=None) -> int:
    """Load MODEL (default the champion) and serve it until Ctrl-C."""
    import logging

    from suti.errors import UserError
    from suti.config import compose, setup_env
    from suti.store import open_store

    out = out or sys.stdout
    import mlflow  # noqa: F401  (it sets its loggers' levels on import: quiet them after)

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines (a new registry's migrations) before errors
    model, ov = split_model(list(overrides or []))
    port = _port(port)
    cfg = compose(ov)
    setup_env(cfg)
    store = open_store(str(cfg.storage.uri), cfg.storage.endpoint_url)
    from suti.tasks.apprentice import check_source

    if not model.startswith(("models:/", "runs:/")):
        raise UserError(f"MODEL must be a models:/NAME@ALIAS, models:/NAME/VERSION or runs:/ID/PATH URI, got {model!r}")
    check_source(model, cfg, store)  # one line when it names no model
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None

    import uvicorn
    from mlflow.pyfunc import scoring_server

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    try:
        pyfunc = mlflow.pyfunc.load_model(model)
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise UserError(f"cannot load {model}: {' '.join(str(e).split())[:300]}") from None
    app = scoring_server.init(pyfunc)
    one_line_errors(app)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: listening on {host}: anyone who can reach it can use the model (plain HTTP)", file=sys.stderr)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    print(f"serving {model} on {url}/invocations (POST JSON: dataframe_records or inputs with prompt + base64 "
          f"demos; /ping answers when ready). Ctrl-C stops it.", file=out, flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
    print("stopped", file=out, flush=True)
    return 0
