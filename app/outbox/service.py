"""Enqueue after commit: messages are written in the caller's transaction and sent once it commits.

A message whose immediate send was lost (the process died between commit and send, or the
broker was down) is sent later by `relay_pending`, which the sweeper runs. Tasks are
idempotent, so the rare double send (sent, then died before marking) is harmless.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.db import on_commit
from app.orm.base import utcnow
from app.outbox import repository
from app.outbox.sender import _SENDER_KEY, Sender, bind_sender

logger = logging.getLogger(__name__)

__all__ = ["Sender", "bind_sender", "enqueue", "purge", "relay_pending"]


def enqueue(
    session: Session,
    *,
    task: str,
    args: list[Any],
    queue: str,
    delay: timedelta | None = None,
    priority: int | None = None,
    at_due_time: bool = False,
) -> int:
    """Write a task message in the current transaction; it is sent only if the transaction commits.

    A delayed message waits for the relay, or with `at_due_time` is sent after commit with a broker
    ETA, so it runs on time rather than on the sweeper's next tick. Use that only for tasks whose
    row is the truth and which the sweeper sends again if the worker holding the message dies.
    """
    now = utcnow()
    available_at = now + delay if delay else now
    message = repository.add(
        session, task=task, args=args, queue=queue, now=now, available_at=available_at, priority=priority
    )
    bound = session.info.get(_SENDER_KEY)
    if bound is not None and (not delay or at_due_time):
        send, session_factory = bound
        message_id = message.id
        options = _options(priority=priority, eta=available_at if delay else None)
        on_commit(session, lambda: _send_now(session_factory, send, message_id, task, args, queue, options))
    return message.id


def _options(*, priority: int | None, eta: datetime | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if priority is not None:
        options["priority"] = priority
    if eta is not None:
        options["eta"] = eta
    return options


def _send_now(
    session_factory: sessionmaker[Session],
    send: Sender,
    message_id: int,
    task: str,
    args: list[Any],
    queue: str,
    options: dict[str, Any],
) -> None:
    try:
        send(task, args, queue, **options)
    except Exception:
        # Left undispatched: the sweeper's relay sends it.
        logger.warning("could not send %s %s now; the relay will retry", task, args, exc_info=True)
        return
    with session_factory.begin() as session:
        repository.mark_dispatched(session, [message_id], now=utcnow())


def relay_pending(session: Session, *, send: Sender, grace: timedelta, limit: int = 500) -> int:
    """Send messages that are due and were not sent after their commit (older than `grace`)."""
    now = utcnow()
    sent = 0
    for message in repository.lock_pending(session, due_before=now - grace, limit=limit):
        try:
            send(message.task, list(message.args), message.queue, **_options(priority=message.priority))
        except Exception:
            logger.warning("relay could not send outbox message %s", message.id, exc_info=True)
            repository.record_failed_attempt(session, message.id)
            continue
        repository.mark_dispatched(session, [message.id], now=now)
        sent += 1
    return sent


def purge(session: Session, *, older_than: timedelta) -> int:
    """Delete dispatched messages older than `older_than`."""
    return repository.purge_dispatched(session, before=utcnow() - older_than)
