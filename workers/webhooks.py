"""The webhook delivery task: one attempt per message; retries are scheduled through the outbox."""

from __future__ import annotations

import logging

from celery import shared_task

from app import task_names
from app.webhooks import delivery
from workers.runtime import run_by_id

logger = logging.getLogger(__name__)


@shared_task(name=task_names.DELIVER_WEBHOOK, acks_late=True, ignore_result=True)
def deliver(delivery_id: str) -> None:
    """Attempt one webhook delivery by id; a duplicate finds it locked, done or not yet due."""
    run_by_id(
        task_names.DELIVER_WEBHOOK,
        delivery_id,
        lambda session, parsed, settings: delivery.attempt(session, delivery_id=parsed, settings=settings),
        what="webhook delivery",
        logger=logger,
    )
