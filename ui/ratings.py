"""Human ratings of an evaluation (DreamBench-v2 protocol): records in, answers stored, scores out.

Three binary questions per generated image, asked next to the subject's demonstrations
and the prompt; overall = the AND of the three (the paper's human score):

* ``subject``: is it the same subject as in the demonstrations? (subject fidelity)
* ``text``: does the image match the prompt? (text fidelity)
* ``photorealism``: does it look real and free of artifacts?

Answers live in ``<workdir>/ratings/<eval_id>.sqlite`` (WAL, synchronous=FULL), one row
per (rater, record) under a UNIQUE constraint, committed as each answer arrives, so a
crash or a reload loses nothing. No web code here: :mod:`.app` serves it.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

QUESTIONS = ("subject", "text", "photorealism")
ANSWERS = {"yes": 1, "no": 0}
# eval ids name a file under the workdir and rater names appear in links and reports
EVAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RATER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS raters (
    rater TEXT PRIMARY KEY,
    token TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS ratings (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    rater TEXT NOT NULL REFERENCES raters(rater),
    record_id TEXT NOT NULL,
    subject INTEGER NOT NULL CHECK (subject IN (0, 1)),
    text INTEGER NOT NULL CHECK (text IN (0, 1)),
    photorealism INTEGER NOT NULL CHECK (photorealism IN (0, 1)),
    answered_at REAL NOT NULL,
    UNIQUE (rater, record_id)
);
"""


class RatingError(ValueError):
    """Bad input for the rating page (records, names, ids); the message is one line."""


class DuplicateAnswer(RatingError):
    """This rater already answered this record."""


def check_eval_id(eval_id: str) -> str:
    if not isinstance(eval_id, str) or not EVAL_ID.match(eval_id):
        raise RatingError(f"invalid eval id {eval_id!r}: use letters, digits, '.', '_' or '-'")
    return eval_id


def check_rater(name: str) -> str:
    if not isinstance(name, str) or not RATER.match(name):
        raise RatingError(f"invalid rater name {name!r}: use letters, digits, '.', '_', '@' or '-' (max 64)")
    return name


def records_key(eval_id: str) -> str:
    """Store key of an evaluation's records (written by the eval stage)."""
    return f"eval/{check_eval_id(eval_id)}/records.jsonl"


def db_path(workdir: str | Path, eval_id: str) -> Path:
    """Where the answers for ``eval_id`` live."""
    return Path(workdir) / "ratings" / f"{check_eval_id(eval_id)}.sqlite"


