"""The billing relay task: send one usage record to one billing sink; retries go through the outbox."""

from __future__ import annotations

import logging

from celery import shared_task

from app import task_names
from app.billing import relay as billing_relay
from workers.runtime import run_by_id

logger = logging.getLogger(__name__)


@shared_task(name=task_names.RELAY_USAGE, acks_late=True, ignore_result=True)
def relay(delivery_id: str) -> None:
    """Relay one billing delivery by id; a duplicate finds it locked, done or not yet due."""
    run_by_id(
        task_names.RELAY_USAGE,
        delivery_id,
        lambda session, parsed, settings: billing_relay.relay(session, delivery_id=parsed, settings=settings),
        what="billing delivery",
        logger=logger,
    )
