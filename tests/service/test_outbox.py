"""Enqueue after commit: a rollback sends nothing and keeps nothing; a lost send is relayed later."""

from __future__ import annotations

import io
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from app.db import unit_of_work
from app.main import create_app
from app.orm import OutboxMessage
from app.outbox import service as outbox
from app.storage import make_storage
from app.tenants.service import Principal
from app.trainings import service, uploads
from models.registry import load_registry
from workers.celery_app import create_celery, make_sender

from .factories import make_tenant, png_bytes, submit
from .helpers import assert_nothing_stored, queued_messages, stored_keys


def test_rolled_back_submission_sends_nothing_and_deletes_its_inputs(client, database, settings):
    tenant = make_tenant(database)
    images = [png_bytes(color=(i, 80, 120)) for i in range(2)]
    files = [uploads.UploadedFile(f"{i}.png", io.BytesIO(data), len(data)) for i, data in enumerate(images)]
    submission = uploads.Submission(files=files)
    principal = Principal(tenant_id=uuid.UUID(tenant.tenant_id), api_key_id=uuid.uuid4())
    with pytest.raises(RuntimeError), unit_of_work(client.app.state.database.session_factory) as session:
        service.create_training(
            session,
            principal=principal,
            submission=submission,
            idempotency_key=None,
            settings=settings,
            storage=make_storage(settings),
            registry=load_registry(),
        )
        assert len(stored_keys(settings)) == 2  # stored, then the transaction fails
        raise RuntimeError("the request failed after the inputs were stored")
    assert_nothing_stored(database, settings)


def test_relay_sends_a_message_whose_send_was_lost(database, settings):
    # A session factory with no sender bound: like a process that died right after commit.
    bare = sessionmaker(database.engine, expire_on_commit=False)
    with unit_of_work(bare) as session:
        outbox.enqueue(session, task="trainings.run", args=[str(uuid.uuid4())], queue=settings.queue)
    assert queued_messages(settings) == 0

    send = make_sender(create_celery(settings))
    with unit_of_work(bare) as session:
        assert outbox.relay_pending(session, send=send, grace=settings.outbox_grace) == 1
    assert queued_messages(settings) == 1
    with unit_of_work(bare) as session:
        assert outbox.relay_pending(session, send=send, grace=settings.outbox_grace) == 0
        assert session.scalars(select(OutboxMessage)).one().dispatched_at is not None


def test_submission_survives_a_broker_outage(database, settings):
    unreachable = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(unreachable)) as down_client:
        tenant = make_tenant(database)
        started = time.monotonic()
        response = submit(down_client, tenant)
        assert response.status_code == 202, response.text
        assert time.monotonic() - started < 10
    assert queued_messages(settings) == 0
    with unit_of_work(database.session_factory) as session:
        sent = outbox.relay_pending(session, send=make_sender(create_celery(settings)), grace=settings.outbox_grace)
    assert sent == 1 and queued_messages(settings) == 1
