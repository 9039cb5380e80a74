"""One HTTP attempt of a delivery: resolve and check the address, connect to that address, never
follow redirects, and report the outcome (never raises for the receiver's behaviour)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import httpx

from app.webhooks import ssrf

USER_AGENT = "LEAP-Webhooks/1.0"


@dataclass(frozen=True)
class Outcome:
    status_code: int | None
    latency_ms: int
    response_body: str
    error: str | None
    permanent: bool = False
    """The URL itself is refused (not worth retrying)."""

    @property
    def success(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(
    url: str,
    *,
    body: bytes,
    headers: dict[str, str],
    timeout: timedelta,
    response_bytes: int,
    allowed_networks: Sequence[str],
    resolver: ssrf.Resolver = ssrf.system_resolver,
) -> Outcome:
    """POST the body to the checked address of `url`."""
    started = time.monotonic()

    def elapsed() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        target = ssrf.resolve(url, allowed_networks=allowed_networks, resolver=resolver)
    except ssrf.UnsafeUrl as error:
        return Outcome(None, elapsed(), "", error.message, permanent=True)
    request_headers = {
        **headers,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": target.host_header(),
    }
    try:
        with httpx.Client(follow_redirects=False, timeout=timeout.total_seconds(), trust_env=False) as client:
            request = client.build_request(
                "POST", target.pinned_url(), content=body, headers=request_headers, extensions=target.extensions()
            )
            response = client.send(request, stream=True)
            try:
                read = b""
                for chunk in response.iter_bytes():
                    read += chunk
                    if len(read) >= response_bytes:
                        break
            finally:
                response.close()
            text = read[:response_bytes].decode("utf-8", errors="replace")
            return Outcome(response.status_code, elapsed(), text, None)
    except httpx.HTTPError as error:
        return Outcome(None, elapsed(), "", f"{type(error).__name__}: {error}"[:1000])
