"""Every query on webhook endpoints, events, deliveries and attempts."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from app.db import insert_ignoring_conflict, lock_by_id, lock_due
from app.enums import WebhookDeliveryStatus
from app.orm import Tenant, WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent


def add_endpoint(session: Session, endpoint: WebhookEndpoint) -> WebhookEndpoint:
    session.add(endpoint)
    session.flush()
    return endpoint


def get_endpoint(session: Session, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
    return session.get(WebhookEndpoint, endpoint_id)


def get_endpoint_for_tenant(
    session: Session, *, tenant_id: uuid.UUID, endpoint_id: uuid.UUID
) -> WebhookEndpoint | None:
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
    return session.scalars(query).one_or_none()


def list_endpoints(session: Session, *, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    return list(session.scalars(query.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


def enabled_endpoints(session: Session, *, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    query = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True))
    return list(session.scalars(query.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    session.delete(endpoint)
    session.flush()


def tenant_for_update(session: Session, tenant_id: uuid.UUID) -> Tenant | None:
    query = select(Tenant).where(Tenant.id == tenant_id).with_for_update()
    return session.scalars(query).one_or_none()


def add_event_once(session: Session, values: dict[str, Any]) -> bool:
    """Insert an event unless one with its id exists; True when inserted."""
    inserted = insert_ignoring_conflict(session, WebhookEvent, values, index_elements=["id"], returning=WebhookEvent.id)
    return inserted is not None


def get_event(session: Session, event_id: str) -> WebhookEvent | None:
    return session.get(WebhookEvent, event_id)


def add_delivery(session: Session, delivery: WebhookDelivery) -> WebhookDelivery:
    session.add(delivery)
    session.flush()
    return delivery


def lock_delivery(session: Session, delivery_id: uuid.UUID) -> WebhookDelivery | None:
    """The delivery, locked; None when another worker holds it."""
    return lock_by_id(session, WebhookDelivery, delivery_id)


def lock_endpoint(session: Session, endpoint_id: uuid.UUID) -> WebhookEndpoint | None:
    query = (
        select(WebhookEndpoint)
        .where(WebhookEndpoint.id == endpoint_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return session.scalars(query).one_or_none()


def get_delivery_for_tenant(
    session: Session, *, tenant_id: uuid.UUID, delivery_id: uuid.UUID
) -> WebhookDelivery | None:
    query = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id, WebhookDelivery.tenant_id == tenant_id)
    return session.scalars(query.execution_options(populate_existing=True)).one_or_none()


def list_deliveries(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    endpoint_id: uuid.UUID | None,
    training_id: uuid.UUID | None,
    limit: int,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[WebhookDelivery]:
    """Newest first; with `before` (created_at, id), only those listed after that one."""
    query = select(WebhookDelivery).where(WebhookDelivery.tenant_id == tenant_id)
    if before is not None:
        query = query.where(tuple_(WebhookDelivery.created_at, WebhookDelivery.id) < tuple_(*before))
    if endpoint_id is not None:
        query = query.where(WebhookDelivery.endpoint_id == endpoint_id)
    if training_id is not None:
        query = query.where(WebhookDelivery.training_id == training_id)
    query = query.order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc()).limit(limit)
    return list(session.scalars(query))


def events_by_id(session: Session, event_ids: list[str]) -> dict[str, WebhookEvent]:
    if not event_ids:
        return {}
    return {event.id: event for event in session.scalars(select(WebhookEvent).where(WebhookEvent.id.in_(event_ids)))}


def attempts_for(session: Session, delivery_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[WebhookAttempt]]:
    if not delivery_ids:
        return {}
    query = (
        select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id.in_(delivery_ids))
        .order_by(WebhookAttempt.attempted_at, WebhookAttempt.id)
    )
    grouped: dict[uuid.UUID, list[WebhookAttempt]] = defaultdict(list)
    for attempt in session.scalars(query):
        grouped[attempt.delivery_id].append(attempt)
    return grouped


def add_attempt(session: Session, attempt: WebhookAttempt) -> None:
    session.add(attempt)
    session.flush()


def lock_stale_pending(session: Session, *, due_before: datetime, limit: int) -> list[WebhookDelivery]:
    """Pending deliveries due before a time that no worker is attempting (their rows are unlocked)."""
    return lock_due(session, WebhookDelivery, status=WebhookDeliveryStatus.PENDING, due_before=due_before, limit=limit)
