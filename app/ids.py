"""Ids as clients and brokers send them: text that may not be a UUID at all."""

from __future__ import annotations

import uuid

from app.errors import NotFound


def uuid_or_none(value: object) -> uuid.UUID | None:
    """The UUID written in `value`, or None when it is not one."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def id_or_404(value: str, what: str) -> uuid.UUID:
    """A path id as a UUID; a malformed one is simply a resource that does not exist."""
    parsed = uuid_or_none(value)
    if parsed is None:
        raise NotFound(f"{what} {value} not found")
    return parsed
