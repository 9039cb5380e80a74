"""Local-disk storage for the embedded default; the API serves it through signed, expiring URLs."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, urlencode

from app.storage import signing
from app.storage.interface import StorageError, StoredObject, validate_key

FILES_ROUTE = "/v1/files/"


class LocalStorage:
    def __init__(self, root: Path, *, secret: str) -> None:
        self.root = root.resolve()
        self.secret = secret

    def path_for(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _write(self, key: str, write: Callable[[BinaryIO], object]) -> None:
        target = self.path_for(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Write then rename, so a reader never sees half a file.
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            with os.fdopen(handle, "wb") as file:
                write(file)
            os.replace(temporary, target)
        except OSError as error:
            raise StorageError(f"cannot store {key}: {error}") from error

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None:
        self._write(key, lambda file: file.write(data))

    def put_file(self, key: str, path: Path, *, content_type: str = "application/octet-stream") -> None:
        def copy(file: BinaryIO) -> None:
            with path.open("rb") as source:
                shutil.copyfileobj(source, file)

        self._write(key, copy)

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.path_for(key).read_bytes()
        except OSError as error:
            raise StorageError(f"cannot read {key}: {error}") from error

    def delete_keys(self, keys: list[str]) -> None:
        for key in keys:
            self.path_for(key).unlink(missing_ok=True)

    def delete_prefix(self, prefix: str) -> int:
        folder = self.path_for(prefix.rstrip("/"))
        if not folder.is_dir():
            return 0
        count = sum(1 for path in folder.rglob("*") if path.is_file())
        shutil.rmtree(folder, ignore_errors=True)
        return count

    def list_folders(self, prefix: str) -> Iterator[str]:
        folder = self.path_for(prefix.rstrip("/"))
        if folder.is_dir():
            yield from sorted(path.name for path in folder.iterdir() if path.is_dir())

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        folder = self.path_for(prefix.rstrip("/"))
        if not folder.is_dir():
            return
        for path in sorted(folder.rglob("*")):
            try:
                if path.is_file():
                    modified = datetime.fromtimestamp(path.stat().st_mtime, UTC)
                    yield StoredObject(key=path.relative_to(self.root).as_posix(), modified=modified)
            except FileNotFoundError:  # deleted while listing
                continue

    def presign_get(self, key: str, *, filename: str, expires_in: timedelta, base_url: str) -> str:
        validate_key(key)
        expires = int(time.time() + expires_in.total_seconds())
        query = urlencode(
            {
                "expires": expires,
                "filename": filename,
                "signature": signing.sign(self.secret, key, expires, filename),
            }
        )
        return f"{base_url.rstrip('/')}{FILES_ROUTE}{quote(key)}?{query}"

    def verify(self, key: str, *, expires: int, filename: str, signature: str) -> Path | None:
        """The file behind a signed URL, or None when the signature is wrong or expired."""
        if expires < time.time() or not signing.verify(self.secret, key, expires, filename, signature):
            return None
        try:
            path = self.path_for(key)
        except StorageError:
            return None
        return path if path.is_file() else None

    def check(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise StorageError(f"{self.root} is not writable: {error}") from error
        if not os.access(self.root, os.W_OK):
            raise StorageError(f"{self.root} is not writable")
