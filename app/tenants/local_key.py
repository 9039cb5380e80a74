"""The embedded server's API key: a tenant "local" and its key, kept in the data folder.

`leap serve` and `leap demo` create it on first run; the client commands read it when no key is given.
Reading it needs no database, so the thin client imports this module without pulling in SQLAlchemy."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.settings import Settings

LOCAL_KEY_FILE = "api-key"


def local_key_path(data_dir: Path) -> Path:
    """Where the local key is kept: LEAP_DATA_DIR/api-key."""
    return data_dir / LOCAL_KEY_FILE


def read_local_key(data_dir: Path) -> str | None:
    """The key kept in data_dir; None when there is no key file."""
    path = local_key_path(data_dir)
    return path.read_text().strip() if path.is_file() else None


def ensure_local_key(settings: Settings) -> str:
    """The local key, created with its tenant "local" on first run (the file is readable by its owner only)."""
    existing = read_local_key(settings.data_dir)
    if existing is not None:
        return existing
    from app.db import create_database, unit_of_work
    from app.tenants import service

    database = create_database(settings)
    try:
        with unit_of_work(database.session_factory) as session:
            tenant = service.create_tenant(session, name="local")
            _, plaintext = service.create_api_key(session, tenant_id=tenant.id, name="local")
    finally:
        database.dispose()
    path = local_key_path(settings.data_dir)
    path.write_text(plaintext + "\n")
    path.chmod(0o600)
    return plaintext
