"""What every flow does first: compose and validate the config, set up the environment,
open the artifact store and the MLflow run, and write reports."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig

from suti.config import compose, setup_env
from suti.store import open_store

log = logging.getLogger("suti")


def prepare(overrides: list[str] | None) -> tuple[DictConfig, object]:
    """Compose + validate the config (before any work) and open the store."""
    cfg = compose(overrides)
    setup_env(cfg)
    store = open_store(str(cfg.storage.uri), cfg.storage.endpoint_url)
    return cfg, store


def write_report(cfg: DictConfig, name: str, report: dict) -> Path:
    """reports/<name>.json, written atomically."""
    d = Path(cfg.reports_dir)
    d.mkdir(parents=True, exist_ok=True)
    p = d / f"{name}.json"
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=float))
    tmp.replace(p)
    return p


def image_markdown(png: bytes, alt: str, link: str | None = None, limit: int = 2_000_000) -> str:
    """A PNG inline in a Prefect markdown artifact (a data URI: the UI is served over HTTP
    and cannot show the store's file:// URLs); over `limit` bytes, only the link."""
    import base64

    if len(png) > limit:
        return f"{alt}: {link or '(too large to inline)'}"
    tail = f"\n\n{link}" if link else ""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()}){tail}"


def logger():
    """Prefect's run logger inside a flow/task run, else the module logger."""
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:
        return log
