"""Bad input found by an outside audit: NUL characters, integer overflows, numbers as
dates, garbled signatures and bodies, invalid webhook hosts. Each gets a 4xx naming the field, and
nothing is stored."""

from __future__ import annotations

import hashlib
import io
import stat
import struct
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError

from app.db import unit_of_work
from app.main import create_app
from app.orm import Tenant, Training, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from app.orm.base import utcnow
from app.settings import Settings
from app.storage import make_storage
from app.validation import INT32_MAX
from app.webhooks import delivery as delivery_module
from app.webhooks import service as webhooks
from models.trainer.images import ImageSource, decode_image

from .factories import TEXT_MODEL, image_files, make_tenant, png_bytes, submit, zip_bytes
from .helpers import ADMIN, assert_error, assert_nothing_stored, count_rows, stored_keys
from .processes import ApiProcess

# 1. NUL characters: Postgres refuses them in text and JSON, so they must never reach it.


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"metadata": '{"a": "x\\u0000y"}'}, "metadata"),
        ({"metadata": '{"k\\u0000": 1}'}, "metadata"),
        ({"metadata": '{"a": [{"b": "\\u0000"}]}'}, "metadata"),
        ({"webhook_url": "https://example.com/a\x00b"}, "webhook_url"),
        ({"base_model": "leap\x00tiny"}, "base_model"),
    ],
)
def test_nul_in_a_training_field_is_a_422_naming_it(client, database, settings, data, field):
    tenant = make_tenant(database)
    error = assert_error(submit(client, tenant, data=data), 422, "validation_error", field, "NUL")
    assert error["details"]["field"] == field
    assert_nothing_stored(database, settings)


def multipart_body(parts: list[tuple[str, bytes, bytes]], boundary: str = "leapboundary") -> bytes:
    """A raw multipart body of (field, filename, data) file parts: httpx would percent-escape a NUL."""
    body = b""
    for name, filename, data in parts:
        body += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="'.encode()
            + filename
            + b'"\r\nContent-Type: image/png\r\n\r\n'
            + data
            + b"\r\n"
        )
    return body + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("filename", [b"con\x00trol.png", b"../../etc/passwd\x00.png"])
def test_nul_in_an_upload_filename_is_a_422(client, database, settings, filename):
    tenant = make_tenant(database)
    parts = [("images", b"a.png", png_bytes()), ("images", filename, png_bytes(color=(1, 2, 3)))]
    response = client.post(
        "/v1/trainings",
        content=multipart_body(parts),
        headers=tenant.headers | {"Content-Type": "multipart/form-data; boundary=leapboundary"},
    )
    error = assert_error(response, 422, "validation_error", "images", "NUL")
    assert error["details"]["field"] == "images"
    assert_nothing_stored(database, settings)


@pytest.mark.parametrize("filename", [b"con\x00trol.txt", b"../../etc/passwd\x00.jsonl"])
def test_nul_in_a_text_example_filename_is_a_422(client, database, settings, filename):
    tenant = make_tenant(database)
    base_model = f'--leapboundary\r\nContent-Disposition: form-data; name="base_model"\r\n\r\n{TEXT_MODEL}\r\n'
    parts = [("examples", b"a.txt", b"<leap> is here"), ("examples", filename, b"<leap> is there")]
    response = client.post(
        "/v1/trainings",
        content=base_model.encode() + multipart_body(parts),
        headers=tenant.headers | {"Content-Type": "multipart/form-data; boundary=leapboundary"},
    )
    error = assert_error(response, 422, "validation_error", "examples", "NUL")
    assert error["details"]["field"] == "examples"
    assert_nothing_stored(database, settings)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "https://example.com/hook", "description": "a\x00b"}, "description"),
        ({"url": "https://example.com/ho\x00ok"}, "url"),
    ],
)
def test_nul_in_a_webhook_endpoint_is_a_422(client, database, body, field):
    tenant = make_tenant(database)
    created = client.post("/v1/webhook-endpoints", json=body, headers=tenant.headers)
    assert_error(created, 422, "validation_error", field, "NUL")
    assert count_rows(database, WebhookEndpoint) == 0
    endpoint = client.post(
        "/v1/webhook-endpoints", json={"url": "https://example.com/hook"}, headers=tenant.headers
    ).json()
    patched = client.patch(f"/v1/webhook-endpoints/{endpoint['id']}", json=body, headers=tenant.headers)
    assert_error(patched, 422, "validation_error", field, "NUL")


