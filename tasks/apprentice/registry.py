"""The apprentice in MLflow: the pyfunc (demos + prompt in, PNGs out), logging and
registration, and one resolver for every way a model is named."""
from __future__ import annotations

import hashlib
import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.pyfunc import PythonModel
from omegaconf import DictConfig

from suti.models.pipeline import MODEL_FILE, Apprentice
from suti.tasks.apprentice.files import cache_dir, download_prefix

log = logging.getLogger("suti.apprentice")


# ---------------------------------------------------------------------------- MLflow pyfunc

class ApprenticePyfunc(PythonModel):
    """MLflow pyfunc: demos + prompt in, base64 PNGs out.

    Input (see :func:`model_signature`): one request per row of a DataFrame
    (``dataframe_records`` / ``dataframe_split``), or ``inputs`` as a list of request dicts
    or one dict; ``prompt`` (str) and ``demos`` (list of base64 image files: PNG, JPEG, ...),
    optional ``demo_texts`` (list of str), ``num_images``, ``seed``, ``guidance``,
    ``demo_guidance`` (a separate scale for the demos), ``steps``, ``scheduler``. Output: a
    DataFrame with one row per request, ``prompt`` and ``images`` (list of base64 PNG strings). A malformed request raises a one-line MlflowException
    (INVALID_PARAMETER_VALUE: HTTP 400 from the scoring server).
    """

    # The input is checked in predict() (a DataFrame, a dict or a list of dicts): no type-hint
    # validation by MLflow (which would also warn about the missing hints).
    _skip_type_hint_validation = True

    def load_context(self, context):
        self.apprentice = Apprentice.from_dir(context.artifacts["apprentice"])

    @staticmethod
    def requests(model_input) -> list[dict]:
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            reqs = model_input.to_dict(orient="records")
        elif isinstance(model_input, dict):
            if isinstance(model_input.get("prompt"), str):
                reqs = [model_input]
            else:
                cols = {k: (v.tolist() if isinstance(v, np.ndarray) else list(v) if isinstance(v, (list, tuple)) else [v])
                        for k, v in model_input.items()}
                if len({len(v) for v in cols.values()}) > 1:
                    raise ValueError("the request's columns have different lengths")
                reqs = pd.DataFrame(cols).to_dict(orient="records")
        elif isinstance(model_input, (list, tuple)):
            if not all(isinstance(r, dict) for r in model_input):
                raise ValueError("'inputs' must be a request object or a list of request objects")
            reqs = [dict(r) for r in model_input]
        else:
            raise ValueError(f"unsupported input {type(model_input).__name__}: a DataFrame, dict or list of dicts")

        def norm(v):
            if isinstance(v, np.ndarray):
                return v.tolist()
            return v

        return [{k: norm(v) for k, v in r.items()} for r in reqs]

    def predict(self, context, model_input, params=None):
        from suti.errors import UserError

        try:
            return self._predict(model_input, params)
        except (UserError, ValueError, TypeError) as e:  # the request's fault: one line, HTTP 400
            raise bad_request(" ".join(str(e).split()) or e.__class__.__name__) from None

    def _predict(self, model_input, params=None):
        import pandas as pd

        from suti.imageio import b64_png, from_b64

        def missing(v) -> bool:
            return v is None or (isinstance(v, float) and math.isnan(v))

        reqs = self.requests(model_input)
        if not reqs:
            raise ValueError("no request: give at least one row with a 'prompt'")
        checked = []
        for i, r in enumerate(reqs):  # every request is checked before any image is rendered
            unknown = sorted(set(r) - set(REQUEST_FIELDS))
            if unknown:
                raise ValueError(f"request {i}: unknown field(s) {', '.join(map(str, unknown))} "
                                 f"(known: {', '.join(REQUEST_FIELDS)})")
            prompt = r.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"request {i}: 'prompt' must be a non-empty string")
            demos_b64 = r.get("demos")
            if isinstance(demos_b64, str):
                demos_b64 = [demos_b64]
            if not missing(demos_b64) and not isinstance(demos_b64, (list, tuple)):
                raise ValueError(f"request {i}: 'demos' must be a list of base64 image strings")
            demos = [from_b64(s, f"request {i} demo {j}") for j, s in enumerate([] if missing(demos_b64) else demos_b64)]
            texts = r.get("demo_texts")
            texts = None if missing(texts) else [texts] * len(demos) if isinstance(texts, str) else list(texts)
            if texts is not None and len(texts) != len(demos):
                raise ValueError(f"request {i}: {len(texts)} demo_texts for {len(demos)} demos")

            def opt(name, cast, lo=None, hi=None):
                v = r.get(name, (params or {}).get(name))
                if missing(v):
                    return None
                try:
                    v = cast(v)
                except (TypeError, ValueError):
                    raise ValueError(f"request {i}: '{name}' must be a {cast.__name__}, got {v!r}") from None
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    raise ValueError(f"request {i}: '{name}' must be between {lo} and {hi}, got {v}")
                return v

            scheduler = opt("scheduler", str)
            if scheduler is not None and scheduler not in ("ddpm", "ddim", "dpm"):
                raise ValueError(f"request {i}: 'scheduler' must be ddpm, ddim or dpm, got {scheduler!r}")
            checked.append(dict(demos=demos, texts=texts, prompt=prompt, num_images=opt("num_images", int, 1, 64),
                                guidance=opt("guidance", float, 0, 100), scheduler=scheduler,
                                demo_guidance=opt("demo_guidance", float, 0, 100),
                                steps=opt("steps", int, 1, 1000), seed=opt("seed", int, 0) or 0))
        out = []
        for c in checked:
            imgs = self.apprentice.generate(c["demos"], c["texts"], c["prompt"], num_images=c["num_images"],
                                            guidance=c["guidance"], scheduler=c["scheduler"], steps=c["steps"],
                                            seed=c["seed"], demo_guidance=c["demo_guidance"])
            out.append({"prompt": c["prompt"], "images": [b64_png(im) for im in imgs]})
        return pd.DataFrame(out, columns=["prompt", "images"])


