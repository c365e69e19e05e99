"""Operations: artifacts on S3 (moto) and MLflow as a server whose artifacts live on S3.

A moto S3 server, an `mlflow server --artifacts-destination s3://...` (sqlite backend,
one worker), the smoke pipeline run by the `suti` CLI in a subprocess with
`storage=s3 tracking=server`, then a CLEAN subprocess (no AWS credentials, no work
directory, only the tracking URI) loads `models:/suti-apprentice@champion` through the
server and generates an image.
"""
from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import smoke_overrides
from servers import mlflow_server, moto_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
BUCKET = "suti-ops"
RUN_TIMEOUT = 40 * 60


def suti_env(tmp: Path) -> dict:
    """A clean environment for a `suti` subprocess: ephemeral Prefect under tmp, AWS test keys."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SUTI_"))}
    env.update(PREFECT_HOME=str(tmp / "prefect-home"), TMPDIR=str(tmp), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1")
    (tmp / "prefect-home").mkdir(exist_ok=True)
    return env


LOAD_CHAMPION = textwrap.dedent("""
    import base64, io, json, sys
    import mlflow, numpy as np
    from PIL import Image
    req = json.load(open(sys.argv[1]))
    model = mlflow.pyfunc.load_model("models:/suti-apprentice@champion")
    out = model.predict({"prompt": req["prompt"], "demos": req["demos"], "num_images": 1, "steps": 4, "seed": 0})
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB")) for s in out["images"][0]]
    Image.fromarray(images[0]).save(sys.argv[2])
    print(json.dumps({"images": len(images), "shape": list(images[0].shape), "std": float(images[0].std())}))
""")

def clean_python(script: str, args: list[str], tracking_uri: str, tmp: Path, timeout: float = 900) -> dict:
    """Run `script` in a fresh interpreter that knows only the tracking URI (no AWS keys, no workdir)."""
    home = tmp / "clean-home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TMPDIR": str(home),
           "XDG_CACHE_HOME": str(home / "cache"), "MPLCONFIGDIR": str(home / "mpl"), "MLFLOW_TRACKING_URI": tracking_uri,
           "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "PREFECT_HOME": str(home / "prefect")}
    p = subprocess.run([sys.executable, "-c", script, *args], cwd=home, env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, f"clean load failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return json.loads(p.stdout.strip().splitlines()[-1])


def bucket_keys(endpoint: str, prefix: str) -> list[str]:
    import boto3

    s3 = boto3.session.Session().client("s3", endpoint_url=endpoint)
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def test_pipeline_on_s3_with_mlflow_server(tmp_path):
    import boto3

    from suti.store import open_store

    with moto_server() as s3:
        boto3.session.Session().client("s3", endpoint_url=s3).create_bucket(Bucket=BUCKET)
        server_env = {**suti_env(tmp_path), "MLFLOW_S3_ENDPOINT_URL": s3}
        with mlflow_server(tmp_path, f"s3://{BUCKET}/mlflow", server_env) as tracking:
            wd = tmp_path / "wd"
            ov = smoke_overrides(wd, "storage=s3", f"storage.uri=s3://{BUCKET}/artifacts", f"storage.endpoint_url={s3}",
                                 "tracking=server", f"tracking.uri={tracking}")
            p = subprocess.run([str(BIN / "suti"), "run", *ov], cwd=tmp_path, env=suti_env(tmp_path),
                               capture_output=True, text=True, timeout=RUN_TIMEOUT)
            assert p.returncode == 0, f"suti run exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}"

            # the artifacts are in the bucket, not on local disk
            store_keys = bucket_keys(s3, "artifacts/")
            for key in ("world/manifest.json", "foundation/base/_DONE.json", "mine/_DONE.json", "filter/_DONE.json"):
                assert f"artifacts/{key}" in store_keys, key
            assert any(k.startswith("artifacts/experts/") and k.endswith("/_DONE.json") for k in store_keys)
            assert any(k.startswith("artifacts/apprentice/") for k in store_keys)
            assert not (wd / "store").exists()
            mlflow_keys = bucket_keys(s3, "mlflow/")
            assert any(k.endswith("examples/base_samples.png") for k in mlflow_keys), mlflow_keys[:20]
            assert any(k.endswith("/MLmodel") for k in mlflow_keys), mlflow_keys[:20]
            assert not (wd / "mlflow.db").exists()  # tracking went to the server

            # the champion, from a clean process that knows only the tracking server
            store = open_store(f"s3://{BUCKET}/artifacts", s3)
            req = {"prompt": "a photo of the subject on the beach",
                   "demos": [base64.b64encode(store.get_bytes(f"world/heldout/h000/demo_{i}.png")).decode()
                             for i in range(3)]}
            (tmp_path / "request.json").write_text(json.dumps(req))
            out = clean_python(LOAD_CHAMPION, [str(tmp_path / "request.json"), str(tmp_path / "gen.png")],
                               tracking, tmp_path)
            assert out["images"] == 1 and out["shape"][2] == 3 and out["std"] > 1.0, out
            assert (tmp_path / "gen.png").stat().st_size > 0
