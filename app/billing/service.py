"""The billing relay: a delivery row per (usage record, sink) written with the record, sent by a
worker task after commit, retried with backoff (attempts counted in the row), replayable."""

from __future__ import annotations

import logging
import random
import uuid
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.billing import repository, sinks
from app.orm import UsageRecord
from app.orm.base import utcnow
from app.outbox import service as outbox
from app.settings import Settings

logger = logging.getLogger(__name__)

RELAY_TASK = "billing.relay"


def enqueue_record(session: Session, *, record: UsageRecord, settings: Settings) -> list[uuid.UUID]:
    """In the record's transaction: one delivery per configured sink, sent after commit."""
    now = utcnow()
    created = []
    for sink in settings.billing_sinks:
        delivery_id = repository.insert_once(
            session,
            {
                "id": uuid.uuid4(),
                "usage_record_id": record.id,
                "tenant_id": record.tenant_id,
                "sink": sink,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            },
        )
        if delivery_id is not None:
            outbox.enqueue(session, task=RELAY_TASK, args=[str(delivery_id)], queue=settings.maintenance_queue)
            created.append(delivery_id)
    return created


def retry_delay(attempts: int, settings: Settings) -> timedelta:
    """Exponential backoff with a cap and up to 25% jitter."""
    base = settings.billing_retry_backoff.total_seconds() * 2 ** max(attempts - 1, 0)
    capped = min(base, settings.billing_retry_backoff_max.total_seconds())
    return timedelta(seconds=capped * (1 + random.random() * 0.25))


def relay(session: Session, *, delivery_id: uuid.UUID, settings: Settings, now: datetime | None = None) -> str:
    """Send one delivery if pending and due (the task's body); returns what happened."""
    now = now or utcnow()
    delivery = repository.lock(session, delivery_id)
    if delivery is None:
        return "locked-or-missing"
    if delivery.status != "pending":
        return "done"
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now + timedelta(seconds=1):
        return "not-due"
    loaded = repository.record_and_tenant(session, delivery.usage_record_id)
    sink = sinks.make_sinks(settings).get(delivery.sink)
    if loaded is None or sink is None:
        delivery.status, delivery.last_error = "failed", "record or sink no longer exists"
        return "failed"
    record, tenant = loaded
    delivery.attempts += 1
    try:
        sink.send(session, record=record, tenant=tenant)
    except sinks.SinkError as error:
        delivery.last_error = str(error)[:2000]
        if error.permanent or delivery.attempts >= settings.billing_max_attempts:
            delivery.status, delivery.next_attempt_at = "failed", None
            logger.warning("billing %s of record %s failed: %s", delivery.sink, record.id, error)
            return "failed"
        delay = retry_delay(delivery.attempts, settings)
        delivery.next_attempt_at = now + delay
        outbox.enqueue(
            session,
            task=RELAY_TASK,
            args=[str(delivery.id)],
            queue=settings.maintenance_queue,
            delay=delay,
            at_due_time=True,
        )
        return "retrying"
    delivery.status, delivery.delivered_at, delivery.next_attempt_at, delivery.last_error = "delivered", now, None, None
    return "delivered"


def replay(
    session: Session,
    *,
    settings: Settings,
    tenant_id: uuid.UUID | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
) -> int:
    """Send every matching usage record to every sink again (sinks are idempotent per record id);
    the number of records replayed."""
    records = repository.records_in(session, tenant_id=tenant_id, start=start, end=end)
    record_ids = [record.id for record in records]
    for record in records:
        enqueue_record(session, record=record, settings=settings)  # sinks added since the record
    for delivery_id in repository.reset_for_records(session, record_ids, now=utcnow()):
        outbox.enqueue(session, task=RELAY_TASK, args=[str(delivery_id)], queue=settings.maintenance_queue)
    return len(record_ids)


def resend_stale(session: Session, *, settings: Settings, limit: int = 500) -> int:
    """Relay again pending deliveries more than LEAP_DELIVERY_RESEND_AFTER past due that no worker
    holds (it died with the message); each is marked due now, so it is sent once per that period."""
    now = utcnow()
    stale = repository.lock_stale_pending(session, due_before=now - settings.delivery_resend_after, limit=limit)
    for delivery in stale:
        delivery.next_attempt_at = now
        outbox.enqueue(session, task=RELAY_TASK, args=[str(delivery.id)], queue=settings.maintenance_queue)
    if stale:
        logger.warning("relaying %d stale billing deliveries again", len(stale))
    return len(stale)
