"""Trainer options through the API (batch_size, lora_alpha, train_text_encoder, preset, captions,
priority): each validated with a 422 naming it, stored, and given to the trainer's config; a
tenant's queued trainings are claimed by priority, then age (real Postgres)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import update

from app.client.commands import ExitCode
from app.db import unit_of_work
from app.orm import Training
from app.trainings import jobs, lifecycle, repository
from models.registry import load_registry

from .factories import TEXT_MODEL, make_tenant, png_bytes, submit, text_files, zip_bytes
from .helpers import assert_error, settings_env, wait_status
from .processes import WorkerProcess

REGISTRY = load_registry()


def _row(database, training_id: str) -> Training:
    with database.session_factory() as session:
        training = session.get(Training, uuid.UUID(training_id))
        assert training is not None
        session.expunge(training)
        return training


def _png(index: int) -> bytes:
    return png_bytes(color=(index * 50 % 256, 90, 140))


def test_options_are_stored_and_reach_the_trainers_config(client, database):
    tenant = make_tenant(database)
    response = submit(
        client,
        tenant,
        data={
            "mode": "pivotal",
            "batch_size": "2",
            "lora_alpha": "8",
            "lora_text_encoder": "true",  # Replicate's and fal's name for train_text_encoder
            "preset": "person",
            "priority": "7",
        },
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["parameters"] == {"batch_size": 2, "lora_alpha": 8.0, "train_text_encoder": True, "preset": "person"}
    assert body["priority"] == 7 and body["caption_count"] == 0
    row = _row(database, body["id"])
    config = jobs.build_config(
        base_model=row.base_model,
        token=row.token,
        mode=row.mode,
        init=row.init,
        parameters=row.parameters,
        registry=REGISTRY,
    )
    assert (config.batch_size, config.lora_alpha, config.train_text_encoder_lora, config.preset) == (
        2,
        8.0,
        True,
        "person",
    )


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"batch_size": "0"}, "batch_size"),
        ({"batch_size": "65"}, "batch_size"),
        ({"lora_alpha": "0"}, "lora_alpha"),
        ({"lora_alpha": "2048"}, "lora_alpha"),
        ({"train_text_encoder": "maybe"}, "train_text_encoder"),
        ({"mode": "textual_inversion", "train_text_encoder": "true"}, "train_text_encoder"),
        ({"preset": "cartoon"}, "preset"),
        ({"priority": "101"}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"captions": "{not json"}, "captions"),
        ({"captions": '{"image-0.png": 3}'}, "captions"),
        ({"captions": '["one caption for three images"]'}, "captions"),
        ({"captions": '{"nope.png": "a [trigger]"}'}, "captions"),
    ],
)
def test_a_bad_option_is_a_422_naming_it(client, database, data, field):
    response = submit(client, make_tenant(database), data=data)
    error = assert_error(response, 422, "validation_error", field)
    assert error["details"]["field"] == field


@pytest.mark.parametrize("field", ["preset", "train_text_encoder", "captions"])
def test_image_only_options_are_refused_for_a_text_model(client, database, field):
    value = {"preset": "style", "train_text_encoder": "true", "captions": '["a"]'}[field]
    response = submit(client, make_tenant(database), files=text_files(), data={"base_model": TEXT_MODEL, field: value})
    error = assert_error(response, 422, "validation_error", field, "only for image models")
    assert error["details"]["field"] == field


def test_caption_files_beside_the_images_in_a_zip_are_stored_with_them(client, database):
    archive = zip_bytes(
        {
            "set/a.png": _png(1),
            "set/a.txt": b"a red [trigger] on grass\n",
            "set/b.png": _png(2),
            "set/c.png": _png(3),
            "set/notes.txt": b"not a caption",
            "a.txt": b"another folder's a.txt: not a caption of set/a.png",
        }
    )
    response = submit(
        client,
        make_tenant(database),
        files=[("images", ("set.zip", archive, "application/zip"))],
        data={"captions": json.dumps({"c.png": "TOK at night"})},  # by file name, beside the zip's
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["caption_count"] == 2 and body["image_count"] == 3
    assert body["skipped_files"] == ["set/notes.txt", "a.txt"]
    inputs = _row(database, body["id"]).inputs
    assert [(item["name"], item.get("caption")) for item in inputs] == [
        ("set/a.png", "a red [trigger] on grass"),
        ("set/b.png", None),
        ("set/c.png", "TOK at night"),
    ]


def test_caption_files_and_the_captions_field_with_uploaded_images(client, database):
    tenant = make_tenant(database)
    files = [
        ("images", ("a.png", _png(1), "image/png")),
        ("images", ("a.txt", b"[trigger] on a beach", "text/plain")),
        ("images", ("b.png", _png(2), "image/png")),
    ]
    response = submit(client, tenant, files=files)
    assert response.status_code == 202, response.text
    assert [item.get("caption") for item in _row(database, response.json()["id"]).inputs] == [
        "[trigger] on a beach",
        None,
    ]
    # An array in image order replaces the files' captions (null: none).
    response = submit(client, tenant, files=files, data={"captions": '["a photo of TOK", "TOK asleep"]'})
    assert response.status_code == 202, response.text
    assert [item.get("caption") for item in _row(database, response.json()["id"]).inputs] == [
        "a photo of TOK",
        "TOK asleep",
    ]
    # A caption file that names no image is refused, naming it.
    orphan = [*files, ("images", ("c.txt", b"no c.png", "text/plain"))]
    error = assert_error(submit(client, tenant, files=orphan), 422, "invalid_images", "c.txt")
    assert error["details"]["file"] == "c.txt"


_T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _queued(database, tenant_id: str, *, priority: int, minutes: int) -> uuid.UUID:
    """A queued training of the tenant, created `minutes` after a fixed time."""
    with unit_of_work(database.session_factory) as session:
        training_id = uuid.uuid4()
        repository.insert_training(
            session,
            {
                "id": training_id,
                "tenant_id": uuid.UUID(tenant_id),
                "status": "queued",
                "request_fingerprint": "test",
                "base_model": "leap-tiny",
                "kind": "image",
                "mode": "lora",
                "init": "token",
                "token": "<leap>",
                "parameters": {},
                "inputs": [],
                "image_count": 2,
                "progress_step": 0,
                "attempts": 0,
                "priority": priority,
                "created_at": _T0 + timedelta(minutes=minutes),
            },
        )
    return training_id


def test_a_tenants_queued_trainings_are_claimed_by_priority_then_age(database, settings):
    first, second = make_tenant(database, name="first"), make_tenant(database, name="second")
    low = _queued(database, first.tenant_id, priority=0, minutes=0)
    other = _queued(database, second.tenant_id, priority=0, minutes=1)
    urgent = _queued(database, first.tenant_id, priority=5, minutes=2)
    urgent_later = _queued(database, first.tenant_id, priority=5, minutes=3)
    lowest = _queued(database, first.tenant_id, priority=-1, minutes=4)
    arrival = [low, other, urgent, urgent_later, lowest]  # the run messages, oldest first

    # The queue positions say the claim order before any worker claims: the first tenant's trainings
    # take its places in the queue by priority, then age; the other tenant keeps its place.
    with database.session_factory() as session:
        trainings = [session.get(Training, training_id) for training_id in arrival]
        positions = repository.queue_positions(session, trainings)  # type: ignore[arg-type]
    assert [positions[t] for t in (urgent, other, urgent_later, low, lowest)] == [1, 2, 3, 4, 5]

    claimed = []
    for message in arrival:
        with unit_of_work(database.session_factory) as session:
            training = lifecycle.claim(session, training_id=message, worker_id="w", settings=settings)
            claimed.append(training.id if training else None)
    assert claimed == [urgent, other, urgent_later, low, lowest]

    # Every message was used once: a duplicate claims nothing.
    with unit_of_work(database.session_factory) as session:
        assert lifecycle.claim(session, training_id=low, worker_id="w", settings=settings) is None


def test_an_overtaken_training_is_claimed_by_the_tenants_next_message_in_age_order(database, settings):
    tenant = make_tenant(database)
    older = _queued(database, tenant.tenant_id, priority=0, minutes=0)
    younger = _queued(database, tenant.tenant_id, priority=0, minutes=1)
    urgent = _queued(database, tenant.tenant_id, priority=9, minutes=2)
    claimed = []
    for message in (older, younger, urgent):
        with unit_of_work(database.session_factory) as session:
            training = lifecycle.claim(session, training_id=message, worker_id="w", settings=settings)
            claimed.append(training.id if training else None)
    # older's message went to urgent; younger's message then claims older (same priority, older).
    assert claimed == [urgent, older, younger]


def test_a_requeued_training_is_claimed_by_its_new_message(database, settings):
    tenant = make_tenant(database)
    training_id = _queued(database, tenant.tenant_id, priority=0, minutes=0)
    with unit_of_work(database.session_factory) as session:
        assert lifecycle.claim(session, training_id=training_id, worker_id="w", settings=settings)
    with unit_of_work(database.session_factory) as session:
        session.execute(
            update(Training).where(Training.id == training_id).values(lease_expires_at=_T0)
        )  # its worker stopped renewing the lease
    with unit_of_work(database.session_factory) as session:
        assert repository.requeue_expired(session, now=_T0 + timedelta(days=1000), max_attempts=3) == [training_id]
    with unit_of_work(database.session_factory) as session:
        again = lifecycle.claim(session, training_id=training_id, worker_id="w2", settings=settings)
        assert again is not None and again.id == training_id and again.attempts == 2


def test_leap_submit_sends_the_options_and_caption_files(settings, api_url, database, tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    (folder / "a.png").write_bytes(_png(1))
    (folder / "a.txt").write_text("[trigger] on grass\n")
    (folder / "b.png").write_bytes(_png(2))
    (folder / "notes.txt").write_text("names no image: not sent")
    env = settings_env(settings) | {"LEAP_URL": api_url, "LEAP_API_KEY": make_tenant(database).key}

    def leap(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "app.cli", "submit", str(folder), "--no-wait", "--json", *args]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)

    options = ("--preset", "style", "--batch-size", "2", "--lora-alpha", "8", "--train-text-encoder")
    done = leap(*options, "--priority", "3", "--captions", '{"b.png": "TOK at night"}')
    assert done.returncode == 0, done.stderr
    training = json.loads(done.stdout)
    assert training["parameters"] == {"batch_size": 2, "lora_alpha": 8.0, "train_text_encoder": True, "preset": "style"}
    assert (training["priority"], training["caption_count"], training["image_count"]) == (3, 2, 2)
    for args, mention in (
        (("--preset", "cartoon"), "--preset: "),
        (("--mode", "textual_inversion", "--train-text-encoder"), "--train-text-encoder: "),
    ):
        refused = leap(*args)  # checked before anything is uploaded
        assert refused.returncode == ExitCode.USAGE and refused.stderr.startswith(
            f"error: validation_error: {mention}"
        ), refused.stderr


@pytest.fixture(scope="module")
def worker(settings):  # type: ignore[no-untyped-def]
    worker = WorkerProcess(settings, queues=settings.queue)
    yield worker
    worker.stop()


def test_a_real_worker_trains_with_the_options_and_the_captions(client, database, worker):
    tenant = make_tenant(database)
    archive = zip_bytes({"a.png": _png(1), "a.txt": b"[trigger] on grass", "b.png": _png(2)})
    data = {
        "steps": "2",
        "mode": "lora",
        "init": "token",
        "batch_size": "2",
        "lora_alpha": "8",
        "train_text_encoder": "true",
        "preset": "style",
        "previews": "false",
    }
    created = submit(client, tenant, files=[("images", ("set.zip", archive, "application/zip"))], data=data).json()
    body = wait_status(client, tenant, created["id"], {"succeeded", "failed"}, timeout=120)
    assert body["status"] == "succeeded", (body, worker.log()[-3000:])
    artifacts = {artifact["name"]: artifact for artifact in body["artifacts"]}
    manifest = httpx.get(artifacts["manifest.json"]["url"]).json()
    assert (manifest["num_captions"], manifest["preset"], manifest["batch_size"]) == (1, "style", 2)
    assert (manifest["lora_alpha"], manifest["train_text_encoder_lora"]) == (8.0, True)
    webui = next(artifact for artifact in body["artifacts"] if artifact["kind"] == "webui")
    header = httpx.get(webui["url"]).content
    assert b"lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight" in header