def test_nul_in_admin_text_fields_is_a_422(client, database):
    created = client.post("/v1/admin/tenants", json={"name": "ac\x00me"}, headers=ADMIN)
    assert_error(created, 422, "validation_error", "name", "NUL")
    assert count_rows(database, Tenant) == 0
    tenant = client.post("/v1/admin/tenants", json={"name": "acme"}, headers=ADMIN).json()
    for path, body, field in [
        (f"/v1/admin/tenants/{tenant['id']}", {"stripe_customer_id": "cus\x00"}, "stripe_customer_id"),
        (f"/v1/admin/tenants/{tenant['id']}/keys", {"name": "k\x00"}, "name"),
    ]:
        method = client.patch if path.endswith(tenant["id"]) else client.post
        assert_error(method(path, json=body, headers=ADMIN), 422, "validation_error", field, "NUL")


# 2. A signature that is not ASCII is a wrong signature.


def test_non_ascii_download_signature_is_a_403(settings, tmp_path):
    local = settings.model_copy(update={"storage_url": f"file://{tmp_path}"})
    with TestClient(create_app(local)) as local_client:
        for signature in ("%C3%A9", "%E2%82%AC" * 30, "abc"):
            response = local_client.get(f"/v1/files/x?filename=a&expires=28531695582&signature={signature}")
            assert_error(response, 403, "link_invalid", "invalid")


# 3. Integers that do not fit their column, and booleans, are refused.


@pytest.mark.parametrize(
    "limits",
    [
        {"monthly_unit_limit": 9223372036854775808},
        {"monthly_unit_limit": 2**31},
        {"max_concurrent_trainings": 3000000000},
        {"monthly_unit_limit": False},
        {"max_concurrent_trainings": True},
        {"monthly_unit_limit": 1.5},
        {"monthly_unit_limit": "10"},
        {"monthly_unit_limit": -1},
    ],
)
def test_tenant_limits_out_of_column_range_or_not_integers_are_422(client, database, limits):
    (field,) = limits
    created = client.post("/v1/admin/tenants", json={"name": "acme", **limits}, headers=ADMIN)
    assert_error(created, 422, "validation_error", field)
    assert count_rows(database, Tenant) == 0
    tenant = client.post("/v1/admin/tenants", json={"name": "acme"}, headers=ADMIN).json()
    patched = client.patch(f"/v1/admin/tenants/{tenant['id']}", json=limits, headers=ADMIN)
    assert_error(patched, 422, "validation_error", field)
    assert client.get(f"/v1/admin/tenants/{tenant['id']}", headers=ADMIN).json()[field] is None


def test_largest_limits_the_columns_hold_are_stored(client):
    limits = {"monthly_unit_limit": 2**31 - 1, "max_concurrent_trainings": 2**31 - 1}
    created = client.post("/v1/admin/tenants", json={"name": "big", **limits}, headers=ADMIN)
    assert created.status_code == 201, created.text
    assert client.get(f"/v1/admin/tenants/{created.json()['id']}", headers=ADMIN).json() | limits == created.json()


def test_tenant_service_refuses_out_of_range_limits_for_the_cli_too(database):
    from app.errors import ValidationFailed
    from app.tenants import service as tenants

    with pytest.raises(ValidationFailed, match="monthly_unit_limit"), unit_of_work(database.session_factory) as session:
        tenants.create_tenant(session, name="cli", monthly_unit_limit=2**40)
    assert count_rows(database, Tenant) == 0


# 6. A JSON body that is not UTF-8 is a 422 naming the body, like one that is not JSON.


@pytest.mark.parametrize("content", [b"{bad", b'{"name": "\xff\xfe"}', b"\xc3\x28"])
def test_undecodable_json_body_is_a_422_naming_the_body(client, database, content):
    response = client.post("/v1/admin/tenants", content=content, headers=ADMIN | {"Content-Type": "application/json"})
    error = assert_error(response, 422, "validation_error", "body")
    assert error["details"]["field"] == "body"
    assert count_rows(database, Tenant) == 0


def test_text_part_over_the_part_limit_is_a_422_naming_the_field(client, database, settings):
    tenant = make_tenant(database)
    metadata = '{"a": "' + "x" * (settings.max_metadata_bytes + 2048) + '"}'
    response = submit(client, tenant, data={"metadata": metadata})
    error = assert_error(response, 422, "validation_error", "metadata", str(settings.max_metadata_bytes))
    assert error["details"]["field"] == "metadata"
    assert_nothing_stored(database, settings)


