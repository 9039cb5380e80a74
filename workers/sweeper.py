"""The periodic sweeper: expired leases, attempt caps, artifact retention, the outbox relay and
stale webhook and billing deliveries."""

from __future__ import annotations

from celery import shared_task

from app import task_names
from app.billing import relay as billing_relay
from app.trainings import lifecycle, orphans
from app.webhooks import delivery as webhook_delivery
from workers.runtime import get_runtime


@shared_task(name=task_names.SWEEP, acks_late=True, ignore_result=True)
def sweep() -> None:
    """Run one sweep (beat schedules it every LEAP_SWEEPER_INTERVAL)."""
    runtime = get_runtime()
    with runtime.unit_of_work() as session:
        webhook_delivery.resend_stale(session, settings=runtime.settings)
        billing_relay.resend_stale(session, settings=runtime.settings)
    with runtime.unit_of_work() as session:
        lifecycle.sweep(session, settings=runtime.settings, storage=runtime.storage, send=runtime.send)
        orphans.purge_orphan_inputs(session, storage=runtime.storage, settings=runtime.settings)
