"""Webhook rules: endpoints and secrets, events written in the caller's transaction with one
delivery per target (sent after commit through the outbox), and the delivery log. Never commits."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from app import task_names
from app.enums import WebhookDeliveryStatus
from app.errors import NotFound, ValidationFailed
from app.ids import id_or_404
from app.orm import WebhookDelivery, WebhookEndpoint, WebhookEvent
from app.orm.base import utcnow
from app.outbox import service as outbox
from app.pagination import decode_cursor, encode_cursor
from app.settings import Settings
from app.tenants.service import Principal
from app.webhooks import repository, schemas, signing, ssrf

MAX_PAGE_SIZE = 100


def check_url(url: str, settings: Settings) -> str:
    """Refuse non-http(s) URLs and literal private addresses now; names are resolved at delivery."""
    ssrf.check_literal(url, allowed_networks=settings.webhook_allowed_networks)
    return url


# Endpoints.


def create_endpoint(
    session: Session, *, principal: Principal, request: schemas.EndpointCreate, settings: Settings
) -> WebhookEndpoint:
    """Register an endpoint with a fresh whsec_ secret."""
    endpoint = WebhookEndpoint(
        tenant_id=principal.tenant_id,
        url=check_url(request.url, settings),
        description=request.description,
        event_types=sorted(set(request.event_types)),
        secret=signing.new_secret(),
        enabled=True,
        consecutive_failures=0,
        created_at=utcnow(),
    )
    return repository.add_endpoint(session, endpoint)


def get_endpoint(session: Session, *, principal: Principal, endpoint_id: str) -> WebhookEndpoint:
    """One of the caller's endpoints; another tenant's id is not found."""
    endpoint = repository.get_endpoint_for_tenant(
        session, tenant_id=principal.tenant_id, endpoint_id=id_or_404(endpoint_id, "webhook endpoint")
    )
    if endpoint is None:
        raise NotFound(f"webhook endpoint {endpoint_id} not found")
    return endpoint


def list_endpoints(session: Session, *, principal: Principal) -> list[WebhookEndpoint]:
    """The caller's endpoints, oldest first."""
    return repository.list_endpoints(session, tenant_id=principal.tenant_id)


def update_endpoint(
    session: Session, *, principal: Principal, endpoint_id: str, request: schemas.EndpointUpdate, settings: Settings
) -> WebhookEndpoint:
    """Change the URL, description, event filter, or re-enable it."""
    endpoint = get_endpoint(session, principal=principal, endpoint_id=endpoint_id)
    changes = request.model_dump(exclude_unset=True)
    if changes.get("url") is not None:
        endpoint.url = check_url(changes["url"], settings)
    if changes.get("description") is not None:
        endpoint.description = changes["description"]
    if changes.get("event_types") is not None:
        endpoint.event_types = sorted(set(changes["event_types"]))
    if changes.get("enabled") is True and not endpoint.enabled:
        endpoint.enabled, endpoint.disabled_reason, endpoint.disabled_at = True, None, None
        endpoint.consecutive_failures = 0
    elif changes.get("enabled") is False and endpoint.enabled:
        endpoint.enabled, endpoint.disabled_reason, endpoint.disabled_at = False, "disabled by its owner", utcnow()
    session.flush()
    return endpoint


def delete_endpoint(session: Session, *, principal: Principal, endpoint_id: str) -> None:
    """Delete an endpoint and its delivery log."""
    repository.delete_endpoint(session, get_endpoint(session, principal=principal, endpoint_id=endpoint_id))


def rotate_secret(session: Session, *, principal: Principal, endpoint_id: str, settings: Settings) -> WebhookEndpoint:
    """A new secret; the old one keeps signing (a second signature) for LEAP_WEBHOOK_SECRET_GRACE."""
    endpoint = get_endpoint(session, principal=principal, endpoint_id=endpoint_id)
    endpoint.previous_secret = endpoint.secret
    endpoint.previous_secret_expires_at = utcnow() + settings.webhook_secret_grace
    endpoint.secret = signing.new_secret()
    session.flush()
    return endpoint


def tenant_secret(session: Session, *, tenant_id: uuid.UUID) -> str:
    """The secret signing deliveries to trainings' own webhook_url; created on first use."""
    tenant = repository.tenant_for_update(session, tenant_id)
    if tenant is None:
        raise NotFound(f"tenant {tenant_id} not found")
    if tenant.webhook_secret is None:
        tenant.webhook_secret = signing.new_secret()
        session.flush()
    return tenant.webhook_secret


def signing_secrets(session: Session, delivery: WebhookDelivery, *, now: datetime) -> list[str]:
    """Secrets that sign a delivery now: the endpoint's (and its previous one during the grace), or the tenant's."""
    if delivery.endpoint_id is None:
        return [tenant_secret(session, tenant_id=delivery.tenant_id)]
    endpoint = repository.get_endpoint(session, delivery.endpoint_id)
    if endpoint is None:
        return []
    secrets = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and expires > now:
        secrets.append(endpoint.previous_secret)
    return secrets


# Events.


