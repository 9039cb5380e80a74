"""Cursors of the newest-first lists (trainings, webhook deliveries): the last row's (created_at, id),
opaque to clients."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime

from app.errors import ValidationFailed


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    """The cursor of the page after the row (created_at, row_id)."""
    raw = json.dumps([created_at.isoformat(), str(row_id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """(created_at, id) of a cursor this API returned; 422 naming `cursor` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, row_id = json.loads(raw)
        return datetime.fromisoformat(created_at), uuid.UUID(row_id)
    except (ValueError, TypeError) as error:
        raise ValidationFailed("cursor: not a cursor returned by this API", details={"field": "cursor"}) from error