# 7. Webhook hosts are checked as IDNA at registration; a delivery that raises is a failed attempt.


@pytest.mark.parametrize(
    "url", ["http://é..audit.test:8815/", "http://a..b.example/", "https://" + "x" * 64 + ".example/"]
)
def test_invalid_webhook_host_names_are_refused_at_registration(client, database, settings, url):
    tenant = make_tenant(database)
    created = client.post("/v1/webhook-endpoints", json={"url": url}, headers=tenant.headers)
    assert_error(created, 422, "unsafe_url", "url", "host name")
    assert count_rows(database, WebhookEndpoint) == 0
    response = submit(client, tenant, data={"webhook_url": url})
    assert_error(response, 422, "unsafe_url", "url")
    assert_nothing_stored(database, settings)


def test_idn_host_names_that_encode_are_accepted(client, database):
    tenant = make_tenant(database)
    created = client.post("/v1/webhook-endpoints", json={"url": "https://bücher.example/h"}, headers=tenant.headers)
    assert created.status_code == 201, created.text


def test_a_delivery_whose_sending_raises_is_a_recorded_failed_attempt(database, settings):
    tenant = make_tenant(database)
    with unit_of_work(database.session_factory) as session:
        webhooks.emit(
            session,
            tenant_id=uuid.UUID(tenant.tenant_id),
            event_type="training.queued",
            data={},
            settings=settings,
            training_url="http://broken.example/hook",
        )
    with database.session_factory() as session:
        delivery_id = session.scalars(select(WebhookDelivery.id)).one()

    def resolver(host: str, port: int) -> list[str]:
        raise RuntimeError("resolver exploded")

    with unit_of_work(database.session_factory) as session:
        outcome = delivery_module.attempt(session, delivery_id=delivery_id, settings=settings, resolver=resolver)
    assert outcome == "retrying"
    with database.session_factory() as session:
        stored = session.get(WebhookDelivery, delivery_id)
        assert stored is not None and stored.attempt_count == 1 and stored.status == "pending"
        assert "resolver exploded" in (stored.last_error or "")
        attempts = session.scalars(select(WebhookAttempt).where(WebhookAttempt.delivery_id == delivery_id)).all()
        assert len(attempts) == 1 and not attempts[0].success


# 8. Usage periods blame the parameter the client sent; dates are never numbers.


def test_usage_with_only_an_old_start_names_start(client, database):
    tenant = make_tenant(database)
    response = client.get("/v1/usage", params={"start": "2000-01-01T00:00:00Z"}, headers=tenant.headers)
    error = assert_error(response, 422, "validation_error", "start:", "366 days", "send end")
    assert error["details"]["field"] == "start"
    assert "end:" not in error["message"].split(" (")[0]
    response = client.get("/v1/usage", params={"end": "2000-01-01T00:00:00Z"}, headers=tenant.headers)
    assert_error(response, 422, "validation_error", "end:")
    both = client.get(
        "/v1/usage", params={"start": "2000-01-01T00:00:00Z", "end": "2002-01-01T00:00:00Z"}, headers=tenant.headers
    )
    assert_error(both, 422, "validation_error", "end:", "366 days")


@pytest.mark.parametrize("value", [0, 1700000000, 1.5, True])
def test_billing_replay_refuses_numbers_as_dates(client, value):
    for field in ("start", "end"):
        response = client.post("/v1/admin/billing/replay", json={field: value}, headers=ADMIN)
        assert_error(response, 422, "validation_error", field, "ISO 8601")


def test_usage_queries_refuse_numbers_as_dates(client, database):
    tenant = make_tenant(database)
    response = client.get("/v1/usage", params={"end": "0"}, headers=tenant.headers)
    assert_error(response, 422, "validation_error", "end", "ISO 8601")
    export = client.get("/v1/admin/usage", params={"start": "0", "end": "2026-01-01T00:00:00Z"}, headers=ADMIN)
    assert_error(export, 422, "validation_error", "start", "ISO 8601")


# 4. Every stored input is a clean PNG re-encoded from the decoded pixels.


