"""The webhook delivery task: one attempt per message; retries are scheduled through the outbox."""

from __future__ import annotations

import logging

from celery import shared_task

from app.webhooks import delivery, service
from workers.runtime import get_runtime, parse_task_id

logger = logging.getLogger(__name__)

DELIVER = service.DELIVER_TASK


@shared_task(name=DELIVER, acks_late=True, ignore_result=True)
def deliver(delivery_id: str) -> None:
    """Attempt one webhook delivery by id; a duplicate finds it locked, done or not yet due."""
    parsed = parse_task_id(DELIVER, delivery_id)
    if parsed is None:
        return
    runtime = get_runtime()
    with runtime.unit_of_work() as session:
        outcome = delivery.attempt(session, delivery_id=parsed, settings=runtime.settings)
    logger.info("webhook delivery %s: %s", delivery_id, outcome)
