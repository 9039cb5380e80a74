"""The worker side of billing: relay one delivery to its sink (the task's body), retried with
backoff (attempts counted in the row), and send again the deliveries whose worker died."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app import task_names
from app.backoff import backoff_seconds
from app.billing import repository, sinks
from app.enums import BillingDeliveryStatus
from app.orm.base import utcnow
from app.outbox import service as outbox
from app.settings import Settings

logger = logging.getLogger(__name__)


def retry_delay(attempts: int, settings: Settings) -> timedelta:
    """Exponential backoff with a cap and up to 25% jitter."""
    return timedelta(
        seconds=backoff_seconds(
            attempts - 1,
            base=settings.billing_retry_backoff.total_seconds(),
            cap=settings.billing_retry_backoff_max.total_seconds(),
            jitter=(1.0, 1.25),
        )
    )


def relay(session: Session, *, delivery_id: uuid.UUID, settings: Settings, now: datetime | None = None) -> str:
    """Send one delivery if pending and due (the task's body); returns what happened."""
    now = now or utcnow()
    delivery = repository.lock(session, delivery_id)
    if delivery is None:
        return "locked-or-missing"
    if delivery.status != BillingDeliveryStatus.PENDING:
        return "done"
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now + timedelta(seconds=1):
        return "not-due"
    loaded = repository.record_and_tenant(session, delivery.usage_record_id)
    sink = sinks.make_sinks(settings).get(delivery.sink)
    if loaded is None or sink is None:
        delivery.status, delivery.last_error = BillingDeliveryStatus.FAILED, "record or sink no longer exists"
        return BillingDeliveryStatus.FAILED.value
    record, tenant = loaded
    delivery.attempts += 1
    try:
        sink.send(session, record=record, tenant=tenant)
    except sinks.SinkError as error:
        delivery.last_error = str(error)[:2000]
        if error.permanent or delivery.attempts >= settings.billing_max_attempts:
            delivery.status, delivery.next_attempt_at = BillingDeliveryStatus.FAILED, None
            logger.warning("billing %s of record %s failed: %s", delivery.sink, record.id, error)
            return BillingDeliveryStatus.FAILED.value
        delay = retry_delay(delivery.attempts, settings)
        delivery.next_attempt_at = now + delay
        outbox.enqueue(
            session,
            task=task_names.RELAY_USAGE,
            args=[str(delivery.id)],
            queue=settings.maintenance_queue,
            delay=delay,
            at_due_time=True,
        )
        return "retrying"
    delivery.status, delivery.delivered_at = BillingDeliveryStatus.DELIVERED, now
    delivery.next_attempt_at, delivery.last_error = None, None
    return BillingDeliveryStatus.DELIVERED.value


def resend_stale(session: Session, *, settings: Settings, limit: int = 500) -> int:
    """Relay again pending deliveries more than LEAP_DELIVERY_RESEND_AFTER past due that no worker
    holds (it died with the message); each is marked due now, so it is sent once per that period."""
    now = utcnow()
    stale = repository.lock_stale_pending(session, due_before=now - settings.delivery_resend_after, limit=limit)
    for delivery in stale:
        delivery.next_attempt_at = now
        outbox.enqueue(session, task=task_names.RELAY_USAGE, args=[str(delivery.id)], queue=settings.maintenance_queue)
    if stale:
        logger.warning("relaying %d stale billing deliveries again", len(stale))
    return len(stale)
