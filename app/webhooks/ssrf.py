"""SSRF guard for URLs the service reaches on a tenant's behalf (webhook receivers, inputs fetched by
URL): http(s) only, every resolved address must be public, and the connection goes to the address
that was checked (no DNS-rebinding window). `field` names the request field in refusals."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from app.errors import ValidationFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class UnsafeUrl(ValidationFailed):
    code = "unsafe_url"


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `address`, send Host/SNI for `host`."""

    url: str
    scheme: str
    host: str
    port: int
    address: str

    def pinned_url(self) -> str:
        """The URL with the checked address in place of the host name (no fragment)."""
        parts = urlsplit(self.url)
        host = f"[{self.address}]" if ":" in self.address else self.address
        return urlunsplit((parts.scheme, f"{host}:{self.port}", parts.path or "/", parts.query, ""))

    def host_header(self) -> str:
        """The Host header the name-based URL would have sent."""
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def extensions(self) -> dict[str, str]:
        """httpx request extensions: the TLS server name is the host's, not the pinned address's."""
        return {"sni_hostname": self.host} if self.scheme == "https" else {}


def refused_class(address: IPAddress) -> str | None:
    """Why an address may not be reached (None: it may)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = refused_class(embedded)
            return f"ipv4-mapped {inner}" if inner else None
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv4Address) and address in _CGNAT:
        return "cgnat"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "reserved"
    return None


def parse(url: str, *, field: str = "url") -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL, or UnsafeUrl."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        raise UnsafeUrl(f"{field}: {error}", details={"field": field}) from error
    if parts.scheme not in ("http", "https"):
        raise UnsafeUrl(f"{field}: only http and https URLs are allowed", details={"field": field})
    if not parts.hostname:
        raise UnsafeUrl(f"{field}: has no host", details={"field": field})
    if parts.username or parts.password:
        raise UnsafeUrl(f"{field}: must not contain credentials", details={"field": field})
    _check_hostname(parts.hostname, field)
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)


def _check_hostname(host: str, field: str) -> None:
    """Refuse a host the resolver could not encode (empty labels, invalid IDNA, NUL): at
    registration rather than as an error at every delivery."""
    try:
        ipaddress.ip_address(host)
        return
    except ValueError:
        pass
    try:
        encoded = host.encode("idna")
    except UnicodeError as error:
        raise UnsafeUrl(f"{field}: {host!r} is not a valid host name ({error})", details={"field": field}) from error
    labels = encoded.rstrip(b".").split(b".")
    if len(encoded) > 253 or any(not label or len(label) > 63 for label in labels) or b"\x00" in encoded:
        raise UnsafeUrl(f"{field}: {host!r} is not a valid host name", details={"field": field})


def _allowed(address: IPAddress, allowed_networks: Sequence[str]) -> bool:
    return any(address in ipaddress.ip_network(network, strict=False) for network in allowed_networks)


def check_address(address: IPAddress, *, allowed_networks: Sequence[str], field: str = "url") -> None:
    reason = refused_class(address)
    if reason is not None and not _allowed(address, allowed_networks):
        raise UnsafeUrl(
            f"{field}: resolves to {address}, a {reason} address; only public addresses are reached",
            details={"field": field, "address": str(address), "class": reason},
        )


def check_literal(url: str, *, allowed_networks: Sequence[str]) -> None:
    """At registration: the scheme, and the host when it is an IP literal (names are resolved at delivery)."""
    _, host, _ = parse(url)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return
    check_address(address, allowed_networks=allowed_networks)


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def resolve(
    url: str, *, allowed_networks: Sequence[str], resolver: Resolver = system_resolver, field: str = "url"
) -> Target:
    """Resolve the URL's host and check every address; the first is the one to connect to."""
    scheme, host, port = parse(url, field=field)
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(item.split("%")[0]) for item in resolver(host, port)]
        except (OSError, UnicodeError) as error:
            raise UnsafeUrl(f"{field}: cannot resolve {host}: {error}", details={"field": field}) from error
    if not addresses:
        raise UnsafeUrl(f"{field}: {host} has no address", details={"field": field})
    # Every address must pass: otherwise a name with one public and one private record could
    # reach the private one through a retry or another client.
    for address in addresses:
        check_address(address, allowed_networks=allowed_networks, field=field)
    return Target(url=url, scheme=scheme, host=host, port=port, address=str(addresses[0]))