def png_chunks(data: bytes) -> list[bytes]:
    """Chunk types of a PNG, checking that nothing follows IEND."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, kinds = 8, []
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kinds.append(data[position + 4 : position + 8])
        position += 12 + length
        if kinds[-1] == b"IEND":
            break
    assert position == len(data), f"{len(data) - position} bytes after IEND"
    return kinds


def jpeg_with_exif() -> bytes:
    image = Image.new("RGB", (40, 24), (10, 200, 30))
    image.putpixel((0, 0), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees
    exif[0x010E] = "secret description"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    return buffer.getvalue()


def stored_inputs(database, settings, training_id: str) -> list[tuple[dict, bytes]]:  # type: ignore[no-untyped-def]
    storage = make_storage(settings)
    with database.session_factory() as session:
        training = session.get(Training, uuid.UUID(training_id))
        assert training is not None
        return [(item, storage.get_bytes(item["key"])) for item in training.inputs]


def test_stored_inputs_are_clean_png_copies_of_the_decoded_images(client, database, settings):
    tenant = make_tenant(database)
    polyglot = png_bytes() + zip_bytes({"payload.sh": b"#!/bin/sh\necho owned\n"})
    files = [
        ("images", ("polyglot.png", polyglot, "image/png")),
        ("images", ("photo.jpg", jpeg_with_exif(), "image/jpeg")),
    ]
    response = submit(client, tenant, files=files)
    assert response.status_code == 202, response.text
    stored = stored_inputs(database, settings, response.json()["id"])
    assert [item["name"] for item, _ in stored] == ["polyglot.png", "photo.jpg"]
    for (item, data), (_, (_, original, _)) in zip(stored, files, strict=True):
        assert item["key"].endswith(".png")
        assert set(png_chunks(data)) <= {b"IHDR", b"IDAT", b"IEND"}
        assert b"PK\x03\x04" not in data and b"secret description" not in data
        assert item["bytes"] == len(data) and item["sha256"] == hashlib.sha256(data).hexdigest()
        expected = decode_image(ImageSource(name="x", data=original))
        assert Image.open(io.BytesIO(data)).tobytes() == expected.tobytes()
    assert Image.open(io.BytesIO(stored[1][1])).size == (24, 40)  # EXIF orientation applied, then dropped


# 5. Zip entries that would escape or point elsewhere are refused; junk beside the images is skipped.


def symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a.png", png_bytes())
        archive.writestr("b.png", png_bytes(color=(1, 2, 3)))
        link = zipfile.ZipInfo("c.png")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def nul_named_zip(name: str) -> bytes:
    """A zip with an entry whose stored name holds a NUL (zipfile's writer would cut it)."""
    placeholder = name.replace("\x00", "#")
    data = zip_bytes({"a.png": png_bytes(), placeholder: png_bytes(color=(1, 2, 3))})
    return data.replace(placeholder.encode(), name.encode())


@pytest.mark.parametrize(
    ("archive", "entry", "reason"),
    [
        (lambda: nul_named_zip("b.png\x00.exe"), "b.png\x00.exe", "NUL"),
        (lambda: nul_named_zip("con\x00trol.png"), "con\x00trol.png", "NUL"),
        (lambda: zip_bytes({"a.png": png_bytes(), "/etc/b.png": png_bytes()}), "/etc/b.png", "absolute"),
        (lambda: zip_bytes({"a.png": png_bytes(), "../b.png": png_bytes()}), "../b.png", ".."),
        (lambda: zip_bytes({"a.png": png_bytes(), "x/../../b.png": png_bytes()}), "x/../../b.png", ".."),
        (lambda: zip_bytes({"a.png": png_bytes(), "x\\..\\b.png": png_bytes()}), "x\\..\\b.png", ".."),
        (lambda: zip_bytes({"a.png": png_bytes(), "../notes.txt": b"junk"}), "../notes.txt", ".."),
        (symlink_zip, "c.png", "symbolic link"),
    ],
)
def test_zip_entries_with_unsafe_paths_or_links_are_refused_by_name(client, database, settings, archive, entry, reason):
    tenant = make_tenant(database)
    response = submit(client, tenant, files=[("images", ("set.zip", archive(), "application/zip"))])
    error = assert_error(response, 422, "invalid_images", repr(entry), reason)
    assert error["details"]["file"] == entry
    assert_nothing_stored(database, settings)


def test_junk_beside_the_images_in_a_zip_is_skipped_and_listed(client, database, settings):
    tenant = make_tenant(database)
    archive = zip_bytes(
        {
            "set/a.png": png_bytes(),
            "set/notes.txt": b"shot on a phone",
            "set/b.jpg": png_bytes(image_format="JPEG"),
            "set/.DS_Store": b"\x00\x00\x00\x01Bud1",
            "set/Thumbs.db": b"\xd0\xcf\x11\xe0",
            "__MACOSX/set/._a.png": b"\x00\x05\x16\x07",
            "set/sub/": b"",
        }
    )
    response = submit(client, tenant, files=[("images", ("set.zip", archive, "application/zip"))])
    assert response.status_code == 202, response.text
    skipped = ["set/notes.txt", "set/.DS_Store", "set/Thumbs.db", "__MACOSX/set/._a.png"]
    assert response.json()["skipped_files"] == skipped
    assert response.json()["image_count"] == 2
    again = client.get(f"/v1/trainings/{response.json()['id']}", headers=tenant.headers).json()
    assert again["skipped_files"] == skipped
    assert len(stored_keys(settings)) == 2
    plain = submit(client, tenant)
    assert plain.json()["skipped_files"] == []


def test_a_zip_of_junk_only_says_what_it_skipped(client, database, settings):
    tenant = make_tenant(database)
    archive = zip_bytes({"a.png": png_bytes(), "readme.txt": b"hello"})
    response = submit(client, tenant, files=[("images", ("set.zip", archive, "application/zip"))])
    assert_error(response, 422, "invalid_images", "got 1", "readme.txt")
    assert_nothing_stored(database, settings)


# 12. The tenant's row is locked only after the images are stored; orphan inputs are cleaned up.


class LockProbe:
    """Storage that, at each write, asks another connection whether the tenant row is locked."""

    def __init__(self, storage, database, tenant_id: str) -> None:  # type: ignore[no-untyped-def]
        self.storage, self.database, self.tenant_id = storage, database, tenant_id
        self.locked_during_puts: list[bool] = []

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self.storage, name)

    def put_file(self, key: str, path, **kwargs) -> None:  # type: ignore[no-untyped-def]
        with self.database.engine.connect() as connection:
            try:
                connection.execute(
                    text("SELECT id FROM tenants WHERE id = :id FOR UPDATE NOWAIT"), {"id": self.tenant_id}
                )
                self.locked_during_puts.append(False)
            except OperationalError:
                self.locked_during_puts.append(True)
            connection.rollback()
        self.storage.put_file(key, path, **kwargs)


