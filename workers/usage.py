"""The billing relay task: send one usage record to one billing sink; retries go through the outbox."""

from __future__ import annotations

import logging

from celery import shared_task

from app.billing import service as billing
from workers.runtime import get_runtime, parse_task_id

logger = logging.getLogger(__name__)


@shared_task(name=billing.RELAY_TASK, acks_late=True, ignore_result=True)
def relay(delivery_id: str) -> None:
    """Relay one billing delivery by id; a duplicate finds it locked, done or not yet due."""
    parsed = parse_task_id(billing.RELAY_TASK, delivery_id)
    if parsed is None:
        return
    runtime = get_runtime()
    with runtime.unit_of_work() as session:
        outcome = billing.relay(session, delivery_id=parsed, settings=runtime.settings)
    logger.info("billing delivery %s: %s", delivery_id, outcome)
