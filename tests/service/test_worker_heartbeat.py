"""The lease heartbeat in a real worker: it stops before the training's final transaction, so a
finished training never reads as a lost lease."""

from __future__ import annotations

from datetime import timedelta

from .factories import make_tenant, submit
from .helpers import wait_status
from .processes import WorkerProcess


def test_successful_training_does_not_report_a_lost_lease(client, database, settings):
    # A heartbeat every 5 ms: one that outlived the final commit would run in the ~20 ms after it.
    worker = WorkerProcess(
        settings.model_copy(update={"progress_interval": timedelta(seconds=0.005)}), queues=settings.queue
    )
    try:
        tenant = make_tenant(database)
        training_ids = [submit(client, tenant, data={"steps": "2"}).json()["id"] for _ in range(3)]
        for training_id in training_ids:
            body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=120)
            assert body["status"] == "succeeded", (body, worker.log()[-3000:])
    finally:
        worker.stop()
    log = worker.log()
    assert log.count("succeeded with") == 3, log[-3000:]
    assert "lease lost" not in log, log[-3000:]
