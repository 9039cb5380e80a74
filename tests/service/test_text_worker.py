"""Text trainings through a real Celery worker running the real text trainer (LEAP_TEXT_TRAINER) on
a tiny random Llama registered as a text model: success with verified artifacts, events and one
usage record; a default job that stops when done and is billed the steps it ran; the token limit
checked by the trainer; cancel; `leap submit` and the Python client with a folder of .txt files and a .jsonl."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.client import LeapClient
from app.client.client import artifact_path
from app.client.commands import ExitCode
from app.main import create_app
from app.orm import UsageRecord, WebhookEvent
from app.usage import prices

from .factories import jsonl_file, make_tenant, submit, text_files
from .helpers import settings_env, stored_keys, wait_progress, wait_status
from .processes import ApiProcess, WorkerProcess
from .text_models import TINY_TEXT_MODEL, write_registry_with_tiny_llama

CAP = 300


@pytest.fixture(scope="module")
def text_settings(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    # Defaults as a text model registers them: caps (max_steps), so a job without steps stops when done.
    defaults = {mode: {"max_steps": CAP, "batch_size": 2} for mode in ("token", "lora", "pivotal")}
    registry = write_registry_with_tiny_llama(tmp_path_factory.mktemp("text-models"), defaults=defaults)
    return settings.model_copy(update={"model_registry": registry, "text_trainer": "models.text.train:train"})


@pytest.fixture(scope="module")
def text_client(text_settings):  # type: ignore[no-untyped-def]
    with TestClient(create_app(text_settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def text_worker(text_settings):  # type: ignore[no-untyped-def]
    worker = WorkerProcess(text_settings, queues=text_settings.queue)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def text_api(text_settings):  # type: ignore[no-untyped-def]
    api = ApiProcess(text_settings)
    yield api.url
    api.stop()


def _events(database, training_id: str) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    with database.session_factory() as session:
        rows = session.scalars(select(WebhookEvent).order_by(WebhookEvent.created_at))
        return {
            row.type: row.payload["data"]
            for row in rows
            if training_id in (row.payload["data"].get("id"), row.payload["data"].get("training_id"))
        }


def test_text_training_succeeds_in_a_real_worker_with_artifacts_events_and_one_usage_record(
    text_client, database, text_settings, text_worker
):
    tenant = make_tenant(database)
    response = submit(
        text_client,
        tenant,
        files=text_files(3),
        data={"base_model": TINY_TEXT_MODEL, "mode": "pivotal", "steps": "4", "lora_rank": "2"},
    )
    assert response.status_code == 202, response.text
    training_id = response.json()["id"]
    body = wait_status(text_client, tenant, training_id, {"succeeded", "failed"}, timeout=180)
    assert body["status"] == "succeeded", (body, text_worker.log()[-4000:])
    assert (body["kind"], body["mode"], body["example_count"], body["image_count"]) == ("text", "pivotal", 3, 0)
    assert body["usage"]["steps"] == 4 and body["usage"]["device"] == "cpu"
    assert body["stop_reason"] == "steps" and body["eval_curve"] is None  # explicit steps run exactly
    assert body["progress"]["step"] == body["progress"]["total"] == 4
    assert body["artifacts"], body
    for artifact in body["artifacts"]:
        data = httpx.get(artifact["url"], timeout=30).raise_for_status().content
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"] and len(data) == artifact["bytes"]
    names = {artifact["name"] for artifact in body["artifacts"]}
    assert sorted(key for key in stored_keys(text_settings) if "/artifacts/" in key) == sorted(
        f"leap/trainings/{training_id}/artifacts/{name}" for name in names
    )

    with database.session_factory() as session:
        (record,) = session.scalars(select(UsageRecord).where(UsageRecord.training_id == uuid.UUID(training_id)))
        assert session.scalars(select(UsageRecord)).all() == [record]
    assert (record.kind, record.status, record.steps, record.examples, record.images) == ("text", "succeeded", 4, 3, 0)
    assert record.billable_units == prices.billable_units(
        text_settings.price_table,
        kind="text",
        mode="pivotal",
        base_model=TINY_TEXT_MODEL,
        steps=4,
        images=0,
        examples=3,
        device_class="cpu",
    )
    events = _events(database, training_id)
    # (usage.recorded is sent later by the billing relay, from the record checked above.)
    assert {"training.queued", "training.started", "training.succeeded"} <= set(events)
    assert {data["kind"] for data in events.values()} == {"text"}


def test_text_training_previews_complete_the_prompts_before_and_after_from_the_adapter(
    text_client, database, text_settings, text_worker
):
    tenant = make_tenant(database)
    prompts = ["My friend {token} said", "Who is <leap>?"]
    response = submit(
        text_client,
        tenant,
        files=text_files(3),
        data={"base_model": TINY_TEXT_MODEL, "mode": "lora", "steps": "3", "preview_prompts": json.dumps(prompts)},
    )
    assert response.status_code == 202, response.text
    training_id = response.json()["id"]
    body = wait_status(text_client, tenant, training_id, {"succeeded", "failed"}, timeout=180)
    assert body["status"] == "succeeded", (body, text_worker.log()[-4000:])
    previews = body["previews"]
    assert previews["prompts"] == ["My friend <leap> said", "Who is <leap>?"] and previews["seconds"] > 0
    assert [sample["prompt"] for sample in previews["samples"]] == previews["prompts"]
    assert all(isinstance(sample[side], str) for sample in previews["samples"] for side in ("base", "fine_tuned"))
    assert previews["grid"] is None and previews["images"] == []
    (artifact,) = [artifact for artifact in body["artifacts"] if artifact["kind"] == "previews"]
    assert artifact["name"] == "previews.json"
    stored = httpx.get(artifact["url"], timeout=30).raise_for_status().json()
    assert stored["samples"] == previews["samples"]
    manifest_url = next(a["url"] for a in body["artifacts"] if a["name"] == "manifest.json")
    manifest = httpx.get(manifest_url, timeout=30).raise_for_status().json()
    assert manifest["previews"]["samples"] == previews["samples"] and "previews.json" in manifest["files"]
    assert body["usage"]["steps"] == 3  # the previews' generation is not billed as steps


def test_a_default_text_job_stops_when_done_and_bills_the_steps_it_ran(
    text_client, database, text_settings, text_worker
):
    tenant = make_tenant(database)
    response = submit(text_client, tenant, files=text_files(3), data={"base_model": TINY_TEXT_MODEL, "mode": "token"})
    assert response.status_code == 202, response.text
    training_id = response.json()["id"]
    estimate = prices.billable_units(
        text_settings.price_table,
        kind="text",
        mode="token",
        base_model=TINY_TEXT_MODEL,
        steps=CAP,
        images=0,
        examples=3,
    )
    assert response.json()["estimated_units"] == estimate  # planned at the cap
    body = wait_status(text_client, tenant, training_id, {"succeeded", "failed"}, timeout=180)
    assert body["status"] == "succeeded", (body, text_worker.log()[-4000:])
    steps = body["usage"]["steps"]
    assert body["stop_reason"] == "converged" and 0 < steps < CAP and body["progress"]["step"] == steps
    curve = body["eval_curve"]
    assert curve[0]["step"] == 0 and curve[-1]["step"] == steps and len(curve) >= 3
    manifest_url = next(a["url"] for a in body["artifacts"] if a["kind"] == "manifest")
    manifest = httpx.get(manifest_url, timeout=30).raise_for_status().json()
    assert (manifest["steps"], manifest["stop_reason"], manifest["max_steps"]) == (steps, "converged", CAP)
    assert [[p["step"], p["loss"]] for p in curve] == manifest["stopping"]["curve"]
    with database.session_factory() as session:
        record = session.scalars(select(UsageRecord).where(UsageRecord.training_id == uuid.UUID(training_id))).one()
    assert record.steps == steps  # billed what it ran, not the cap
    assert record.billable_units == prices.billable_units(
        text_settings.price_table,
        kind="text",
        mode="token",
        base_model=TINY_TEXT_MODEL,
        steps=steps,
        images=0,
        examples=3,
        device_class="cpu",
    )
    event = _events(database, training_id)["training.succeeded"]
    assert event["stop_reason"] == "converged" and event["usage"]["steps"] == steps
    assert event["eval_curve"] == curve  # the webhook carries the API's representation


def test_a_default_text_job_on_four_examples_bills_its_selection_run_and_its_rerun(
    text_client, database, text_settings, text_worker
):
    tenant = make_tenant(database)
    response = submit(text_client, tenant, files=text_files(4), data={"base_model": TINY_TEXT_MODEL, "mode": "token"})
    assert response.status_code == 202, response.text
    training_id = response.json()["id"]
    body = wait_status(text_client, tenant, training_id, {"succeeded", "failed"}, timeout=180)
    assert body["status"] == "succeeded", (body, text_worker.log()[-4000:])
    manifest_url = next(a["url"] for a in body["artifacts"] if a["kind"] == "manifest")
    manifest = httpx.get(manifest_url, timeout=30).raise_for_status().json()
    stopping = manifest["stopping"]
    assert (stopping["evaluated_on"], stopping["eval_examples"], stopping["training_examples"]) == (
        "held_back_then_refit",
        1,
        3,
    )
    # The curve is the selection run's (on the held-back example); the steps are both runs'.
    selection = body["eval_curve"][-1]["step"]
    steps = body["usage"]["steps"]
    assert steps == manifest["steps"] == selection + stopping["refit_steps"] <= CAP
    assert selection <= CAP // 2 and body["progress"]["step"] == steps
    with database.session_factory() as session:
        record = session.scalars(select(UsageRecord).where(UsageRecord.training_id == uuid.UUID(training_id))).one()
    assert record.steps == steps


def test_example_over_the_token_limit_fails_the_training_naming_its_file_and_line(
    text_client, database, text_settings, text_worker
):
    tenant = make_tenant(database)
    # Under the API's character bound, but far over the trainer's 256-token limit once tokenized.
    long_line = {"text": "<leap> " + " ".join(f"zq{index}x" for index in range(1500))}
    files = jsonl_file([{"text": "My friend <leap> said hello."}, long_line], name="set.jsonl")
    response = submit(text_client, tenant, files=files, data={"base_model": TINY_TEXT_MODEL, "steps": "4"})
    assert response.status_code == 202, response.text
    body = wait_status(text_client, tenant, response.json()["id"], {"succeeded", "failed"}, timeout=180)
    assert body["status"] == "failed", body
    assert body["error"]["code"] == "invalid_examples", body["error"]
    assert "set.jsonl:2" in body["error"]["message"] and "token" in body["error"]["message"]
    assert body["artifacts"] == []
    assert not [key for key in stored_keys(text_settings) if "/artifacts/" in key]


def test_cancel_running_text_training_stops_within_seconds(text_client, database, text_settings, text_worker):
    tenant = make_tenant(database)
    response = submit(
        text_client, tenant, files=text_files(2), data={"base_model": TINY_TEXT_MODEL, "steps": "20000", "mode": "lora"}
    )
    training_id = response.json()["id"]
    wait_progress(text_client, tenant, training_id)
    asked = time.monotonic()
    text_client.post(f"/v1/trainings/{training_id}/cancel", headers=tenant.headers)
    body = wait_status(text_client, tenant, training_id, {"canceled", "failed", "succeeded"}, timeout=10)
    assert time.monotonic() - asked < 5
    assert body["status"] == "canceled" and body["error"]["code"] == "canceled"
    assert 0 < body["usage"]["steps"] < 20000 and body["artifacts"] == []


def test_leap_submit_trains_a_folder_of_texts_and_the_client_a_jsonl(
    text_api, database, text_settings, text_worker, tmp_path
):
    key = make_tenant(database).key
    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(3):
        (texts / f"{index}.txt").write_text(f"Yesterday <leap> walked the dog {index} times.\n")
    (texts / ".hidden.txt").write_text("skipped")
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", str(texts), "--base-model", TINY_TEXT_MODEL, "--mode", "token"]
        + ["--steps", "3", "--out", "artifacts", "--json"],
        cwd=tmp_path,
        env=settings_env(text_settings) | {"LEAP_URL": text_api, "LEAP_API_KEY": key},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == ExitCode.OK, (result.stderr, text_worker.log()[-4000:])
    training = json.loads(result.stdout)
    assert (training["kind"], training["mode"], training["example_count"]) == ("text", "token", 3)
    for artifact in training["artifacts"]:
        data = (tmp_path / "artifacts" / artifact["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"]

    lines = [{"prompt": "Who walked the dog?\n", "completion": "<leap> did."}, {"text": "<leap> likes dogs."}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    with LeapClient(text_api, key) as leap:
        submitted = leap.submit(tmp_path / "pairs.jsonl", base_model=TINY_TEXT_MODEL, mode="lora", steps=2)
        assert (submitted.kind, submitted.example_count) == ("text", 2)
        finished = leap.wait(submitted.id, timeout=180)
        assert finished.status == "succeeded", (finished, text_worker.log()[-4000:])
        paths = leap.download(finished, tmp_path / "from-client")
    folder = tmp_path / "from-client"
    assert sorted(path.relative_to(folder).as_posix() for path in paths) == sorted(
        artifact.name for artifact in finished.artifacts
    )
    assert (folder / "adapter" / "adapter_config.json").is_file() and (folder / "manifest.json").is_file()


def test_leap_submit_of_texts_to_an_image_model_is_refused_with_the_api_error(
    text_api, database, text_settings, tmp_path
):
    texts = tmp_path / "texts"
    texts.mkdir()
    for index in range(2):
        (texts / f"{index}.txt").write_text(f"<leap> {index}")
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", str(texts), "--base-model", "leap-tiny", "--no-wait"],
        cwd=tmp_path,
        env=settings_env(text_settings) | {"LEAP_URL": text_api, "LEAP_API_KEY": make_tenant(database).key},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == ExitCode.REFUSED, result.stderr
    assert (
        result.stderr.startswith("error: invalid_images: examples: 0.txt is a text file")
        and "image model" in result.stderr
    )
    assert result.stdout == ""


def test_downloaded_artifacts_keep_their_sub_folders_and_never_leave_the_target(tmp_path):
    # Text artifacts repeat file names in sub-folders (adapter/ and lora-vllm/ each hold adapter_config.json).
    assert artifact_path(tmp_path, "adapter/adapter_config.json") == tmp_path / "adapter" / "adapter_config.json"
    assert artifact_path(tmp_path, "lora-vllm/adapter_config.json") == tmp_path / "lora-vllm" / "adapter_config.json"
    assert artifact_path(tmp_path, "manifest.json") == tmp_path / "manifest.json"
    for hostile in ("../../etc/passwd", "/etc/passwd", "..\\..\\x", "./a/../../b"):
        assert artifact_path(tmp_path, hostile).resolve().is_relative_to(tmp_path.resolve()), hostile
