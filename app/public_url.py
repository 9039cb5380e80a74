"""The API's own absolute address for a request: LEAP_PUBLIC_URL when set, else the address the
client used, read from X-Forwarded-* headers only when the connection comes from a trusted proxy."""

from __future__ import annotations

import ipaddress
import re
from functools import lru_cache

from starlette.requests import Request

from app.settings import Settings

# A host[:port] as a Host header spells it; anything else in a forwarded header is ignored.
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")
_PREFIX = re.compile(r"(/[A-Za-z0-9._~!$&'()*+,;=:@%-]*)*")


@lru_cache(maxsize=16)
def _networks(cidrs: tuple[str, ...]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _trusted(host: str | None, settings: Settings) -> bool:
    if not host or not settings.trusted_proxies:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in _networks(tuple(settings.trusted_proxies)))


def _first(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    return value.split(",")[0].strip() if value else None


def request_base_url(request: Request, settings: Settings) -> str:
    """The absolute base (scheme://host[:port][/prefix], no trailing slash) of this API's links."""
    if settings.public_url:
        return settings.public_url.rstrip("/")
    base = str(request.base_url).rstrip("/")
    if not _trusted(request.client.host if request.client else None, settings):
        return base
    scheme, _, rest = base.partition("://")
    host, slash, path = rest.partition("/")
    proto = _first(request, "x-forwarded-proto")
    if proto in ("http", "https"):
        scheme = proto
    forwarded_host = _first(request, "x-forwarded-host")
    if forwarded_host and _HOST.fullmatch(forwarded_host):
        host = forwarded_host
    prefix = _first(request, "x-forwarded-prefix")
    if prefix and _PREFIX.fullmatch(prefix):
        return f"{scheme}://{host}{prefix.rstrip('/')}{slash}{path}".rstrip("/")
    return f"{scheme}://{host}{slash}{path}".rstrip("/")
