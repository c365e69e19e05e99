"""The rating page: a small Flask app over one evaluation's records and its ratings database.

Routes (``<token>`` is a rater's random token; every route below it checks it):

====================================  ==============================================
``GET  /r/<token>``                   the page (HTML + static JS)
``GET  /r/<token>/next``              JSON: progress and the first unanswered image
``POST /r/<token>/answers``           JSON ``{"item", "subject", "text", "photorealism"}``
                                      with ``"yes"``/``"no"`` values -> 201 + next state;
                                      400 malformed, 404 unknown item, 409 duplicate
``GET  /r/<token>/img/<item>``        the generated image of a record
``GET  /r/<token>/demo/<item>/<i>``   the record's i-th demonstration
====================================  ==============================================

``<item>`` is the record's opaque handle (:func:`.ratings.item_handle`); images are
found only through the records (item -> record -> store key), so no part of a request
ever becomes a file path or a store key. Errors are JSON ``{"error": "..."}``.
"""
from __future__ import annotations

import hmac
import logging
import socket
import threading
from pathlib import Path

from flask import Flask, abort, jsonify, render_template, request, url_for
from werkzeug.exceptions import HTTPException
from werkzeug.serving import WSGIRequestHandler, make_server

from .ratings import (ANSWERS, QUESTIONS, DuplicateAnswer, Record, RatingsDB, check_eval_id, db_path,
                      load_records, rater_order)

log = logging.getLogger("suti.ui")
HERE = Path(__file__).resolve().parent

# What the rater is asked; keys are the answer fields and the metric names.
QUESTION_TEXT = {
    "subject": ("Subject fidelity", "Is the main subject of the image the same subject as in the reference images?"),
    "text": ("Text fidelity", "Does the image match the prompt?"),
    "photorealism": ("Photorealism", "Does the image look real, free of visual artifacts?"),
}
IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"RIFF", "image/webp"))
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'",
    "Referrer-Policy": "no-referrer",  # the token is in the URL
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}