def test_tenant_row_is_not_locked_while_images_are_stored(database, settings):
    tenant = make_tenant(database)
    app = create_app(settings)
    probe = LockProbe(app.state.storage, database, tenant.tenant_id)
    app.state.storage = probe
    with TestClient(app) as probed:
        response = submit(probed, tenant, files=image_files(3))
    assert response.status_code == 202, response.text
    assert probe.locked_during_puts == [False, False, False]


def test_nothing_is_written_to_storage_unless_every_image_decodes(database, settings):
    tenant = make_tenant(database)
    app = create_app(settings)
    probe = LockProbe(app.state.storage, database, tenant.tenant_id)
    app.state.storage = probe
    whole = png_bytes(size=(64, 64))
    truncated = whole[: len(whole) // 2]
    with TestClient(app) as probed:
        files = image_files(3) + [("images", ("cut.png", truncated, "image/png"))]
        assert_error(submit(probed, tenant, files=files), 422, "invalid_images", "cut.png")
    assert probe.locked_during_puts == []  # not even stored and deleted again
    assert_nothing_stored(database, settings)


@pytest.mark.parametrize("backend", ["s3", "local"])
def test_sweeper_deletes_orphan_inputs_after_the_grace_only(client, database, settings, tmp_path, backend):
    from app.trainings import orphans

    tenant = make_tenant(database)
    if backend == "s3":
        storage = make_storage(settings)
        training_id = submit(client, tenant).json()["id"]
    else:
        storage = make_storage(settings.model_copy(update={"storage_url": f"file://{tmp_path}"}))
        training_id = submit(client, tenant).json()["id"]
        with database.session_factory() as session:
            training = session.get(Training, uuid.UUID(training_id))
            assert training is not None
            for item in training.inputs:
                storage.put_bytes(item["key"], b"kept")
    orphan = uuid.uuid4()
    for name in ("00-a.png", "01-b.png"):
        storage.put_bytes(f"trainings/{orphan}/inputs/{name}", b"left by a killed API")
    storage.put_bytes("trainings/not-a-uuid/inputs/x.png", b"not ours to judge")

    def keys() -> set[str]:
        return {item.key for item in storage.list_objects("trainings")}

    before = keys()
    with unit_of_work(database.session_factory) as session:
        assert orphans.purge_orphan_inputs(session, storage=storage, settings=settings) == []
    assert keys() == before  # younger than LEAP_ORPHAN_INPUT_GRACE: maybe a submission in progress
    later = utcnow() + settings.orphan_input_grace + timedelta(minutes=1)
    with unit_of_work(database.session_factory) as session:
        assert orphans.purge_orphan_inputs(session, storage=storage, settings=settings, now=later) == [orphan]
    assert keys() == {key for key in before if str(orphan) not in key}
    assert any(training_id in key for key in keys())


# 10. Uploads are spooled to disk and decoded one image at a time: memory stays flat and comes back.


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) / 1024


