"""`leap submit | status | list | cancel | download` as a script runs them: a real `leap` process
against a real API process and a real worker; stdout, stderr and exit codes are the contract."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid

import pytest

from app.client.commands import ExitCode

from .factories import make_tenant, png_bytes
from .helpers import REPO_ROOT, assert_init_reported, settings_env, wait_for
from .processes import WorkerProcess
from .receivers import Reply

SAMPLES = sorted((REPO_ROOT / "models" / "reference" / "samples").glob("*.png"))[:3]


@pytest.fixture(scope="module")
def worker(settings):  # type: ignore[no-untyped-def]
    worker = WorkerProcess(settings, queues=settings.queue)
    yield worker
    worker.stop()


@pytest.fixture
def leap(settings, api_url, database, tmp_path):  # type: ignore[no-untyped-def]
    """Runs `leap ARGS` with LEAP_URL and LEAP_API_KEY set, in tmp_path."""
    env = settings_env(settings) | {"LEAP_URL": api_url, "LEAP_API_KEY": make_tenant(database).key}

    def run(*args: str, **env_overrides: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "app.cli", *args],
            cwd=tmp_path,
            env=env | env_overrides,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return run


@pytest.fixture
def images(tmp_path):  # type: ignore[no-untyped-def]
    folder = tmp_path / "images"
    folder.mkdir()
    for sample in SAMPLES:
        shutil.copy(sample, folder / sample.name)
    (folder / "notes.txt").write_text("not an image; skipped")
    return folder


def test_submit_follows_downloads_and_verifies(leap, images, worker, tmp_path):
    result = leap("submit", str(images), "--steps", "4", "--out", "artifacts")
    assert result.returncode == ExitCode.OK, (result.stderr, worker.log()[-3000:])
    training_id, *paths = result.stdout.split()
    assert "sha256 ok" in result.stderr and "succeeded" in result.stderr

    status = json.loads(leap("status", training_id, "--json").stdout)
    assert status["status"] == "succeeded" and status["image_count"] == len(SAMPLES)
    assert_init_reported(status["init_used"], status["init_note"])
    by_name = {artifact["name"]: artifact for artifact in status["artifacts"]}
    assert sorted(paths) == sorted(f"artifacts/{name}" for name in by_name)
    for path in paths:
        data = (tmp_path / path).read_bytes()
        assert hashlib.sha256(data).hexdigest() == by_name[path.split("/")[-1]]["sha256"]

    described = leap("status", training_id).stdout
    assert f"id         {training_id}" in described and "status     succeeded" in described

    listed = leap("list").stdout.splitlines()
    assert listed[0].split("\t")[:2] == [training_id, "succeeded"]

    again = leap("download", training_id, "--out", "again")
    assert again.returncode == ExitCode.OK, again.stderr
    assert sorted(again.stdout.split()) == sorted(f"again/{name}" for name in by_name)


def test_cancel_ends_a_running_training_and_download_then_refuses(leap, images, worker):
    submitted = leap("submit", str(images), "--steps", "20000", "--no-wait")
    assert submitted.returncode == ExitCode.OK, submitted.stderr
    training_id = submitted.stdout.strip()

    def running() -> bool:
        status = json.loads(leap("status", training_id, "--json").stdout)
        return status["status"] == "running" and status["progress"]["step"] > 0

    wait_for(running, timeout=120, interval=0.5, message="the training to run")
    canceled = leap("cancel", training_id, "--wait", "--timeout", "30")
    assert canceled.returncode == ExitCode.OK and canceled.stdout.strip() == "canceled", canceled.stderr

    refused = leap("download", training_id)
    assert refused.returncode == ExitCode.TRAINING_UNSUCCESSFUL
    assert refused.stderr.startswith(f"error: canceled: training {training_id} canceled")
    assert leap("list", "--status", "canceled").stdout.startswith(training_id)


def test_exit_codes_and_errors_scripts_can_rely_on(leap, tmp_path):
    unknown = leap("status", "3f1b0000-0000-4000-8000-000000000000")
    assert unknown.returncode == ExitCode.NOT_FOUND and unknown.stderr.startswith("error: not_found: ")
    assert unknown.stdout == ""

    bad_key = leap("list", LEAP_API_KEY="leap_live_nope_nope")
    assert bad_key.returncode == ExitCode.REFUSED and bad_key.stderr.startswith("error: unauthorized: ")

    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes(png_bytes())
    too_few = leap("submit", str(one))
    assert too_few.returncode == ExitCode.REFUSED and too_few.stderr.startswith("error: invalid_images: ")

    empty = tmp_path / "empty"
    empty.mkdir()
    no_images = leap("submit", str(empty))
    assert no_images.returncode == ExitCode.USAGE and "error: no_images: " in no_images.stderr

    bad_metadata = leap("submit", str(one), "--metadata", "[1]")
    assert bad_metadata.returncode == ExitCode.USAGE and "error: invalid_metadata: " in bad_metadata.stderr

    no_key = leap("list", LEAP_API_KEY="", LEAP_DATA_DIR=str(tmp_path / "nowhere"))
    assert no_key.returncode == ExitCode.USAGE and "error: no_api_key: " in no_key.stderr


def test_bad_options_are_usage_errors_naming_the_option(leap, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes(png_bytes())
    hook = ("--webhook-url", "https://example.com/hook")
    for args, mention in (
        (("--steps", "0"), "--steps: "),
        (("--mode", "sideways"), "--mode: "),
        ((*hook, "--webhook-events-filter", "training.started,completed"), "--webhook-events-filter: unknown event"),
        (("--webhook-events-filter", "training.succeeded"), "--webhook-events-filter: only together with webhook_url"),
    ):
        result = leap("submit", str(one), *args)  # checked before anything is uploaded
        assert result.returncode == ExitCode.USAGE, (args, result.stderr)
        assert result.stderr.startswith(f"error: validation_error: {mention}"), result.stderr
    # Rules only the server knows (its models, its step limit) come back as a 422 naming the field: usage too.
    unknown_model = leap("submit", str(one), "--base-model", "nope")
    assert unknown_model.returncode == ExitCode.USAGE and "base_model: unknown model 'nope'" in unknown_model.stderr
    bad_status = leap("list", "--status", "done")
    assert bad_status.returncode == ExitCode.USAGE and bad_status.stderr.startswith("error: validation_error: status")
    not_a_number = leap("submit", str(one), "--steps", "many")  # typer's own check
    assert not_a_number.returncode == ExitCode.USAGE


def test_a_file_that_is_not_an_image_is_named_in_the_error(leap, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes())
    (folder / "holiday.png").write_text("these are my holiday notes, not a picture")
    result = leap("submit", str(folder))
    assert result.returncode == ExitCode.REFUSED, result.stderr
    assert result.stderr.startswith("error: invalid_images: holiday.png: not an image"), result.stderr
    assert "object at 0x" not in result.stderr


def test_submit_shows_the_planned_total_from_the_start(leap, images, api_url):
    result = leap("submit", str(images), "--steps", "20000", "--timeout", "3")
    assert result.returncode == ExitCode.TIMEOUT, result.stderr
    training_id = result.stdout.strip()
    assert "/20000 steps" in result.stderr and "None" not in result.stderr, result.stderr
    status = json.loads(leap("status", training_id, "--json").stdout)
    assert status["progress"]["total"] == 20000 and status["urls"]["get"] == f"{api_url}/v1/trainings/{training_id}"
    assert leap("cancel", training_id, "--wait", "--timeout", "60").stdout.strip() == "canceled"


def test_a_busy_server_is_waited_for_out_loud_then_given_up_on_with_its_message(leap, receiver):  # type: ignore[no-untyped-def]
    body = {"error": {"code": "rate_limited", "message": "over 600 requests per 60s", "details": {}}}
    receiver.default = Reply(429, json.dumps(body).encode(), {"Retry-After": "1", "content-type": "application/json"})
    result = leap("status", str(uuid.uuid4()), LEAP_URL=receiver.url, LEAP_MAX_RETRIES="2")
    assert result.returncode == ExitCode.UNREACHABLE, result.stderr
    waits = [line for line in result.stderr.splitlines() if line.startswith("waiting: ")]
    assert len(waits) == 2, result.stderr
    assert "429 rate_limited: over 600 requests per 60s" in waits[0]
    assert "as Retry-After asks (1s)" in waits[0] and "(retry 1 of 2)" in waits[0] and "(retry 2 of 2)" in waits[1]
    assert result.stderr.strip().splitlines()[-1] == (
        "error: rate_limited: over 600 requests per 60s (gave up after 2 retries)"
    )
    assert len(receiver.requests) == 3
