"""Every query on the usage ledger."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.enums import ACTIVE_STATUSES
from app.orm import Training, UsageRecord


def get_training(session: Session, training_id: uuid.UUID) -> Training | None:
    return session.get(Training, training_id, populate_existing=True)


def insert_once(session: Session, values: dict[str, Any]) -> uuid.UUID | None:
    """Insert a record unless its training already has one; the new id, or None."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(UsageRecord)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["training_id"])
        .returning(UsageRecord.id)
    )
    row = session.execute(statement).first()
    return None if row is None else row[0]


def get(session: Session, record_id: uuid.UUID) -> UsageRecord | None:
    return session.get(UsageRecord, record_id)


def in_period(session: Session, *, tenant_id: uuid.UUID | None, start: datetime, end: datetime) -> list[UsageRecord]:
    """Records finished in [start, end), oldest first; all tenants when tenant_id is None."""
    query = select(UsageRecord).where(UsageRecord.finished_at >= start, UsageRecord.finished_at < end)
    if tenant_id is not None:
        query = query.where(UsageRecord.tenant_id == tenant_id)
    return list(session.scalars(query.order_by(UsageRecord.finished_at, UsageRecord.id)))


def units_in_period(session: Session, *, tenant_id: uuid.UUID, start: datetime, end: datetime) -> int:
    query = select(func.coalesce(func.sum(UsageRecord.billable_units), 0)).where(
        UsageRecord.tenant_id == tenant_id, UsageRecord.finished_at >= start, UsageRecord.finished_at < end
    )
    return int(session.scalar(query) or 0)


def estimated_units_of_active(session: Session, *, tenant_id: uuid.UUID) -> int:
    """Estimates of the tenant's queued and running trainings (not yet in the ledger)."""
    query = select(func.coalesce(func.sum(Training.estimated_units), 0)).where(
        Training.tenant_id == tenant_id, Training.status.in_(ACTIVE_STATUSES)
    )
    return int(session.scalar(query) or 0)


def all_ids(session: Session) -> list[uuid.UUID]:
    return list(session.scalars(select(UsageRecord.id).order_by(UsageRecord.created_at, UsageRecord.id)))
