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

import hashlib
import io
import json
import os
import pathlib
import shutil
import tempfile
import urllib.parse
from typing import Any, Iterable, Iterator

__all__ = [
    "ArtifactStore",
    "DONE_MARKER",
    "FileStore",
    "S3Store",
    "StoreError",
    "open_store",
]

DONE_MARKER = "_DONE.json"
# Temp files of in-flight local writes start with this; list() hides them and
# keys may not use it, so a crashed writer's leftovers never look like artifacts.
_TMP_PREFIX = ".suti-tmp-"
_CHUNK = 1 << 20


def digest(obj: Any) -> str:
    """A short stable digest of a JSON-able object: the fingerprint of what outputs depend on."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StoreError(Exception):
    """A store operation failed; the message is one human-readable line."""

    def __init__(self, message: Any):
        # Collapse newlines/indentation from wrapped library errors: the CLI
        # prints this message as a single line.
        super().__init__(" ".join(str(message).split()))


def _clean_key(key: str, *, allow_empty: bool = False) -> str:
    """Normalise a key to ``a/b/c`` form, rejecting anything that could escape the root."""
    if not isinstance(key, str):
        raise StoreError(f"artifact key must be a string, got {type(key).__name__}")
    if "\\" in key or "\x00" in key:
        raise StoreError(f"invalid artifact key {key!r}: use forward slashes, no NUL bytes")
    if key.startswith("/"):
        raise StoreError(f"invalid artifact key {key!r}: keys are relative, not absolute paths")
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise StoreError(f"invalid artifact key {key!r}: '..' would escape the store root")
    if any(p.startswith(_TMP_PREFIX) for p in parts):
        raise StoreError(f"invalid artifact key {key!r}: {_TMP_PREFIX!r} names are reserved")
    cleaned = "/".join(parts)
    if not cleaned and not allow_empty:
        raise StoreError(f"invalid artifact key {key!r}: empty")
    return cleaned


def _under(key: str, prefix: str) -> bool:
    """Folder semantics: ``key`` is ``prefix`` itself or lies below it."""
    return not prefix or key == prefix or key.startswith(prefix + "/")


def _join(prefix: str, name: str) -> str:
    return f"{prefix}/{name}" if prefix and name else prefix or name


def _json_chunks(obj: Any) -> Iterator[bytes]:
    # iterencode streams; a non-serialisable value fails part-way through the
    # write, which is exactly the case atomic writes must survive.
    for piece in json.JSONEncoder(indent=2, ensure_ascii=False).iterencode(obj):
        yield piece.encode("utf-8")
    yield b"\n"


def _atomic_local_write(path: pathlib.Path, chunks: Iterable[bytes]) -> None:
    """Write ``chunks`` to ``path`` via temp file + fsync + os.replace (same directory)."""

    def fill(fh) -> None:
        for chunk in chunks:
            fh.write(chunk)

    _atomic_local_fill(path, fill)


def _atomic_local_fill(path: pathlib.Path, fill) -> None:
    """Let ``fill(fh)`` write a temp file beside ``path``; fsync it and rename it into place.
    On any error the temp file is removed and ``path`` is untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fill(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: pathlib.Path) -> None:
    # Makes the rename itself durable; best effort (not every filesystem allows it).
    try:
        dfd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def _read_chunks(path: str | os.PathLike) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            yield chunk


