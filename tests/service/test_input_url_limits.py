"""Inputs by URL against hostile servers on loopback: headers sent one byte at a time, bodies that
drip, gzip bombs. One deadline bounds a submission's downloads, compressed bodies inflate piece by
piece, downloads hold no thread the other routes need, and they count against the tenant's limits."""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.orm import Tenant
from app.trainings.download_slots import MemoryDownloadSlots

from .factories import make_tenant
from .helpers import assert_error, assert_nothing_stored, post_fields
from .processes import ApiProcess
from .receivers import LoopbackServer

BOMB_BYTES = 1024 * 1024 * 1024  # 1 GiB of zeros: about 1 MB of gzip


def gzip_bomb() -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(16 * 1024 * 1024)
    body = b"".join(compressor.compress(zeros) for _ in range(BOMB_BYTES // len(zeros)))
    return body + compressor.flush()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up on a bomb or a drip is the expected end


class HostileServer(LoopbackServer):
    """/slow-headers: a status line, then one header byte every 0.2 s, never a blank line.
    /drip/<n>: headers with Content-Length n, then one body byte every 0.2 s.
    /bomb.zip: a gzip bomb with Content-Encoding: gzip, whatever the client asked for."""

    def __init__(self, *, bomb: bytes = b"") -> None:
        super().__init__()
        self.accept_encodings: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                server.accept_encodings.append(self.headers.get("accept-encoding", ""))
                try:
                    if self.path == "/slow-headers":
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                        while not server.stop_event.wait(0.2):
                            self.wfile.write(b"a")
                            self.wfile.flush()
                    elif self.path.startswith("/drip/"):
                        length = int(self.path.rsplit("/", 1)[1])
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % length)
                        for _ in range(length):
                            if server.stop_event.wait(0.2):
                                return
                            self.wfile.write(b"x")
                            self.wfile.flush()
                    else:
                        head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
                        self.wfile.write(head + bomb)
                except OSError:
                    return  # the client hung up

            def log_message(self, *args: object) -> None:
                pass

        self._serve(Handler, _QuietServer)


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer(bomb=gzip_bomb())
    yield server
    server.stop()


@pytest.fixture(scope="module")
def deadline_settings(settings):  # type: ignore[no-untyped-def]
    """Loopback allowed; 1 s per read (every drip beats it) and 2 s for a submission's downloads."""
    return settings.model_copy(
        update={
            "input_url_allowed_networks": ["127.0.0.1/32"],
            "input_url_timeout": timedelta(seconds=1),
            "input_url_deadline": timedelta(seconds=2),
            "rate_limit_requests": 0,
        }
    )


@pytest.fixture(scope="module")
def api(deadline_settings) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(create_app(deadline_settings)) as test_client:
        yield test_client


def test_headers_sent_one_byte_at_a_time_stop_at_the_deadline(api, database, settings, hostile):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    started = time.monotonic()
    response = post_fields(api, tenant, [("images_url", f"{hostile.url}/slow-headers")])
    elapsed = time.monotonic() - started
    error = assert_error(response, 422, "input_fetch_failed", "images_url", "took too long", "2 s")
    assert error["details"]["field"] == "images_url"
    assert elapsed < 4, f"held {elapsed:.1f} s against a 2 s deadline"
    assert_nothing_stored(database, settings)


def test_the_deadline_covers_all_the_urls_of_a_submission(api, database, settings, hostile):  # type: ignore[no-untyped-def]
    # Each URL alone finishes in 1.6 s, inside the deadline; the three together would take 4.8 s.
    tenant = make_tenant(database)
    started = time.monotonic()
    response = post_fields(api, tenant, [("images_url", f"{hostile.url}/drip/8")] * 3)
    elapsed = time.monotonic() - started
    assert_error(response, 422, "input_fetch_failed", "images_url", "took too long", "all the input URLs")
    assert elapsed < 3.5, f"{elapsed:.1f} s for a 2 s deadline"
    assert_nothing_stored(database, settings)


def rss_kib(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(field + ":")))


@pytest.fixture(scope="module")
def api_process(deadline_settings) -> Iterator[ApiProcess]:  # type: ignore[no-untyped-def]
    """A real `leap api` (Redis holds the download slots) with a 6 s download deadline."""
    process = ApiProcess(deadline_settings.model_copy(update={"input_url_deadline": timedelta(seconds=6)}))
    yield process
    process.stop()


def unlimited_tenant(database, limit: int = 100):  # type: ignore[no-untyped-def]
    tenant = make_tenant(database)
    with database.session_factory.begin() as session:
        session.get(Tenant, uuid.UUID(tenant.tenant_id)).max_concurrent_trainings = limit  # type: ignore[union-attr]
    return tenant


