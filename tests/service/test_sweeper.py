"""The sweeper: expired leases are requeued up to the attempt cap, then failed; artifacts past
retention are deleted. Run in-process against the real database, broker and S3."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import update

from app.db import unit_of_work
from app.orm import Training
from app.orm.base import utcnow
from app.storage import make_storage
from app.trainings import lifecycle
from workers.celery_app import create_celery, make_sender

from .factories import make_tenant, submit
from .helpers import queued_messages, stored_keys


def _sweep(database, settings):  # type: ignore[no-untyped-def]
    with unit_of_work(database.session_factory) as session:
        return lifecycle.sweep(
            session,
            settings=settings,
            storage=make_storage(settings),
            send=make_sender(create_celery(settings)),
        )


def _set(database, training_id: str, **values) -> None:  # type: ignore[no-untyped-def]
    with unit_of_work(database.session_factory) as session:
        session.execute(update(Training).where(Training.id == uuid.UUID(training_id)).values(**values))


def _running_with_expired_lease(database, training_id: str, *, attempts: int, **extra) -> None:  # type: ignore[no-untyped-def]
    _set(
        database,
        training_id,
        status="running",
        worker_id="dead-worker",
        attempts=attempts,
        lease_expires_at=utcnow() - timedelta(seconds=1),
        **extra,
    )


def test_expired_lease_is_requeued_and_sent_again(client, database, settings):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    _running_with_expired_lease(database, training_id, attempts=1)
    before = queued_messages(settings)
    report = _sweep(database, settings)
    assert [str(item) for item in report.requeued] == [training_id]
    body = client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()
    assert body["status"] == "queued" and body["attempts"] == 1
    # The requeue's message is in the outbox; the relay of the next sweep sends it.
    _sweep(database, settings)
    assert queued_messages(settings) == before + 1


def test_live_lease_is_left_alone(client, database, settings):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    _set(
        database,
        training_id,
        status="running",
        worker_id="w",
        attempts=1,
        lease_expires_at=utcnow() + timedelta(seconds=30),
    )
    report = _sweep(database, settings)
    assert report.requeued == [] and report.failed == []


def test_expired_lease_after_the_last_attempt_fails_with_worker_lost(client, database, settings):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    _running_with_expired_lease(database, training_id, attempts=settings.max_attempts)
    report = _sweep(database, settings)
    assert [str(item) for item in report.failed] == [training_id]
    body = client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()
    assert body["status"] == "failed" and body["error"]["code"] == "worker_lost"
    assert str(settings.max_attempts) in body["error"]["message"]


def test_expired_lease_of_a_canceled_training_ends_canceled(client, database, settings):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    _running_with_expired_lease(database, training_id, attempts=1, cancel_requested_at=utcnow())
    _sweep(database, settings)
    body = client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()
    assert body["status"] == "canceled"


def test_artifacts_past_retention_are_deleted(client, database, settings):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    storage = make_storage(settings)
    key = f"trainings/{training_id}/artifacts/learned_embeds.safetensors"
    storage.put_bytes(key, b"weights")
    with unit_of_work(database.session_factory) as session:
        session.execute(
            update(Training)
            .where(Training.id == uuid.UUID(training_id))
            .values(status="running", worker_id="w", attempts=1, lease_expires_at=utcnow() + timedelta(seconds=30))
        )
    with unit_of_work(database.session_factory) as session:
        lifecycle.complete(
            session,
            training_id=uuid.UUID(training_id),
            worker_id="w",
            artifacts=[
                lifecycle.StoredArtifact(
                    name="learned_embeds.safetensors", kind="embedding", key=key, bytes=7, sha256="0" * 64
                )
            ],
            usage=lifecycle.UsageRecord(steps=4, compute_seconds=1.0, device="cpu"),
            settings=settings,
            init_used="token",
        )
    assert len(client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()["artifacts"]) == 1

    assert _sweep(database, settings).expired == 0  # still within retention
    _set(database, training_id, finished_at=utcnow() - settings.artifact_retention - timedelta(minutes=1))
    assert _sweep(database, settings).expired == 1
    body = client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()
    assert body["status"] == "succeeded" and body["artifacts"] == []
    assert body["artifacts_expired_at"] is not None
    assert stored_keys(settings) == []  # inputs and artifacts both gone
    assert _sweep(database, settings).expired == 0
