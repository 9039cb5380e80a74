"""The storage interface: what every implementation (local folder, S3) offers; `factory` picks one."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol


class StorageError(Exception):
    """Storage is unreachable or refused an operation."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    modified: datetime
    """When it was last written (UTC)."""


class Storage(Protocol):
    """Keys are relative paths such as trainings/<id>/artifacts/<name>."""

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "application/octet-stream") -> None: ...

    def put_file(self, key: str, path: Path, *, content_type: str = "application/octet-stream") -> None: ...

    def get_bytes(self, key: str) -> bytes: ...

    def delete_keys(self, keys: list[str]) -> None: ...

    def delete_prefix(self, prefix: str) -> int: ...

    def list_folders(self, prefix: str) -> Iterator[str]:
        """Names of the folders directly under `prefix` (e.g. the training ids under "trainings")."""
        ...

    def list_objects(self, prefix: str) -> Iterator[StoredObject]:
        """Every object under `prefix`."""
        ...

    def presign_get(self, key: str, *, filename: str, expires_in: timedelta, base_url: str) -> str:
        """A URL that downloads `key` as an attachment named `filename` until it expires."""
        ...

    def check(self) -> None:
        """Raise StorageError when storage cannot be reached."""
        ...


def validate_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(part in ("", ".", "..") for part in parts):
        raise StorageError(f"invalid storage key {key!r}")
    return key
