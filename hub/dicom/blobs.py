"""Where DICOM objects are kept: a content-addressed blob store behind one small interface.

Objects are stored exactly as received (Part 10 files, PS3.10 7.1), named by the SHA-256 of their
bytes, so writing the same object twice is a no-op and a blob never changes once written. The
local folder is the default; an S3-compatible object store is the production option.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO, Protocol

_CHUNK = 1 << 20


class BlobStore(Protocol):
    def put_file(self, path: Path, key: str) -> None:
        """Store the file at ``path`` under ``key`` (its SHA-256); the file may be moved away."""

    def open(self, key: str) -> BinaryIO: ...

    def read(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None: ...

    def local_path(self, key: str) -> Path | None:
        """A file path to the blob when the store is a local folder (for zero-copy sending)."""


def sha256_file(path: Path, start: int = 0) -> tuple[str, str, int]:
    """(SHA-256 of the whole file, SHA-256 of the bytes from ``start`` on, size in bytes)."""
    with open(path, "rb") as f:
        return sha256_rest(f, f.read(max(start, _CHUNK)), start)


def sha256_rest(f: BinaryIO, head: bytes, start: int) -> tuple[str, str, int]:
    """:func:`sha256_file` of the file open as ``f``, whose first bytes ``head`` were read already
    (at least ``start`` of them, unless the file is shorter)."""
    whole, tail = hashlib.sha256(head), hashlib.sha256(memoryview(head)[start:])
    size = len(head)
    while chunk := f.read(_CHUNK):
        whole.update(chunk)
        tail.update(chunk)
        size += len(chunk)
    return whole.hexdigest(), tail.hexdigest(), size


class LocalBlobStore:
    """``<root>/ab/cd/abcd…``: two levels of 256 folders keep directories small."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / key[2:4] / key

    def local_path(self, key: str) -> Path | None:
        return self._path(key)

    def put_file(self, path: Path, key: str) -> None:
        dest = self._path(key)
        # content-addressed: a blob already there has these very bytes, so replacing it is harmless
        for _ in range(2):
            try:
                os.replace(path, dest)  # same file system: a rename
                return
            except FileNotFoundError:
                dest.parent.mkdir(parents=True, exist_ok=True)  # the first blob in this folder
            except OSError:
                break
        # another file system (the receiver's temporary folder): copy next to it, then rename
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
            shutil.copyfileobj(src, out, _CHUNK)
        os.replace(tmp, dest)
        os.unlink(path)

    def put_bytes(self, data: bytes, key: str) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        self.put_file(Path(tmp), key)

    def temp_file(self) -> tuple[int, Path]:
        fd, tmp = tempfile.mkstemp(dir=self._tmp, suffix=".dcm")
        return fd, Path(tmp)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def read(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete(self, key: str) -> None:
        try:
            os.unlink(self._path(key))
        except FileNotFoundError:
            pass


class S3BlobStore:
    """An S3-compatible bucket (``prefix/ab/abcd…``) through boto3; credentials come from boto3's
    usual chain (environment, instance profile), never from the hub's settings files."""

    def __init__(self, bucket: str, *, endpoint_url: str | None = None, prefix: str = "", client=None,
                 spool: Path | None = None):
        import boto3

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url)
        self.spool = Path(spool or tempfile.gettempdir())
        self.spool.mkdir(parents=True, exist_ok=True)

    def _key(self, key: str) -> str:
        return f"{self.prefix}{key[:2]}/{key}"

    def local_path(self, key: str) -> Path | None:
        return None

    def put_file(self, path: Path, key: str) -> None:
        if not self.exists(key):
            self.client.upload_file(str(path), self.bucket, self._key(key))  # multipart when large
        os.unlink(path)

    def put_bytes(self, data: bytes, key: str) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def temp_file(self) -> tuple[int, Path]:
        fd, tmp = tempfile.mkstemp(dir=self.spool, suffix=".dcm")
        return fd, Path(tmp)

    def open(self, key: str) -> BinaryIO:
        return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

    def read(self, key: str) -> bytes:
        return self.open(key).read()

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


def make_blob_store(settings) -> LocalBlobStore | S3BlobStore:
    root = Path(settings.dicom_blob_dir or (Path(settings.data_dir) / "dicom"))
    if settings.dicom_blob_backend == "s3":
        if not settings.dicom_s3_bucket:
            raise ValueError("dicom_blob_backend = 's3' needs dicom_s3_bucket")
        return S3BlobStore(settings.dicom_s3_bucket, endpoint_url=settings.dicom_s3_endpoint,
                           prefix=settings.dicom_s3_prefix, spool=root / "spool")
    if settings.dicom_blob_backend != "local":
        raise ValueError(f"unknown dicom_blob_backend {settings.dicom_blob_backend!r} (local | s3)")
    return LocalBlobStore(root)
