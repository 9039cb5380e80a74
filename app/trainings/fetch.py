"""Inputs given by URL: `images_url` (a zip of images, or one image per URL) and `examples_url`
(a .jsonl or .txt file per URL), downloaded by the API while it handles the submission.

Why at submission, not in the worker: the client learns at once (a 4xx naming the field) that the URL
is refused, unreachable, too large or not images, and nothing is stored or queued for a training that
could never run. The download then becomes an ordinary uploaded file (a spooled temporary file) and
goes through exactly the validation of uploads: zip rules, counts, sizes, decoding, clean copies.

Downloads run on the event loop (httpx's async client), not in worker threads: a slow or dripping
server holds a coroutine, never a thread the other routes need. One deadline bounds the whole
download of a submission, every URL, redirect and header byte included (a per-read timeout alone
lets a server that sends one byte at a time hold a request for ever). The body is asked for without
content coding; a server that compresses it anyway is decompressed piece by piece, the output
counted against the size limit as it comes (a small gzip body cannot inflate in memory).

Every hop goes through the webhooks' SSRF guard (app.webhooks.ssrf): http(s) only, every resolved
address must be public (LEAP_INPUT_URL_ALLOWED_NETWORKS exempts CIDRs), the connection goes to the
address that was checked, and redirects are followed by hand so that each one is checked again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import tempfile
import time
import zlib
from collections.abc import Iterator
from functools import partial
from pathlib import PurePosixPath
from typing import IO
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import anyio
import anyio.to_thread
import httpx

from app.errors import LeapError, PayloadTooLarge, ValidationFailed
from app.settings import Settings
from app.trainings.uploads import (
    EXAMPLES_URL_FIELD,
    IMAGES_URL_FIELD,
    URL_FIELDS,
    Submission,
    UploadedFile,
)
from app.webhooks import ssrf
from models.enums import Kind
from models.trainer.images import MAX_IMAGES

USER_AGENT = "LEAP-Fetch/1.0"
MAX_URL_LENGTH = 2048
MAX_URLS = MAX_IMAGES
"""URLs per field: one zip, or up to 50 single images (or example files)."""
CONTENT_CODINGS = ("gzip", "x-gzip", "deflate")
"""Content codings decoded when a server sends one despite `Accept-Encoding: identity`."""
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SPOOL_IN_MEMORY = 1024 * 1024
_PIECE = 64 * 1024
# Name resolution is blocking (getaddrinfo): it runs in threads of its own, so a slow resolver
# cannot take the threads that the synchronous routes run on.
_RESOLVERS = 4


class FetchFailed(ValidationFailed):
    """An input URL could not be downloaded (unreachable, HTTP error, timeout, too many redirects)."""

    code = "input_fetch_failed"


def display_url(url: str) -> str:
    """The URL as stored and shown: no user name or password, no query string (it often holds a
    signature or token), no fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _file_name(url: str, *, field: str, index: int, content_type: str) -> str:
    """The downloaded file's name: the last path segment of the final URL (a zip is also recognised
    by its bytes); a text file without .txt/.jsonl is named by its content type."""
    name = unquote(PurePosixPath(urlsplit(url).path).name).replace("\x00", "")
    name = name if name.isprintable() and name else f"{field}-{index}"
    if field == EXAMPLES_URL_FIELD and PurePosixPath(name).suffix.lower() not in (".txt", ".jsonl"):
        name += ".jsonl" if "json" in content_type.lower() else ".txt"
    return name


def _basic_auth(url: str) -> str | None:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return None
    raw = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _check_url(url: str, field: str) -> None:
    if len(url) > MAX_URL_LENGTH:
        raise ValidationFailed(f"{field}: longer than {MAX_URL_LENGTH} characters", details={"field": field})
    if not url.isprintable() or any(char.isspace() for char in url):
        raise ValidationFailed(f"{field}: not a URL (control characters or spaces)", details={"field": field})


class _Budget:
    """What is left of a submission's download: bytes under the field's limit, and time until the
    deadline shared by all its URLs."""

    def __init__(self, *, limit: int, settings: Settings) -> None:
        self.limit = limit
        self.remaining = limit
        self.seconds = settings.input_url_deadline.total_seconds()
        self.deadline = time.monotonic() + self.seconds

    def too_slow(self, field: str, shown: str) -> FetchFailed:
        return FetchFailed(
            f"{field}: {shown} took too long to download (the limit is {self.seconds:g} s for all the "
            "input URLs of a submission)",
            details={"field": field, "deadline_s": self.seconds},
        )


