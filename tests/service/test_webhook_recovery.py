"""Webhook deliveries against real worker processes: a retry runs at its scheduled time (not on the
sweeper's next tick), and a delivery whose worker was killed mid-request is sent again by the
sweeper instead of waiting hours in Redis' unacked set."""

from __future__ import annotations

import os
import signal
import threading
import time
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient

from app.main import create_app

from .factories import make_tenant, submit
from .helpers import wait_for
from .processes import WorkerProcess
from .receivers import Receiver, Reply


class TimedReceiver(Receiver):
    """Records when each request arrived; requests to /hang block until released."""

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: dict[str, list[float]] = {}
        self.release = threading.Event()

    def respond(self, method: str, path: str, body: bytes) -> Reply | None:
        self.arrivals.setdefault(path, []).append(time.monotonic())
        if path == "/hang" and len(self.arrivals[path]) == 1:
            self.release.wait(60)
        return None


@pytest.fixture
def receiver():
    server = TimedReceiver()
    yield server
    server.release.set()
    server.stop()


@pytest.fixture(scope="module")
def recovery_settings(settings, tmp_path_factory):
    return settings.model_copy(
        update={
            "webhook_allowed_networks": ["127.0.0.1/32"],
            "webhook_retry_schedule": [timedelta(seconds=2)] * 3,
            "webhook_timeout": timedelta(seconds=30),
            "delivery_resend_after": timedelta(seconds=2),
            "sweeper_interval": timedelta(seconds=1),
            "data_dir": tmp_path_factory.mktemp("webhook-recovery"),
        }
    )


@pytest.fixture(scope="module")
def api(recovery_settings):
    with TestClient(create_app(recovery_settings)) as test_client:
        yield test_client


def delivery_of(api: TestClient, tenant, endpoint_id: str) -> dict | None:  # type: ignore[no-untyped-def]
    listed = api.get("/v1/webhook-deliveries", params={"endpoint_id": endpoint_id}, headers=tenant.headers).json()
    return listed["data"][0] if listed["data"] else None


def test_retry_runs_at_its_scheduled_time_without_the_sweeper(api, database, recovery_settings, receiver):
    # No sweeper and no relay here: only the retry's own scheduling can bring the second attempt.
    worker = WorkerProcess(recovery_settings, queues=recovery_settings.maintenance_queue, pool="solo")
    try:
        tenant = make_tenant(database)
        endpoint = api.post(
            "/v1/webhook-endpoints", json={"url": f"{receiver.url}/flaky"}, headers=tenant.headers
        ).json()
        receiver.on("/flaky", Reply(500))
        submit(api, tenant)
        wait_for(lambda: len(receiver.arrivals.get("/flaky", [])) >= 2, timeout=15, message="the retry")
        first, second = receiver.arrivals["/flaky"][:2]
        assert 1.8 - 0.1 <= second - first <= 2.2 + 1.0, second - first  # 2 s +-10%, plus the worker's latency
        body = wait_for(
            lambda: (found := delivery_of(api, tenant, endpoint["id"])) and found["status"] == "succeeded" and found,
            timeout=10,
            message="the delivery to succeed",
        )
        assert [attempt["status_code"] for attempt in body["attempts"]] == [500, 200]
    finally:
        worker.stop()


def test_delivery_of_a_killed_worker_is_sent_again_by_the_sweeper(api, database, recovery_settings, receiver):
    worker = WorkerProcess(recovery_settings, queues=recovery_settings.maintenance_queue, pool="solo")
    sweeper = None
    try:
        tenant = make_tenant(database)
        endpoint = api.post(
            "/v1/webhook-endpoints", json={"url": f"{receiver.url}/hang"}, headers=tenant.headers
        ).json()
        submit(api, tenant)
        wait_for(lambda: receiver.arrivals.get("/hang"), timeout=15, message="the worker to start delivering")
        os.kill(worker.process.pid, signal.SIGKILL)  # solo pool: the main process is the one delivering
        worker.process.wait()
        killed = time.monotonic()
        stuck = delivery_of(api, tenant, endpoint["id"])
        assert stuck is not None and stuck["status"] == "pending" and stuck["attempt_count"] == 0

        sweeper = WorkerProcess(recovery_settings, queues=recovery_settings.maintenance_queue, pool="solo", beat=True)
        body = wait_for(
            lambda: (found := delivery_of(api, tenant, endpoint["id"])) and found["status"] == "succeeded" and found,
            timeout=60,
            message="the sweeper to send the delivery again",
        )
        recovered = time.monotonic() - killed
        assert recovered < 60, recovered
        assert [attempt["status_code"] for attempt in body["attempts"]] == [200]
        assert len(receiver.at("/hang")) == 2
        assert len({request.headers["webhook-id"] for request in receiver.at("/hang")}) == 1
    finally:
        worker.stop()
        if sweeper is not None:
            sweeper.stop()
