"""Recovery in real worker processes: a training put back after a crash runs before newly submitted
ones, and a storage outage of a while does not use up a training's attempts."""

from __future__ import annotations

import re
import time
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from app.db import unit_of_work
from app.orm import Training
from app.orm.base import utcnow
from app.outbox.service import bind_sender
from app.storage import make_storage
from app.trainings import lifecycle
from workers.celery_app import create_celery, make_sender

from .factories import make_tenant, submit
from .helpers import wait_for, wait_status
from .processes import WorkerProcess
from .receivers import TcpProxy


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


def _set(database, training_id: str, **values) -> None:  # type: ignore[no-untyped-def]
    with unit_of_work(database.session_factory) as session:
        session.execute(update(Training).where(Training.id == uuid.UUID(training_id)).values(**values))


def test_storage_outage_does_not_use_up_attempts(client, database, settings, tmp_path):
    # The worker reaches storage through a proxy that the test cuts off; the API stores inputs directly.
    upstream = urlsplit(settings.s3_endpoint_url)
    proxy = TcpProxy((str(upstream.hostname), int(upstream.port or 80)))
    worker_settings = settings.model_copy(
        update={"s3_endpoint_url": proxy.url, "retry_backoff_max": timedelta(seconds=2)}
    )
    worker = WorkerProcess(worker_settings, queues=settings.queue)
    # The sweeper relays the delayed retries, as in production.
    sweeper = WorkerProcess(
        worker_settings.model_copy(update={"sweeper_interval": timedelta(seconds=1), "data_dir": tmp_path}),
        queues=settings.maintenance_queue,
        pool="solo",
        beat=True,
    )
    try:
        tenant = make_tenant(database)
        proxy.cut()
        training_ids = [submit(client, tenant, data={"steps": "2"}).json()["id"] for _ in range(2)]
        # Each training fails on storage more often than LEAP_MAX_ATTEMPTS allows claims.
        wait_for(
            lambda: worker.log().count("transient failure") >= 2 * (settings.max_attempts + 1),
            timeout=90,
            message="transient failures past the attempt limit",
        )
        outage_ended = time.monotonic()
        proxy.restore()
        for training_id in training_ids:
            body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=120)
            assert body["status"] == "succeeded", (body, worker.log()[-3000:])
            assert body["attempts"] > settings.max_attempts
        assert time.monotonic() - outage_ended < 60
    finally:
        worker.stop()
        sweeper.stop()
        proxy.stop()


def test_transient_failures_end_in_failure_after_the_retry_window(client, database, settings):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    _set(database, training_id, status="running", worker_id="w", attempts=1, lease_expires_at=utcnow() + timedelta(60))
    with unit_of_work(database.session_factory) as session:
        outcome = lifecycle.retry_or_fail(
            session, training_id=uuid.UUID(training_id), worker_id="w", settings=settings, message="S3 down"
        )
    assert outcome == "requeued"
    _set(
        database,
        training_id,
        status="running",
        worker_id="w",
        attempts=2,
        transient_failing_since=utcnow() - settings.transient_retry_window - timedelta(seconds=1),
    )
    with unit_of_work(database.session_factory) as session:
        outcome = lifecycle.retry_or_fail(
            session, training_id=uuid.UUID(training_id), worker_id="w", settings=settings, message="S3 down"
        )
    assert outcome == "failed"
    body = client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()
    assert body["status"] == "failed" and body["error"]["code"] == "internal"
    assert "unavailable for longer than" in body["error"]["message"] and "S3 down" in body["error"]["message"]


def test_claims_ended_by_transient_failures_are_not_counted_as_crashes(client, database, settings):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    # Three claims, two of which ended in a storage error: one crash so far, this expiry the second.
    _set(
        database,
        training_id,
        status="running",
        worker_id="dead-worker",
        attempts=settings.max_attempts,
        transient_failures=2,
        lease_expires_at=utcnow() - timedelta(seconds=1),
    )
    with unit_of_work(database.session_factory) as session:
        report = lifecycle.sweep(
            session, settings=settings, storage=make_storage(settings), send=make_sender(create_celery(settings))
        )
    assert [str(item) for item in report.requeued] == [training_id] and report.failed == []


def test_database_outage_at_claim_time_retries_the_claim(client, database, settings):
    # The worker reaches Postgres through a proxy that the test cuts off; the API reaches it directly.
    upstream = urlsplit(settings.database_url)
    proxy = TcpProxy((str(upstream.hostname), int(upstream.port or 5432)))
    database_url = str(settings.database_url).replace(f"@{upstream.netloc.split('@')[-1]}", f"@127.0.0.1:{proxy.port}")
    worker = WorkerProcess(settings.model_copy(update={"database_url": database_url}), queues=settings.queue)
    try:
        tenant = make_tenant(database)
        proxy.cut()
        training_id = submit(client, tenant, data={"steps": "2"}).json()["id"]
        wait_for(lambda: "OperationalError" in worker.log(), timeout=60, message="the claim to fail")
        time.sleep(4)  # an outage of a few seconds more
        proxy.restore()
        body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=120)
        assert body["status"] == "succeeded" and body["attempts"] == 1, (body, worker.log()[-3000:])
    finally:
        worker.stop()
        proxy.stop()