async def fetch_url_async(
    url: str,
    *,
    field: str,
    index: int,
    budget: _Budget,
    settings: Settings,
    client: httpx.AsyncClient,
    resolvers: anyio.CapacityLimiter,
    resolver: ssrf.Resolver = ssrf.system_resolver,
) -> UploadedFile:
    """Download `url` into a spooled temporary file within the budget's bytes and time, every hop
    checked by the SSRF guard. Credentials in the URL are sent as HTTP Basic to its own origin only.

    Raises 422 (unsafe_url, input_fetch_failed) or 413 (payload_too_large), each naming `field`."""
    _check_url(url, field)
    shown = display_url(url)
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - the submission closes it
    try:
        remaining = budget.deadline - time.monotonic()
        if remaining <= 0:
            raise budget.too_slow(field, shown)
        # The deadline cancels whatever is waiting: a connect, a header byte, a body chunk, a lookup.
        with anyio.fail_after(remaining):
            name, size = await _follow(
                url, field=field, index=index, budget=budget, settings=settings, client=client,
                resolvers=resolvers, resolver=resolver, spool=spool, shown=shown,
            )  # fmt: skip
    except TimeoutError as error:
        spool.close()
        raise budget.too_slow(field, shown) from error
    except httpx.TimeoutException as error:
        spool.close()
        raise FetchFailed(
            f"{field}: {shown} timed out ({type(error).__name__}; the limit is "
            f"{settings.input_url_timeout.total_seconds():g} s to connect and per read)",
            details={"field": field},
        ) from error
    except httpx.HTTPError as error:
        spool.close()
        raise FetchFailed(
            f"{field}: could not fetch {shown} ({type(error).__name__}: {error})"[:1000], details={"field": field}
        ) from error
    except BaseException:
        spool.close()
        raise
    spool.seek(0)
    return UploadedFile(filename=name, file=spool, size=size)


async def _follow(
    url: str,
    *,
    field: str,
    index: int,
    budget: _Budget,
    settings: Settings,
    client: httpx.AsyncClient,
    resolvers: anyio.CapacityLimiter,
    resolver: ssrf.Resolver,
    spool: IO[bytes],
    shown: str,
) -> tuple[str, int]:
    """Follow redirects by hand (each hop checked again) and download the final body: (name, size)."""
    authorization = _basic_auth(url)
    current = _without_userinfo(url)
    origin = ssrf.parse(current, field=field)
    for _hop in range(settings.input_url_max_redirects + 1):
        resolve = partial(
            ssrf.resolve, current, allowed_networks=settings.input_url_allowed_networks, resolver=resolver, field=field
        )
        target = await anyio.to_thread.run_sync(resolve, abandon_on_cancel=True, limiter=resolvers)
        headers = {
            "host": target.host_header(),
            "user-agent": USER_AGENT,
            "accept": "*/*",
            "accept-encoding": "identity",
        }
        if authorization and (target.scheme, target.host, target.port) == origin:
            headers["authorization"] = authorization
        request = client.build_request("GET", target.pinned_url(), headers=headers, extensions=target.extensions())
        response = await client.send(request, stream=True)
        try:
            status = response.status_code
            if status in _REDIRECTS:
                location = response.headers.get("location")
                if not location:
                    raise FetchFailed(
                        f"{field}: {shown} answered HTTP {status} without a Location",
                        details={"field": field, "status": status},
                    )
                current = urljoin(current, location)
                continue
            if not 200 <= status < 300:
                raise FetchFailed(
                    f"{field}: {display_url(current)} answered HTTP {status}",
                    details={"field": field, "status": status},
                )
            size = await _download(response, spool, field=field, limit=budget.remaining, shown=shown)
            content_type = response.headers.get("content-type", "")
            return _file_name(current, field=field, index=index, content_type=content_type), size
        finally:
            await response.aclose()
    raise FetchFailed(
        f"{field}: {shown} redirected more than {settings.input_url_max_redirects} times",
        details={"field": field},
    )


def _decoder(response: httpx.Response, *, field: str, shown: str) -> zlib._Decompress | None:
    """A piecewise decoder for the body's content coding (None: identity); 422 for a coding LEAP
    does not decode (br, zstd, ...)."""
    coding = response.headers.get("content-encoding", "identity").strip().lower()
    if coding in ("", "identity"):
        return None
    if coding not in CONTENT_CODINGS:
        raise FetchFailed(
            f"{field}: {shown} was sent with Content-Encoding {coding[:40]!r}; send it uncompressed "
            f"(identity) or as {', '.join(CONTENT_CODINGS)}",
            details={"field": field},
        )
    return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected


async def _download(response: httpx.Response, spool: IO[bytes], *, field: str, limit: int, shown: str) -> int:
    """Stream the body into `spool`, decoded piece by piece, stopping as soon as it passes `limit`
    bytes (the deadline around it stops a slow one)."""
    declared = response.headers.get("content-length", "")
    decoder = _decoder(response, field=field, shown=shown)
    if decoder is None and declared.isdigit() and int(declared) > limit:
        raise _too_large(field, shown, f"{declared} bytes", limit)
    size = 0

    def write(piece: bytes) -> None:
        nonlocal size
        size += len(piece)
        if size > limit:
            raise _too_large(field, shown, f"more than {limit} bytes", limit)
        spool.write(piece)

    try:
        async for chunk in response.aiter_raw(_PIECE):
            if decoder is None:
                write(chunk)
                continue
            # max_length bounds each output piece: what is not yet inflated waits in unconsumed_tail.
            pending = chunk
            while pending:
                write(decoder.decompress(pending, _PIECE))
                pending = decoder.unconsumed_tail
            await asyncio.sleep(0)  # a body of only compressed zeros never waits on the socket
        if decoder is not None:
            write(decoder.flush())
    except zlib.error as error:
        message = f"{field}: {shown}: its compressed body is corrupt ({error})"
        raise FetchFailed(message, details={"field": field}) from error
    return size


