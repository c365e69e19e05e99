"""The project's single artifact store: one API over a local folder and S3.

Every pipeline stage reads and writes its artifacts (JSON, numpy arrays, files,
raw bytes) through an :class:`ArtifactStore` opened with :func:`open_store`::

    store = open_store("s3://suti/runs/exp1")       # or "file:///data/runs/exp1", "./runs"
    if not store.is_done("embeddings"):
        store.put_array("embeddings/part-0.npy", arr)
        store.mark_done("embeddings", {"rows": len(arr)})

Guarantees:

* Writes are atomic: a reader sees either the previous object or the complete
  new one, never a partial one. Locally this is temp file + fsync + ``os.replace``;
  on S3 a single PUT (or a completed multipart upload) is atomic by design.
* Keys are relative, forward-slash paths. ``..`` components, absolute paths and
  backslashes are rejected, so no caller can escape the store root.
* Failures surface as :class:`StoreError` with a one-line, human-readable message
  (the CLI prints it as is).
* ``list`` / ``delete`` treat a prefix as a folder: ``"runs/1"`` matches
  ``runs/1`` and ``runs/1/...`` but never ``runs/10``.
* ``mark_done`` / ``is_done`` write and read ``<prefix>/_DONE.json`` so a rerun
  skips finished stages and a half-written output (no marker) is never taken
  for complete. Write the marker last.
"""
from __future__ import annotations

import os
import urllib.parse

from suti.store.base import DONE_MARKER, ArtifactStore, StoreError, digest
from suti.store.local import FileStore
from suti.store.s3 import S3Store

__all__ = [
    "ArtifactStore",
    "DONE_MARKER",
    "FileStore",
    "S3Store",
    "StoreError",
    "digest",
    "open_store",
]


def open_store(
    uri: str,
    endpoint_url: str | None = None,
    *,
    max_attempts: int = 5,
    connect_timeout: float = 5,
    read_timeout: float = 30,
) -> ArtifactStore:
    """Open the artifact store at ``uri``.

    * ``file:///abs/path`` or a plain path (relative paths resolve against the
      current directory now) -> :class:`FileStore`.
    * ``s3://bucket/prefix`` -> :class:`S3Store`; the endpoint is ``endpoint_url``,
      else env ``SUTI_S3_ENDPOINT_URL``, else ``AWS_ENDPOINT_URL``, else boto3's
      default. The bucket is created if missing. ``max_attempts`` and the timeouts
      tune the boto3 client (S3 only).

    Any other scheme raises :class:`StoreError`.
    """
    if isinstance(uri, os.PathLike):
        return FileStore(uri)
    if not isinstance(uri, str) or not uri:
        raise StoreError(f"invalid store URI {uri!r}")
    parsed = urllib.parse.urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme == "" or (len(scheme) == 1 and uri[1:2] == ":"):  # plain (or drive-letter) path
        return FileStore(uri)
    if scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StoreError(f"invalid file URI {uri}: use file:///absolute/path")
        path = urllib.parse.unquote(parsed.path)
        if not path.startswith("/"):
            raise StoreError(f"invalid file URI {uri}: use file:///absolute/path")
        return FileStore(path)
    if scheme == "s3":
        endpoint = (
            endpoint_url
            or os.environ.get("SUTI_S3_ENDPOINT_URL")
            or os.environ.get("AWS_ENDPOINT_URL")
            or None
        )
        return S3Store(
            parsed.netloc,
            urllib.parse.unquote(parsed.path).lstrip("/"),
            endpoint,
            max_attempts=max_attempts,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
        )
    raise StoreError(f"unsupported store URI {uri}: use file:///path, a plain path, or s3://bucket/prefix")
