"""The whole path with the real trainer: POST the bundled samples -> a Celery worker trains
leap-tiny for a few steps -> artifacts in S3 (moto) -> presigned downloads -> they load in diffusers."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from .conftest import REPO_ROOT, WorkerProcess
from .factories import make_tenant
from .test_worker import wait_status

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
    from models.trainer.base import load_base
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
