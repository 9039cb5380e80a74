"""LeapClient against a real API process over HTTP, with a real worker training leap-tiny."""

from __future__ import annotations

import hashlib
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import boto3
import httpx
import pytest

from app.client import ApiError, ChecksumMismatch, LeapClient, Unreachable, WaitTimeout
from app.client.client import retry_after_seconds

from .factories import make_tenant, png_bytes
from .helpers import BUCKET, REPO_ROOT, assert_init_reported, free_port, wait_for
from .processes import ApiProcess, WorkerProcess

SAMPLES = sorted((REPO_ROOT / "models" / "reference" / "samples").glob("*.png"))[:4]


@pytest.fixture(scope="module")
def worker(settings):  # type: ignore[no-untyped-def]
    worker = WorkerProcess(settings, queues=settings.queue)
    yield worker
    worker.stop()


@pytest.fixture
def leap(api_url, database):  # type: ignore[no-untyped-def]
    with LeapClient(api_url, make_tenant(database).key) as client:
        yield client


def test_submit_wait_and_download_give_verified_artifacts(leap, worker, tmp_path):
    updates: list[object] = []
    submitted = leap.submit(SAMPLES, steps=6, token="<leap>", metadata={"order": 17})
    assert submitted.status == "queued" and submitted.image_count == len(SAMPLES)
    assert submitted.metadata == {"order": 17} and submitted.parameters == {"steps": 6}

    training = leap.wait(submitted.id, timeout=120, on_update=updates.append)
    assert training.status == "succeeded", (training, worker.log()[-3000:])
    assert updates[-1] == training and len(updates) >= 2
    assert_init_reported(training.init_used, training.init_note)
    assert training.usage is not None and training.usage.steps == 6

    paths = leap.download(training, tmp_path / "out")
    assert sorted(path.name for path in paths) == sorted(artifact.name for artifact in training.artifacts)
    for path, artifact in zip(paths, training.artifacts, strict=True):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == artifact.sha256
    assert not list((tmp_path / "out").glob("*.part"))
    assert leap.wait(training.id).finished_at == training.finished_at  # a finished training returns at once


def test_list_pages_newest_first_and_filters_by_status(leap, worker):
    ids = [leap.submit(SAMPLES[:2], steps=1).id for _ in range(3)]
    first = leap.list_trainings(limit=2)
    assert [training.id for training in first.data] == ids[::-1][:2] and first.next_cursor
    assert [training.id for training in leap.iter_trainings(page_size=2)] == ids[::-1]
    for training_id in ids:
        leap.wait(training_id, timeout=120)
    assert {training.id for training in leap.iter_trainings(status="succeeded")} == set(ids)
    assert list(leap.iter_trainings(status="failed")) == []


def test_cancel_stops_a_running_training_and_wait_times_out_before(leap, worker):
    training = leap.submit(SAMPLES[:2], steps=20000)
    wait_for(lambda: leap.get(training.id).progress.step > 0, timeout=120, message="progress")
    with pytest.raises(WaitTimeout) as timed_out:
        leap.wait(training.id, timeout=0.5)
    assert timed_out.value.training.status == "running"

    assert leap.cancel(training.id).cancel_requested_at is not None
    canceled = leap.wait(training.id, timeout=30)
    assert canceled.status == "canceled" and canceled.error and canceled.error.code == "canceled"
    assert leap.cancel(training.id).status == "canceled"  # idempotent


def test_api_errors_are_typed(leap, api_url):
    with pytest.raises(ApiError) as missing:
        leap.get("3f1b0000-0000-4000-8000-000000000000")
    assert (missing.value.status_code, missing.value.code) == (404, "not_found")

    with pytest.raises(ApiError) as refused:
        leap.submit([("one.png", png_bytes())])
    assert refused.value.status_code == 422 and refused.value.code == "invalid_images"

    with LeapClient(api_url, "leap_live_nope_nope") as stranger, pytest.raises(ApiError) as unauthorized:
        stranger.list_trainings()
    assert (unauthorized.value.status_code, unauthorized.value.code) == (401, "unauthorized")