def bad_request(message: str) -> Exception:
    """A malformed request: an MlflowException (INVALID_PARAMETER_VALUE, so the scoring
    server answers HTTP 400) that is also a ValueError for Python callers."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

    class BadRequest(MlflowException, ValueError):
        pass

    return BadRequest(message, error_code=INVALID_PARAMETER_VALUE)


REQUEST_FIELDS = ("prompt", "demos", "demo_texts", "num_images", "seed", "guidance", "demo_guidance", "steps",
                  "scheduler")


def model_signature():
    """The pyfunc's signature: one request per row, `prompt` required, the rest optional."""
    from mlflow.models import ModelSignature
    from mlflow.types import DataType
    from mlflow.types.schema import AnyType, Array, ColSpec, Schema

    inputs = Schema([ColSpec(DataType.string, "prompt"),
                     ColSpec(Array(DataType.string), "demos", required=False),
                     ColSpec(Array(DataType.string), "demo_texts", required=False),
                     # numbers as AnyType: records that leave one out make it NaN (a float column), which
                     # a long column refuses, and a double column refuses ints; predict checks and casts them
                     ColSpec(AnyType(), "num_images", required=False),
                     ColSpec(AnyType(), "seed", required=False),
                     ColSpec(AnyType(), "guidance", required=False),
                     ColSpec(AnyType(), "demo_guidance", required=False),
                     ColSpec(AnyType(), "steps", required=False),
                     ColSpec(DataType.string, "scheduler", required=False)])
    outputs = Schema([ColSpec(DataType.string, "prompt"), ColSpec(Array(DataType.string), "images")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> dict:
    """A request the model answers quickly (one image, two steps), with one small demo."""
    from suti.imageio import b64_png

    demo = np.zeros((16, 16, 3), np.uint8)
    demo[4:12, 4:12] = (200, 60, 40)
    return {"prompt": "a photo of it on the beach", "demos": [b64_png(demo)], "demo_texts": ["a red box"],
            "num_images": 1, "steps": 2, "seed": 0}


def package_code(dest: Path) -> Path:
    """The `suti` package as installed (suti + its mapped sub-packages), copied to
    ``dest/suti``: the model's ``code_paths``, so it loads where suti is not installed."""
    import importlib.util

    root = dest / "suti"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(Path(importlib.util.find_spec("suti").submodule_search_locations[0]), root, ignore=skip)
    for sub in ("flows", "tasks", "models", "world", "conf", "ui"):
        spec = importlib.util.find_spec(f"suti.{sub}")
        if spec is not None and spec.submodule_search_locations:
            src = Path(list(spec.submodule_search_locations)[0])
            if src.resolve() != (root / sub).resolve():
                shutil.copytree(src, root / sub, ignore=skip, dirs_exist_ok=True)
    return root


def pip_requirements() -> list[str]:
    from suti.tracking import PIP_REQUIREMENTS

    return list(PIP_REQUIREMENTS) + ["mlflow==3.17.2", "pandas", "transformers==5.24.0", "lightning==2.6.6",
                                     "omegaconf==2.3.1", "hydra-core==1.3.8", "pydantic==2.14.4", "fastapi", "uvicorn"]


def log_pyfunc(model_dir: str | Path, run_id: str, registered_name: str | None = None) -> Any:
    """Log an exported apprentice folder as a pyfunc model in ``run_id`` (optionally
    registered), with its signature, an input example and the suti code."""
    import mlflow
    import pandas as pd

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    code = Path(tempfile.mkdtemp(prefix="suti-code-"))
    try:
        with mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(name="apprentice", python_model=ApprenticePyfunc(),
                                           artifacts={"apprentice": str(model_dir)},
                                           pip_requirements=pip_requirements(),
                                           code_paths=[str(package_code(code))], signature=model_signature(),
                                           input_example=pd.DataFrame([input_example()]),
                                           registered_model_name=registered_name)
    finally:
        shutil.rmtree(code, ignore_errors=True)


def register_candidate(cfg: DictConfig, store, run_name: str, run_id: str, tags: dict | None = None) -> dict:
    """Log ``apprentice/<run>/model`` as a pyfunc in the MLflow run, register it as
    ``apprentice.model_name`` and point ``apprentice.alias`` (``candidate``) at it."""
    import mlflow

    name = str(cfg.apprentice.model_name)
    alias = str(cfg.apprentice.alias)
    digest = hashlib.sha256(store.get_bytes(f"apprentice/{run_name}/model/{MODEL_FILE}")).hexdigest()[:16]
    tags = {**(tags or {}), "run_name": run_name, "model_digest": digest}
    client = mlflow.MlflowClient()
    version, model_uri = _registered_version(client, name, tags), None
    if version is None:  # a rerun of a finished run re-points the alias instead of duplicating it
        local = Path(tempfile.mkdtemp(prefix="register-", dir=cache_dir(cfg)))
        try:
            download_prefix(store, f"apprentice/{run_name}/model", local / "model")
            info = log_pyfunc(local / "model", run_id, name)
        finally:
            shutil.rmtree(local, ignore_errors=True)
        version, model_uri = str(info.registered_model_version), info.model_uri
        for k, v in tags.items():
            client.set_model_version_tag(name, version, k, str(v))
    client.set_registered_model_alias(name, alias, version)
    got = client.get_model_version_by_alias(name, alias)  # read it back
    return {"name": name, "version": str(got.version), "alias": alias, "uri": f"models:/{name}@{alias}",
            "model_uri": model_uri or got.source, "reused": model_uri is None}


def _registered_version(client, name: str, tags: dict) -> str | None:
    """The registered version carrying exactly these run tags, if any."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return None
    want = {k: str(tags[k]) for k in ("run_name", "model_digest")}
    for v in sorted(versions, key=lambda v: -int(v.version)):
        if all(v.tags.get(k) == val for k, val in want.items()):
            return str(v.version)
    return None


# ---------------------------------------------------------------------------- one resolver


def resolve(source: str, store=None) -> tuple[str, str]:
    """What ``source`` names, as (kind, reference), or a one-line UserError:
    ``registry`` (models:/NAME@ALIAS or models:/NAME/VERSION), ``run`` (runs:/ID/PATH),
    ``folder`` (an exported model folder) or ``store`` (a training run's name in the store)."""
    from suti.errors import UserError

    source = str(source).strip()
    if not source:
        raise UserError("--model is empty")
    if source.startswith("models:/"):
        ref = source[len("models:/"):].strip("/")
        if "@" not in ref and "/" not in ref:
            raise UserError(f"model URI {source} needs a version or alias: models:/NAME@ALIAS or models:/NAME/N")
        return "registry", source
    if source.startswith("runs:/"):
        return "run", source
    p = Path(source).expanduser()
    if p.is_dir():
        if not (p / MODEL_FILE).is_file():
            raise UserError(f"{p} is not an exported apprentice (no {MODEL_FILE})")
        return "folder", str(p)
    if store is not None and "/" not in source.strip("/") and store.exists(f"apprentice/{source}/model/{MODEL_FILE}"):
        return "store", source
    where = f" or a trained run in {store.url('apprentice')}" if store is not None else ""
    raise UserError(f"no apprentice model {source!r}: give models:/NAME@ALIAS, runs:/ID/PATH, a model folder{where}")


def check_source(source: str, cfg: DictConfig | None = None, store=None) -> None:
    """Fail with one line when ``source`` names no model (before any flow starts); a
    registry URI is looked up in the registry."""
    from suti.errors import UserError

    kind, ref = resolve(source, store)
    if kind != "registry":
        return
    import mlflow
    from mlflow.exceptions import MlflowException

    if cfg is not None:
        from suti.tracking import setup_tracking

        setup_tracking(cfg)
    name_ref = ref[len("models:/"):].strip("/")
    client = mlflow.MlflowClient()
    try:
        if "@" in name_ref:
            name, alias = name_ref.split("@", 1)
            client.get_model_version_by_alias(name, alias)
        else:
            name, version = name_ref.rsplit("/", 1)
            client.get_model_version(name, version)
    except MlflowException as e:
        msg = " ".join(str(e).split())[:200]
        raise UserError(f"no registered model {ref} ({msg}); train one with `suti train`") from None


def load_apprentice(source: str, cfg: DictConfig | None = None, store=None,
                    device: str | torch.device | None = None) -> Apprentice:
    """The apprentice ``source`` names (see :func:`resolve`), ready to render."""
    kind, ref = resolve(source, store)
    if kind in ("registry", "run"):
        return _from_mlflow(ref, cfg, device)
    if kind == "folder":
        return Apprentice.from_dir(ref, device)
    if cfg is None:
        raise ValueError("loading a store run needs the config (for the local cache folder)")
    # A private copy per load (concurrent loads never share files); everything is in memory
    # once loaded, so the copy goes away.
    dest = Path(tempfile.mkdtemp(prefix=f"{ref}-", dir=cache_dir(cfg, "models")))
    try:
        download_prefix(store, f"apprentice/{ref}/model", dest)
        return Apprentice.from_dir(dest, device)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def _from_mlflow(uri: str, cfg: DictConfig | None, device) -> Apprentice:
    import mlflow
    from mlflow.exceptions import MlflowException

    from suti.errors import UserError

    if cfg is not None:
        from suti.tracking import setup_tracking

        setup_tracking(cfg)
    logging.getLogger("mlflow").setLevel(logging.ERROR)
    try:
        model = mlflow.pyfunc.load_model(uri)
    except (MlflowException, OSError) as e:
        msg = " ".join(str(e).split())
        raise UserError(f"cannot load {uri}: {msg[:300]} (train one with `suti train`)") from None
    inner = model.unwrap_python_model()
    if not isinstance(inner, ApprenticePyfunc):
        raise UserError(f"{uri} is not a SuTI apprentice model")
    app = inner.apprentice
    return app.to(device) if device is not None else app