def noise_png(side: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


def test_concurrent_large_uploads_keep_api_memory_flat(database, settings):
    # A small-scale version of bench/upload_memory.py: 3 concurrent submissions of 4 x 12 MiB images
    # (144 MiB in all) may raise the API's RSS by one decoded image and buffers, not by what was sent.
    large = settings.model_copy(
        update={"max_upload_bytes": 64 * 1024 * 1024, "max_image_bytes": 16 * 1024 * 1024, "rate_limit_requests": 0}
    )
    tenant = make_tenant(database)
    with database.session_factory.begin() as session:
        session.get(Tenant, uuid.UUID(tenant.tenant_id)).max_concurrent_trainings = 100  # type: ignore[union-attr]
    images = [noise_png(2000, seed) for seed in range(4)]  # 12 MB each, incompressible
    files = [("images", (f"{index}.png", data, "image/png")) for index, data in enumerate(images)]
    api = ApiProcess(large)
    try:
        with httpx.Client(base_url=api.url, headers=tenant.headers, timeout=300) as http:
            assert http.get("/v1/trainings").status_code == 200
        baseline = rss_mib(api.process.pid)
        peak = baseline
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.wait(0.05):
                peak = max(peak, rss_mib(api.process.pid))

        def post(_: int) -> int:
            with httpx.Client(base_url=api.url, headers=tenant.headers, timeout=300) as http:
                return http.post("/v1/trainings", files=files).status_code

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with ThreadPoolExecutor(3) as pool:
            statuses = list(pool.map(post, range(3)))
        done.set()
        sampler.join()
        time.sleep(2)
        after = rss_mib(api.process.pid)
    finally:
        api.stop()
    assert statuses == [202, 202, 202]
    sent = 3 * sum(len(data) for data in images) / 1024 / 1024
    assert peak - baseline < 80, f"RSS {baseline:.0f} -> {peak:.0f} MiB for {sent:.0f} MiB sent"
    assert after - baseline < 25, f"RSS {baseline:.0f} -> {after:.0f} MiB after the uploads"


def test_orphan_inputs_of_a_killed_submission_go_within_minutes_by_default(database, settings, tmp_path):
    from app.trainings import orphans

    assert Settings().orphan_input_grace <= timedelta(minutes=10)
    storage = make_storage(settings.model_copy(update={"storage_url": f"file://{tmp_path}"}))
    orphan = uuid.uuid4()
    storage.put_bytes(f"trainings/{orphan}/inputs/00-a.png", b"left by a killed API")
    later = utcnow() + timedelta(minutes=15)
    defaults = settings.model_copy(update={"orphan_input_grace": Settings().orphan_input_grace})
    with unit_of_work(database.session_factory) as session:
        assert orphans.purge_orphan_inputs(session, storage=storage, settings=defaults, now=later) == [orphan]


@pytest.mark.parametrize("after", [INT32_MAX + 1, 2**63, 10**30])
def test_log_cursor_past_the_column_range_is_a_422_naming_it(client, database, after):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    response = client.get(f"/v1/trainings/{training_id}/logs", params={"after": after}, headers=tenant.headers)
    error = assert_error(response, 422, "validation_error", "after")
    assert error["details"]["field"] == "after" or "after" in str(error["details"])
    largest = client.get(f"/v1/trainings/{training_id}/logs", params={"after": INT32_MAX}, headers=tenant.headers)
    assert largest.status_code == 200 and largest.json()["data"] == []


def test_last_event_id_past_the_column_range_is_a_422_naming_it(client, database):
    tenant = make_tenant(database)
    training_id = submit(client, tenant).json()["id"]
    headers = tenant.headers | {"Last-Event-ID": str(INT32_MAX + 1)}
    assert_error(
        client.get(f"/v1/trainings/{training_id}/stream", headers=headers), 422, "validation_error", "Last-Event-ID"
    )
