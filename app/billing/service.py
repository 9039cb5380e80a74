"""Billing deliveries, the API side: a delivery row per (usage record, sink) written with the record and
sent by a worker task after commit (`relay` is that task's body), and replays."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy.orm import Session

from app import task_names
from app.billing import repository
from app.enums import BillingDeliveryStatus
from app.orm import UsageRecord
from app.orm.base import utcnow
from app.outbox import service as outbox
from app.settings import Settings


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
                "status": BillingDeliveryStatus.PENDING,
                "attempts": 0,
                "next_attempt_at": now,
                "created_at": now,
            },
        )
        if delivery_id is not None:
            outbox.enqueue(
                session, task=task_names.RELAY_USAGE, args=[str(delivery_id)], queue=settings.maintenance_queue
            )
            created.append(delivery_id)
    return created


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
        outbox.enqueue(session, task=task_names.RELAY_USAGE, args=[str(delivery_id)], queue=settings.maintenance_queue)
    return len(record_ids)
