"""Inputs given by URL: `images_url` (a zip of images, or one image per URL) and `examples_url`
(a .jsonl or .txt file per URL), downloaded by the API while it handles the submission.

Why at submission, not in the worker: the client learns at once (a 4xx naming the field) that the URL
is refused, unreachable, too large or not images, and nothing is stored or queued for a training that
could never run. The download then becomes an ordinary uploaded file (a spooled temporary file) and
goes through exactly the validation of uploads: zip rules, counts, sizes, decoding, clean copies.
The create route is a plain `def`, so the download runs in a worker thread, not on the event loop.

Every hop goes through the webhooks' SSRF guard (app.webhooks.ssrf): http(s) only, every resolved
address must be public (LEAP_INPUT_URL_ALLOWED_NETWORKS exempts CIDRs), the connection goes to the
address that was checked, and redirects are followed by hand so that each one is checked again.
"""

from __future__ import annotations

import base64
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import PurePosixPath
from typing import IO
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

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
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_SPOOL_IN_MEMORY = 1024 * 1024


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


def fetch_url(
    url: str,
    *,
    field: str,
    index: int,
    limit: int,
    settings: Settings,
    resolver: ssrf.Resolver = ssrf.system_resolver,
) -> UploadedFile:
    """Download `url` into a spooled temporary file of at most `limit` bytes, every hop checked by
    the SSRF guard. Credentials in the URL are sent as HTTP Basic to its own origin only.

    Raises 422 (unsafe_url, input_fetch_failed) or 413 (payload_too_large), each naming `field`."""
    _check_url(url, field)
    shown = display_url(url)
    authorization = _basic_auth(url)
    current = _without_userinfo(url)
    origin = ssrf.parse(current, field=field)
    deadline = time.monotonic() + settings.input_url_deadline.total_seconds()
    timeout = httpx.Timeout(settings.input_url_timeout.total_seconds())
    spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - the submission closes it
    try:
        with httpx.Client(follow_redirects=False, timeout=timeout, trust_env=False) as client:
            for _hop in range(settings.input_url_max_redirects + 1):
                if time.monotonic() > deadline:
                    raise FetchFailed(f"{field}: {shown} took too long to download", details={"field": field})
                target = ssrf.resolve(
                    current, allowed_networks=settings.input_url_allowed_networks, resolver=resolver, field=field
                )
                headers = {"host": target.host_header(), "user-agent": USER_AGENT, "accept": "*/*"}
                if authorization and (target.scheme, target.host, target.port) == origin:
                    headers["authorization"] = authorization
                request = client.build_request(
                    "GET", target.pinned_url(), headers=headers, extensions=target.extensions()
                )
                response = client.send(request, stream=True)
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
                    size = _download(response, spool, field=field, limit=limit, deadline=deadline, shown=shown)
                    name = _file_name(
                        current, field=field, index=index, content_type=response.headers.get("content-type", "")
                    )
                finally:
                    response.close()
                spool.seek(0)
                return UploadedFile(filename=name, file=spool, size=size)
            raise FetchFailed(
                f"{field}: {shown} redirected more than {settings.input_url_max_redirects} times",
                details={"field": field},
            )
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


def _download(
    response: httpx.Response, spool: IO[bytes], *, field: str, limit: int, deadline: float, shown: str
) -> int:
    """Stream the body into `spool`, stopping as soon as it passes `limit` bytes or the deadline."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(field, shown, f"{declared} bytes", limit)
    size = 0
    for chunk in response.iter_bytes():  # decoded: a gzip body counts with its unpacked size
        size += len(chunk)
        if size > limit:
            raise _too_large(field, shown, f"more than {limit} bytes", limit)
        if time.monotonic() > deadline:
            raise FetchFailed(f"{field}: {shown} took too long to download", details={"field": field})
        spool.write(chunk)
    return size


def _too_large(field: str, shown: str, size: str, limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{field}: {shown} is {size}, over the limit of {limit} bytes", details={"field": field, "limit": limit}
    )


def fetch_inputs(
    submission: Submission, *, kind: str, settings: Settings, resolver: ssrf.Resolver = ssrf.system_resolver
) -> None:
    """Download the submission's input URLs into its `files` (images_url) or `examples`
    (examples_url). The fetched bytes of one field count against the limit of an upload of that
    kind: LEAP_MAX_UPLOAD_BYTES for images, LEAP_MAX_TEXT_FILE_BYTES for text examples."""
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
        remaining = settings.max_upload_bytes if field == IMAGES_URL_FIELD else settings.max_text_file_bytes
        for index, url in enumerate(urls):
            fetched = fetch_url(url, field=field, index=index, limit=remaining, settings=settings, resolver=resolver)
            uploaded.append(fetched)
            remaining -= fetched.size


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
