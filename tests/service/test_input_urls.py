"""Inputs by URL (images_url, examples_url): downloaded by the API at submission through the SSRF
guard, then validated exactly as uploads; every refusal a 4xx naming the field, nothing stored."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from app.client import LeapClient
from app.client.commands import ExitCode
from app.errors import LeapError
from app.main import create_app
from app.orm import Training
from app.trainings import fetch

from .factories import TEXT_MODEL, image_files, jsonl_bytes, make_tenant, png_bytes, zip_bytes
from .helpers import ADMIN, assert_error, assert_nothing_stored, post_fields, queued_messages, settings_env, stored_keys
from .processes import ApiProcess
from .receivers import LoopbackServer, Receiver, Reply


class StreamingServer(LoopbackServer):
    """/endless: a chunked body with no Content-Length that never ends; /slow: headers, then silence."""

    def __init__(self) -> None:
        super().__init__()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("content-type", "application/zip")
                if self.path == "/endless":
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    chunk = b"x" * 65536
                    try:
                        while not server.stop_event.is_set():
                            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    except OSError:
                        return  # the client hung up: what the test wants
                else:
                    self.send_header("content-length", "100")
                    self.end_headers()
                    self.wfile.flush()
                    server.stop_event.wait(5)

            def log_message(self, *args: object) -> None:
                pass

        self._serve(Handler)


@pytest.fixture(scope="module")
def files_server() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _reset_server(files_server: Receiver) -> None:
    files_server.reset()
    files_server.default = Reply(404, b"not found")


@pytest.fixture(scope="module")
def url_settings(settings):  # type: ignore[no-untyped-def]
    """The test file server on 127.0.0.1 allowed, as webhook receivers are in the webhook tests."""
    return settings.model_copy(
        update={"input_url_allowed_networks": ["127.0.0.1/32"], "input_url_timeout": timedelta(seconds=1)}
    )


@pytest.fixture(scope="module")
def api(url_settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(url_settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def strict_api(settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """No allowance: the default settings, where 127.0.0.1 is refused."""
    assert settings.input_url_allowed_networks == []
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def image_zip() -> bytes:
    return zip_bytes({"set/a.png": png_bytes(), "set/b.png": png_bytes(color=(0, 200, 0)), "notes.txt": b"hi"})


def test_zip_by_url_is_fetched_validated_and_stored(api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.on("/set.zip", Reply(body=image_zip(), headers={"content-type": "application/zip"}))
    host = files_server.url.removeprefix("http://")
    url = f"http://alice:s3cret@{host}/set.zip?signature=abc"
    response = post_fields(api, tenant, [("images_url", url), ("steps", "5")])
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["image_count"] == 2
    assert body["skipped_files"] == ["notes.txt"]
    # Stored and shown without the credentials and the query string.
    assert body["input_urls"] == [f"http://{host}/set.zip"]
    assert "s3cret" not in response.text and "signature" not in response.text
    assert len(stored_keys(settings)) == 2
    assert queued_messages(settings) == 1
    (request,) = files_server.at("/set.zip")
    assert request.method == "GET"
    assert request.path == "/set.zip?signature=abc"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
    with database.session_factory() as session:
        training = session.scalars(select(Training)).one()
        assert {item["source_url"] for item in training.inputs} == {f"http://{host}/set.zip"}
        assert "s3cret" not in str(training.inputs)


def test_url_encoded_form_with_followed_redirect(api, database, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.on("/moved", Reply(302, b"", headers={"location": "/final/set.zip"}))
    files_server.on("/final/set.zip", Reply(body=image_zip()))
    # No files at all: httpx sends application/x-www-form-urlencoded.
    response = api.post("/v1/trainings", data={"images_url": f"{files_server.url}/moved"}, headers=tenant.headers)
    assert response.status_code == 202, response.text
    assert response.json()["image_count"] == 2
    assert response.json()["input_urls"] == [f"{files_server.url}/moved"]
    assert len(files_server.at("/final/set.zip")) == 1


def test_single_images_by_url(api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.on("/one.png", Reply(body=png_bytes(), headers={"content-type": "image/png"}))
    files_server.on("/two.jpg", Reply(body=png_bytes(image_format="JPEG")))
    response = post_fields(
        api, tenant, [("images_url", f"{files_server.url}/one.png"), ("images_url", f"{files_server.url}/two.jpg")]
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["image_count"] == 2
    assert body["input_urls"] == [f"{files_server.url}/one.png", f"{files_server.url}/two.jpg"]
    assert len(stored_keys(settings)) == 2


def test_one_single_image_is_too_few_and_names_the_field(api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.on("/one.png", Reply(body=png_bytes()))
    response = post_fields(api, tenant, [("images_url", f"{files_server.url}/one.png")])
    error = assert_error(response, 422, "invalid_images", "images_url", "need 2-50 images, got 1")
    assert error["details"]["field"] == "images_url"
    assert_nothing_stored(database, settings)


def test_not_an_image_names_the_field(api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.on("/a.png", Reply(body=b"<html>login page</html>", headers={"content-type": "text/html"}))
    files_server.on("/b.png", Reply(body=png_bytes()))
    response = post_fields(
        api, tenant, [("images_url", f"{files_server.url}/a.png"), ("images_url", f"{files_server.url}/b.png")]
    )
    error = assert_error(response, 422, "invalid_images", "images_url", "a.png")
    assert error["details"]["field"] == "images_url"
    assert_nothing_stored(database, settings)


def test_loopback_is_refused_without_the_allowance(strict_api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.on("/set.zip", Reply(body=image_zip()))
    response = post_fields(strict_api, tenant, [("images_url", f"{files_server.url}/set.zip")])
    error = assert_error(response, 422, "unsafe_url", "images_url", "loopback")
    assert error["details"]["field"] == "images_url"
    assert files_server.at("/set.zip") == []  # refused before connecting
    assert_nothing_stored(database, settings)


@pytest.mark.parametrize(
    ("location", "mention"),
    [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://10.0.0.7/set.zip", "private"),
        ("http://127.0.0.2/set.zip", "loopback"),  # loopback, but outside the allowed 127.0.0.1/32
        ("file:///etc/passwd", "only http and https"),
    ],
)
def test_redirect_to_a_refused_address_is_refused(api, database, settings, files_server, location, mention):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.on("/hop", Reply(302, b"", headers={"location": location}))
    response = post_fields(api, tenant, [("images_url", f"{files_server.url}/hop")])
    error = assert_error(response, 422, "unsafe_url", "images_url", mention)
    assert error["details"]["field"] == "images_url"
    assert len(files_server.at("/hop")) == 1
    assert_nothing_stored(database, settings)


def test_redirect_loop_stops_at_the_cap(api, database, settings, url_settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.default = Reply(302, b"", headers={"location": "/loop"})
    response = post_fields(api, tenant, [("images_url", f"{files_server.url}/loop")])
    assert_error(response, 422, "input_fetch_failed", "images_url", "redirected more than 5 times")
    assert len(files_server.at("/loop")) == url_settings.input_url_max_redirects + 1
    assert_nothing_stored(database, settings)


def test_http_error_is_a_422_naming_the_field(api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    response = post_fields(api, tenant, [("images_url", f"{files_server.url}/missing.zip")])
    error = assert_error(response, 422, "input_fetch_failed", "images_url", "HTTP 404")
    assert error["details"] == {"field": "images_url", "status": 404}
    assert_nothing_stored(database, settings)


def test_unreachable_server_is_a_422(api, database, settings):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    response = post_fields(api, tenant, [("images_url", f"http://127.0.0.1:{port}/set.zip")])
    assert_error(response, 422, "input_fetch_failed", "images_url", "could not fetch", "ConnectError")
    assert_nothing_stored(database, settings)


def test_oversized_download_is_refused(api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.on("/big.zip", Reply(body=b"PK\x03\x04" + b"\x00" * settings.max_upload_bytes))
    response = post_fields(api, tenant, [("images_url", f"{files_server.url}/big.zip")])
    error = assert_error(response, 413, "payload_too_large", "images_url", "over the limit")
    assert error["details"] == {"field": "images_url", "limit": settings.max_upload_bytes}
    assert_nothing_stored(database, settings)


def test_endless_body_is_cut_at_the_limit_and_slow_server_times_out(api, database, settings):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    server = StreamingServer()
    try:
        started = time.monotonic()
        response = post_fields(api, tenant, [("images_url", f"{server.url}/endless")])
        assert_error(response, 413, "payload_too_large", "images_url", f"more than {settings.max_upload_bytes}")
        response = post_fields(api, tenant, [("images_url", f"{server.url}/slow")])
        assert_error(response, 422, "input_fetch_failed", "images_url", "timed out")
        assert time.monotonic() - started < 4.5  # the 1 s read timeout, not the server's 5 s
    finally:
        server.stop()
    assert_nothing_stored(database, settings)


def test_files_and_url_together_are_refused(api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    response = post_fields(api, tenant, [("images_url", f"{files_server.url}/set.zip")], files=image_files(2))
    error = assert_error(response, 422, "validation_error", "images_url", "not both")
    assert error["details"]["field"] == "images_url"
    assert files_server.requests == []
    assert_nothing_stored(database, settings)


def test_bad_url_values_are_refused(api, database, settings):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    for value, code, mention in [
        ("ftp://example.com/set.zip", "unsafe_url", "only http and https"),
        ("not a url", "validation_error", "not a URL"),
        ("http://example.com/" + "a" * 3000, "validation_error", "longer than 2048"),
    ]:
        response = post_fields(api, tenant, [("images_url", value)])
        error = assert_error(response, 422, code, "images_url", mention)
        assert error["details"]["field"] == "images_url"
    assert_nothing_stored(database, settings)


def test_url_of_the_other_kind_is_refused(api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    response = post_fields(api, tenant, [("images_url", f"{files_server.url}/set.zip"), ("base_model", TEXT_MODEL)])
    assert_error(response, 422, "validation_error", "images_url", "only for image models")
    response = post_fields(api, tenant, [("examples_url", f"{files_server.url}/e.jsonl")])
    assert_error(response, 422, "validation_error", "examples_url", "only for text models")
    assert files_server.requests == []
    assert_nothing_stored(database, settings)


def test_text_examples_by_url(api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    lines = [{"text": f"<leap> example {index}"} for index in range(3)]
    files_server.on("/data/examples.jsonl", Reply(body=jsonl_bytes(lines)))
    # No suffix: the content type names it.
    files_server.on("/export", Reply(body=jsonl_bytes(lines), headers={"content-type": "application/jsonl"}))
    for path in ("/data/examples.jsonl", "/export"):
        response = post_fields(api, tenant, [("examples_url", files_server.url + path), ("base_model", TEXT_MODEL)])
        assert response.status_code == 202, response.text
        assert response.json()["example_count"] == 3
        assert response.json()["input_urls"] == [files_server.url + path]
    files_server.on("/bad.jsonl", Reply(body=b'{"nope": 1}\n{"text": "<leap> x"}\n'))
    response = post_fields(api, tenant, [("examples_url", f"{files_server.url}/bad.jsonl"), ("base_model", TEXT_MODEL)])
    error = assert_error(response, 422, "invalid_examples", "examples_url")
    assert error["details"]["field"] == "examples_url"


def test_idempotency_covers_the_fetched_bytes(api, database, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    url = f"{files_server.url}/set.zip"
    files_server.on("/set.zip", Reply(body=image_zip()), Reply(body=image_zip()))
    key = {"Idempotency-Key": "by-url-1"}
    first = post_fields(api, tenant, [("images_url", url)], headers=key)
    second = post_fields(api, tenant, [("images_url", url + "?fresh-signature=2")], headers=key)
    assert first.status_code == second.status_code == 202, second.text
    assert second.json()["id"] == first.json()["id"]
    assert second.headers["idempotent-replayed"] == "true"
    # The same URL now serves other images: a different request under the same key.
    files_server.on("/set.zip", Reply(body=zip_bytes({"a.png": png_bytes(color=(9, 9, 9)), "b.png": png_bytes()})))
    third = post_fields(api, tenant, [("images_url", url)], headers=key)
    assert_error(third, 409, "idempotency_key_reused")


def test_a_tenant_at_its_limit_is_refused_before_anything_is_fetched(api, database, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    api.patch(f"/v1/admin/tenants/{tenant.tenant_id}", json={"max_concurrent_trainings": 1}, headers=ADMIN)
    url = f"{files_server.url}/set.zip"
    files_server.on("/set.zip", Reply(body=image_zip()), Reply(body=image_zip()))
    key = {"Idempotency-Key": "at-limit-1"}
    first = post_fields(api, tenant, [("images_url", url)], headers=key)
    assert first.status_code == 202, first.text
    assert len(files_server.at("/set.zip")) == 1
    assert_error(post_fields(api, tenant, [("images_url", url)]), 429, "rate_limited", "limit 1")
    assert len(files_server.at("/set.zip")) == 1  # refused before downloading
    # A retry of the accepted request still replays it (fetched again: the fingerprint needs the bytes).
    replay = post_fields(api, tenant, [("images_url", url)], headers=key)
    assert replay.status_code == 202 and replay.json()["id"] == first.json()["id"]


def test_dns_failure_and_private_resolution_name_the_field(url_settings):  # type: ignore[no-untyped-def]
    def no_such_host(host: str, port: int) -> list[str]:
        raise socket.gaierror(-2, "Name or service not known")

    def private(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "192.168.1.20"]

    for resolver, code, mention in [(no_such_host, "unsafe_url", "cannot resolve"), (private, "unsafe_url", "private")]:
        with pytest.raises(LeapError) as raised:
            fetch.fetch_url(
                "https://files.example.com/set.zip",
                field="images_url",
                index=0,
                limit=1024,
                settings=url_settings,
                resolver=resolver,
            )
        assert raised.value.code == code and mention in raised.value.message
        assert raised.value.message.startswith("images_url: ")
        assert raised.value.details["field"] == "images_url"


def test_cli_and_client_submit_by_url(url_settings, database, files_server, tmp_path):  # type: ignore[no-untyped-def]
    """`leap submit --images-url` and LeapClient.submit(images_url=...) against a real API process."""
    files_server.on("/set.zip", Reply(body=image_zip()), Reply(body=image_zip()))
    url = f"{files_server.url}/set.zip"
    api = ApiProcess(url_settings)
    try:
        tenant = make_tenant(database)
        env = settings_env(url_settings) | {"LEAP_URL": api.url, "LEAP_API_KEY": tenant.key}

        def leap(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "app.cli", "submit", *args],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
            )

        submitted = leap("--images-url", url, "--steps", "3", "--no-wait")
        assert submitted.returncode == ExitCode.OK, submitted.stderr
        assert "submitted 1 URL(s)" in submitted.stderr
        with database.session_factory() as session:
            training = session.get(Training, uuid.UUID(submitted.stdout.strip()))
            assert training is not None and training.image_count == 2
        missing = leap("--images-url", f"{files_server.url}/gone.zip", "--no-wait")
        assert missing.returncode == ExitCode.REFUSED
        assert missing.stderr.startswith("error: input_fetch_failed: images_url: ")
        both = leap(str(tmp_path), "--images-url", url)
        assert both.returncode == ExitCode.USAGE and "error: inputs_and_url: " in both.stderr
        neither = leap()
        assert neither.returncode == ExitCode.USAGE and "error: no_images: " in neither.stderr

        with LeapClient(api.url, tenant.key) as client:
            training_view = client.submit(images_url=url, steps=3)
        assert training_view.image_count == 2 and training_view.input_urls == [url]
    finally:
        api.stop()


def test_credentials_are_not_sent_to_another_origin(api, database, files_server):  # type: ignore[no-untyped-def]
    other = Receiver()  # another port: another origin
    try:
        other.on("/set.zip", Reply(body=image_zip()))
        files_server.on("/hop", Reply(302, b"", headers={"location": f"{other.url}/set.zip"}))
        host = files_server.url.removeprefix("http://")
        tenant = make_tenant(database)
        response = post_fields(api, tenant, [("images_url", f"http://bob:pw@{host}/hop")])
        assert response.status_code == 202, response.text
        assert files_server.at("/hop")[0].headers["authorization"].startswith("Basic ")
        (fetched,) = other.at("/set.zip")
        assert "authorization" not in fetched.headers
    finally:
        other.stop()


def test_fifty_image_urls_fit_in_one_form(api, database, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    for index in range(50):
        files_server.on(f"/{index}.png", Reply(body=png_bytes(size=(16, 16), color=(index, 0, 0))))
    fields = [("images_url", f"{files_server.url}/{index}.png") for index in range(50)]
    response = post_fields(api, tenant, [*fields, ("steps", "5"), ("mode", "lora"), ("seed", "1")])
    assert response.status_code == 202, response.text
    assert response.json()["image_count"] == 50
    response = post_fields(api, tenant, [*fields, ("images_url", f"{files_server.url}/0.png")])
    assert_error(response, 422, "validation_error", "images_url", "at most 50 URLs")


def test_url_encoded_body_over_its_limit_is_refused(api, database, settings):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    response = api.post("/v1/trainings", data={"token": "x" * 1024 * 1024}, headers=tenant.headers)
    assert_error(response, 413, "payload_too_large", "over the limit")
    assert_nothing_stored(database, settings)


def test_a_text_file_given_as_images_url_names_images_url(api, database, settings, files_server):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    files_server.on("/notes.txt", Reply(body=b"<leap> a caption", headers={"content-type": "text/plain"}))
    files_server.on("/b.png", Reply(body=png_bytes()))
    response = post_fields(
        api, tenant, [("images_url", f"{files_server.url}/notes.txt"), ("images_url", f"{files_server.url}/b.png")]
    )
    error = assert_error(response, 422, "invalid_images", "images_url:", "is a text file", "image model")
    assert error["details"]["field"] == "images_url"
    assert_nothing_stored(database, settings)