def test_gzip_bombs_inflate_piece_by_piece_within_the_limit(api_process, database, settings, hostile):  # type: ignore[no-untyped-def]
    tenant = unlimited_tenant(database)
    pid = api_process.process.pid
    with httpx.Client(base_url=api_process.url, headers=tenant.headers, timeout=60) as http:
        assert http.get("/v1/trainings").status_code == 200
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    baseline = rss_kib(pid, "VmRSS")

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=api_process.url, headers=tenant.headers, timeout=60) as http:
            return http.post("/v1/trainings", data={"images_url": f"{hostile.url}/bomb.zip"})

    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(submit, range(3)))
    peak = rss_kib(pid, "VmHWM")
    for response in responses:
        assert_error(response, 413, "payload_too_large", "images_url", f"more than {settings.max_upload_bytes}")
    assert hostile.accept_encodings[-1] == "identity"
    growth = (peak - baseline) / 1024
    assert growth < 48, f"API peak RSS grew {growth:.0f} MiB for 3 gzip bombs of {BOMB_BYTES >> 20} MiB"
    assert_nothing_stored(database, settings)


def test_dripping_downloads_leave_other_routes_responsive(api_process, database, hostile):  # type: ignore[no-untyped-def]
    # 45 submissions (more than the 40 threads the synchronous routes share) whose inputs drip
    # until the deadline, while /healthz, a synchronous route and a list are timed.
    tenant = unlimited_tenant(database)
    other = make_tenant(database)
    slowest: dict[str, float] = {}
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=api_process.url, headers=other.headers, timeout=30) as http:
            while not done.is_set():
                for path in ("/healthz", "/v1/webhook-endpoints", "/v1/trainings"):
                    started = time.monotonic()
                    assert http.get(path).status_code == 200
                    slowest[path] = max(slowest.get(path, 0.0), time.monotonic() - started)
                time.sleep(0.1)

    def submit(_: int) -> int:
        with httpx.Client(base_url=api_process.url, headers=tenant.headers, timeout=60) as http:
            return http.post("/v1/trainings", data={"images_url": f"{hostile.url}/drip/100"}).status_code

    with ThreadPoolExecutor(46) as pool:
        submissions = [pool.submit(submit, index) for index in range(45)]
        time.sleep(1.5)  # every download started and dripping
        prober = pool.submit(probe)
        time.sleep(3)
        done.set()
        prober.result()
        statuses = [future.result() for future in submissions]
    assert statuses == [422] * 45
    assert max(slowest.values()) < 1.5, f"slowest answers while downloads dripped: {slowest}"


def test_downloads_in_progress_count_against_the_tenants_limit(api_process, database, hostile):  # type: ignore[no-untyped-def]
    tenant = unlimited_tenant(database, limit=2)

    def submit(_: int) -> httpx.Response:
        with httpx.Client(base_url=api_process.url, headers=tenant.headers, timeout=60) as http:
            return http.post("/v1/trainings", data={"images_url": f"{hostile.url}/drip/100"})

    with ThreadPoolExecutor(5) as pool:
        first = [pool.submit(submit, index) for index in range(2)]
        time.sleep(1)  # both downloading
        started = time.monotonic()
        refused = list(pool.map(submit, range(3)))
        refused_after = time.monotonic() - started
        downloaded = [future.result() for future in first]
    for response in refused:
        error = assert_error(response, 429, "rate_limited", "2 submissions downloading", "limit 2")
        assert error["details"] | {"retry_after_seconds": 0} == {
            "active_trainings": 0,
            "downloading": 2,
            "limit": 2,
            "retry_after_seconds": 0,
        }
    assert refused_after < 2  # refused at once, not after downloading
    assert [response.status_code for response in downloaded] == [422, 422]  # the deadline
    # Their slots are given back: the tenant may submit again.
    again = submit(0)
    assert_error(again, 422, "input_fetch_failed", "took too long")


def test_memory_slots_are_per_tenant_and_expire():
    slots = MemoryDownloadSlots()
    first = slots.acquire("a", room=2, ttl_seconds=60)
    assert first is not None and slots.acquire("a", room=2, ttl_seconds=0.05) is not None
    assert slots.acquire("a", room=2, ttl_seconds=60) is None
    assert slots.acquire("b", room=1, ttl_seconds=60) is not None
    time.sleep(0.1)  # the second one's holder died: it expires
    assert slots.count("a") == 1
    slots.release(first)
    assert slots.count("a") == 0
