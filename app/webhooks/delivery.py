"""One attempt of a webhook delivery (the worker task's body): sign, send, record, schedule the retry.

Runs in the task's transaction while holding the delivery's row lock, so a duplicate message
finds the row locked or no longer due and does nothing.
"""

from __future__ import annotations

import logging
import random
import uuid
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app import task_names
from app.enums import WebhookDeliveryStatus
from app.orm import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.orm.base import utcnow
from app.outbox import service as outbox
from app.settings import Settings
from app.webhooks import repository, sender, service, signing, ssrf

logger = logging.getLogger(__name__)

# Statuses that say "try again later" rather than "this request is wrong".
RETRYABLE_4XX = {408, 409, 425, 429}
EARLY_TOLERANCE = timedelta(seconds=1)


def retry_delay(attempt_count: int, settings: Settings) -> timedelta | None:
    """Wait before the next attempt after `attempt_count` failures; None when retries are used up."""
    schedule = settings.webhook_retry_schedule
    if attempt_count > len(schedule):
        return None
    return schedule[attempt_count - 1] * random.uniform(0.9, 1.1)


def _final(outcome: sender.Outcome) -> bool:
    """Not worth retrying: the URL is refused, or the receiver rejected the request itself."""
    code = outcome.status_code
    return outcome.permanent or (code is not None and 400 <= code < 500 and code not in RETRYABLE_4XX)


def _disable(endpoint: WebhookEndpoint, reason: str, now: datetime) -> None:
    endpoint.enabled, endpoint.disabled_reason, endpoint.disabled_at = False, reason, now
    logger.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)


def attempt(
    session: Session, *, delivery_id: uuid.UUID, settings: Settings, resolver: ssrf.Resolver = ssrf.system_resolver
) -> str:
    """Make one attempt if the delivery is pending and due; returns what happened."""
    now = utcnow()
    delivery = repository.lock_delivery(session, delivery_id)
    if delivery is None:
        return "locked-or-missing"
    if delivery.status != WebhookDeliveryStatus.PENDING:
        return "done"
    if delivery.next_attempt_at is not None and delivery.next_attempt_at > now + EARLY_TOLERANCE:
        return "not-due"  # an early duplicate; the outbox sends the scheduled one
    endpoint = repository.lock_endpoint(session, delivery.endpoint_id) if delivery.endpoint_id else None
    if delivery.endpoint_id is not None and (endpoint is None or not endpoint.enabled):
        _complete(delivery, WebhookDeliveryStatus.CANCELED, now, error="endpoint disabled or deleted")
        return WebhookDeliveryStatus.CANCELED.value
    event = repository.get_event(session, delivery.event_id)
    assert event is not None
    body = service.body_of(event)
    secrets = service.signing_secrets(session, delivery, now=now)
    headers = signing.headers(secrets, message_id=event.id, timestamp=int(now.timestamp()), body=body)
    try:
        outcome = sender.post(
            delivery.url,
            body=body,
            headers=headers,
            timeout=settings.webhook_timeout,
            response_bytes=settings.webhook_response_bytes,
            allowed_networks=settings.webhook_allowed_networks,
            resolver=resolver,
        )
    except Exception as error:
        # Whatever goes wrong in sending is a failed attempt on record, retried on the schedule;
        # escaping here would roll back and leave the delivery pending with no attempt.
        logger.exception("webhook delivery %s: sending raised", delivery.id)
        outcome = sender.Outcome(None, 0, "", f"{type(error).__name__}: {error}"[:1000])
    repository.add_attempt(
        session,
        WebhookAttempt(
            delivery_id=delivery.id,
            attempted_at=now,
            success=outcome.success,
            status_code=outcome.status_code,
            latency_ms=outcome.latency_ms,
            response_body=outcome.response_body,
            error=outcome.error,
        ),
    )
    delivery.attempt_count += 1
    delivery.last_status_code = outcome.status_code
    delivery.last_error = outcome.error
    if outcome.success:
        _complete(delivery, WebhookDeliveryStatus.SUCCEEDED, now)
        if endpoint is not None:
            endpoint.consecutive_failures = 0
        return WebhookDeliveryStatus.SUCCEEDED.value
    if endpoint is not None:
        endpoint.consecutive_failures += 1
        if outcome.status_code == 410:
            _disable(endpoint, "the receiver answered 410 Gone", now)
        elif endpoint.consecutive_failures >= settings.webhook_disable_after_failures:
            _disable(
                endpoint,
                f"{endpoint.consecutive_failures} consecutive failed attempts "
                f"(last: {outcome.status_code or outcome.error})",
                now,
            )
    delay = None if outcome.status_code == 410 or _final(outcome) else retry_delay(delivery.attempt_count, settings)
    if delay is None or (endpoint is not None and not endpoint.enabled):
        _complete(delivery, WebhookDeliveryStatus.FAILED, now)
        return WebhookDeliveryStatus.FAILED.value
    delivery.next_attempt_at = now + delay
    # Sent now with the due time as its ETA; if the worker holding it dies, the sweeper sends it again.
    outbox.enqueue(
        session,
        task=task_names.DELIVER_WEBHOOK,
        args=[str(delivery.id)],
        queue=settings.maintenance_queue,
        delay=delay,
        at_due_time=True,
    )
    return "retrying"


def _complete(
    delivery: WebhookDelivery, status: WebhookDeliveryStatus, now: datetime, *, error: str | None = None
) -> None:
    delivery.status, delivery.completed_at, delivery.next_attempt_at = status, now, None
    if error is not None:
        delivery.last_error = error


def resend_stale(session: Session, *, settings: Settings, limit: int = 500) -> int:
    """Send again pending deliveries more than LEAP_DELIVERY_RESEND_AFTER past due that no worker is
    attempting: the worker holding their message died (Redis would hand it out again only after its
    visibility timeout). Each is marked due now, so it is sent at most once per that period."""
    now = utcnow()
    stale = repository.lock_stale_pending(session, due_before=now - settings.delivery_resend_after, limit=limit)
    for delivery in stale:
        delivery.next_attempt_at = now
        outbox.enqueue(
            session, task=task_names.DELIVER_WEBHOOK, args=[str(delivery.id)], queue=settings.maintenance_queue
        )
    if stale:
        logger.warning("sent %d stale webhook deliveries again", len(stale))
    return len(stale)
