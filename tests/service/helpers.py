"""Plain helpers shared by the service tests: constants, polling, S3 and broker inspection, assertions,
the `leap` CLI as a subprocess, and trainings driven through the lifecycle without a broker. Fixtures
live in conftest.py; the subprocesses (`leap worker`, `leap api`) in processes.py."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import psycopg
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import Database, unit_of_work
from app.orm import OutboxMessage, Training
from app.settings import Settings
from app.trainings import lifecycle
from models.registry import load_registry

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_DSN = os.environ.get("LEAP_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
BUCKET = "leap-test"
ADMIN = {"Authorization": "Bearer dev-admin-token"}
"""Headers of the admin API under the test settings (the development admin token)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate, timeout: float, interval: float = 0.1, message: str = "condition"):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def wait_until(relay, predicate, *, timeout: float = 30.0, message: str = "condition"):  # type: ignore[no-untyped-def]
    """wait_for, sending the due outbox messages (`relay`, see outbox_relay) before each check."""

    def check():  # type: ignore[no-untyped-def]
        relay()
        return predicate()

    return wait_for(check, timeout=timeout, interval=0.2, message=message)


@contextlib.contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A new, empty Postgres database (SQLAlchemy URL), dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def settings_env(settings: Settings) -> dict[str, str]:
    """The LEAP_* environment that reproduces `settings` in a subprocess."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LEAP_")}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, timedelta):
            value = value.total_seconds()
        elif isinstance(value, dict | list):
            value = json.dumps(value, default=lambda item: item.total_seconds())
        elif hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"LEAP_{name.upper()}"] = str(value)
    env["PYTHONPATH"] = str(REPO_ROOT)
    return env


def run_leap(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`leap *args` as a subprocess over `settings`."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO_ROOT,
        env=settings_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def s3_client(settings: Settings) -> Any:
    """A boto3 client for the test S3 server (moto) of `settings`."""
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


def stored_keys(settings: Settings) -> list[str]:
    return [item["Key"] for item in s3_client(settings).list_objects_v2(Bucket=BUCKET).get("Contents", [])]


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


def post_fields(client: TestClient, tenant, fields: list[tuple[str, str]], *, headers=None, files=None):  # type: ignore[no-untyped-def]
    """A submission of text fields only, as multipart/form-data with no file part (or with `files`)."""
    if files is not None:
        return client.post("/v1/trainings", data=dict(fields), files=files, headers=tenant.headers)
    boundary = uuid.uuid4().hex
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    )
    body += f"--{boundary}--\r\n".encode()
    return client.post(
        "/v1/trainings",
        content=body,
        headers=tenant.headers | {"content-type": f"multipart/form-data; boundary={boundary}"} | (headers or {}),
    )


def outbox_relay(settings: Settings, database: Database) -> Callable[[], None]:
    """Sends every due outbox message (delayed retries) at once, as the sweeper does each interval."""
    from app.outbox import service as outbox
    from workers.celery_app import create_celery, make_sender

    send = make_sender(create_celery(settings))

    def run() -> None:
        with unit_of_work(database.session_factory) as session:
            outbox.relay_pending(session, send=send, grace=timedelta(0))

    return run


def run_directly(database, settings, training_id: str, *, steps: int, worker: str = "w") -> None:  # type: ignore[no-untyped-def]
    """Claim and complete a training through the lifecycle, as a worker would (no broker)."""
    with unit_of_work(database.session_factory) as session:
        claimed = lifecycle.claim(session, training_id=uuid.UUID(training_id), worker_id=worker, settings=settings)
        assert claimed is not None
    with unit_of_work(database.session_factory) as session:
        assert lifecycle.complete(
            session,
            training_id=uuid.UUID(training_id),
            worker_id=worker,
            artifacts=[],
            usage=lifecycle.UsageRecord(steps=steps, compute_seconds=1.5, device="cuda:NVIDIA H100"),
            settings=settings,
            init_used="token",
        )


def wait_status(client, tenant, training_id, statuses, timeout=30.0):  # type: ignore[no-untyped-def]
    def current():
        body = client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()
        return body if body["status"] in statuses else None

    return wait_for(current, timeout=timeout, interval=0.1, message=f"training {training_id} to reach {statuses}")


def wait_progress(client, tenant, training_id, timeout=120.0):  # type: ignore[no-untyped-def]
    """Wait until the running training has written progress (the model is loaded, steps are being taken)."""

    def progressing():
        body = client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()
        return body if body["status"] == "running" and body["progress"]["step"] > 0 else None

    return wait_for(progressing, timeout=timeout, message=f"training {training_id} to write progress")


def assert_init_reported(init_used: str | None, init_note: str | None) -> None:
    """A training that asked for init=booster on leap-tiny went through the guard where a booster is
    registered (which starts from the booster, or keeps the token when no prediction beats it by its
    margin, and says so), else fell back to the token and said why."""
    entry = load_registry().get("leap-tiny")
    assert entry is not None
    if entry.has_booster:
        assert init_note and init_note.startswith("guarded start: "), (init_used, init_note)
        assert init_used == "booster" or "no candidate beat it" in init_note, (init_used, init_note)
    else:
        assert init_used == "token" and init_note and "no booster" in init_note, (init_used, init_note)


def pool_children(pid: int) -> list[int]:
    """The child processes of `pid` (a prefork worker's pool); none once it is gone."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except (FileNotFoundError, ProcessLookupError):  # gone before the open, or between open and read
        return []
    return [int(child) for child in children]


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False