def new_event_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def emit(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    event_type: str,
    data: dict[str, Any],
    settings: Settings,
    training_id: uuid.UUID | None = None,
    training_url: str | None = None,
    event_id: str | None = None,
) -> str | None:
    """Write an event and a delivery to each subscribed endpoint (and the training's own URL),
    in the caller's transaction; each is sent after commit. With a given event_id, an event that
    already exists is not sent again (None)."""
    if event_type not in schemas.EVENT_TYPES:
        raise ValueError(f"unknown event type {event_type}")
    now = utcnow()
    event_id = event_id or new_event_id()
    payload = {"type": event_type, "timestamp": now.isoformat().replace("+00:00", "Z"), "data": data}
    inserted = repository.add_event_once(
        session,
        {"id": event_id, "tenant_id": tenant_id, "type": event_type, "payload": payload, "created_at": now},
    )
    if not inserted:
        return None
    targets: list[tuple[uuid.UUID | None, str]] = [
        (endpoint.id, endpoint.url)
        for endpoint in repository.enabled_endpoints(session, tenant_id=tenant_id)
        if not endpoint.event_types or event_type in endpoint.event_types
    ]
    if training_url:
        targets.append((None, training_url))
    for endpoint_id, url in targets:
        delivery = repository.add_delivery(
            session,
            WebhookDelivery(
                tenant_id=tenant_id,
                event_id=event_id,
                endpoint_id=endpoint_id,
                training_id=training_id,
                url=url,
                status=WebhookDeliveryStatus.PENDING,
                attempt_count=0,
                next_attempt_at=now,
                created_at=now,
            ),
        )
        outbox.enqueue(
            session, task=task_names.DELIVER_WEBHOOK, args=[str(delivery.id)], queue=settings.maintenance_queue
        )
    return event_id


def body_of(event: WebhookEvent) -> bytes:
    """The exact bytes sent (and signed)."""
    return json.dumps(event.payload, separators=(",", ":"), sort_keys=True).encode()


# Delivery log.


def list_deliveries(
    session: Session,
    *,
    principal: Principal,
    endpoint_id: str | None,
    training_id: str | None,
    limit: int,
    cursor: str | None = None,
) -> tuple[list[schemas.Delivery], str | None]:
    """The caller's deliveries with their attempts, newest first, one page at a time (and the
    cursor of the next page, None at the end)."""
    endpoint = get_endpoint(session, principal=principal, endpoint_id=endpoint_id) if endpoint_id is not None else None
    deliveries = repository.list_deliveries(
        session,
        tenant_id=principal.tenant_id,
        endpoint_id=endpoint.id if endpoint is not None else None,
        training_id=id_or_404(training_id, "training") if training_id else None,
        limit=limit + 1,
        before=decode_cursor(cursor) if cursor else None,
    )
    page = deliveries[:limit]
    next_cursor = encode_cursor(page[-1].created_at, page[-1].id) if len(deliveries) > limit else None
    return present(session, page), next_cursor


def get_delivery(session: Session, *, principal: Principal, delivery_id: str) -> WebhookDelivery:
    """One of the caller's deliveries."""
    delivery = repository.get_delivery_for_tenant(
        session, tenant_id=principal.tenant_id, delivery_id=id_or_404(delivery_id, "webhook delivery")
    )
    if delivery is None:
        raise NotFound(f"webhook delivery {delivery_id} not found")
    return delivery


def redeliver(session: Session, *, principal: Principal, delivery_id: str, settings: Settings) -> WebhookDelivery:
    """Send a delivery again now (same webhook-id), with a fresh retry schedule."""
    delivery = get_delivery(session, principal=principal, delivery_id=delivery_id)
    if delivery.endpoint_id is not None:
        endpoint = repository.get_endpoint(session, delivery.endpoint_id)
        if endpoint is not None and not endpoint.enabled:
            raise ValidationFailed(
                "the endpoint is disabled; re-enable it (PATCH enabled=true) before redelivering",
                details={"endpoint_id": str(endpoint.id), "disabled_reason": endpoint.disabled_reason},
            )
    now = utcnow()
    delivery.status, delivery.attempt_count, delivery.next_attempt_at = WebhookDeliveryStatus.PENDING, 0, now
    delivery.completed_at = None
    session.flush()
    outbox.enqueue(session, task=task_names.DELIVER_WEBHOOK, args=[str(delivery.id)], queue=settings.maintenance_queue)
    return delivery


def present(session: Session, deliveries: list[WebhookDelivery]) -> list[schemas.Delivery]:
    """API views of deliveries with their attempts and payloads."""
    attempts = repository.attempts_for(session, [delivery.id for delivery in deliveries])
    events = repository.events_by_id(session, sorted({delivery.event_id for delivery in deliveries}))
    return [
        schemas.Delivery(
            **schemas.DeliveryRow.model_validate(delivery).model_dump(),
            event_type=events[delivery.event_id].type,
            attempts=[schemas.Attempt.model_validate(attempt) for attempt in attempts.get(delivery.id, [])],
            payload=events[delivery.event_id].payload,
        )
        for delivery in deliveries
    ]