def test_resubmitting_with_an_idempotency_key_returns_the_same_training(leap):
    first = leap.submit(SAMPLES[:2], steps=1, idempotency_key="order-17")
    again = leap.submit(SAMPLES[:2], steps=1, idempotency_key="order-17")
    assert again.id == first.id


def test_rate_limited_requests_are_retried_after_the_servers_retry_after(settings, database):
    # A real API with a budget of 3 requests per 3 s window: a 4th request in a window gets 429 + Retry-After.
    # Windows are aligned to the clock, so 5 requests could split 2 + 3 across a boundary; 8 cannot (unless
    # they take over 3 s), whatever the machine's load.
    limited = ApiProcess(
        settings.model_copy(update={"rate_limit_requests": 3, "rate_limit_window": timedelta(seconds=3)})
    )
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        time.sleep(seconds)

    try:
        with LeapClient(limited.url, make_tenant(database).key, backoff=0.01, sleep=sleep) as client:
            started = time.monotonic()
            for _ in range(8):
                assert client.list_trainings().data == []
            assert slept and max(slept) >= 0.5, slept  # waited as told, not its own 10 ms backoff
            assert time.monotonic() - started >= max(slept)
        with LeapClient(limited.url, make_tenant(database, name="impatient").key, max_retries=0) as client:
            with pytest.raises(ApiError) as refused:
                for _ in range(5):
                    client.list_trainings()
            assert refused.value.status_code == 429
    finally:
        limited.stop()


def test_an_unreachable_server_raises_after_the_retries():
    slept: list[float] = []
    client = LeapClient(f"http://127.0.0.1:{free_port()}", "key", max_retries=2, sleep=slept.append)
    with client, pytest.raises(Unreachable, match="ConnectError"):
        client.get("anything")
    assert len(slept) == 2 and slept[1] > slept[0] * 0.9  # exponential backoff


def test_retry_after_is_read_as_seconds_or_an_http_date():
    def response(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value})

    assert retry_after_seconds(response("7")) == 7.0
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    assert 55 <= (retry_after_seconds(response(in_a_minute)) or 0) <= 60
    assert retry_after_seconds(response("soon")) is None
    assert retry_after_seconds(httpx.Response(503)) is None


def test_a_corrupted_artifact_fails_its_checksum_and_is_not_kept(leap, worker, settings, tmp_path):
    training = leap.wait(leap.submit(SAMPLES[:2], steps=2, mode="textual_inversion").id, timeout=120)
    assert training.status == "succeeded"
    artifact = next(item for item in training.artifacts if item.kind == "embedding")
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    key = f"leap/trainings/{training.id}/artifacts/{artifact.name}"
    s3.put_object(Bucket=BUCKET, Key=key, Body=b"x" * artifact.bytes)  # storage rot, same size
    with pytest.raises(ChecksumMismatch, match=artifact.name):
        leap.download(training.id, tmp_path)
    assert not (tmp_path / artifact.name).exists() and not list(tmp_path.glob("*.part"))


def test_submit_sends_a_webhook_events_filter_list_and_reads_the_new_fields(leap, api_url):
    training = leap.submit(
        SAMPLES[:2],
        steps=3,
        webhook_url="https://example.com/hook",
        webhook_events_filter=["training.succeeded", "training.failed"],
    )
    assert training.webhook_events_filter == ["training.succeeded", "training.failed"]
    assert training.object == "training" and training.progress.total == 3
    assert training.urls.get == f"{api_url}/v1/trainings/{training.id}" and training.urls.cancel is not None
    assert training.queue_position is not None and training.queue_position >= 1
    leap.cancel(training.id)
    canceled = leap.wait(training.id, timeout=60)  # at once if still queued; a worker may have claimed it
    assert canceled.status == "canceled" and canceled.queue_position is None
    assert canceled.urls.cancel is None and canceled.urls.stream is None
