"""A store on the local file system (atomic writes, fsynced)."""
from __future__ import annotations

import os
import pathlib
import shutil
from typing import Iterable

from suti.store.base import ArtifactStore, StoreError, _TMP_PREFIX, _atomic_local_write, _clean_key, _read_chunks


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
