"""Training logs and the server-sent events stream: lines from a real worker run, pagination,
tenant isolation, and streams fed by Redis pub/sub (the worker-side publish code driven directly)
or, on the embedded default, by the API's database poller."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from app.client import LeapClient
from app.db import create_database, unit_of_work, upgrade_database
from app.settings import Settings
from app.storage import make_storage
from app.trainings import lifecycle, logs, stream
from app.trainings.presenter import ArtifactLinks

from .factories import make_tenant, submit
from .helpers import assert_error, assert_init_reported, settings_env, wait_for, wait_progress, wait_status
from .processes import ApiProcess, WorkerProcess


def read_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any], str | None]]:
    """(event, data, id) of each server-sent event, in order; comments are skipped."""
    event, data, event_id = "message", "", None
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event, json.loads(data), event_id
            event, data, event_id = "message", "", None
        elif line.startswith(":") or line.startswith("retry:"):
            continue
        else:
            name, _, value = line.partition(": ")
            if name == "event":
                event = value
            elif name == "data":
                data += value
            elif name == "id":
                event_id = value


def drive(settings: Settings, database, training_id: str, *, steps: int, interval: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    """Act as the worker through its own transitions: claim, `steps` progress writes (each with a log
    line), then complete."""
    parsed = uuid.UUID(training_id)
    worker_id = "test-worker"
    with unit_of_work(database.session_factory) as session:
        assert lifecycle.claim(session, training_id=parsed, worker_id=worker_id, settings=settings) is not None
    for step in range(1, steps + 1):
        time.sleep(interval)
        with unit_of_work(database.session_factory) as session:
            state = lifecycle.renew_lease(
                session,
                training_id=parsed,
                worker_id=worker_id,
                settings=settings,
                progress={"step": step, "total": steps, "loss": 1.0 / step, "eta_s": float(steps - step)},
                log_lines=[logs.progress_line(step, steps, 1.0 / step, float(steps - step))],
            )
            assert state.held
    with unit_of_work(database.session_factory) as session:
        assert lifecycle.complete(
            session,
            training_id=parsed,
            worker_id=worker_id,
            artifacts=[],
            usage=lifecycle.UsageRecord(steps=steps, compute_seconds=1.0, device="cpu"),
            settings=settings,
            init_used="token",
            stop_reason="steps",
        )


def collect_stream(url: str, headers: dict[str, str], on_first=None, timeout: float = 60) -> list:  # type: ignore[no-untyped-def]
    """Every event of a stream until the server closes it; on_first() runs once the snapshot arrived."""
    received = []
    with httpx.stream("GET", url, headers=headers, timeout=httpx.Timeout(timeout, connect=5)) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for item in read_events(response):
            received.append(item)
            if len(received) == 1 and on_first is not None:
                on_first()
    return received


def check_stream(received: list, *, steps: int, polled: bool = False) -> None:
    kinds = [event for event, _, _ in received]
    assert kinds[0] == "status" and received[0][1]["status"] == "queued", received[:2]
    assert received[-1][0] == "status" and received[-1][1]["status"] == "succeeded", received[-3:]
    assert received[-1][1]["progress"]["step"] == steps
    statuses = [data["status"] for event, data, _ in received if event == "status"]
    assert statuses == ["queued", "running", "succeeded"], statuses
    progress = [data for event, data, _ in received if event == "progress"]
    # Every progress write, then the final one of the completion (steps run of steps run). The
    # database poller sees the latest write of each interval: it may merge the last two.
    expected = list(range(1, steps + 1)) + [steps]
    seen = [item["step"] for item in progress]
    assert seen == expected or (polled and seen == expected[:-1]), progress
    assert progress[-1]["eta_s"] == 0.0
    assert all(item["total"] == steps and item["at"] for item in progress)
    assert all(earlier["at"] < later["at"] for earlier, later in zip(progress, progress[1:], strict=False))
    lines = [(data, event_id) for event, data, event_id in received if event == "log"]
    assert [data["seq"] for data, _ in lines] == list(range(1, len(lines) + 1))
    assert all(event_id == str(data["seq"]) for data, event_id in lines)
    messages = [data["message"] for data, _ in lines]
    assert messages[0].startswith("claimed by worker test-worker (attempt 1)"), messages
    assert f"step {steps}/{steps} loss" in " ".join(messages)
    assert any(message.startswith("succeeded with 0 artifacts") for message in messages), messages


# --- logs --------------------------------------------------------------------------------------


def test_logs_and_stream_of_another_tenants_training_are_not_found(client, database, api_url):
    owner, other = make_tenant(database, name="owner"), make_tenant(database, name="other")
    training_id = submit(client, owner).json()["id"]
    assert_error(client.get(f"/v1/trainings/{training_id}/logs", headers=other.headers), 404, "not_found")
    assert_error(httpx.get(f"{api_url}/v1/trainings/{training_id}/stream", headers=other.headers), 404, "not_found")
    assert_error(httpx.get(f"{api_url}/v1/trainings/{training_id}/stream"), 401, "unauthorized")
    assert client.get(f"/v1/trainings/{training_id}/logs", headers=owner.headers).status_code == 200


def test_logs_refuse_bad_paging_naming_the_field(client, database):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    for params, field in (({"after": -1}, "after"), ({"limit": 0}, "limit"), ({"limit": 5000}, "limit")):
        error = assert_error(
            client.get(f"/v1/trainings/{training_id}/logs", params=params, headers=tenant.headers),
            422,
            "validation_error",
        )
        assert field in json.dumps(error), error


def test_log_volume_is_bounded_and_long_messages_are_cut(client, database, settings):
    small = settings.model_copy(update={"log_max_lines": 60, "log_message_max_chars": 40})
    tenant = make_tenant(database)
    training_id = uuid.UUID(submit(client, tenant).json()["id"])
    with unit_of_work(database.session_factory) as session:
        kept = logs.append(
            session,
            training_id=training_id,
            lines=[logs.progress_line(step, 100, 0.5, 1.0) for step in range(1, 101)],
            settings=small,
            progress=True,
        )
    assert len(kept) == 60 - logs.PROGRESS_RESERVE  # progress stops short, leaving room for notes
    with unit_of_work(database.session_factory) as session:
        notes = logs.append(session, training_id=training_id, lines=[logs.error("x" * 500)] * 100, settings=small)
    assert len(notes) == logs.PROGRESS_RESERVE
    page = client.get(
        f"/v1/trainings/{training_id}/logs", params={"after": 50, "limit": 100}, headers=tenant.headers
    ).json()
    assert [line["seq"] for line in page["data"]] == list(range(51, 61))
    assert all(len(line["message"]) == 40 and line["message"].endswith("…") for line in page["data"])


# --- the stream, with Redis --------------------------------------------------------------------


def test_stream_sends_snapshot_every_progress_event_logs_and_final_status_then_closes(
    client, database, settings, api_url
):
    tenant = make_tenant(database)
    training_id = submit(client, tenant, data={"steps": "5"}).json()["id"]
    driver = threading.Thread(target=drive, args=(settings, database, training_id), kwargs={"steps": 12})
    received = collect_stream(f"{api_url}/v1/trainings/{training_id}/stream", tenant.headers, on_first=driver.start)
    driver.join(timeout=30)
    check_stream(received, steps=12)
    full = received[0][1]
    final = client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()
    url = f"{api_url}/v1/trainings/{training_id}"  # the stream's own address: absolute links
    assert full == final | {
        "status": "queued",
        "queue_position": 1,
        "urls": {"get": url, "cancel": f"{url}/cancel", "stream": f"{url}/stream", "logs": f"{url}/logs"},
        "progress": full["progress"],
        "started_at": None,
        "finished_at": None,
        "attempts": 0,
        "init_used": None,
        "stop_reason": None,
        "usage": None,
    }

    # Resuming after log line 3 replays the lines after it, then the final status, and ends: a
    # client that closes on the final status has every line.
    with httpx.stream(
        "GET",
        f"{api_url}/v1/trainings/{training_id}/stream",
        headers=tenant.headers | {"Last-Event-ID": "3"},
        timeout=30,
    ) as response:
        resumed = list(read_events(response))
    assert resumed[-1][0] == "status" and resumed[-1][1]["status"] == "succeeded"
    total_lines = len([item for item in received if item[0] == "log"])
    assert [data["seq"] for event, data, _ in resumed[:-1]] == list(range(4, total_lines + 1))
    assert {event for event, _, _ in resumed[:-1]} == {"log"}


def test_stream_of_a_queued_training_sends_its_queue_position_as_it_moves(client, database, settings, api_url):
    tenant = make_tenant(database)
    ahead = submit(client, tenant).json()["id"]
    training_id = submit(client, tenant).json()["id"]

    def claim_the_one_ahead() -> None:
        time.sleep(0.3)
        with unit_of_work(database.session_factory) as session:
            assert lifecycle.claim(session, training_id=uuid.UUID(ahead), worker_id="w", settings=settings)

    def cancel_once_first() -> None:
        wait_for(lambda: any(event == "queue" for event, _, _ in received), timeout=20, message="a queue event")
        client.post(f"/v1/trainings/{training_id}/cancel", headers=tenant.headers)

    received: list = []
    canceler = threading.Thread(target=cancel_once_first)
    with httpx.stream(
        "GET", f"{api_url}/v1/trainings/{training_id}/stream", headers=tenant.headers, timeout=30
    ) as response:
        for item in read_events(response):
            received.append(item)
            if len(received) == 1:
                threading.Thread(target=claim_the_one_ahead).start()
                canceler.start()
    canceler.join(timeout=30)
    assert received[0][0] == "status" and received[0][1]["queue_position"] == 2, received[0]
    queue = [data for event, data, _ in received if event == "queue"]
    assert [item["queue_position"] for item in queue] == [1] and queue[0]["at"].endswith("Z")
    assert received[-1][0] == "status" and received[-1][1]["status"] == "canceled"


def test_stream_shows_a_requeue_even_when_a_worker_claims_it_again_at_once(client, database, settings):
    """Every state change reaches the stream as its transaction left it: here all of them are
    committed before the stream reads its events, so a stream that read the row again on each would
    show only the final state."""
    tenant = make_tenant(database)
    training_id = submit(client, tenant, data={"steps": "3"}).json()["id"]
    parsed = uuid.UUID(training_id)
    url = settings.resolved_events_redis_url
    assert url is not None
    links = ArtifactLinks(
        storage=make_storage(settings),
        ttl=timedelta(minutes=5),
        base_url="http://leap.test/",
        public_url="http://leap.test",
    )

    def transitions() -> None:
        with unit_of_work(database.session_factory) as session:
            assert lifecycle.claim(session, training_id=parsed, worker_id="w1", settings=settings)
        with unit_of_work(database.session_factory) as session:
            outcome = lifecycle.retry_or_fail(
                session, training_id=parsed, worker_id="w1", settings=settings, message="storage down"
            )
            assert outcome == "requeued"
        with unit_of_work(database.session_factory) as session:
            assert lifecycle.claim(session, training_id=parsed, worker_id="w2", settings=settings)
        with unit_of_work(database.session_factory) as session:
            usage = lifecycle.UsageRecord(steps=3, compute_seconds=1.0, device="cpu")
            assert lifecycle.complete(
                session,
                training_id=parsed,
                worker_id="w2",
                artifacts=[],
                usage=usage,
                settings=settings,
                init_used="token",
            )

    async def read() -> list[tuple[str, dict[str, Any]]]:
        hub = stream.RedisEventHub(url)
        events = stream.TrainingStream(
            hub=hub,
            session_factory=database.session_factory,
            training_id=parsed,
            links=links,
            keepalive_seconds=5,
        ).events()
        received = []
        try:
            async for text in events:
                if text.startswith("event: status"):
                    received.append(("status", json.loads(text.split("data: ", 1)[1])))
                    if len(received) == 1:
                        transitions()  # all committed (and published) before the stream reads on
        finally:
            await hub.stop()
        return received

    received = asyncio.run(asyncio.wait_for(read(), timeout=30))
    shown = [(data["status"], data["attempts"]) for _, data in received]
    assert shown == [("queued", 0), ("running", 1), ("queued", 1), ("running", 2), ("succeeded", 2)], shown
    requeued = received[2][1]
    assert (
        requeued["queue_position"] == 1
        and requeued["urls"]["stream"] == f"http://leap.test/v1/trainings/{training_id}/stream"
    )


def test_stream_of_a_finished_training_sends_its_status_and_closes(client, database, settings, api_url):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    assert client.post(f"/v1/trainings/{training_id}/cancel", headers=tenant.headers).status_code == 200
    with httpx.stream("GET", f"{api_url}/v1/trainings/{training_id}/stream", headers=tenant.headers, timeout=10) as r:
        events = list(read_events(r))
    assert [(event, data["status"]) for event, data, _ in events] == [("status", "canceled")]
    lines = client.get(f"/v1/trainings/{training_id}/logs", headers=tenant.headers).json()["data"]
    assert [line["message"] for line in lines] == ["canceled before it started"]


def test_client_stream_and_logs_helpers_and_leap_logs_follow(client, database, settings, api_url):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    driver = threading.Thread(target=drive, args=(settings, database, training_id), kwargs={"steps": 4})
    with LeapClient(api_url, tenant.key) as leap:
        events = []
        for event in leap.stream(training_id):
            events.append(event)
            if len(events) == 1:
                driver.start()
        driver.join(timeout=30)
        assert [event.data["step"] for event in events if event.event == "progress"] == [1, 2, 3, 4, 4]
        assert events[-1].event == "status" and events[-1].data["status"] == "succeeded"
        streamed = [event.data for event in events if event.event == "log"]
        assert [line.model_dump(mode="json") for line in leap.iter_logs(training_id, page_size=2)] == streamed
        assert leap.logs(training_id, after=len(streamed)).data == []

    env = settings_env(settings) | {"LEAP_URL": api_url, "LEAP_API_KEY": tenant.key}
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "logs", training_id, "--after", "1", "--follow"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [int(row[0]) for row in rows] == list(range(2, len(streamed) + 1))
    assert rows[-1][2] == "info" and rows[-1][3].startswith("succeeded with 0 artifacts")


# --- the stream on the embedded default (no Redis: the API polls the database) ----------------


def test_embedded_stream_polls_sqlite_and_receives_every_progress_write(tmp_path):
    settings = Settings(data_dir=tmp_path, stream_poll_interval=timedelta(seconds=0.1))
    assert settings.resolved_events_redis_url is None
    upgrade_database(settings)
    database = create_database(settings)
    api = ApiProcess(settings)
    try:
        tenant = make_tenant(database)
        with httpx.Client(base_url=api.url, headers=tenant.headers) as http:
            response = http.post("/v1/trainings", files=_images(), data={"steps": "5"})
            assert response.status_code == 202, response.text
            training_id = response.json()["id"]
        # Progress writes 0.3 s apart: more than the poll interval, as the worker's 2 s are.
        driver = threading.Thread(
            target=drive, args=(settings, database, training_id), kwargs={"steps": 6, "interval": 0.3}
        )
        received = collect_stream(f"{api.url}/v1/trainings/{training_id}/stream", tenant.headers, on_first=driver.start)
        driver.join(timeout=30)
    finally:
        api.stop()
        database.dispose()
    check_stream(received, steps=6, polled=True)


def _images():  # type: ignore[no-untyped-def]
    from .factories import image_files

    return image_files(2)


def test_a_cancel_reports_the_steps_it_bills(client, database, settings):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    training_id = submit(client, tenant, data={"steps": "100"}).json()["id"]
    parsed = uuid.UUID(training_id)
    with unit_of_work(database.session_factory) as session:
        assert lifecycle.claim(session, training_id=parsed, worker_id="w", settings=settings) is not None
    with unit_of_work(database.session_factory) as session:
        # The last heartbeat wrote step 50; the trainer stopped at step 51.
        progress = {"step": 50, "total": 100, "loss": 0.5, "eta_s": 3.0}
        lifecycle.renew_lease(session, training_id=parsed, worker_id="w", settings=settings, progress=progress)
    with unit_of_work(database.session_factory) as session:
        usage = lifecycle.UsageRecord(steps=51, compute_seconds=2.0, device="cpu")
        assert lifecycle.cancel(session, training_id=parsed, worker_id="w", settings=settings, usage=usage)
    body = client.get(f"/v1/trainings/{training_id}", headers=tenant.headers).json()
    assert body["status"] == "canceled"
    assert body["usage"]["steps"] == body["progress"]["step"] == 51


# --- a real worker (last: once started, it runs every training submitted after it) ---------


@pytest.fixture(scope="module")
def logging_worker(settings):  # type: ignore[no-untyped-def]
    # A progress line every 3 steps (and the first and the last), so a few steps give several lines.
    worker = WorkerProcess(
        settings.model_copy(update={"log_progress_steps": 3, "progress_interval": timedelta(seconds=0.05)}),
        queues=settings.queue,
    )
    yield worker
    worker.stop()


def test_real_training_logs_claim_progress_start_and_outcome_in_pages(client, database, settings, logging_worker):
    tenant = make_tenant(database)
    training_id = submit(client, tenant, data={"steps": "8", "mode": "pivotal"}).json()["id"]
    body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=120)
    assert body["status"] == "succeeded", (body, logging_worker.log()[-3000:])

    page = client.get(f"/v1/trainings/{training_id}/logs", headers=tenant.headers)
    assert page.status_code == 200, page.text
    lines = page.json()["data"]
    assert [line["seq"] for line in lines] == list(range(1, len(lines) + 1))
    assert page.json()["next_after"] == lines[-1]["seq"]
    messages = [line["message"] for line in lines]
    assert messages[0].startswith("claimed by worker ") and messages[0].endswith("(attempt 1)"), messages
    steps = [message.split(" loss ")[0] for message in messages if message.startswith("step ")]
    assert steps == ["step 1/8", "step 3/8", "step 6/8", "step 8/8"], messages
    assert any(message.startswith(f"started from {body['init_used']}") for message in messages), messages
    assert "stopped after 8 steps: the requested steps ran out" in messages, messages
    assert messages[-1].startswith(f"succeeded with {len(body['artifacts'])} artifacts in "), messages
    assert {line["level"] for line in lines} == {"info"}

    first = client.get(f"/v1/trainings/{training_id}/logs", params={"limit": 2}, headers=tenant.headers).json()
    assert [line["seq"] for line in first["data"]] == [1, 2] and first["next_after"] == 2
    second = client.get(
        f"/v1/trainings/{training_id}/logs", params={"after": first["next_after"], "limit": 2}, headers=tenant.headers
    ).json()
    assert [line["seq"] for line in second["data"]] == [3, 4]
    end = client.get(f"/v1/trainings/{training_id}/logs", params={"after": 10_000}, headers=tenant.headers).json()
    assert end == {"data": [], "next_after": 10_000}


def test_start_is_shown_while_running_and_usage_matches_progress_after_cancel(  # type: ignore[no-untyped-def]
    client, database, settings, logging_worker
):
    tenant = make_tenant(database)
    # 20,000 steps of leap-tiny take many minutes on a CPU: only a cancel ends it within the test.
    training_id = submit(client, tenant, data={"steps": "20000"}).json()["id"]
    running = wait_progress(client, tenant, training_id)
    # The guard decided before the first step: GET shows its choice while the training runs.
    assert running["status"] == "running"
    assert_init_reported(running["init_used"], running["init_note"])
    if running["init_used"] == "booster":
        assert running["init_scores"] and "token" in running["init_scores"]
    client.post(f"/v1/trainings/{training_id}/cancel", headers=tenant.headers)
    body = wait_status(client, tenant, training_id, {"canceled", "failed", "succeeded"}, timeout=20)
    assert body["status"] == "canceled"
    # Billed and reported alike.
    assert body["usage"]["steps"] == body["progress"]["step"] > 0
    assert body["init_used"] == running["init_used"]
    messages = [
        line["message"]
        for line in client.get(f"/v1/trainings/{training_id}/logs", headers=tenant.headers).json()["data"]
    ]
    assert sum(message.startswith(f"started from {running['init_used']}") for message in messages) == 1, messages
    assert messages[-1] == f"canceled while running after {body['usage']['steps']} steps", messages
    step_lines = [message for message in messages if message.startswith("step ")]
    assert step_lines[0].startswith("step 1/20000") and step_lines[-1].startswith(f"step {body['usage']['steps']}/")
