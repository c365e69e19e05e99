"""The human rating page (`suti rate`): a real headless Chromium rates ten images with a
reload in the middle, the answers are pushed into a real MLflow sqlite store and read
back; the JSON API rejects malformed, duplicate and foreign requests; the CLI server
stops cleanly on Ctrl-C."""
from __future__ import annotations

import http.client
import io
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import smoke_overrides
from PIL import Image, ImageDraw

from suti.store import open_store

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
EVAL_ID = "ev1"
METHODS = ("suti", "dreambooth")


def _png(rgb, shape: int) -> bytes:
    img = Image.new("RGB", (32, 32), (240, 240, 240))
    d = ImageDraw.Draw(img)
    (d.ellipse if shape % 2 else d.rectangle)((6 + shape % 5, 6, 26, 26 - shape % 4), fill=rgb)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write_eval(store, eval_id: str = EVAL_ID, n: int = 12) -> list[dict]:
    """n records over 3 subjects x 2 methods, as the eval stage writes them."""
    records = []
    for i in range(n):
        subject, method = f"subj{i % 3}", METHODS[i % 2]
        demo_keys = []
        for k in range(3):
            key = f"eval/{eval_id}/demos/{subject}/{k}.png"
            if not store.exists(key):
                store.put_bytes(key, _png((60 * (i % 3), 90, 200 - 40 * k), k))
            demo_keys.append(key)
        image_key = f"eval/{eval_id}/images/{i:02d}.png"
        store.put_bytes(image_key, _png((20 * i, 200 - 10 * i, 80), i))
        records.append({"record_id": f"{method}/{subject}/{i:02d}", "image_key": image_key, "method": method,
                        "subject_id": subject, "prompt": f"a {subject} in the jungle, photo {i}",
                        "demo_keys": demo_keys, "auto": {"subject": 1, "text": i % 2, "photorealism": 1}})
    store.put_bytes(f"eval/{eval_id}/records.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    return records


def truth(record_id: str) -> dict[str, str]:
    """The answers the test gives for a record (a mix of yes and no)."""
    i = int(record_id.rsplit("/", 1)[1])
    yes = {"subject": i % 2 == 0 or i % 5 == 1, "text": i % 3 != 0, "photorealism": i % 4 != 1}
    return {q: "yes" if v else "no" for q, v in yes.items()}


@pytest.fixture()
def setup(tmp_path):
    """(overrides, store, records, workdir) with a temp store and an MLflow sqlite store."""
    from suti.flows import rate  # loads ui/ as suti.ui

    store_root = tmp_path / "store"
    store = open_store(store_root.as_uri())
    records = write_eval(store)
    wd = tmp_path / "work"
    ov = smoke_overrides(wd, f"storage.uri={store_root.as_uri()}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db")
    assert rate._ui()[0].__name__ == "suti.ui.app"
    return ov, store, records, wd


def _chrome(tmp_path):
    """Headless Chromium. Missing, it fails the test (never a silent skip): the README's
    first command installs it (.ci/install-browser.sh)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        pytest.fail(f"needs Debian chromium + chromium-driver (missing {', '.join(missing)}): "
                    "run bash .ci/install-browser.sh", pytrace=False)

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1000,1400"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "SEVERE"})
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log")))


def test_chromium_rates_ten_images_with_reload_and_pushes_to_mlflow(setup, tmp_path):
    import mlflow
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from suti.cli import main
    from suti.config import compose
    from suti.tracking import log_metrics, mlflow_run
    from suti.ui.app import RatingServer, open_rating
    from suti.ui.ratings import rater_order

    ov, store, records, wd = setup
    app, db, recs, tokens = open_rating(store, EVAL_ID, wd, ["alice"])
    order = [r.item for r in rater_order(recs, EVAL_ID, "alice")]
    by_item = {r.item: r.record_id for r in recs}
    given: dict[str, dict] = {}
    driver = _chrome(tmp_path)
    try:
        with RatingServer(app, "127.0.0.1", 0) as server:
            assert server.url.startswith("http://127.0.0.1:")
            driver.get(server.link(tokens["alice"]))
            wait = WebDriverWait(driver, 15)

            def shown_item() -> str:
                wait.until(lambda d: d.find_element(By.ID, "task").is_displayed()
                           and d.find_element(By.ID, "task").get_attribute("data-item"))
                # the generated image and every demo really loaded (decoded PNGs, not errors)
                wait.until(lambda d: d.execute_script(
                    "return Array.from(document.images).length === 4 && "
                    "Array.from(document.images).every(i => i.complete && i.naturalWidth === 32)"))
                return driver.find_element(By.ID, "task").get_attribute("data-item")

            for n in range(10):
                if n == 4:
                    driver.refresh()  # mid-way reload: resumes at the first unanswered image
                    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-answered") == "4")
                item = shown_item()
                assert item == order[n], f"answer {n}: page shows {item}, first unanswered is {order[n]}"
                rid = by_item[item]
                assert driver.find_element(By.ID, "prompt").text == next(r for r in records if r["record_id"] == rid)["prompt"]
                assert driver.find_element(By.ID, "submit").get_attribute("disabled") is not None
                given[rid] = truth(rid)
                for q, v in given[rid].items():
                    driver.find_element(By.ID, f"{q}-{v}").click()
                driver.find_element(By.ID, "submit").click()
                wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-answered") == str(n + 1))
            assert "10 answered" in driver.find_element(By.ID, "progress").text
            errors = [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
            assert not errors, errors  # no CSP violations, failed loads or script errors
    finally:
        driver.quit()

    # every click was committed: one row per answered image, values as clicked
    rows = db.rows()
    assert {r["record_id"]: {q: "yes" if r[q] else "no" for q in truth(r["record_id"])} for r in rows} == given
    with sqlite3.connect(db.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.path == wd / "ratings" / f"{EVAL_ID}.sqlite"

    # push into the evaluation's (finished) MLflow run, through the CLI
    cfg = compose(ov)
    with mlflow_run(cfg, "eval", log_config=False) as run_id:
        log_metrics(run_id, {"auto.overall": 0.5})
    assert main(["rate", *ov, "--eval-id", EVAL_ID, "--push", "--run-id", run_id]) == 0

    client = mlflow.MlflowClient(tracking_uri=str(cfg.tracking.uri))
    m = client.get_run(run_id).data.metrics
    yes = lambda a, q: a[q] == "yes"  # noqa: E731
    overall = [all(yes(a, q) for q in a) for a in given.values()]
    assert m["human.ratings"] == 10 and m["human.raters"] == 1 and m["human.images"] == 10
    for q in ("subject", "text", "photorealism"):
        assert m[f"human.{q}"] == pytest.approx(sum(yes(a, q) for a in given.values()) / 10)
    assert m["human.overall"] == pytest.approx(sum(overall) / 10)
    assert 0 < m["human.overall"] < 1  # the clicks mixed yes and no
    for method in METHODS:
        mine = [ok for rid, ok in zip(given, overall) if rid.startswith(method + "/")]
        assert m[f"human.{method}.ratings"] == len(mine)
        assert m[f"human.{method}.overall"] == pytest.approx(sum(mine) / len(mine))
    assert m["auto.overall"] == 0.5  # same run as the automatic scores
    raw = json.loads(Path(client.download_artifacts(run_id, f"ratings/{EVAL_ID}.json", str(tmp_path / "dl"))).read_text())
    assert len(raw["answers"]) == 10
    assert {a["record_id"]: {q: "yes" if a[q] else "no" for q in truth(a["record_id"])} for a in raw["answers"]} == given
    assert all(a["rater"] == "alice" and a["method"] == a["record_id"].split("/")[0] for a in raw["answers"])


def test_api_rejects_malformed_duplicate_and_foreign_requests(setup):
    from suti.ui.app import RatingServer, open_rating

    ov, store, records, wd = setup
    app, db, recs, tokens = open_rating(store, EVAL_ID, wd, ["bob"])
    c = app.test_client()
    tok = tokens["bob"]
    state = c.get(f"/r/{tok}/next").get_json()
    assert state["total"] == 12 and state["answered"] == 0 and not state["done"]
    item = state["item"]["id"]
    assert all(r["record_id"] not in json.dumps(state) for r in records)  # blind: no record ids / methods
    url = f"/r/{tok}/answers"
    ok = {"item": item, "subject": "yes", "text": "no", "photorealism": "yes"}

    def rejected(resp, code):
        assert resp.status_code == code, (resp.status_code, resp.get_data(as_text=True))
        assert resp.is_json and resp.get_json()["error"]

    rejected(c.post(url, data="subject=yes"), 400)                                   # not JSON
    rejected(c.post(url, data="{not json", content_type="application/json"), 400)
    rejected(c.post(url, json=[ok]), 400)                                             # not an object
    rejected(c.post(url, json={k: v for k, v in ok.items() if k != "text"}), 400)    # missing field
    rejected(c.post(url, json={**ok, "comment": "hi"}), 400)                          # extra field
    for bad in ("maybe", True, 1, None, "YES"):
        rejected(c.post(url, json={**ok, "photorealism": bad}), 400)                  # not yes/no
    rejected(c.post(url, json={**ok, "item": 7}), 400)
    rejected(c.post(url, json={**ok, "item": "0" * 16}), 404)                         # unknown record
    rejected(c.post(url, json={**ok, "item": records[0]["record_id"]}), 404)          # raw record ids are not handles
    rejected(c.post("/r/not-a-token/answers", json=ok), 403)                          # bad token
    rejected(c.get("/r/not-a-token/next"), 403)
    assert c.get("/r/not-a-token").status_code == 403
    assert db.rows() == []                                                            # nothing stored so far

    resp = c.post(url, json=ok)
    assert resp.status_code == 201 and resp.get_json()["answered"] == 1
    assert resp.get_json()["item"]["id"] != item                                      # moves on
    rejected(c.post(url, json=ok), 409)                                               # duplicate
    rejected(c.post(url, json={**ok, "subject": "no"}), 409)                          # no silent overwrite
    assert [(r["rater"], r["subject"], r["text"], r["photorealism"]) for r in db.rows()] == [("bob", 1, 0, 1)]

    # images: only the records' own, by handle
    rec = next(r for r in recs if r.item == item)
    img = c.get(f"/r/{tok}/img/{item}")
    assert img.status_code == 200 and img.mimetype == "image/png" and img.data == store.get_bytes(rec.image_key)
    assert c.get(f"/r/{tok}/demo/{item}/2").data == store.get_bytes(rec.demo_keys[2])
    for path in (f"/r/{tok}/demo/{item}/3", f"/r/{tok}/demo/{item}/-1", f"/r/{tok}/img/{'f' * 16}",
                 f"/r/{tok}/img/{rec.image_key}", "/img/../../etc/passwd", f"/r/{tok}/img/../../etc/passwd",
                 f"/r/{tok}/img/..%2F..%2Fetc%2Fpasswd", "/static/../ratings.py", "/static/..%2Fratings.py"):
        r = c.get(path)
        assert r.status_code == 404 and b"root:" not in r.data and b"import" not in r.data, path
    assert c.get(f"/r/not-a-token/img/{item}").status_code == 403

    with RatingServer(app) as server:  # raw paths, sent as is (no client-side normalisation)
        for path in ("/img/../../etc/passwd", f"/r/{tok}/img/../../../../etc/passwd", f"/r/{tok}/img/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
                     f"/r/{tok}/demo/{item}/../../../../etc/passwd"):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            conn.close()
            assert resp.status in (400, 404) and b"root:" not in body, (path, resp.status)

    # a record whose keys point outside the store is refused by the store, not served
    evil = {**records[0], "record_id": "evil", "image_key": "../../../../etc/passwd", "demo_keys": ["/etc/passwd"]}
    store.put_bytes("eval/ev2/records.jsonl", (json.dumps(evil) + "\n").encode())
    app2, _, recs2, tok2 = open_rating(store, "ev2", wd, ["bob"])
    c2 = app2.test_client()
    for path in (f"/r/{tok2['bob']}/img/{recs2[0].item}", f"/r/{tok2['bob']}/demo/{recs2[0].item}/0"):
        r = c2.get(path)
        assert r.status_code == 404 and b"root:" not in r.data

    # a restart keeps the rater's link and answers, and resumes at the next image
    app3, _, _, tokens3 = open_rating(store, EVAL_ID, wd, None)
    assert tokens3 == {"bob": tok}
    assert app3.test_client().get(f"/r/{tok}/next").get_json()["answered"] == 1


def test_aggregate_and_push_errors(setup):
    from suti.cli import main
    from suti.ui.ratings import Record, aggregate

    recs = [Record(f"r{i}", f"k{i}", m, "s", "p", ("d",), {"subject": 1, "text": 1, "photorealism": 1})
            for i, m in enumerate(["a", "a", "b w/ space"])]
    rows = [{"rater": "x", "record_id": "r0", "subject": 1, "text": 1, "photorealism": 1, "answered_at": 0},
            {"rater": "y", "record_id": "r0", "subject": 1, "text": 0, "photorealism": 1, "answered_at": 0},
            {"rater": "x", "record_id": "r2", "subject": 0, "text": 1, "photorealism": 1, "answered_at": 0},
            {"rater": "x", "record_id": "gone", "subject": 1, "text": 1, "photorealism": 1, "answered_at": 0}]
    m, raw = aggregate(rows, recs, "e")
    assert m["human.ratings"] == 3 and m["human.raters"] == 2 and m["human.images"] == 2 and raw["orphan_answers"] == 1
    assert m["human.overall"] == pytest.approx(1 / 3) and m["human.text"] == pytest.approx(2 / 3)
    assert m["human.a.overall"] == 0.5 and m["human.b_w__space.overall"] == 0.0
    assert m["human.auto_agreement.overall"] == pytest.approx(1 / 3)

    ov, store, records, wd = setup
    assert main(["rate", *ov, "--eval-id", EVAL_ID, "--push", "--run-id", "nope"]) == 2  # no ratings db yet
    assert main(["rate", *ov, "--eval-id", "../x", "--push", "--run-id", "nope"]) == 2
    assert main(["rate", *ov, "--eval-id", "missing", "--port", "0"]) == 2
    assert main(["rate", *ov, "--eval-id", EVAL_ID, "--port", "99999"]) == 2


def test_cli_serves_prints_links_and_stops_cleanly_on_ctrl_c(setup, tmp_path):
    """The serving process imports no Prefect and is serving, with its Ctrl-C cleanup in
    place, before it prints the links: a link opened and Ctrl-C pressed at once stops it in
    about a second, however busy the machine. Should it ever hang, faulthandler (SIGABRT)
    prints where each of its threads was."""
    import urllib.request

    ov, store, records, wd = setup
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "suti.cli", "rate", *ov, "--eval-id", EVAL_ID,
                             "--rater", "ann", "--rater", "ben", "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        deadline = time.monotonic() + 40
        link = re.compile(r"^(\w+): (http://\S+/r/\S+)$")
        while len([ln for ln in lines if link.match(ln)]) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        links = dict(m.groups() for m in map(link.match, lines) if m)
        assert set(links) == {"ann", "ben"}, (lines, proc.stderr.read() if proc.poll() is not None else "")
        assert all(u.startswith("http://127.0.0.1:") for u in links.values())
        assert links["ann"] != links["ben"]
        with urllib.request.urlopen(links["ann"] + "/next", timeout=5) as r:
            assert json.load(r)["total"] == 12
        proc.send_signal(signal.SIGINT)
        t0 = time.monotonic()
        try:
            out, err = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # faulthandler: every thread's stack to stderr
            out, err = proc.communicate(timeout=20)
            pytest.fail(f"no exit 20 s after Ctrl-C; where it was:\n{err[-4000:]}")
        stop_seconds = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "stopped; 0 answers" in out and "Traceback" not in err
    assert stop_seconds < 15, stop_seconds
