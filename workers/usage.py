"""The billing relay task: send one usage record to one billing sink; retries go through the outbox."""

from __future__ import annotations

import logging
import uuid

from celery import shared_task

from app.billing import service as billing
from workers.runtime import get_runtime

logger = logging.getLogger(__name__)


@shared_task(name=billing.RELAY_TASK, acks_late=True, ignore_result=True)
def relay(delivery_id: str) -> None:
    """Relay one billing delivery by id; a duplicate finds it locked, done or not yet due."""
    try:
        parsed = uuid.UUID(delivery_id)
    except ValueError:
        logger.error("billing.relay got a malformed id %r; dropped", delivery_id)
        return
    runtime = get_runtime()
    with runtime.unit_of_work() as session:
        outcome = billing.relay(session, delivery_id=parsed, settings=runtime.settings)
    logger.info("billing delivery %s: %s", delivery_id, outcome)
