"""Service test fixtures: a throwaway Postgres database migrated by Alembic, a Redis database, moto's
S3 server as a subprocess, the API in-process and in a real process, and the webhook receiver, API,
delivery worker and outbox relay that webhook tests share. Plain functions and constants are in
helpers.py, the `leap worker`/`leap api` subprocesses in processes.py; test modules import from
those (and factories.py, receivers.py), never from each other or from this file."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from app.db import Database, create_database, upgrade_database
from app.main import create_app
from app.settings import Settings

from .helpers import BUCKET, free_port, outbox_relay, s3_client, throwaway_database, wait_for
from .processes import ApiProcess, WorkerProcess
from .receivers import Receiver

REDIS_URL = os.environ.get("LEAP_TEST_REDIS")
# The suite's Redis is started or checked the way the benchmarks' is (bench/ holds scripts, not a package).
_scratch_spec = importlib.util.spec_from_file_location(
    "bench_scratch", Path(__file__).parents[2] / "bench" / "scratch.py"
)
assert _scratch_spec is not None and _scratch_spec.loader is not None
_scratch = importlib.util.module_from_spec(_scratch_spec)
_scratch_spec.loader.exec_module(_scratch)
own_redis = _scratch.own_redis
TABLES = ("artifacts", "trainings", "api_keys", "tenants", "outbox_messages")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with throwaway_database("leap_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis the suite owns: a private redis-server, or LEAP_TEST_REDIS if that database is empty.

    Tests empty it between tests, so it must hold nothing of anyone else's: the machine's shared Redis
    is never used (or flushed) unless named, and then only when empty."""
    with own_redis(REDIS_URL) as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{endpoint}/moto-api/", timeout=1).status_code < 500
        except httpx.HTTPError:
            return False

    try:
        wait_for(up, timeout=30, message="moto server")
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture(scope="session")
def settings(postgres_url: str, redis_url: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Production-shaped settings (Postgres, Redis, S3) with small limits and fast timings for tests."""
    settings = Settings(
        database_url=postgres_url,
        broker_url=redis_url,
        storage_url=f"s3://{BUCKET}/leap",
        s3_endpoint_url=s3_endpoint,
        s3_access_key_id="test",
        s3_secret_access_key="test",  # type: ignore[arg-type]
        data_dir=tmp_path_factory.mktemp("leap-data"),
        max_upload_bytes=3 * 1024 * 1024,
        max_image_bytes=1024 * 1024,
        max_text_file_bytes=1024 * 1024,
        max_image_pixels=4_000_000,
        max_zip_entries=60,
        max_zip_ratio=100,
        lease_duration=timedelta(seconds=4),
        progress_interval=timedelta(seconds=0.5),
        retry_backoff=timedelta(seconds=1),
        outbox_grace=timedelta(seconds=0),
    )
    s3_client(settings).create_bucket(Bucket=BUCKET)
    upgrade_database(settings)
    return settings


@pytest.fixture(scope="session")
def database(settings: Settings) -> Iterator[Database]:
    database = create_database(settings)
    yield database
    database.dispose()


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _truncate(database: Database) -> None:
    # A worker process may still be reading these tables in another lock order; Postgres then aborts
    # one side as a deadlock. The truncate is the side that can simply try again.
    for attempt in range(5):
        try:
            with database.engine.begin() as connection:
                connection.execute(text(f"TRUNCATE {', '.join(TABLES)} CASCADE"))
            return
        except OperationalError as error:
            if not isinstance(error.orig, psycopg.errors.DeadlockDetected) or attempt == 4:
                raise
            time.sleep(0.2)


@pytest.fixture(autouse=True)
def _clean_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts with empty tables, an empty bucket and empty queues."""
    if "settings" not in request.fixturenames:
        yield
        return
    settings: Settings = request.getfixturevalue("settings")
    database: Database = request.getfixturevalue("database")
    yield
    _truncate(database)
    s3 = s3_client(settings)
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    if listed:
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": item["Key"]} for item in listed]})
    redis.Redis.from_url(str(settings.broker_url)).flushdb()


@pytest.fixture(scope="session")
def api_url(settings: Settings) -> Iterator[str]:
    """Base URL of a real API process over the test settings."""
    api = ApiProcess(settings)
    yield api.url
    api.stop()


# Webhook deliveries, opt-in by name: a module-scoped local receiver, the settings that allow it
# (a module may override `webhook_settings`, as test_billing.py does), an in-process API, a delivery
# worker process and the outbox relay over those settings.


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset_receiver(request: pytest.FixtureRequest) -> None:
    """Each test that uses `receiver` finds it with no requests and no scripted replies."""
    if "receiver" in request.fixturenames:
        request.getfixturevalue("receiver").reset()


@pytest.fixture(scope="module")
def webhook_settings(settings: Settings) -> Settings:
    """Receivers on 127.0.0.1 allowed; retries after 0.2 s; an endpoint disabled after 4 failures."""
    return settings.model_copy(
        update={
            "webhook_allowed_networks": ["127.0.0.1/32"],
            "webhook_retry_schedule": [timedelta(seconds=0.2)] * 3,
            "webhook_disable_after_failures": 4,
            "webhook_timeout": timedelta(seconds=3),
            "webhook_response_bytes": 16,
        }
    )


@pytest.fixture(scope="module")
def api(webhook_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(webhook_settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def delivery_worker(webhook_settings: Settings) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(webhook_settings, queues=webhook_settings.maintenance_queue)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def relay(webhook_settings: Settings, database: Database) -> Callable[[], None]:
    return outbox_relay(webhook_settings, database)