class ArtifactStore:
    """Base class: key/value artifact storage rooted at :attr:`uri`.

    Subclasses implement the primitives (``url``, ``_put_chunks``, ``get_bytes``,
    ``exists``, ``list``, ``delete``, ``put_file``, ``get_file``); the typed
    helpers and done markers are built on them.
    """

    uri: str

    # -- primitives -------------------------------------------------------
    def url(self, key: str) -> str:
        """Full URI of ``key`` (``file:///...`` or ``s3://bucket/...``)."""
        raise NotImplementedError

    def _put_chunks(self, key: str, chunks: Iterable[bytes]) -> str:
        raise NotImplementedError

    def get_bytes(self, key: str) -> bytes:
        """Return the object's bytes; a missing key raises ``StoreError("missing artifact: <url>")``."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        """True if an object is stored at ``key``."""
        raise NotImplementedError

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys (relative to the store root) at or below folder ``prefix``, recursively."""
        raise NotImplementedError

    def delete(self, prefix: str) -> None:
        """Delete the object ``prefix`` and everything below it. An empty prefix is refused."""
        raise NotImplementedError

    def put_file(self, key: str, local_path: str | os.PathLike) -> str:
        """Upload a local file to ``key`` atomically; returns the key's URL."""
        raise NotImplementedError

    def get_file(self, key: str, local_path: str | os.PathLike) -> pathlib.Path:
        """Download ``key`` to ``local_path`` atomically (temp file + rename); returns the path."""
        raise NotImplementedError

    def local_path(self, key: str) -> pathlib.Path | None:
        """Filesystem path of ``key`` if the store is local, else None."""
        return None

    # -- typed helpers ----------------------------------------------------
    def put_bytes(self, key: str, data: bytes) -> str:
        """Store ``data`` at ``key`` atomically; returns the key's URL."""
        return self._put_chunks(key, [bytes(data)])

    def put_json(self, key: str, obj: Any) -> str:
        """Store ``obj`` as UTF-8 JSON at ``key`` atomically; returns the key's URL.

        A value JSON cannot encode raises ``TypeError`` and leaves ``key`` untouched.
        """
        return self._put_chunks(key, _json_chunks(obj))

    def get_json(self, key: str) -> Any:
        """Load the JSON object at ``key``."""
        data = self.get_bytes(key)
        try:
            return json.loads(data)
        except ValueError as exc:
            raise StoreError(f"corrupt JSON artifact: {self.url(key)}: {exc}") from exc

    def get_fingerprinted(self, key: str, fingerprint: str) -> Any | None:
        """The JSON record at ``key`` when it carries this ``fingerprint`` (the :func:`digest`
        of what it was computed from), else None: reuse a stored result only while its inputs hold."""
        if not self.exists(key):
            return None
        rec = self.get_json(key)
        return rec if isinstance(rec, dict) and rec.get("fingerprint") == fingerprint else None

    def put_array(self, key: str, array: Any) -> str:
        """Store a numpy array at ``key`` in ``.npy`` format (no pickles); returns the URL."""
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.asarray(array), allow_pickle=False)
        return self.put_bytes(key, buf.getvalue())

    def get_array(self, key: str) -> Any:
        """Load the ``.npy`` array stored at ``key``."""
        import numpy as np

        data = self.get_bytes(key)
        try:
            return np.load(io.BytesIO(data), allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise StoreError(f"corrupt array artifact: {self.url(key)}: {exc}") from exc

    # -- completion markers -----------------------------------------------
    def _marker(self, prefix: str) -> str:
        return _join(_clean_key(prefix, allow_empty=True), DONE_MARKER)

    def mark_done(self, prefix: str, meta: dict | None = None) -> str:
        """Mark folder ``prefix`` complete by writing ``<prefix>/_DONE.json`` (write it last)."""
        return self.put_json(self._marker(prefix), dict(meta or {}))

    def is_done(self, prefix: str) -> bool:
        """True if ``prefix`` has a completion marker."""
        return self.exists(self._marker(prefix))

    def done_meta(self, prefix: str) -> dict | None:
        """The metadata given to :meth:`mark_done`, or None if ``prefix`` is not done."""
        try:
            return self.get_json(self._marker(prefix))
        except StoreError:
            if not self.is_done(prefix):
                return None
            raise

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.uri == self.uri  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.uri))


