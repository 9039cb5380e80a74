"""Every query on billing deliveries."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import insert_ignoring_conflict, lock_by_id, lock_due
from app.enums import BillingDeliveryStatus
from app.orm import BillingDelivery, Tenant, UsageRecord


def insert_once(session: Session, values: dict[str, Any]) -> uuid.UUID | None:
    """A delivery of a record to a sink, unless it exists; the new id or None."""
    return insert_ignoring_conflict(
        session, BillingDelivery, values, index_elements=["usage_record_id", "sink"], returning=BillingDelivery.id
    )


def lock(session: Session, delivery_id: uuid.UUID) -> BillingDelivery | None:
    return lock_by_id(session, BillingDelivery, delivery_id)


def record_and_tenant(session: Session, record_id: uuid.UUID) -> tuple[UsageRecord, Tenant] | None:
    row = session.execute(
        select(UsageRecord, Tenant).join(Tenant, Tenant.id == UsageRecord.tenant_id).where(UsageRecord.id == record_id)
    ).first()
    return None if row is None else (row[0], row[1])


def records_in(
    session: Session, *, tenant_id: uuid.UUID | None, start: datetime | None, end: datetime | None
) -> list[UsageRecord]:
    query = select(UsageRecord)
    if tenant_id is not None:
        query = query.where(UsageRecord.tenant_id == tenant_id)
    if start is not None:
        query = query.where(UsageRecord.finished_at >= start)
    if end is not None:
        query = query.where(UsageRecord.finished_at < end)
    return list(session.scalars(query.order_by(UsageRecord.finished_at, UsageRecord.id)))


def reset_for_records(session: Session, record_ids: list[uuid.UUID], *, now: datetime) -> list[uuid.UUID]:
    """Make every delivery of these records pending again; their ids."""
    if not record_ids:
        return []
    statement = (
        update(BillingDelivery)
        .where(BillingDelivery.usage_record_id.in_(record_ids))
        .values(status=BillingDeliveryStatus.PENDING, attempts=0, next_attempt_at=now, last_error=None)
        .returning(BillingDelivery.id)
    )
    return [row[0] for row in session.execute(statement)]


def for_records(session: Session, record_ids: list[uuid.UUID]) -> list[BillingDelivery]:
    if not record_ids:
        return []
    query = select(BillingDelivery).where(BillingDelivery.usage_record_id.in_(record_ids))
    return list(session.scalars(query))


def lock_stale_pending(session: Session, *, due_before: datetime, limit: int) -> list[BillingDelivery]:
    """Pending deliveries due before a time that no worker is relaying (their rows are unlocked)."""
    return lock_due(session, BillingDelivery, status=BillingDeliveryStatus.PENDING, due_before=due_before, limit=limit)
