"""Previews of image trainings in a real worker process (Redis, Postgres, moto S3) on leap-tiny:
artifacts rendered from the written files, listed in the API with presigned URLs and in the
webhook payload, in the manifest with their time, not billed, and off with previews=false."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import uuid
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from app.client.previews import open_file
from app.orm import UsageRecord, WebhookEvent
from app.usage import prices
from models.trainer.preview import LABEL_WIDTH, cell_size

from .factories import make_tenant, submit
from .helpers import REPO_ROOT, assert_error, settings_env, stored_keys, wait_for, wait_status
from .processes import WorkerProcess


@pytest.fixture(scope="module")
def gpu_worker(settings):  # type: ignore[no-untyped-def]
    worker = WorkerProcess(settings, queues=settings.queue)
    yield worker
    worker.stop()


def _succeeded_payload(database, training_id: str) -> dict:  # type: ignore[no-untyped-def]
    with database.session_factory() as session:
        rows = session.scalars(select(WebhookEvent).where(WebhookEvent.type == "training.succeeded"))
        (payload,) = [row.payload["data"] for row in rows if row.payload["data"]["id"] == training_id]
    return payload


def _png(url: str) -> tuple[bytes, Image.Image]:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200 and response.headers["content-disposition"].startswith("attachment;")
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return response.content, image


def test_image_training_previews_are_signed_artifacts_in_the_api_webhook_and_manifest_and_not_billed(
    client, database, settings, gpu_worker
):
    tenant = make_tenant(database)
    prompts = ["a photo of {token}", "{token} on a plain background", "a close-up picture of {token}"]
    response = submit(client, tenant, data={"steps": "4", "preview_prompts": json.dumps(prompts)})
    assert response.status_code == 202, response.text
    training_id = response.json()["id"]
    body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=120)
    assert body["status"] == "succeeded", (body, gpu_worker.log()[-3000:])
    token = body["token"]

    previews = body["previews"]
    assert previews["prompts"] == [prompt.replace("{token}", token) for prompt in prompts]
    assert previews["seeds"] == [0] and previews["steps"] == 6 and previews["seconds"] > 0
    by_name = {artifact["name"]: artifact for artifact in body["artifacts"]}
    assert by_name["preview.png"]["kind"] == "preview_grid"
    assert [by_name[f"preview-{i}.png"]["kind"] for i in (1, 2, 3)] == ["preview"] * 3
    assert [image["name"] for image in previews["images"]] == ["preview-1.png", "preview-2.png", "preview-3.png"]
    assert [image["prompt"] for image in previews["images"]] == previews["prompts"]

    # Signed like the other artifacts: the same presigned query, the same attachment download.
    signed = set(parse_qs(urlparse(by_name["learned_embeds.safetensors"]["url"]).query))
    assert "X-Amz-Signature" in signed
    cell, columns = cell_size(32), len(previews["seeds"])
    for image, size in [(previews["grid"], (LABEL_WIDTH + columns * cell, 2 * 3 * cell))] + [
        (item, (columns * cell, cell)) for item in previews["images"]
    ]:
        artifact = by_name[image["name"]]
        assert image["url"] == artifact["url"] and set(parse_qs(urlparse(image["url"]).query)) == signed
        data, picture = _png(image["url"])
        assert picture.format == "PNG" and picture.size == size
        assert hashlib.sha256(data).hexdigest() == artifact["sha256"] and len(data) == artifact["bytes"]
    assert sorted(key for key in stored_keys(settings) if "/artifacts/" in key) == sorted(
        f"leap/trainings/{training_id}/artifacts/{name}" for name in by_name
    )

    manifest = httpx.get(by_name["manifest.json"]["url"], timeout=30).json()
    assert manifest["previews"]["prompts"] == previews["prompts"]
    assert manifest["previews"]["seconds"] == previews["seconds"]
    assert {"preview.png", "preview-1.png", "preview-3.png"} <= set(manifest["files"])
    # Not billed: the usage is the training's own steps and compute time, without the previews'.
    assert body["usage"]["steps"] == 4
    assert body["usage"]["compute_seconds"] == pytest.approx(manifest["timings"]["total_seconds"], abs=0.01)
    with database.session_factory() as session:
        record = session.scalars(select(UsageRecord).where(UsageRecord.training_id == uuid.UUID(training_id))).one()
    assert record.steps == 4
    assert record.billable_units == prices.billable_units(
        settings.price_table,
        kind="image",
        mode="pivotal",
        base_model="leap-tiny",
        steps=4,
        images=3,
        examples=0,
        device_class="cpu",
    )

    # The webhook payload lists them as it lists the other artifacts (links are fetched fresh by GET).
    payload = _succeeded_payload(database, training_id)
    assert {artifact["name"] for artifact in payload["artifacts"]} == set(by_name)
    assert all(artifact["url"] is None for artifact in payload["artifacts"])
    assert payload["previews"]["prompts"] == previews["prompts"]
    assert payload["previews"]["grid"]["name"] == "preview.png" and payload["previews"]["grid"]["url"] is None


def test_previews_false_renders_none(client, database, settings, gpu_worker):
    tenant = make_tenant(database)
    training_id = submit(client, tenant, data={"steps": "2", "previews": "false"}).json()["id"]
    body = wait_status(client, tenant, training_id, {"succeeded", "failed"}, timeout=120)
    assert body["status"] == "succeeded", (body, gpu_worker.log()[-3000:])
    assert body["previews"] is None and body["parameters"]["previews"] is False
    assert not [a for a in body["artifacts"] if a["name"].startswith("preview")]
    manifest = httpx.get(next(a["url"] for a in body["artifacts"] if a["name"] == "manifest.json"), timeout=30).json()
    assert "previews" not in manifest and not [name for name in manifest["files"] if name.endswith(".png")]
    assert _succeeded_payload(database, training_id)["previews"] is None


@pytest.mark.parametrize(
    ("data", "mention"),
    [
        ({"preview_prompts": '["a photo of a cat"]'}, "{token}"),
        ({"preview_prompts": '["a photo of {token}"]', "previews": "false"}, "previews=false"),
        ({"preview_prompts": json.dumps(["{token}"] * 9)}, "preview_prompts"),
        ({"preview_prompts": '["a photo of {token}"'}, "JSON array"),
    ],
)
def test_bad_preview_prompts_are_refused_naming_the_field(client, database, settings, data, mention):
    tenant = make_tenant(database)
    response = submit(client, tenant, data=data)
    body = assert_error(response, 422, "validation_error", mention)
    assert "preview_prompts" in json.dumps(body)


def test_preview_prompts_one_per_line_and_the_token_itself(client, database, settings):
    tenant = make_tenant(database)
    response = submit(
        client, tenant, data={"token": "<kit>", "preview_prompts": "a photo of <kit>, smiling\n{token} at dusk\n"}
    )
    assert response.status_code == 202, response.text
    assert response.json()["parameters"]["preview_prompts"] == ["a photo of <kit>, smiling", "{token} at dusk"]
    models = client.get("/v1/models", headers=tenant.headers).json()["data"]
    assert next(m for m in models if m["id"] == "leap-tiny")["preview_prompts"] == [
        "a photo of {token}",
        "a close-up picture of {token}",
    ]


def test_leap_submit_prints_the_preview_and_opens_it_in_the_desktop_viewer(
    settings, api_url, database, gpu_worker, tmp_path
):
    images = tmp_path / "images"
    images.mkdir()
    for sample in sorted((REPO_ROOT / "models" / "reference" / "samples").glob("*.png"))[:3]:
        shutil.copy(sample, images / sample.name)
    # The desktop's viewer is the edge: a stand-in xdg-open that notes what it was asked to open.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    opened = tmp_path / "opened.txt"
    viewer = bin_dir / "xdg-open"
    viewer.write_text(f'#!/bin/sh\necho "$1" > {opened}\n')
    viewer.chmod(0o755)
    env = settings_env(settings) | {
        "LEAP_URL": api_url,
        "LEAP_API_KEY": make_tenant(database).key,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DISPLAY": ":0",
    }
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "submit", str(images), "--steps", "2", "--out", "out", "--open"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, (result.stderr, gpu_worker.log()[-3000:])
    assert "out/preview.png" in result.stdout.split()
    assert "preview: out/preview.png" in result.stderr and "opened preview.png" in result.stderr
    wait_for(opened.is_file, timeout=10, message="the viewer to be started")
    assert opened.read_text().strip() == "out/preview.png"
    with Image.open(tmp_path / "out" / "preview.png") as grid:
        assert grid.format == "PNG"


def test_open_says_so_where_there_is_no_viewer(monkeypatch, tmp_path):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert open_file(tmp_path / "preview.png") is False
