"""The periodic sweeper: expired leases, attempt caps, artifact retention and the outbox relay."""

from __future__ import annotations

from celery import shared_task

from app.trainings import lifecycle, orphans
from workers.celery_app import SWEEP
from workers.runtime import get_runtime


@shared_task(name=SWEEP, acks_late=True, ignore_result=True)
def sweep() -> None:
    """Run one sweep (beat schedules it every LEAP_SWEEPER_INTERVAL)."""
    runtime = get_runtime()
    with runtime.unit_of_work() as session:
        lifecycle.sweep(session, settings=runtime.settings, storage=runtime.storage, send=runtime.send)
        orphans.purge_orphan_inputs(session, storage=runtime.storage, settings=runtime.settings)
