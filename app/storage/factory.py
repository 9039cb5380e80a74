"""The factory that picks a storage implementation from LEAP_STORAGE_URL."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from app.settings import Settings
from app.storage.interface import Storage


def make_storage(settings: Settings) -> Storage:
    """S3Storage for s3://bucket/prefix, LocalStorage for file:///path (the embedded default)."""
    url = urlparse(settings.resolved_storage_url)
    if url.scheme == "s3":
        from app.storage.s3 import S3Storage

        return S3Storage(settings, bucket=url.netloc, prefix=url.path.strip("/"))
    if url.scheme == "file":
        from app.storage.local import LocalStorage

        return LocalStorage(Path(url.path), secret=settings.signing_secret.get_secret_value())
    raise ValueError(f"LEAP_STORAGE_URL must be s3://bucket[/prefix] or file:///path, got {settings.storage_url!r}")