def create_app(store, eval_id: str, records: list[Record], db: RatingsDB) -> Flask:
    """The rating app over ``records`` (images read from ``store``), answers in ``db``."""
    check_eval_id(eval_id)
    app = Flask("suti.ui", root_path=str(HERE), template_folder="templates", static_folder="static")
    app.config["MAX_CONTENT_LENGTH"] = 16 * 1024
    app.json.sort_keys = False
    by_item = {r.item: r for r in records}

    def rater_for(token: str) -> str:
        # constant-time comparison against every rater's token (there are a few)
        found = None
        for name, known in db.raters().items():
            if hmac.compare_digest(token.encode(), known.encode()):
                found = name
        if found is None:
            abort(403, "unknown rater link")
        return found

    def record_for(item: str) -> Record:
        rec = by_item.get(item)
        if rec is None:
            abort(404, "no such image in this evaluation")
        return rec

    def state(token: str, rater: str) -> dict:
        done = db.answered(rater)
        order = rater_order(records, eval_id, rater)
        nxt = next((r for r in order if r.record_id not in done), None)
        answered = sum(1 for r in records if r.record_id in done)
        out = {"rater": rater, "total": len(records), "answered": answered, "done": nxt is None, "item": None}
        if nxt is not None:
            out["item"] = {
                "id": nxt.item,
                "position": answered + 1,
                "prompt": nxt.prompt,
                "image": url_for("image", token=token, item=nxt.item),
                "demos": [url_for("demo", token=token, item=nxt.item, index=i) for i in range(len(nxt.demo_keys))],
            }
        return out

    def image_response(key: str):
        try:
            data = store.get_bytes(key)
        except Exception as e:  # StoreError or a store backend's own error: never shown raw
            log.warning("rating page: cannot read image %s: %s", key, e)
            abort(404, "image not available")
        mime = next((m for magic, m in IMAGE_TYPES if data.startswith(magic)), None)
        if mime is None:
            abort(404, "image not available")
        resp = app.response_class(data, mimetype=mime)
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp

    @app.get("/r/<token>")
    def page(token: str):
        rater = rater_for(token)
        return render_template("rate.html", rater=rater, eval_id=eval_id, total=len(records),
                               questions=[(q, *QUESTION_TEXT[q]) for q in QUESTIONS],
                               next_url=url_for("next_item", token=token),
                               answer_url=url_for("answer", token=token))

    @app.get("/r/<token>/next")
    def next_item(token: str):
        return jsonify(state(token, rater_for(token)))

    @app.post("/r/<token>/answers")
    def answer(token: str):
        rater = rater_for(token)
        body = request.get_json(silent=True) if request.is_json else None
        if not isinstance(body, dict):
            abort(400, "send one JSON object (Content-Type: application/json)")
        expected = {"item", *QUESTIONS}
        missing, extra = sorted(expected - body.keys()), sorted(body.keys() - expected)
        if missing or extra:
            abort(400, "; ".join(filter(None, [missing and f"missing field(s): {', '.join(missing)}",
                                               extra and f"unknown field(s): {', '.join(map(str, extra))}"])))
        if not isinstance(body["item"], str):
            abort(400, "item must be a string")
        bad = [q for q in QUESTIONS if not isinstance(body[q], str) or body[q] not in ANSWERS]
        if bad:
            abort(400, f"answers must be \"yes\" or \"no\": {', '.join(bad)}")
        rec = record_for(body["item"])
        try:
            db.add(rater, rec.record_id, {q: ANSWERS[body[q]] for q in QUESTIONS})
        except DuplicateAnswer as e:
            abort(409, str(e))
        return jsonify(state(token, rater)), 201

    @app.get("/r/<token>/img/<item>")
    def image(token: str, item: str):
        rater_for(token)
        return image_response(record_for(item).image_key)

    @app.get("/r/<token>/demo/<item>/<int:index>")
    def demo(token: str, item: str, index: int):
        rater_for(token)
        rec = record_for(item)
        if index >= len(rec.demo_keys):
            abort(404, "no such demonstration")
        return image_response(rec.demo_keys[index])

    @app.get("/favicon.ico")
    def favicon():
        return "", 204  # browsers ask for it; a 404 would be a console error

    @app.get("/healthz")
    def healthz():
        return jsonify({"ok": True, "eval_id": eval_id, "records": len(records)})

    @app.errorhandler(HTTPException)
    def http_error(e: HTTPException):
        resp = jsonify({"error": e.description or e.name})
        resp.status_code = e.code or 500
        return resp

    @app.after_request
    def security_headers(resp):
        for k, v in SECURITY_HEADERS.items():
            resp.headers.setdefault(k, v)
        if resp.mimetype in ("application/json", "text/html"):
            resp.headers.setdefault("Cache-Control", "no-store")
        return resp

    return app


def open_rating(store, eval_id: str, workdir: str | Path, raters: list[str] | None = None):
    """Load the records, open ``<workdir>/ratings/<eval_id>.sqlite`` and register raters.

    ``raters`` None: the raters already registered, else one called ``rater``.
    Returns ``(app, db, records, {rater: token})``.
    """
    records = load_records(store, eval_id)
    db = RatingsDB(db_path(workdir, eval_id), eval_id)
    tokens = db.ensure_raters(list(raters) if raters else (list(db.raters()) or ["rater"]))
    return create_app(store, eval_id, records, db), db, records, tokens


class _QuietHandler(WSGIRequestHandler):
    """Request lines go to the debug log with the token cut out (they hold the secret)."""

    def log_request(self, code="-", size="-") -> None:
        parts = (self.path or "").split("/")
        if len(parts) > 2 and parts[1] == "r":
            parts[2] = "<token>"
        log.debug("%s %s %s", self.command, "/".join(parts), code)


class RatingServer:
    """The app on a real socket, served from a background thread::

        server = RatingServer(app, "127.0.0.1", 0).start()
        server.url       # http://127.0.0.1:<port>
        server.shutdown()
    """

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0):
        self.app = app
        self._server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
        self.host = host
        self.port = self._server.server_port
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()  # a name the raters can reach, not the wildcard
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def link(self, token: str) -> str:
        return f"{self.url}/r/{token}"

    def start(self) -> "RatingServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name=f"rating-server-{self.port}", daemon=True)
        self._thread.start()
        return self

    def wait(self, poll: float = 0.5) -> None:
        """Block until the server stops (Ctrl-C raises KeyboardInterrupt here)."""
        while self._thread is not None and self._thread.is_alive():
            self._thread.join(poll)

    def shutdown(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(10)
        self._server.server_close()

    def __enter__(self) -> "RatingServer":
        return self.start() if self._thread is None else self

    def __exit__(self, *exc) -> None:
        self.shutdown()