class FileStore(ArtifactStore):
    """Artifacts as files under a local root directory (created on first write)."""

    def __init__(self, root: str | os.PathLike):
        self.root = pathlib.Path(root).expanduser().resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str, *, allow_empty: bool = False) -> pathlib.Path:
        cleaned = _clean_key(key, allow_empty=allow_empty)
        return self.root / cleaned if cleaned else self.root

    def url(self, key: str) -> str:
        return self._path(key, allow_empty=True).as_uri()

    def local_path(self, key: str) -> pathlib.Path:
        return self._path(key)

    def _put_chunks(self, key: str, chunks: Iterable[bytes]) -> str:
        path = self._path(key)
        try:
            _atomic_local_write(path, chunks)
        except OSError as exc:
            raise StoreError(f"cannot write {path.as_uri()}: {exc}") from exc
        return path.as_uri()

    def get_bytes(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise StoreError(f"missing artifact: {path.as_uri()}") from exc
        except OSError as exc:
            raise StoreError(f"cannot read {path.as_uri()}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[str]:
        base = self._path(prefix, allow_empty=True)
        if base.is_file():
            return [base.relative_to(self.root).as_posix()]
        keys = []
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                if name.startswith(_TMP_PREFIX):
                    continue
                keys.append((pathlib.Path(dirpath) / name).relative_to(self.root).as_posix())
        return sorted(keys)

    def delete(self, prefix: str) -> None:
        if not _clean_key(prefix, allow_empty=True):
            raise StoreError(f"refusing to delete the whole store {self.uri}: give a prefix")
        path = self._path(prefix)
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot delete {path.as_uri()}: {exc}") from exc

    def put_file(self, key: str, local_path: str | os.PathLike) -> str:
        src = pathlib.Path(local_path)
        if not src.is_file():
            raise StoreError(f"cannot upload {src}: no such local file")
        return self._put_chunks(key, _read_chunks(src))

    def get_file(self, key: str, local_path: str | os.PathLike) -> pathlib.Path:
        src = self._path(key)
        dest = pathlib.Path(local_path)
        if not src.is_file():
            raise StoreError(f"missing artifact: {src.as_uri()}")
        try:
            if dest.exists() and os.path.samefile(src, dest):
                return dest
            _atomic_local_write(dest, _read_chunks(src))
        except OSError as exc:
            raise StoreError(f"cannot copy {src.as_uri()} to {dest}: {exc}") from exc
        return dest


def _connection_reason(exc: BaseException) -> str:
    """Short reason for a connection failure, e.g. 'connection refused'."""
    texts = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        texts.append(str(cur))
        kw = getattr(cur, "kwargs", None) or {}
        if kw.get("error") is not None:
            texts.append(str(kw["error"]))
        cur = cur.__cause__ or cur.__context__
    blob = " ".join(texts).lower()
    for needle, reason in [
        ("refused", "connection refused"),
        ("timed out", "connection timed out"),
        ("timeout", "connection timed out"),
        ("name or service not known", "unknown host"),
        ("nodename nor servname", "unknown host"),
        ("temporary failure in name resolution", "unknown host"),
        ("certificate", "TLS certificate error"),
        ("ssl", "TLS error"),
    ]:
        if needle in blob:
            return reason
    return str(exc)


class S3Store(ArtifactStore):
    """Artifacts as objects under ``s3://bucket/prefix`` (bucket created if missing).

    Picklable: the boto3 client is dropped and rebuilt lazily, so a store can be
    handed to worker processes.
    """

    # list_objects_v2 / delete_objects batch size (S3's maximum is 1000).
    page_size = 1000

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        *,
        max_attempts: int = 5,
        connect_timeout: float = 5,
        read_timeout: float = 30,
        create_bucket: bool = True,
    ):
        if not bucket:
            raise StoreError("S3 URI needs a bucket: s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = _clean_key(prefix, allow_empty=True)
        self.endpoint_url = endpoint_url
        self._config = dict(
            max_attempts=max_attempts, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._client = None
        if create_bucket:
            self._ensure_bucket()

    # -- plumbing ---------------------------------------------------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_client"] = None  # boto3 clients do not pickle
        return state

    @property
    def client(self):
        """The boto3 S3 client (built on first use)."""
        if self._client is None:
            import boto3
            from botocore.config import Config

            cfg = self._config
            # A fresh session, not boto3's module-level default: that one caches
            # credentials and region forever and is not thread-safe.
            self._client = boto3.session.Session().client(
                "s3",
                endpoint_url=self.endpoint_url,
                config=Config(
                    retries={"max_attempts": cfg["max_attempts"], "mode": "standard"},
                    connect_timeout=cfg["connect_timeout"],
                    read_timeout=cfg["read_timeout"],
                ),
            )
        return self._client

    def _endpoint(self) -> str:
        if self.endpoint_url:
            return self.endpoint_url
        try:
            return self.client.meta.endpoint_url
        except Exception:  # building the client may itself be what failed
            return "default AWS S3 endpoint"

    def _error(self, exc: BaseException, what: str) -> StoreError:
        """Translate a boto error during ``what`` (a URL or description) into a StoreError."""
        import boto3.exceptions
        from botocore import exceptions as bx

        if isinstance(exc, bx.NoCredentialsError):
            return StoreError(
                f"no AWS credentials for {what}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
            )
        if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectionError)):
            return StoreError(
                f"cannot reach S3 endpoint {self._endpoint()}: {_connection_reason(exc)}"
            )
        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {})
            code = err.get("Code", "?")
            if code in ("NoSuchKey", "404", "NotFound"):
                return StoreError(f"missing artifact: {what}")
            if code == "NoSuchBucket":
                return StoreError(f"missing S3 bucket {self.bucket} ({what})")
            msg = err.get("Message") or exc
            return StoreError(f"S3 error on {what}: {code}: {msg}")
        if isinstance(exc, boto3.exceptions.S3UploadFailedError):
            return StoreError(f"S3 upload to {what} failed: {exc}")
        return StoreError(f"S3 error on {what}: {type(exc).__name__}: {exc}")

    def _boto_errors(self) -> tuple[type[BaseException], ...]:
        import boto3.exceptions
        from botocore import exceptions as bx

        return (bx.BotoCoreError, bx.ClientError, boto3.exceptions.Boto3Error)

    def _ensure_bucket(self) -> None:
        from botocore.exceptions import ClientError

        errors = self._boto_errors()
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise self._error(exc, f"s3://{self.bucket}") from exc
        except errors as exc:
            raise self._error(exc, f"s3://{self.bucket}") from exc
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        region = self.client.meta.region_name
        # us-east-1 is the one region that rejects an explicit LocationConstraint.
        if region and region not in ("us-east-1", "aws-global"):
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            self.client.create_bucket(**kwargs)
        except ClientError as exc:
            # Another worker may have created it between our HEAD and CREATE.
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise self._error(exc, f"creating bucket s3://{self.bucket}") from exc
        except errors as exc:
            raise self._error(exc, f"creating bucket s3://{self.bucket}") from exc

    def _s3key(self, key: str, *, allow_empty: bool = False) -> str:
        return _join(self.prefix, _clean_key(key, allow_empty=allow_empty))

    def url(self, key: str) -> str:
        full = self._s3key(key, allow_empty=True)
        return f"s3://{self.bucket}/{full}" if full else f"s3://{self.bucket}"

    # -- primitives -------------------------------------------------------
    def _put_chunks(self, key: str, chunks: Iterable[bytes]) -> str:
        s3key = self._s3key(key)
        # Gather first: one PUT is atomic on S3, and a serialisation failure
        # part-way through never reaches the bucket.
        body = b"".join(chunks)
        try:
            self.client.put_object(Bucket=self.bucket, Key=s3key, Body=body)
        except self._boto_errors() as exc:
            raise self._error(exc, self.url(key)) from exc
        return self.url(key)

    def get_bytes(self, key: str) -> bytes:
        s3key = self._s3key(key)
        try:
            resp = self.client.get_object(Bucket=self.bucket, Key=s3key)
            return resp["Body"].read()
        except self._boto_errors() as exc:
            raise self._error(exc, self.url(key)) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        s3key = self._s3key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=s3key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._error(exc, self.url(key)) from exc
        except self._boto_errors() as exc:
            raise self._error(exc, self.url(key)) from exc

    def _iter_s3keys(self, prefix: str) -> Iterator[str]:
        """Full S3 keys at or below folder ``prefix`` (relative to the store)."""
        full = self._s3key(prefix, allow_empty=True)
        # String prefix on S3, then folder semantics here ("runs/1" must not match "runs/10").
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(
            Bucket=self.bucket,
            Prefix=full,
            PaginationConfig={"PageSize": self.page_size},
        )
        try:
            for page in pages:
                for obj in page.get("Contents", []):
                    if _under(obj["Key"], full):
                        yield obj["Key"]
        except self._boto_errors() as exc:
            raise self._error(exc, self.url(prefix)) from exc

    def _relative(self, s3key: str) -> str:
        return s3key[len(self.prefix) + 1 :] if self.prefix else s3key

    def list(self, prefix: str = "") -> list[str]:
        return sorted(self._relative(k) for k in self._iter_s3keys(prefix))

    def delete(self, prefix: str) -> None:
        if not _clean_key(prefix, allow_empty=True):
            raise StoreError(f"refusing to delete the whole store {self.uri}: give a prefix")
        keys = list(self._iter_s3keys(prefix))
        for i in range(0, len(keys), self.page_size):
            batch = [{"Key": k} for k in keys[i : i + self.page_size]]
            try:
                resp = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
            except self._boto_errors() as exc:
                raise self._error(exc, self.url(prefix)) from exc
            failed = resp.get("Errors") or []
            if failed:
                first = failed[0]
                raise StoreError(
                    f"could not delete {len(failed)} object(s) under {self.url(prefix)}: "
                    f"{first.get('Key')}: {first.get('Code')}: {first.get('Message')}"
                )

    def put_file(self, key: str, local_path: str | os.PathLike) -> str:
        src = pathlib.Path(local_path)
        if not src.is_file():
            raise StoreError(f"cannot upload {src}: no such local file")
        # upload_file switches to multipart for big files; the object only
        # appears when the upload completes, so this stays atomic.
        try:
            self.client.upload_file(str(src), self.bucket, self._s3key(key))
        except self._boto_errors() as exc:
            raise self._error(exc, self.url(key)) from exc
        return self.url(key)

    def get_file(self, key: str, local_path: str | os.PathLike) -> pathlib.Path:
        dest = pathlib.Path(local_path)
        s3key = self._s3key(key)

        def fill(fh) -> None:
            try:
                self.client.download_fileobj(self.bucket, s3key, fh)
            except self._boto_errors() as exc:
                raise self._error(exc, self.url(key)) from exc

        _atomic_local_fill(dest, fill)
        return dest


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
