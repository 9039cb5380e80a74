"""Recovery in real worker processes: a training put back after a crash runs before newly submitted
ones, and a storage outage of a while does not use up a training's attempts."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta

from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from app.db import unit_of_work
from app.orm import Training
from app.orm.base import utcnow
from app.outbox.service import bind_sender
from app.storage import make_storage
from app.trainings import lifecycle
from workers.celery_app import create_celery, make_sender

from .conftest import WorkerProcess
from .factories import make_tenant, submit
from .test_worker import wait_status


def test_recovered_training_runs_before_newer_submissions(client, database, settings):
    tenant = make_tenant(database)
    newer = [submit(client, tenant, data={"steps": "2"}).json()["id"] for _ in range(2)]
    recovered = submit(client, tenant, data={"steps": "2"}).json()["id"]
    with unit_of_work(database.session_factory) as session:
        session.execute(
            update(Training)
            .where(Training.id == uuid.UUID(recovered))
            .values(status="running", worker_id="dead-worker", attempts=1, lease_expires_at=utcnow() - timedelta(1))
        )
    # The sweeper puts it back, its message sent after commit as in a worker; then a worker starts
    # and finds all three messages waiting.
    send = make_sender(create_celery(settings))
    sessions = sessionmaker(database.engine, expire_on_commit=False)
    bind_sender(sessions, send)
    with unit_of_work(sessions) as session:
        report = lifecycle.sweep(session, settings=settings, storage=make_storage(settings), send=send)
    assert [str(item) for item in report.requeued] == [recovered]

    worker = WorkerProcess(settings, queues=settings.queue)
    try:
        for training_id in [recovered, *newer]:
            body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=120)
            assert body["status"] == "succeeded", (body, worker.log()[-3000:])
    finally:
        worker.stop()
    claimed = re.findall(r"training ([0-9a-f-]{36}): claimed", worker.log())
    assert claimed[0] == recovered, (claimed, recovered, newer)
    assert sorted(claimed) == sorted([recovered, *newer])
