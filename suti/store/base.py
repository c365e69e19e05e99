"""The artifact store's interface, its errors and the helpers every backend shares."""
from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
import tempfile
from typing import Any, Iterable, Iterator


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
