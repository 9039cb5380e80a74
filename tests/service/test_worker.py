"""The training task in a real Celery worker process (Redis broker, Postgres, S3) running the real
trainer on leap-tiny: claim, lease, progress, cancel, duplicates and killed workers. Faults that
cannot be produced for real (GPU out of memory, a bug) are in test_worker_faults.py."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import sessionmaker

from app.db import unit_of_work
from app.outbox.service import bind_sender
from app.storage import make_storage
from app.trainings import lifecycle
from models.registry import load_registry
from workers.celery_app import create_celery, make_sender

from .factories import make_tenant, submit
from .helpers import (
    assert_error,
    assert_init_reported,
    pool_children,
    stored_keys,
    wait_for,
    wait_progress,
    wait_status,
)
from .processes import WorkerProcess


@pytest.fixture(scope="module")
def gpu_worker(settings):
    worker = WorkerProcess(settings, queues=settings.queue)
    yield worker
    worker.stop()


def test_training_succeeds_with_artifacts_usage_and_presigned_downloads(client, database, settings, gpu_worker):
    tenant = make_tenant(database)
    training_id = submit(client, tenant, data={"steps": "6", "mode": "pivotal"}).json()["id"]
    body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=120)
    assert body["status"] == "succeeded", (body, gpu_worker.log()[-3000:])
    assert body["attempts"] == 1
    assert body["init"] == "booster"
    assert_init_reported(body["init_used"], body["init_note"])
    assert body["progress"]["step"] == body["progress"]["total"] == 6
    assert body["usage"]["steps"] == 6 and body["usage"]["device"] == "cpu"
    assert body["usage"]["compute_seconds"] > 0
    assert body["error"] is None
    names = {artifact["name"]: artifact for artifact in body["artifacts"]}
    assert {"learned_embeds.safetensors", "pytorch_lora_weights.safetensors", "manifest.json"} <= set(names)
    assert {artifact["kind"] for artifact in body["artifacts"]} >= {"embedding", "lora", "manifest"}
    # The A1111/ComfyUI files carry the training's own name; the manifest names the model by its id.
    name = f"leap-{uuid.UUID(training_id).hex[:8]}"
    assert body["token"] == f"<{name}>"
    assert names[f"{name}.safetensors"]["kind"] == "webui_embedding"
    assert names[f"{name}_lora.safetensors"]["kind"] == "webui"
    manifest = httpx.get(names["manifest.json"]["url"]).text
    assert json.loads(manifest)["base_model"] == "leap-tiny" and json.loads(manifest)["name"] == name
    model_path = load_registry().get("leap-tiny").path  # type: ignore[union-attr]
    assert model_path not in manifest and str(Path(model_path).parent) not in manifest
    for artifact in body["artifacts"]:
        response = httpx.get(artifact["url"])
        assert response.status_code == 200
        assert hashlib.sha256(response.content).hexdigest() == artifact["sha256"]
        assert len(response.content) == artifact["bytes"]
        assert response.headers["content-disposition"].startswith("attachment;")
        assert artifact["name"] in response.headers["content-disposition"]
    artifact_keys = [key for key in stored_keys(settings) if "/artifacts/" in key]
    assert sorted(artifact_keys) == sorted(f"leap/trainings/{training_id}/artifacts/{name}" for name in names)


def test_duplicate_messages_run_a_training_once(client, database, settings, gpu_worker):
    tenant = make_tenant(database)
    training_id = submit(client, tenant, data={"steps": "10"}).json()["id"]
    send = make_sender(create_celery(settings))
    for _ in range(3):
        send("trainings.run", [training_id], settings.queue)
    body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=120)
    assert body["status"] == "succeeded" and body["attempts"] == 1
    wait_for(
        lambda: gpu_worker.log().count(f"training {training_id}: nothing to claim") == 3,
        timeout=15,
        message="the duplicates to be dropped",
    )


def test_cancel_running_training_stops_within_seconds(client, database, settings, gpu_worker):
    tenant = make_tenant(database)
    # 20,000 steps of leap-tiny take many minutes on a CPU: only a cancel ends it within the test.
    training_id = submit(client, tenant, data={"steps": "20000"}).json()["id"]
    running = wait_progress(client, tenant, training_id)
    assert running["progress"]["total"] == 20000 and running["progress"]["loss"] is not None
    assert running["progress"]["eta_s"] > 0

    asked = time.monotonic()
    response = client.post(f"/v1/trainings/{training_id}/cancel", headers=tenant.headers)
    assert response.status_code == 200 and response.json()["cancel_requested_at"] is not None
    body = wait_status(client, tenant, training_id, {"canceled", "failed", "succeeded"}, timeout=10)
    assert time.monotonic() - asked < 5
    assert body["status"] == "canceled" and body["error"]["code"] == "canceled"
    assert body["artifacts"] == []
    assert 0 < body["usage"]["steps"] < 20000
    assert not [key for key in stored_keys(settings) if "/artifacts/" in key]


def test_training_of_a_killed_worker_is_requeued_by_the_sweeper_and_finishes(client, database, settings, gpu_worker):
    tenant = make_tenant(database)
    training_id = submit(client, tenant, data={"steps": "150"}).json()["id"]
    wait_progress(client, tenant, training_id)
    for child in pool_children(gpu_worker.process.pid):
        os.kill(child, signal.SIGKILL)  # the process running the training dies without a word

    sweep_send = make_sender(create_celery(settings))
    storage = make_storage(settings)
    sessions = sessionmaker(database.engine, expire_on_commit=False)
    bind_sender(sessions, sweep_send)  # as in a worker: the requeue message is sent after commit

    def requeued():
        with unit_of_work(sessions) as session:
            report = lifecycle.sweep(session, settings=settings, storage=storage, send=sweep_send)
        return [str(item) for item in report.requeued] == [training_id]

    wait_for(
        requeued,
        timeout=settings.lease_duration.total_seconds() + 10,
        interval=0.5,
        message="the sweeper to requeue the expired lease",
    )
    body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=180)
    assert body["status"] == "succeeded" and body["attempts"] == 2, body
    assert body["usage"]["steps"] == 150


def test_unknown_and_malformed_ids_are_dropped(client, database, settings, gpu_worker):
    send = make_sender(create_celery(settings))
    send("trainings.run", ["not-an-id"], settings.queue)
    wait_for(lambda: "malformed id 'not-an-id'" in gpu_worker.log(), timeout=15, message="malformed id dropped")
    tenant = make_tenant(database)
    assert_error(client.get("/v1/trainings/not-an-id", headers=tenant.headers), 404, "not_found")
