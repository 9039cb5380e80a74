"""Service test infrastructure: a throwaway Postgres database migrated by Alembic, a Redis
database, moto's S3 server as a subprocess, the API in-process and real Celery workers."""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import boto3
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

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_ADMIN_DSN = os.environ.get("LEAP_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE = os.environ.get("LEAP_TEST_REDIS", "redis://127.0.0.1:6379")
BUCKET = "leap-test"
TABLES = ("artifacts", "trainings", "api_keys", "tenants", "outbox_messages")


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


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with throwaway_database("leap_test") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    # A database of its own (1-15), flushed before and after, so queues start empty.
    url = f"{REDIS_BASE}/{random.randint(1, 15)}"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


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
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        s3.create_bucket(Bucket=BUCKET)
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
    upgrade_database(settings)
    return settings


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
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    listed = s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    if listed:
        s3.delete_objects(Bucket=BUCKET, Delete={"Objects": [{"Key": item["Key"]} for item in listed]})
    redis.Redis.from_url(str(settings.broker_url)).flushdb()


class WorkerProcess:
    """A real `leap worker` subprocess."""

    def __init__(
        self,
        settings: Settings,
        *,
        queues: str,
        extra_env: dict[str, str] | None = None,
        pool: str = "prefork",
        beat: bool = False,
        log_dir: Path | None = None,
    ) -> None:
        self.settings = settings
        self.log_path = (log_dir or Path(settings.data_dir)) / f"worker-{secrets.token_hex(3)}.log"
        # One torch thread: on a busy 2-core machine torch's default (a thread per core) spins against
        # the neighbours and leap-tiny trains ~25x slower (0.5 instead of 13 steps/s, measured).
        env = settings_env(settings) | {"OMP_NUM_THREADS": "1"} | (extra_env or {})
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "app.cli",
                "worker",
                "--queues",
                queues,
                "--pool",
                pool,
                "--loglevel",
                "info",
                *(["--beat"] if beat else []),
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: b"ready." in self.log_path.read_bytes() or self.process.poll() is not None,
            timeout=60,
            message="worker start",
        )
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


class ApiProcess:
    """A real `leap api` subprocess on a free port, for clients that talk HTTP."""

    def __init__(self, settings: Settings) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = Path(settings.data_dir) / f"api-{secrets.token_hex(3)}.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "api", "--port", self.url.rsplit(":", 1)[1]],
            cwd=REPO_ROOT,
            env=settings_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

        def ready() -> bool:
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return self.process.poll() is not None

        wait_for(ready, timeout=60, message="leap api")
        if self.process.poll() is not None:
            raise RuntimeError(f"leap api exited: {self.log_path.read_text(errors='replace')}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def api_url(settings: Settings) -> Iterator[str]:
    """Base URL of a real API process over the test settings."""
    api = ApiProcess(settings)
    yield api.url
    api.stop()
