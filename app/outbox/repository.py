"""Every query on outbox messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from app.orm import OutboxMessage


def add(
    session: Session,
    *,
    task: str,
    args: list[Any],
    queue: str,
    now: datetime,
    available_at: datetime,
    priority: int | None = None,
) -> OutboxMessage:
    message = OutboxMessage(
        task=task, args=args, queue=queue, created_at=now, available_at=available_at, priority=priority
    )
    session.add(message)
    session.flush()
    return message


def mark_dispatched(session: Session, message_ids: list[int], *, now: datetime) -> None:
    statement = (
        update(OutboxMessage)
        .where(OutboxMessage.id.in_(message_ids), OutboxMessage.dispatched_at.is_(None))
        .values(dispatched_at=now, attempts=OutboxMessage.attempts + 1)
    )
    session.execute(statement)


def record_failed_attempt(session: Session, message_id: int) -> None:
    session.execute(
        update(OutboxMessage).where(OutboxMessage.id == message_id).values(attempts=OutboxMessage.attempts + 1)
    )


def lock_pending(session: Session, *, due_before: datetime, limit: int) -> list[OutboxMessage]:
    """Undispatched messages due before a time; locked so that concurrent relays skip them."""
    query = (
        select(OutboxMessage)
        .where(OutboxMessage.dispatched_at.is_(None), OutboxMessage.available_at <= due_before)
        .order_by(OutboxMessage.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.scalars(query))


def count_pending(session: Session) -> int:
    return session.scalar(select(func.count()).where(OutboxMessage.dispatched_at.is_(None))) or 0


def purge_dispatched(session: Session, *, before: datetime) -> int:
    result = session.execute(
        delete(OutboxMessage).where(OutboxMessage.dispatched_at.is_not(None), OutboxMessage.dispatched_at < before)
    )
    return result.rowcount or 0  # type: ignore[attr-defined]
