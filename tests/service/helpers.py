"""Assertions shared by the service tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import boto3
import redis
from sqlalchemy import func, select

from app.db import Database, unit_of_work
from app.orm import OutboxMessage, Training
from app.settings import Settings

from .conftest import BUCKET


def stored_keys(settings: Settings) -> list[str]:
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    return [item["Key"] for item in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def queued_messages(settings: Settings) -> int:
    """Messages waiting in the training queue, at every priority (kombu keeps a Redis list per step)."""
    client = redis.Redis.from_url(str(settings.broker_url))
    names = [settings.queue] + [f"{settings.queue}\x06\x16{step}" for step in range(1, 10)]
    return sum(int(client.llen(name)) for name in names)


def count_rows(database: Database, model: type) -> int:
    with database.session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def assert_nothing_stored(database: Database, settings: Settings) -> None:
    """A refused request leaves no row, no outbox message, no object and no broker message."""
    assert count_rows(database, Training) == 0
    assert count_rows(database, OutboxMessage) == 0
    assert stored_keys(settings) == []
    assert queued_messages(settings) == 0


def assert_error(response, status: int, code: str, *mentions: str) -> dict:  # type: ignore[no-untyped-def]
    """The response is the error shape with this status and code, and its message names the problem."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    for mention in mentions:
        assert mention in error["message"], (mention, error["message"])
    return error  # type: ignore[no-any-return]


def outbox_relay(settings: Settings, database: Database) -> Callable[[], None]:
    """Sends every due outbox message (delayed retries) at once, as the sweeper does each interval."""
    from app.outbox import service as outbox
    from workers.celery_app import create_celery, make_sender

    send = make_sender(create_celery(settings))

    def run() -> None:
        with unit_of_work(database.session_factory) as session:
            outbox.relay_pending(session, send=send, grace=timedelta(0))

    return run
