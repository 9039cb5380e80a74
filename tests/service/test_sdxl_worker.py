"""SDXL through the service: a tiny random-weight SDXL pipeline, saved to a folder and registered
(family sdxl), trained through the API on a real worker process; its images are checked against
the model's own minimum size."""

from __future__ import annotations

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from safetensors.torch import load

from app.main import create_app

from .factories import image_files, make_tenant, submit
from .helpers import stored_keys, wait_status
from .processes import WorkerProcess

TINY_SDXL = "tiny-sdxl"


@pytest.fixture(scope="module")
def sdxl_settings(settings, tmp_path_factory):  # type: ignore[no-untyped-def]
    from models.trainer.sdxl_random import build_tiny_sdxl

    folder = tmp_path_factory.mktemp("sdxl-models")
    pipeline = build_tiny_sdxl(folder / TINY_SDXL)
    entry = {
        "description": "A tiny random SDXL pipeline for the service tests.",
        "path": str(pipeline),
        "family": "sdxl",
        "resolution": 32,
        "preview_steps": 2,
        "defaults": {mode: {"max_steps": 20, "batch_size": 2} for mode in ("textual_inversion", "lora", "pivotal")},
    }
    registry = folder / "registry.yaml"
    registry.write_text(yaml.safe_dump({"default": TINY_SDXL, "models": {TINY_SDXL: entry}}))
    return settings.model_copy(update={"model_registry": registry})


@pytest.fixture(scope="module")
def sdxl_client(sdxl_settings):  # type: ignore[no-untyped-def]
    with TestClient(create_app(sdxl_settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def sdxl_worker(sdxl_settings):  # type: ignore[no-untyped-def]
    worker = WorkerProcess(sdxl_settings, queues=sdxl_settings.queue)
    yield worker
    worker.stop()


def test_sdxl_training_succeeds_in_a_real_worker_with_both_encoders_files(
    sdxl_client, database, sdxl_settings, sdxl_worker
):
    tenant = make_tenant(database)
    data = {"base_model": TINY_SDXL, "mode": "pivotal", "steps": "3", "lora_rank": "2", "train_text_encoder": "true"}
    response = submit(sdxl_client, tenant, data=data)
    assert response.status_code == 202, response.text
    training_id = response.json()["id"]
    body = wait_status(sdxl_client, tenant, training_id, {"succeeded", "failed"}, timeout=180)
    assert body["status"] == "succeeded", (body, sdxl_worker.log()[-4000:])
    assert body["progress"]["step"] == 3 and body["usage"]["steps"] == 3
    files = {artifact["name"]: artifact for artifact in body["artifacts"]}
    assert {"learned_embeds.safetensors", "pytorch_lora_weights.safetensors", "manifest.json"} <= set(files)
    assert any(artifact["kind"] == "preview_grid" for artifact in body["artifacts"])  # the files loaded in diffusers

    embedding = load(httpx.get(files["learned_embeds.safetensors"]["url"], timeout=30).raise_for_status().content)
    assert {key: tuple(value.shape) for key, value in embedding.items()} == {"clip_l": (1, 32), "clip_g": (1, 48)}
    webui = next(artifact for artifact in body["artifacts"] if artifact["kind"] == "webui")
    tensors = load(httpx.get(webui["url"], timeout=30).raise_for_status().content)
    prefixes = {key.split("_")[1] for key in tensors if key.startswith("lora_")}
    assert prefixes == {"unet", "te1", "te2"}

    listed = sdxl_client.get("/v1/models", headers=tenant.headers).json()
    (model,) = [m for m in listed["data"] if m["id"] == TINY_SDXL]
    assert (model["resolution"], model["family"], model["min_image_side"]) == (32, "sdxl", 16)


def test_images_below_the_models_minimum_side_are_refused_naming_the_file_and_nothing_is_stored(
    sdxl_client, database, sdxl_settings
):
    tenant = make_tenant(database)
    before = set(stored_keys(sdxl_settings))
    files = image_files(2) + image_files(1, size=(12, 40))  # tiny-sdxl trains at 32 px: 16 px at least
    files[-1] = ("images", ("small.png", files[-1][1][1], "image/png"))
    response = submit(sdxl_client, tenant, files=files, data={"base_model": TINY_SDXL, "steps": "2"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_images" and error["details"] == {"file": "small.png", "min_side": 16}
    assert "small.png: image is 12x40, below the 16 px" in error["message"]
    assert set(stored_keys(sdxl_settings)) == before
    assert (
        submit(
            sdxl_client,
            tenant,
            files=image_files(2, size=(16, 40)),
            data={"base_model": TINY_SDXL, "steps": "2", "previews": "false"},
        ).status_code
        == 202
    )
