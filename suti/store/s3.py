"""A store on S3 (or any S3 API: MinIO, moto) through boto3, with retries and clear errors."""
from __future__ import annotations

import os
import pathlib
from typing import Any, Iterable, Iterator

from suti.store.base import ArtifactStore, StoreError, _atomic_local_fill, _clean_key, _join, _under


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
