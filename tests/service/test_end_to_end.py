"""The whole path with the real trainer: POST the bundled samples -> a Celery worker trains
leap-tiny for a few steps -> artifacts in S3 (moto) -> presigned downloads -> they load in diffusers."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import httpx
import pytest

from .factories import make_tenant
from .helpers import REPO_ROOT, wait_status
from .processes import WorkerProcess

SAMPLES = sorted((REPO_ROOT / "models" / "reference" / "samples").glob("*.png"))[:4]


@pytest.fixture(scope="module")
def real_worker(settings):  # type: ignore[no-untyped-def]
    worker = WorkerProcess(settings.model_copy(update={"trainer": "models.trainer.train:train"}), queues=settings.queue)
    yield worker
    worker.stop()


def _peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of the worker's pool processes."""
    peaks = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        status = Path(f"/proc/{child}/status").read_text()
        peaks.append(int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM"))) / 1024)
    return max(peaks)


def test_submitted_images_train_leap_tiny_and_the_artifacts_load_in_diffusers(
    client, database, settings, real_worker, tmp_path
):
    assert len(SAMPLES) >= 2, "bundled samples are missing"
    tenant = make_tenant(database)
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in SAMPLES]
    response = client.post("/v1/trainings", files=files, data={"steps": "4", "token": "<leap>"}, headers=tenant.headers)
    assert response.status_code == 202, response.text
    training_id = response.json()["id"]
    body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=240)
    assert body["status"] == "succeeded", (body, real_worker.log()[-3000:])
    assert body["usage"]["steps"] == 4 and body["usage"]["compute_seconds"] > 0
    assert body["init_used"]
    kinds = {artifact["kind"] for artifact in body["artifacts"]}
    assert {"embedding", "lora", "manifest"} <= kinds

    for artifact in body["artifacts"]:
        data = httpx.get(artifact["url"], timeout=30).raise_for_status().content
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"]
        (tmp_path / artifact["name"]).write_bytes(data)

    import torch

    from models.registry import load_registry
    from models.trainer.base_model import load_base
    from models.trainer.evaluate import pipeline_for

    entry = load_registry(settings.model_registry).get("leap-tiny")
    assert entry is not None
    pipeline = pipeline_for(load_base(entry.path, torch.device("cpu")))
    pipeline.load_textual_inversion(str(tmp_path / "learned_embeds.safetensors"), token="<leap>")
    pipeline.load_lora_weights(str(tmp_path), weight_name="pytorch_lora_weights.safetensors")
    image = pipeline(
        "a photo of <leap>",
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="pil",
    ).images[0]
    assert image.size == (entry.resolution, entry.resolution)
    assert _peak_rss_mb(real_worker.process.pid) < 2048


def test_a_default_job_stops_when_done_and_bills_the_steps_it_ran(client, database, settings, real_worker):
    from sqlalchemy import select

    from app.orm import UsageRecord, WebhookEvent

    tenant = make_tenant(database)
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in SAMPLES]
    data = {"mode": "textual_inversion", "init": "token", "max_steps": "150"}
    response = client.post("/v1/trainings", files=files, data=data, headers=tenant.headers)
    assert response.status_code == 202, response.text
    training_id = response.json()["id"]
    body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=240)
    assert body["status"] == "succeeded", (body, real_worker.log()[-3000:])
    steps = body["usage"]["steps"]
    assert body["stop_reason"] == "converged" and 0 < steps < 150 and body["progress"]["step"] == steps
    curve = body["eval_curve"]
    assert curve[0]["step"] == 0 and curve[-1]["step"] == steps and len(curve) >= 3
    manifest_url = next(a["url"] for a in body["artifacts"] if a["kind"] == "manifest")
    manifest = httpx.get(manifest_url, timeout=30).raise_for_status().json()
    assert manifest["steps"] == steps and manifest["stop_reason"] == "converged" and manifest["max_steps"] == 150
    assert [[p["step"], p["loss"]] for p in curve] == manifest["stopping"]["curve"]
    with database.session_factory() as session:
        record = session.scalars(select(UsageRecord).where(UsageRecord.training_id == uuid.UUID(training_id))).one()
        assert record.steps == steps  # billed what it ran, not the cap
        events = session.scalars(select(WebhookEvent).where(WebhookEvent.type == "training.succeeded")).all()
        event = next(e.payload["data"] for e in events if e.payload["data"]["id"] == training_id)
    assert event["stop_reason"] == "converged" and event["usage"]["steps"] == steps
    assert event["eval_curve"] == curve  # the webhook's data is the API's representation


def test_an_explicit_step_count_runs_exactly_and_the_guard_reports_its_scores(client, database, settings, real_worker):
    tenant = make_tenant(database)
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in SAMPLES]
    data = {"mode": "textual_inversion", "init": "booster", "steps": "7"}
    response = client.post("/v1/trainings", files=files, data=data, headers=tenant.headers)
    assert response.status_code == 202, response.text
    body = wait_status(client, tenant, response.json()["id"], {"succeeded", "failed"}, timeout=240)
    assert body["status"] == "succeeded", (body, real_worker.log()[-3000:])
    assert body["usage"]["steps"] == 7 and body["stop_reason"] == "steps" and body["eval_curve"] is None
    scores = body["init_scores"]
    assert {"token", "booster"} <= set(scores) and body["init_used"] in ("token", "booster")
    # The token starts unless a candidate beats it by the guard's margin: a booster start scored lower.
    assert body["init_used"] == "token" or min(scores.values()) < scores["token"]
    assert "guarded start" in body["init_note"]


def test_steps_and_max_steps_together_are_refused(client, database):
    tenant = make_tenant(database)
    files = [("images", (path.name, path.read_bytes(), "image/png")) for path in SAMPLES]
    response = client.post("/v1/trainings", files=files, data={"steps": "5", "max_steps": "50"}, headers=tenant.headers)
    assert response.status_code == 422 and "max_steps" in response.text
