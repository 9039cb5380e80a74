"""POST /v1/trainings: validation before anything is stored, storage of inputs, outbox, idempotency."""

from __future__ import annotations

import zipfile
from typing import Any

import pytest
from sqlalchemy import select

from app.orm import OutboxMessage, Training

from .factories import (
    image_files,
    make_tenant,
    pixel_bomb_png,
    png_bytes,
    submit,
    zip_bytes,
)
from .helpers import assert_error, assert_nothing_stored, queued_messages, stored_keys


def test_valid_submission_is_accepted_stored_and_queued(client, database, settings):
    tenant = make_tenant(database)
    response = submit(
        client,
        tenant,
        files=image_files(3),
        data={
            "steps": "5",
            "mode": "lora",
            "lora_rank": "8",
            "metadata": '{"customer": "c-1"}',
            "webhook_url": "https://example.com/hook",
        },
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert response.headers["location"] == f"http://testserver/v1/trainings/{body['id']}"
    assert body["status"] == "queued"
    assert body["mode"] == "lora"
    assert body["parameters"] == {"steps": 5, "lora_rank": 8}
    assert body["metadata"] == {"customer": "c-1"}
    assert body["image_count"] == 3
    assert body["base_model"] == "leap-tiny"
    keys = stored_keys(settings)
    assert len(keys) == 3
    assert all(key.startswith(f"leap/trainings/{body['id']}/inputs/") for key in keys)
    assert queued_messages(settings) == 1
    with database.session_factory() as session:
        # The run message (the webhook_url also gets a training.queued delivery message).
        message = session.scalars(select(OutboxMessage).where(OutboxMessage.task == "trainings.run")).one()
        assert message.args == [body["id"]]
        assert message.dispatched_at is not None


def test_zip_of_images_is_accepted(client, database, settings):
    tenant = make_tenant(database)
    archive = zip_bytes(
        {
            "set/a.png": png_bytes(),
            "set/b.jpg": png_bytes(image_format="JPEG"),
            "__MACOSX/._a.png": b"junk",
            "set/.DS_Store": b"junk",
        }
    )
    response = submit(client, tenant, files=[("images", ("set.zip", archive, "application/zip"))])
    assert response.status_code == 202, response.text
    assert response.json()["image_count"] == 2
    assert len(stored_keys(settings)) == 2


def test_same_idempotency_key_returns_the_same_training(client, database, settings):
    tenant = make_tenant(database)
    files = image_files(2)
    first = submit(client, tenant, files=files, headers={"Idempotency-Key": "order-17"})
    second = submit(client, tenant, files=files, headers={"Idempotency-Key": "order-17"})
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    with database.session_factory() as session:
        assert len(session.scalars(select(Training)).all()) == 1
    assert queued_messages(settings) == 1
    assert len(stored_keys(settings)) == 2


def test_reused_idempotency_key_with_other_images_is_a_conflict(client, database):
    tenant = make_tenant(database)
    submit(client, tenant, files=image_files(2), headers={"Idempotency-Key": "k"})
    response = submit(client, tenant, files=image_files(3), headers={"Idempotency-Key": "k"})
    assert_error(response, 409, "idempotency_key_reused", "Idempotency-Key")


def test_idempotency_keys_are_per_tenant(client, database):
    first, second = make_tenant(database, name="a"), make_tenant(database, name="b")
    files = image_files(2)
    one = submit(client, first, files=files, headers={"Idempotency-Key": "same"})
    two = submit(client, second, files=files, headers={"Idempotency-Key": "same"})
    assert one.json()["id"] != two.json()["id"]


def _bomb_zip() -> bytes:
    return zip_bytes({"a.png": png_bytes(), "bomb.png": b"\x00" * 900_000})


def _truncated_png() -> bytes:
    data = png_bytes(size=(64, 64))
    return data[: len(data) // 2]


BAD_INPUTS: dict[str, tuple[Any, ...]] = {
    # A text part only: multipart, but no file in the images field.
    "no images": (lambda: [("steps", (None, "5"))], {}, 422, "invalid_images", "no images"),
    "one image": (lambda: image_files(1), {}, 422, "invalid_images", "need 2-50 images, got 1"),
    "too many images": (
        lambda: image_files(51, size=(8, 8)),
        {},
        422,
        "invalid_images",
        "need 2-50 images, got 51",
    ),
    "not an image": (
        lambda: image_files(1) + [("images", ("notes.txt", b"hello world", "text/plain"))],
        {},
        422,
        "invalid_images",
        "notes.txt",
    ),
    "truncated image": (
        lambda: image_files(1) + [("images", ("cut.png", _truncated_png(), "image/png"))],
        {},
        422,
        "invalid_images",
        "cut.png",
    ),
    "pixel bomb": (
        lambda: image_files(1) + [("images", ("bomb.png", pixel_bomb_png(), "image/png"))],
        {},
        422,
        "invalid_images",
        "bomb.png",
    ),
    "zip bomb": (
        lambda: [("images", ("set.zip", _bomb_zip(), "application/zip"))],
        {},
        422,
        "invalid_images",
        "compression ratio",
    ),
    "zip with too many entries": (
        lambda: [("images", ("set.zip", zip_bytes({f"{i}.png": b"x" for i in range(61)}), "application/zip"))],
        {},
        422,
        "invalid_images",
        "zip entries",
    ),
    "zip with a non-image": (
        lambda: [("images", ("set.zip", zip_bytes({"a.png": png_bytes(), "b.txt": b"text"}), "application/zip"))],
        {},
        422,
        "invalid_images",
        "b.txt",
    ),
    "corrupt zip": (
        lambda: [("images", ("set.zip", b"PK\x03\x04broken", "application/zip"))],
        {},
        422,
        "invalid_images",
        "set.zip",
    ),
    "zip among images": (
        lambda: image_files(2) + [("images", ("set.zip", zip_bytes({"a.png": png_bytes()}), "application/zip"))],
        {},
        422,
        "invalid_images",
        "single .zip",
    ),
    "oversized image": (
        lambda: image_files(1) + [("images", ("big.bmp", b"B" * (1024 * 1024 + 1), "image/bmp"))],
        {},
        413,
        "payload_too_large",
        "big.bmp",
    ),
    "oversized request": (
        lambda: [("images", (f"{i}.png", b"x" * 900_000, "image/png")) for i in range(4)],
        {},
        413,
        "payload_too_large",
        "limit",
    ),
    "steps out of range": (image_files, {"steps": "0"}, 422, "validation_error", "steps"),
    "steps not a number": (image_files, {"steps": "many"}, 422, "validation_error", "steps"),
    "unknown mode": (image_files, {"mode": "dreambooth"}, 422, "validation_error", "mode"),
    "bad token": (image_files, {"token": "leap"}, 422, "validation_error", "token"),
    "learning rate too high": (image_files, {"embedding_lr": "5"}, 422, "validation_error", "embedding_lr"),
    "lora rank too high": (image_files, {"lora_rank": "1000"}, 422, "validation_error", "lora_rank"),
    "unknown base model": (image_files, {"base_model": "sdxl"}, 422, "validation_error", "base_model"),
    "metadata not an object": (image_files, {"metadata": "[1, 2]"}, 422, "validation_error", "metadata"),
    "metadata not json": (image_files, {"metadata": "{oops"}, 422, "validation_error", "metadata"),
    "webhook not http": (
        image_files,
        {"webhook_url": "ftp://example.com/x"},
        422,
        "validation_error",
        "webhook_url",
    ),
    "unknown field": (image_files, {"stpes": "10"}, 422, "validation_error", "stpes"),
    "images as text": (
        lambda: image_files(2) + [("images", (None, "a.png"))],
        {},
        422,
        "invalid_images",
        "must be file parts",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_with_a_message_and_nothing_is_stored(client, database, settings, case):
    tenant = make_tenant(database)
    files, data, status, code, mention = BAD_INPUTS[case]
    response = submit(client, tenant, files=files(), data=data)
    assert_error(response, status, code, mention)
    assert_nothing_stored(database, settings)


def test_declared_oversized_body_is_refused_before_reading(client, database, settings):
    tenant = make_tenant(database)
    response = client.post(
        "/v1/trainings",
        content=b"x" * 10,
        headers=tenant.headers
        | {
            "Content-Type": "multipart/form-data; boundary=b",
            "Content-Length": str(settings.max_upload_bytes + 1),
        },
    )
    assert_error(response, 413, "payload_too_large", "limit")
    assert_nothing_stored(database, settings)


def test_other_media_types_are_refused_as_unsupported(client, database, settings):
    tenant = make_tenant(database)
    response = client.post("/v1/trainings", content=b"<images/>", headers=tenant.headers | {"content-type": "text/xml"})
    assert_error(response, 415, "unsupported_media_type", "multipart/form-data", "application/json")
    assert_nothing_stored(database, settings)


def test_encrypted_zip_entries_are_refused(client, database, settings):
    tenant = make_tenant(database)
    archive = bytearray(zip_bytes({"a.png": png_bytes(), "b.png": png_bytes()}, compression=zipfile.ZIP_STORED))
    # Set the "encrypted" flag bit in both the local and the central headers of the first entry.
    archive[6] |= 0x1
    central = archive.find(b"PK\x01\x02")
    archive[central + 8] |= 0x1
    response = submit(client, tenant, files=[("images", ("set.zip", bytes(archive), "application/zip"))])
    assert_error(response, 422, "invalid_images", "encrypted")
    assert_nothing_stored(database, settings)


def test_unauthenticated_submission_stores_nothing(client, database, settings):
    response = client.post("/v1/trainings", files=image_files(2))
    assert_error(response, 401, "unauthorized", "Authorization")
    assert_nothing_stored(database, settings)


def test_streamed_body_over_the_limit_is_cut_off(client, database, settings):
    tenant = make_tenant(database)
    boundary = "leapboundary"

    def body():  # chunked: no Content-Length to check up front
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        for _ in range(64):
            yield b"x" * 65536

    response = client.post(
        "/v1/trainings",
        content=body(),
        headers=tenant.headers | {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 413, "payload_too_large", "limit")
    assert_nothing_stored(database, settings)
