"""Local cache folders of apprentice runs and folder copies to and from the store."""
from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig


log = logging.getLogger("suti.apprentice")


def cache_dir(cfg: DictConfig, *parts: str) -> Path:
    """A local folder under the workdir's cache (`.cache/apprentice/...`), created."""
    from suti.config import workdir

    d = workdir(cfg).joinpath(".cache", "apprentice", *parts)
    d.mkdir(parents=True, exist_ok=True)
    return d


def download_prefix(store, prefix: str, dest: Path) -> Path:
    """Copy every object under ``prefix`` to ``dest`` (same relative layout)."""
    keys = store.list(prefix)
    if not keys:
        from suti.store import StoreError

        raise StoreError(f"missing artifact: {store.url(prefix)}")
    for key in keys:
        rel = key[len(prefix):].lstrip("/")
        store.get_file(key, dest / rel)
    return dest


def upload_dir(store, src: Path, prefix: str) -> None:
    """Copy a local folder to the store under ``prefix``."""
    for p in sorted(src.rglob("*")):
        if p.is_file():
            store.put_file(f"{prefix}/{p.relative_to(src).as_posix()}", p)
