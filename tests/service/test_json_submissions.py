"""Submissions as application/json through a real API process (inputs by URL or as base64 data
URIs, the same checks and limits as multipart), and the absolute links every client and webhook
receiver gets without LEAP_PUBLIC_URL (from the request, or a trusted proxy's X-Forwarded-*)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from app.settings import Settings

from .factories import TEXT_MODEL, make_tenant, png_bytes, zip_bytes
from .helpers import assert_error, assert_nothing_stored, outbox_relay, stored_keys, wait_until
from .processes import ApiProcess, WorkerProcess
from .receivers import Receiver, Reply


@pytest.fixture(scope="module")
def json_settings(settings: Settings) -> Settings:
    """Input URLs and webhooks to 127.0.0.1 allowed; no LEAP_PUBLIC_URL; 127.0.0.1 a trusted proxy."""
    assert settings.public_url is None
    return settings.model_copy(
        update={
            "input_url_allowed_networks": ["127.0.0.1/32"],
            "webhook_allowed_networks": ["127.0.0.1/32"],
            "webhook_retry_schedule": [timedelta(seconds=0.2)] * 3,
            "trusted_proxies": ["127.0.0.1/32"],
            "max_json_body_bytes": 200_000,
        }
    )


@pytest.fixture(scope="module")
def api_process(json_settings: Settings) -> Iterator[ApiProcess]:
    api = ApiProcess(json_settings)
    yield api
    api.stop()


@pytest.fixture(scope="module")
def files_server() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


def post_json(api: ApiProcess, tenant, body: object, **headers: str) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(f"{api.url}/v1/trainings", json=body, headers=tenant.headers | headers, timeout=30)


def test_json_with_an_images_url_is_accepted(api_process, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.on("/set.zip", Reply(body=zip_bytes({"a.png": png_bytes(), "b.png": png_bytes(color=(0, 99, 0))})))
    body = {"images_url": f"{files_server.url}/set.zip", "steps": 5, "mode": "lora", "metadata": {"order": 7}}
    response = post_json(api_process, tenant, body)
    assert response.status_code == 202, response.text
    training = response.json()
    assert training["image_count"] == 2 and training["parameters"]["steps"] == 5
    assert training["metadata"] == {"order": 7} and training["input_urls"] == [f"{files_server.url}/set.zip"]
    # No LEAP_PUBLIC_URL: the links are absolute, on the address the request was sent to.
    assert response.headers["location"] == f"{api_process.url}/v1/trainings/{training['id']}"
    assert training["urls"]["stream"] == f"{api_process.url}/v1/trainings/{training['id']}/stream"


def test_json_with_base64_images_is_checked_like_an_upload(api_process, database, settings):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    images = [data_uri(png_bytes()), data_uri(png_bytes(color=(9, 9, 200)), "image/jpeg")]
    response = post_json(api_process, tenant, {"images": images, "steps": 3, "webhook_events_filter": None})
    assert response.status_code == 202, response.text
    assert response.json()["image_count"] == 2
    assert len(stored_keys(settings)) == 2


@pytest.mark.parametrize(
    ("body", "status", "code", "field", "mention"),
    [
        ({"images": [data_uri(png_bytes())]}, 422, "invalid_images", "images", "need 2-50 images, got 1"),
        ({"images": ["data:image/png;base64,@@@"] * 2}, 422, "validation_error", "images", "invalid base64"),
        ({"images": ["https://example.com/a.png"] * 2}, 422, "validation_error", "images", "data URI"),
        ({"images": "data:image/png;base64,AAAA"}, 422, "validation_error", "images", "array"),
        ({"images_url": 7}, 422, "validation_error", "images_url", "URL"),
        ({"images": [data_uri(png_bytes())] * 2, "steps": "many"}, 422, "validation_error", "steps", "integer"),
        ({"images": [data_uri(png_bytes())] * 2, "steps": 2.5}, 422, "validation_error", "steps", "steps"),
        ({"images": [data_uri(png_bytes())] * 2, "colour": "red"}, 422, "validation_error", "colour", "colour"),
        ({"images": [data_uri(b"not a picture")] * 2}, 422, "invalid_images", "images", "image-0"),
        ({"images": [data_uri(b"x" * 160_000)] * 2}, 413, "payload_too_large", None, "limit"),
        (["not", "an", "object"], 422, "validation_error", "body", "JSON object"),
    ],
    ids=[
        "one image",
        "bad base64",
        "url in images",
        "images not a list",
        "url not text",
        "steps not a number",
        "steps a fraction",
        "unknown field",
        "not an image",
        "over the json limit",
        "not an object",
    ],
)
def test_json_refusals_name_the_field_and_store_nothing(  # type: ignore[no-untyped-def]
    api_process, database, settings, body, status, code, field, mention
):
    tenant = make_tenant(database)
    error = assert_error(post_json(api_process, tenant, body), status, code, mention)
    if field is not None:
        assert error["details"].get("field") == field or error["details"].get("file", "").startswith(field[:5])
    assert_nothing_stored(database, settings)


def test_json_that_does_not_parse_is_a_422_naming_the_body(api_process, database):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    response = httpx.post(
        f"{api_process.url}/v1/trainings",
        content=b'{"images_url": ',
        headers=tenant.headers | {"content-type": "application/json"},
    )
    assert assert_error(response, 422, "validation_error", "body")["details"]["field"] == "body"


def test_json_text_examples_as_data_uris(api_process, database):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    examples = [data_uri(f"<leap> example {index}".encode(), "text/plain") for index in range(3)]
    response = post_json(api_process, tenant, {"base_model": TEXT_MODEL, "examples": examples, "steps": 2})
    assert response.status_code == 202, response.text
    assert response.json()["example_count"] == 3


@pytest.fixture(scope="module")
def delivery_worker(json_settings: Settings) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(json_settings, queues=json_settings.maintenance_queue)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def webhook_receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


def test_webhooks_carry_absolute_urls_without_a_public_url(  # type: ignore[no-untyped-def]
    api_process, json_settings, database, delivery_worker, webhook_receiver
):
    tenant = make_tenant(database)
    images = [data_uri(png_bytes()), data_uri(png_bytes(color=(0, 0, 250)))]
    # Through a trusted proxy (127.0.0.1 in this test's settings): its forwarded address is the one to use.
    forwarded = {"x-forwarded-proto": "https", "x-forwarded-host": "leap.example.com", "x-forwarded-prefix": "/api"}
    response = post_json(
        api_process, tenant, {"images": images, "webhook_url": f"{webhook_receiver.url}/hook"}, **forwarded
    )
    assert response.status_code == 202, response.text
    training_id = response.json()["id"]
    base = f"https://leap.example.com/api/v1/trainings/{training_id}"
    assert response.headers["location"] == base
    httpx.post(f"{api_process.url}/v1/trainings/{training_id}/cancel", headers=tenant.headers, timeout=10)

    relay = outbox_relay(json_settings, database)
    received = wait_until(relay, lambda: len(webhook_receiver.at("/hook")) == 2, message="two deliveries")
    payloads = {json.loads(item.body)["type"]: json.loads(item.body)["data"] for item in webhook_receiver.at("/hook")}
    assert received and set(payloads) == {"training.queued", "training.canceled"}
    assert payloads["training.queued"]["urls"] == {
        "get": base,
        "cancel": f"{base}/cancel",
        "stream": f"{base}/stream",
        "logs": f"{base}/logs",
    }
    assert payloads["training.canceled"]["urls"]["get"] == base


def test_forwarded_headers_from_an_untrusted_client_are_ignored(settings, database):  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from app.main import create_app

    tenant = make_tenant(database)
    with TestClient(create_app(settings)) as client:  # trusted_proxies empty: nobody's headers are believed
        response = client.get(
            "/v1/trainings", headers=tenant.headers | {"x-forwarded-host": "evil.example", "x-forwarded-proto": "https"}
        )
        assert response.status_code == 200
        training = client.post(
            "/v1/trainings",
            json={"images": [data_uri(png_bytes()), data_uri(png_bytes(color=(1, 2, 3)))]},
            headers=tenant.headers | {"x-forwarded-host": "evil.example"},
        )
    assert training.status_code == 202, training.text
    assert training.headers["location"].startswith("http://testserver/v1/trainings/")
