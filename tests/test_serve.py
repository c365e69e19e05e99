"""Serving the registered apprentice: the pyfunc's signature, input example and code; MLflow's
own scoring app answering `dataframe_records` and `inputs` requests, malformed ones with a
one-line HTTP 400; and `suti serve` as a real server process (slow)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from test_apprentice_train import read_rgb, trained_world

SUTI = Path(sys.executable).with_name("suti")
MODEL = "models:/suti-apprentice@candidate"


@pytest.fixture(scope="session")
def trained(smoke, tmp_path_factory):
    return trained_world(smoke, tmp_path_factory)


def demos_b64(trained, n: int = 2) -> list[str]:
    from suti.imageio import b64_png

    return [b64_png(read_rgb(trained["store"], k)) for k in trained["rows"][0]["demo_keys"][:n]]


def requests(trained) -> dict:
    """Request bodies in MLflow's JSON forms (each asks for 1 + 2 images)."""
    row, demos = trained["rows"][0], demos_b64(trained)
    a = {"prompt": row["prompt"], "demos": demos, "num_images": 1, "steps": 2, "seed": 0}
    b = {"prompt": "a photo", "demos": demos[:1], "num_images": 2, "steps": 2, "seed": 1}
    return {"dataframe_records": {"dataframe_records": [a, b]}, "inputs": {"inputs": [a, b]},
            "dataframe_split": {"dataframe_split": {"columns": list(a), "data": [list(a.values()), list(b.values())]}}}


BAD = {  # body -> what the one-line message names
    "empty prompt": ({"inputs": [{"prompt": "  ", "demos": []}]}, "prompt"),
    "not base64": ({"dataframe_records": [{"prompt": "a mug", "demos": ["!!not an image!!"]}]}, "demo 0"),
    "bad number": ({"inputs": [{"prompt": "a mug", "num_images": 0}]}, "num_images"),
    "no payload key": ({"rows": [1, 2]}, ""),
    "not json": ("{prompt: ", ""),
}


def check_images(answer: dict, counts=(1, 2)) -> None:
    from suti.imageio import from_b64

    preds = answer["predictions"]
    assert [len(p["images"]) for p in preds] == list(counts), answer
    for p in preds:
        for s in p["images"]:
            img = from_b64(s)
            assert img.shape == (32, 32, 3)


def test_registered_pyfunc_has_signature_example_and_code(trained, tmp_path):
    import mlflow
    from mlflow.models import Model

    from suti.tracking import setup_tracking

    setup_tracking(trained["cfg"])
    info = mlflow.models.get_model_info(MODEL)
    assert info.signature is not None
    assert info.signature.inputs.input_names()[:2] == ["prompt", "demos"]
    assert info.signature.outputs.input_names() == ["prompt", "images"]
    local = Path(mlflow.artifacts.download_artifacts(MODEL, dst_path=str(tmp_path / "model")))
    assert (local / "code" / "suti" / "tasks" / "apprentice" / "registry.py").is_file()  # loads where suti is not installed
    assert (local / "code" / "suti" / "models" / "backbone.py").is_file()
    example = Model.load(str(local)).load_input_example(str(local))
    assert example is not None and list(example.columns)[:2] == ["prompt", "demos"]
    run = mlflow.MlflowClient().get_run(trained["report"]["mlflow_run_id"])
    (ds,) = run.inputs.dataset_inputs  # the data this version learned from
    tags = {t.key: t.value for t in ds.tags}
    assert ds.dataset.name == "G(lambda=None)" and tags["lambda"] == "None" and tags["size"] == str(len(trained["rows"]))
    assert run.data.params["lambda"] == run.data.params["filter.lambda_"] == "None"
    assert ds.dataset.digest == run.data.params["G.digest"]
    assert "filter.sweep" not in run.data.params and "world.resolution" not in run.data.params  # only its groups


def test_scoring_app_answers_both_json_forms_and_rejects_bad_requests_in_one_line(trained):
    import mlflow
    from mlflow.pyfunc import scoring_server
    from starlette.testclient import TestClient

    from suti.serve import one_line_errors
    from suti.tracking import setup_tracking

    setup_tracking(trained["cfg"])
    app = scoring_server.init(mlflow.pyfunc.load_model(MODEL))
    one_line_errors(app)
    client = TestClient(app)
    for form, body in requests(trained).items():
        r = client.post("/invocations", json=body)
        assert r.status_code == 200, (form, r.text[:500])
        check_images(r.json())
    for case, (body, needle) in BAD.items():
        r = client.post("/invocations", content=body if isinstance(body, str) else json.dumps(body),
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (case, r.status_code, r.text[:500])
        assert len(r.text.splitlines()) == 1 and "Traceback" not in r.text and "stack_trace" not in r.text, (case, r.text)
        assert needle in r.json()["message"], (case, r.json())


@pytest.mark.slow
def test_suti_serve_answers_with_pngs_then_stops(trained, tmp_path):
    from servers import free_port, wait_for_http

    port = free_port()
    log = tmp_path / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([str(SUTI), "serve", MODEL, *trained["overrides"], "--port", str(port)],
                                stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_for_http(f"http://127.0.0.1:{port}/ping", timeout=300, proc=proc, log=log, name="suti serve")
        for form in ("dataframe_records", "inputs"):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations",
                                         data=json.dumps(requests(trained)[form]).encode(),
                                         headers={"Content-Type": "application/json"})
            check_images(json.loads(urllib.request.urlopen(req, timeout=300).read()))
        bad = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=b"{prompt: ",
                                     headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(bad, timeout=60)
        assert e.value.code == 400 and len(e.value.read().splitlines()) == 1
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = log.read_text()
    assert proc.returncode == 0 and f"serving {MODEL} on http://127.0.0.1:{port}/invocations" in out, out[-2000:]
    assert "Traceback" not in out, out[-3000:]