def item_handle(eval_id: str, record_id: str) -> str:
    """Opaque, URL-safe id of a record on the page: keeps ratings blind (record ids often
    name the method) and keeps slashes of record ids out of URLs; stable across restarts."""
    return hashlib.sha256(f"{eval_id}\0{record_id}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Record:
    """One generated image to rate, as the eval stage wrote it."""

    record_id: str
    image_key: str                      # store key of the generated PNG
    method: str
    subject_id: str
    prompt: str
    demo_keys: tuple[str, ...]          # store keys of the demonstration images
    auto: dict = field(default_factory=dict, compare=False)  # the auto-rater's 0/1 answers
    item: str = ""                      # opaque handle used in URLs and answers


def parse_records(text: str, eval_id: str) -> list[Record]:
    """Parse and check ``records.jsonl``; any fault is a one-line RatingError."""
    records: list[Record] = []
    seen: dict[str, int] = {}
    items: set[str] = set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{records_key(eval_id)} line {n}"
        try:
            r = json.loads(line)
        except ValueError as e:
            raise RatingError(f"{where}: not JSON ({e})") from None
        if not isinstance(r, dict):
            raise RatingError(f"{where}: expected a JSON object")
        for k in ("record_id", "image_key", "prompt"):
            if not isinstance(r.get(k), str) or not r[k]:
                raise RatingError(f"{where}: {k!r} must be a non-empty string")
        demos = r.get("demo_keys")
        if not isinstance(demos, list) or not demos or not all(isinstance(d, str) and d for d in demos):
            raise RatingError(f"{where}: 'demo_keys' must be a non-empty list of store keys")
        rid = r["record_id"]
        if rid in seen:
            raise RatingError(f"{where}: record_id {rid!r} repeats line {seen[rid]}")
        seen[rid] = n
        item = item_handle(eval_id, rid)
        if item in items:  # 64-bit handles: practically never; refuse rather than mix images up
            raise RatingError(f"{where}: record_id {rid!r} collides with another record's page id")
        items.add(item)
        auto = r.get("auto") if isinstance(r.get("auto"), dict) else {}
        records.append(Record(record_id=rid, image_key=r["image_key"], method=str(r.get("method") or "unknown"),
                              subject_id=str(r.get("subject_id") or ""), prompt=r["prompt"],
                              demo_keys=tuple(demos), auto=auto, item=item))
    if not records:
        raise RatingError(f"{records_key(eval_id)} has no records")
    return records


def load_records(store, eval_id: str) -> list[Record]:
    """The evaluation's records from the artifact store (a missing file is a StoreError)."""
    data = store.get_bytes(records_key(eval_id))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise RatingError(f"{records_key(eval_id)} is not UTF-8 text") from None
    return parse_records(text, eval_id)


def rater_order(records: list[Record], eval_id: str, rater: str) -> list[Record]:
    """The order in which ``rater`` sees the records: shuffled per rater (so the method
    and position do not line up across raters), and the same after every restart."""
    seed = int.from_bytes(hashlib.sha256(f"{eval_id}\0{rater}".encode()).digest()[:8], "big")
    order = list(records)
    random.Random(seed).shuffle(order)
    return order


class RatingsDB:
    """The answers of one evaluation. A fresh sqlite connection per call, so the
    threaded web server may use one instance from every request thread."""

    def __init__(self, path: str | Path, eval_id: str):
        self.path = Path(path)
        self.eval_id = check_eval_id(eval_id)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("PRAGMA journal_mode=WAL")
            con.executescript(SCHEMA)
            con.execute("INSERT OR IGNORE INTO meta VALUES ('eval_id', ?)", (self.eval_id,))
            con.execute("INSERT OR IGNORE INTO meta VALUES ('schema', '1')")
            stored = con.execute("SELECT value FROM meta WHERE key = 'eval_id'").fetchone()[0]
        if stored != self.eval_id:
            raise RatingError(f"{self.path} holds ratings of eval {stored!r}, not {self.eval_id!r}")

    def _connect(self) -> "_Closing":
        con = sqlite3.connect(self.path, timeout=30, isolation_level=None)  # autocommit; explicit BEGIN below
        con.execute("PRAGMA synchronous=FULL")  # an acknowledged answer survives a power cut too
        con.execute("PRAGMA foreign_keys=ON")
        con.row_factory = sqlite3.Row
        return _Closing(con)

    def ensure_raters(self, names: list[str]) -> dict[str, str]:
        """Register raters (a new random token each), keeping known raters' tokens so
        their links survive a restart. Returns {rater: token} for ``names``."""
        names = [check_rater(n) for n in dict.fromkeys(names)]
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            for n in names:
                con.execute("INSERT OR IGNORE INTO raters VALUES (?, ?, ?)", (n, secrets.token_urlsafe(18), time.time()))
            con.execute("COMMIT")
        known = self.raters()
        return {n: known[n] for n in names}

    def raters(self) -> dict[str, str]:
        """All registered raters: {rater: token}."""
        with self._connect() as con:
            return {r["rater"]: r["token"] for r in con.execute("SELECT rater, token FROM raters ORDER BY created_at, rater")}

    def answered(self, rater: str) -> set[str]:
        """Record ids ``rater`` has answered."""
        with self._connect() as con:
            return {r[0] for r in con.execute("SELECT record_id FROM ratings WHERE rater = ?", (rater,))}

    def add(self, rater: str, record_id: str, answers: dict[str, int]) -> None:
        """Store one answer (committed before returning); a second answer by the same
        rater for the same record raises DuplicateAnswer."""
        values = [int(answers[q]) for q in QUESTIONS]
        try:
            with self._connect() as con:
                con.execute("INSERT INTO ratings (rater, record_id, subject, text, photorealism, answered_at) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (rater, record_id, *values, time.time()))
        except sqlite3.IntegrityError as e:
            if "UNIQUE" in str(e):
                raise DuplicateAnswer(f"{rater!r} already answered this image") from None
            raise

    def rows(self) -> list[dict]:
        """Every answer, oldest first."""
        with self._connect() as con:
            cur = con.execute("SELECT rater, record_id, subject, text, photorealism, answered_at FROM ratings ORDER BY id")
            return [dict(r) for r in cur]


class _Closing:
    """A sqlite3 connection that closes at the end of a ``with`` block (sqlite3's own
    context manager only commits)."""

    def __init__(self, con: sqlite3.Connection):
        self._con = con

    def __getattr__(self, name):
        return getattr(self._con, name)

    def __enter__(self) -> sqlite3.Connection:
        return self._con

    def __exit__(self, *exc) -> None:
        try:
            if self._con.in_transaction:
                self._con.execute("ROLLBACK")
        finally:
            self._con.close()


def _bit(value) -> int | None:
    """0/1 from an auto-rater answer (0, 1, False, True); None for anything else."""
    return int(value) if isinstance(value, (bool, int)) and value in (0, 1) else None


def _metric_name(method: str) -> str:
    # MLflow metric names: keep letters, digits, '_', '-', '.'; the method is one path level
    return re.sub(r"[^A-Za-z0-9_-]", "_", method) or "unknown"


def aggregate(rows: list[dict], records: list[Record], eval_id: str) -> tuple[dict[str, float], dict]:
    """Human scores from the answers: ``(metrics, raw)``.

    Metrics (each a mean over answers, i.e. over (rater, image) pairs):
    ``human.subject|text|photorealism``, ``human.overall`` (AND of the three),
    the same per method as ``human.<method>.<score>`` plus ``human.<method>.ratings``,
    ``human.ratings`` (answers), ``human.raters`` (raters with at least one answer),
    ``human.images`` (images with at least one answer), and where the records carry the
    auto-rater's answers ``human.auto_agreement.<score>`` (fraction where they agree).
    Answers to record ids no longer in the records are left out (counted in raw).
    ``raw`` is the JSON artifact: every answer joined with its record's method/subject.
    """
    by_id = {r.record_id: r for r in records}
    answers, orphans = [], 0
    for row in rows:
        rec = by_id.get(row["record_id"])
        if rec is None:
            orphans += 1
            continue
        a = {q: int(row[q]) for q in QUESTIONS}
        a["overall"] = int(all(a[q] for q in QUESTIONS))
        answers.append({"rater": row["rater"], "record_id": rec.record_id, "method": rec.method,
                        "subject_id": rec.subject_id, "prompt": rec.prompt, **a,
                        "answered_at": row["answered_at"]})
    scores = (*QUESTIONS, "overall")
    metrics: dict[str, float] = {"human.ratings": len(answers),
                                 "human.raters": len({a["rater"] for a in answers}),
                                 "human.images": len({a["record_id"] for a in answers})}
    if answers:
        for s in scores:
            metrics[f"human.{s}"] = sum(a[s] for a in answers) / len(answers)
        for method in sorted({a["method"] for a in answers}):
            mine = [a for a in answers if a["method"] == method]
            m = _metric_name(method)
            metrics[f"human.{m}.ratings"] = len(mine)
            for s in scores:
                metrics[f"human.{m}.{s}"] = sum(a[s] for a in mine) / len(mine)
        for s in scores:
            pairs = []
            for a in answers:
                auto = {q: _bit(v) for q, v in by_id[a["record_id"]].auto.items()}
                if s == "overall" and all(auto.get(q) is not None for q in QUESTIONS):
                    pairs.append(int(all(auto[q] for q in QUESTIONS)) == a[s])
                elif auto.get(s) is not None:
                    pairs.append(auto[s] == a[s])
            if pairs:
                metrics[f"human.auto_agreement.{s}"] = sum(pairs) / len(pairs)
    raw = {"eval_id": eval_id, "questions": list(QUESTIONS), "overall": "subject AND text AND photorealism",
           "answers": answers, "orphan_answers": orphans, "metrics": metrics}
    return metrics, raw