def _too_large(field: str, shown: str, size: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{field}: {shown} is {size}, over the limit of {limit} bytes", details={"field": field, "limit": limit}
    )


def url_field(submission: Submission, *, kind: str) -> str | None:
    """The submission's URL field (images_url or examples_url), refused when it is the other kind's
    or comes with uploaded files or too many URLs; None when no input is given by URL."""
    wanted = IMAGES_URL_FIELD if kind == Kind.IMAGE else EXAMPLES_URL_FIELD
    for field, urls in submission.urls.items():
        if field != wanted:
            raise ValidationFailed(
                f"{field}: only for {'text' if kind == 'image' else 'image'} models; the base model is "
                f"a {kind} model (send '{wanted}')",
                details={"field": field, "kind": kind},
            )
        files_field = URL_FIELDS[field]
        uploaded = submission.files if field == IMAGES_URL_FIELD else submission.examples
        if uploaded:
            raise ValidationFailed(
                f"{field}: send the inputs as files in '{files_field}' or as URLs in '{field}', not both",
                details={"field": field},
            )
        if len(urls) > MAX_URLS:
            raise ValidationFailed(f"{field}: at most {MAX_URLS} URLs", details={"field": field})
        return field
    return None


async def download_inputs(
    submission: Submission, *, kind: str, settings: Settings, resolver: ssrf.Resolver = ssrf.system_resolver
) -> None:
    """Download the submission's input URLs, one after another, into its `files` (images_url) or
    `examples` (examples_url). The fetched bytes of one field count against the limit of an upload
    of that kind (LEAP_MAX_UPLOAD_BYTES for images, LEAP_MAX_TEXT_FILE_BYTES for text examples),
    and all of them must arrive within LEAP_INPUT_URL_DEADLINE."""
    if submission.downloaded:
        return
    field = url_field(submission, kind=kind)
    if field is None:
        return
    limit = settings.max_upload_bytes if field == IMAGES_URL_FIELD else settings.max_text_file_bytes
    budget = _Budget(limit=limit, settings=settings)
    uploaded = submission.files if field == IMAGES_URL_FIELD else submission.examples
    timeout = httpx.Timeout(settings.input_url_timeout.total_seconds())
    resolvers = anyio.CapacityLimiter(_RESOLVERS)
    async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as client:
        for index, url in enumerate(submission.urls[field]):
            fetched = await fetch_url_async(
                url, field=field, index=index, budget=budget, settings=settings, client=client,
                resolvers=resolvers, resolver=resolver,
            )  # fmt: skip
            uploaded.append(fetched)
            budget.remaining -= fetched.size
    submission.downloaded = True


def fetch_url(
    url: str,
    *,
    field: str,
    index: int,
    limit: int,
    settings: Settings,
    resolver: ssrf.Resolver = ssrf.system_resolver,
) -> UploadedFile:
    """fetch_url_async for synchronous callers (no event loop running in this thread)."""

    async def fetch() -> UploadedFile:
        timeout = httpx.Timeout(settings.input_url_timeout.total_seconds())
        async with httpx.AsyncClient(follow_redirects=False, timeout=timeout, trust_env=False) as client:
            return await fetch_url_async(
                url, field=field, index=index, budget=_Budget(limit=limit, settings=settings), settings=settings,
                client=client, resolvers=anyio.CapacityLimiter(1), resolver=resolver,
            )  # fmt: skip

    return anyio.run(fetch)


def fetch_inputs(
    submission: Submission, *, kind: str, settings: Settings, resolver: ssrf.Resolver = ssrf.system_resolver
) -> None:
    """download_inputs for synchronous callers; the API's create route downloads on its event loop
    first, and this then only checks the field."""
    if submission.downloaded or url_field(submission, kind=kind) is None:
        return
    anyio.run(partial(download_inputs, submission, kind=kind, settings=settings, resolver=resolver))


def source_urls(submission: Submission) -> list[str]:
    """The input URLs as stored with the training (display_url: no credentials, no query)."""
    return [display_url(url) for urls in submission.urls.values() for url in urls]


@contextlib.contextmanager
def naming(field: str | None) -> Iterator[None]:
    """Refusals of inputs that came from `field` (a bad zip, an undecodable image, a size over a
    limit) name that field, as they would name the file of an upload."""
    if field is None:
        yield
        return
    try:
        yield
    except LeapError as error:
        if error.status_code in (413, 422) and "field" not in error.details:
            error.details["field"] = field
            error.message = f"{field}: {error.message}"
            error.args = (error.message,)
        raise
