"""LeapClient: typed calls to the LEAP API with retries, polling and verified downloads."""

from __future__ import annotations

import hashlib
import json
import mimetypes
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path, PurePosixPath
from typing import Any

import httpx

from app.backoff import backoff_seconds
from app.base_models.schemas import BaseModelList
from app.enums import FINISHED_STATUSES
from app.trainings.schemas import Artifact, Training, TrainingList, TrainingLogLine, TrainingLogPage

RETRY_STATUSES = frozenset({429, 503})
USER_AGENT = "leap-client/0.1"


class ClientError(Exception):
    """Base class of everything the client raises."""


class ApiError(ClientError):
    """The API answered with an error: `code` and `message` come from its error body."""

    def __init__(self, status_code: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details or {}


class Unreachable(ClientError):
    """The server could not be reached, or kept answering 429/503, after every retry."""


@dataclass(frozen=True)
class RetryNotice:
    """A request about to be sent again: why (the server's answer, or the connection error) and how
    long the client waits first (at least the Retry-After the server asked for)."""

    method: str
    url: str
    status_code: int | None
    """429 or 503; None when the server could not be reached."""
    code: str
    message: str
    wait_seconds: float
    retry_after: float | None
    """What the server's Retry-After asked for, in seconds."""
    retry: int
    """1 for the first retry, ... up to max_retries."""
    max_retries: int

    def describe(self) -> str:
        """One line for a person: what happened, what the client waits for, and how many tries are left."""
        asked = f", as Retry-After asks ({self.retry_after:g}s)" if self.retry_after else ""
        status = f"{self.status_code} " if self.status_code else ""
        return (
            f"{status}{self.code}: {self.message} - retrying {self.method} {self.url} in {self.wait_seconds:.0f}s"
            f"{asked} (retry {self.retry} of {self.max_retries})"
        )


class WaitTimeout(ClientError):
    """wait() gave up before the training finished; `training` is its last known state."""

    def __init__(self, training: Training, timeout: float) -> None:
        super().__init__(f"training {training.id} still {training.status} after {timeout:g}s")
        self.training = training


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event of GET /v1/trainings/{id}/stream: status (data is the whole training),
    progress ({step, total, loss, eta_s, at}) or log ({seq, at, level, message}; id is its seq)."""

    event: str
    data: dict[str, Any]
    id: str | None = None


def parse_events(lines: Iterable[str]) -> Iterator[StreamEvent]:
    """Server-sent events from the lines of a text/event-stream body (comments skipped)."""
    event, data, event_id = "message", "", None
    for line in lines:
        if line == "":
            if data:
                yield StreamEvent(event, json.loads(data), event_id)
            event, data, event_id = "message", "", None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "event":
            event = value
        elif name == "data":
            data = f"{data}\n{value}" if data else value
        elif name == "id":
            event_id = value


class ChecksumMismatch(ClientError):
    """A downloaded artifact's sha256 differs from the one the API lists; nothing is kept."""


def is_finished(training: Training) -> bool:
    """Whether the training reached a final state (succeeded, failed, canceled)."""
    return training.status in FINISHED_STATUSES


def retry_after_seconds(response: httpx.Response) -> float | None:
    """The Retry-After header as seconds (it may be a number or an HTTP date); None when absent."""
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        return ApiError(response.status_code, str(error["code"]), str(error["message"]), error.get("details"))
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()[:300] or response.reason_phrase
        return ApiError(response.status_code, "http_error", f"HTTP {response.status_code}: {text}")


InputFile = Path | str | tuple[str, bytes]
ImageInput = InputFile  # the name before text trainings
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".zip"})
TEXT_SUFFIXES = frozenset({".txt", ".jsonl"})


class NoInputs(ClientError):
    """A folder given to submit() holds no images and no text examples."""


def input_files(source: Path | str) -> list[Path]:
    """The files to upload from a path: a file as it is; a folder's images (.png, .jpg, ... or .zip) with
    their caption files (photo.txt beside photo.png), or, when it has none, its text examples (.txt,
    .jsonl), sorted by name. Hidden files are skipped."""
    source = Path(source)
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise NoInputs(f"{source} is neither a folder nor a file")
    files = sorted(path for path in source.iterdir() if path.is_file() and not path.name.startswith("."))
    images = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
    texts = [path for path in files if path.suffix.lower() in TEXT_SUFFIXES]
    if not images and not texts:
        raise NoInputs(f"no images (.png, .jpg, .webp, ... or .zip) or text examples (.txt, .jsonl) in {source}")
    if images:
        stems = {path.stem for path in images}
        return sorted(images + [path for path in texts if path.suffix.lower() == ".txt" and path.stem in stems])
    return texts


def _parts(inputs: Iterable[InputFile]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart file parts: .txt and .jsonl files go in the `examples` field, anything else in `images`,
    except a .txt named after an image among them (photo.png, photo.txt): that image's caption."""
    named = [
        (item[0], item[1]) if isinstance(item, tuple) else (Path(item).name, Path(item).read_bytes()) for item in inputs
    ]
    image_stems = {Path(name).stem for name, _ in named if Path(name).suffix.lower() not in TEXT_SUFFIXES}
    return [
        _part(name, data, caption=Path(name).suffix.lower() == ".txt" and Path(name).stem in image_stems)
        for name, data in named
    ]


def _part(name: str, data: bytes, *, caption: bool) -> tuple[str, tuple[str, bytes, str]]:
    field = "examples" if Path(name).suffix.lower() in TEXT_SUFFIXES and not caption else "images"
    content_type = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return (field, (name, data, content_type))


def _form_value(value: str | int | float | dict[str, Any] | list[Any]) -> str:
    """A form field as text: JSON for a dict or list, true/false for a bool."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def artifact_path(folder: Path, name: str) -> Path:
    """Where an artifact named `name` goes under `folder`: text trainings' artifacts keep their
    sub-folders (adapter/adapter_config.json, lora-vllm/adapter_config.json); a name can never
    climb out of the folder (absolute paths, `..` and empty parts are dropped)."""
    parts = [part for part in PurePosixPath(name.replace("\\", "/")).parts if part not in ("/", ".", "..")]
    if not parts:
        raise ClientError(f"artifact name {name!r} names no file")
    return folder.joinpath(*parts)


class LeapClient:
    """A LEAP API client. Requests answered 429 or 503, and connection failures, are retried with
    exponential backoff and jitter, waiting at least what Retry-After asks (capped at
    `max_retry_wait`). Submissions carry an Idempotency-Key, so a retried POST never trains twice."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_wait: float = 120.0,
        poll_interval: float = 0.5,
        poll_interval_max: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_retry: Callable[[RetryNotice], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.on_retry = on_retry
        self.max_retries = max_retries
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_retry_wait = max_retry_wait
        self.poll_interval = poll_interval
        self.poll_interval_max = poll_interval_max
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": USER_AGENT},
            timeout=timeout,
            transport=transport,
        )
        # Artifact links are presigned: they must not carry the API key (S3 refuses a second credential).
        self._downloads = httpx.Client(headers={"User-Agent": USER_AGENT}, timeout=timeout, transport=transport)

    def __enter__(self) -> LeapClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pools."""
        self._http.close()
        self._downloads.close()

    # -- transport -------------------------------------------------------------------------

    def _delay(self, attempt: int, response: httpx.Response | None) -> float:
        backoff = backoff_seconds(attempt, base=self.backoff, cap=self.backoff_max, jitter=(0.5, 1.0))
        asked = retry_after_seconds(response) if response is not None else None
        return min(self.max_retry_wait, max(backoff, asked or 0.0))

    def _send(
        self, http: httpx.Client, method: str, url: str, *, stream: bool = False, **kwargs: Any
    ) -> httpx.Response:
        attempt = 0
        while True:
            try:
                request = http.build_request(method, url, **kwargs)
                response = http.send(request, stream=stream)
            except httpx.TransportError as error:
                if attempt >= self.max_retries:
                    raise Unreachable(f"{method} {url}: {type(error).__name__}: {error}") from error
                self._wait(attempt, method, url, None, "unreachable", f"{type(error).__name__}: {error}")
                attempt += 1
                continue
            if response.status_code not in RETRY_STATUSES:
                return response
            if stream:
                response.read()
            refusal = _api_error(response)
            if attempt >= self.max_retries:
                if not attempt:
                    raise refusal
                message = f"{refusal.message} (gave up after {attempt} retries)"
                raise ApiError(refusal.status_code, refusal.code, message, refusal.details)
            response.close()
            self._wait(attempt, method, url, response, refusal.code, refusal.message)
            attempt += 1

    def _wait(
        self, attempt: int, method: str, url: str, response: httpx.Response | None, code: str, message: str
    ) -> None:
        """Sleep before retry attempt + 1, having told on_retry why and for how long."""
        delay = self._delay(attempt, response)
        if self.on_retry is not None:
            self.on_retry(
                RetryNotice(
                    method=method,
                    url=url,
                    status_code=response.status_code if response is not None else None,
                    code=code,
                    message=message,
                    wait_seconds=delay,
                    retry_after=retry_after_seconds(response) if response is not None else None,
                    retry=attempt + 1,
                    max_retries=self.max_retries,
                )
            )
        self._sleep(delay)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._send(self._http, method, path, **kwargs)
        if response.is_error:
            raise _api_error(response)
        return response

    # -- API -------------------------------------------------------------------------------

    def submit(
        self,
        inputs: Iterable[InputFile] | Path | str = (),
        *,
        idempotency_key: str | None = None,
        images_url: str | Iterable[str] | None = None,
        examples_url: str | Iterable[str] | None = None,
        **form: str | int | float | dict[str, Any] | list[Any] | None,
    ) -> Training:
        """POST /v1/trainings with form fields such as steps=400, mode="pivotal", token="<leap>",
        base_model="smollm2-135m", metadata={...}, webhook_url=..., webhook_events_filter=["training.succeeded"],
        batch_size=2, lora_alpha=8, train_text_encoder=True, preset="person", priority=5,
        captions={"photo.png": "[trigger] on a beach"} (a dict or list is sent as JSON; a bool as true/false).
        `inputs`: a folder (its images or .zip, with photo.txt captions beside photo.png, else its .txt/.jsonl
        examples), or files: image paths (and their caption .txt files) or one .zip for an image model, .txt
        paths or one .jsonl for a text model, or (name, bytes) pairs (.txt/.jsonl names are sent as examples,
        except a .txt named after an image among them: its caption).
        Instead of files, `images_url` (a .zip's URL, or one URL per image) or `examples_url`: the
        server downloads them."""
        if isinstance(inputs, Path | str):
            inputs = input_files(inputs)
        files = _parts(inputs)
        data: dict[str, str | list[str]] = {
            name: _form_value(value) for name, value in form.items() if value is not None
        }
        for name, urls in (("images_url", images_url), ("examples_url", examples_url)):
            if urls is not None:
                data[name] = [urls] if isinstance(urls, str) else list(urls)
        headers = {"Idempotency-Key": idempotency_key or f"leap-client-{uuid.uuid4()}"}
        response = self._request("POST", "/v1/trainings", files=files, data=data, headers=headers)
        return Training.model_validate(response.json())

    def get(self, training_id: str) -> Training:
        """GET /v1/trainings/{id}."""
        return Training.model_validate(self._request("GET", f"/v1/trainings/{training_id}").json())

    def list_trainings(self, *, status: str | None = None, limit: int = 20, cursor: str | None = None) -> TrainingList:
        """GET /v1/trainings: one page, newest first."""
        params: dict[str, str | int] = {"limit": limit}
        if status:
            params["status"] = status
        if cursor:
            params["cursor"] = cursor
        return TrainingList.model_validate(self._request("GET", "/v1/trainings", params=params).json())

    def iter_trainings(self, *, status: str | None = None, page_size: int = 100) -> Iterator[Training]:
        """Every training, newest first, following next_cursor."""
        cursor: str | None = None
        while True:
            page = self.list_trainings(status=status, limit=page_size, cursor=cursor)
            yield from page.data
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def cancel(self, training_id: str) -> Training:
        """POST /v1/trainings/{id}/cancel (idempotent)."""
        return Training.model_validate(self._request("POST", f"/v1/trainings/{training_id}/cancel").json())

    def logs(self, training_id: str, *, after: int = 0, limit: int = 100) -> TrainingLogPage:
        """GET /v1/trainings/{id}/logs: the lines with seq > after, oldest first."""
        params = {"after": after, "limit": limit}
        return TrainingLogPage.model_validate(
            self._request("GET", f"/v1/trainings/{training_id}/logs", params=params).json()
        )

    def iter_logs(self, training_id: str, *, after: int = 0, page_size: int = 500) -> Iterator[TrainingLogLine]:
        """Every log line written so far after seq `after`, following next_after."""
        while True:
            page = self.logs(training_id, after=after, limit=page_size)
            yield from page.data
            if len(page.data) < page_size:
                return
            after = page.next_after

    def stream(self, training_id: str, *, last_event_id: int | None = None) -> Iterator[StreamEvent]:
        """GET /v1/trainings/{id}/stream: its events until the training finishes (the server then
        closes the stream). last_event_id: also the log lines after that seq."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        timeout = httpx.Timeout(self._http.timeout.connect, read=None)
        response = self._send(
            self._http, "GET", f"/v1/trainings/{training_id}/stream", stream=True, headers=headers, timeout=timeout
        )
        try:
            if response.is_error:
                response.read()
                raise _api_error(response)
            yield from parse_events(response.iter_lines())
        finally:
            response.close()

    def models(self) -> BaseModelList:
        """GET /v1/models."""
        return BaseModelList.model_validate(self._request("GET", "/v1/models").json())

    def wait(
        self,
        training_id: str,
        *,
        timeout: float | None = None,
        on_update: Callable[[Training], None] | None = None,
    ) -> Training:
        """Poll until the training finishes and return it. The interval starts at poll_interval and
        grows 1.5x up to poll_interval_max while nothing changes; a new status or step resets it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self.poll_interval
        seen: tuple[str, int] | None = None
        while True:
            training = self.get(training_id)
            if on_update is not None:
                on_update(training)
            if is_finished(training):
                return training
            state = (training.status, training.progress.step)
            interval = self.poll_interval if state != seen else min(interval * 1.5, self.poll_interval_max)
            seen = state
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WaitTimeout(training, timeout or 0.0)
                interval = min(interval, left)
            self._sleep(interval)

    def download(self, training: Training | str, folder: Path) -> list[Path]:
        """Download every artifact into `folder` (keeping sub-folders such as adapter/), verifying each
        sha256; returns the written paths. A file is written under a temporary name and renamed only
        once its checksum matches."""
        if isinstance(training, str):
            training = self.get(training)
        elif any(
            artifact.url is None or artifact.expires_at is None or artifact.expires_at <= datetime.now(UTC)
            for artifact in training.artifacts
        ):
            training = self.get(training.id)  # fresh presigned links (a webhook's training has none)
        folder.mkdir(parents=True, exist_ok=True)
        return [self._download_artifact(artifact, folder) for artifact in training.artifacts]

    def _download_artifact(self, artifact: Artifact, folder: Path) -> Path:
        target = artifact_path(folder, artifact.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".part")
        if artifact.url is None:
            raise ClientError(f"{artifact.name}: no download link (GET the training for one)")
        url = str(httpx.URL(self.base_url + "/").join(artifact.url))
        digest = hashlib.sha256()
        size = 0
        response = self._send(self._downloads, "GET", url, stream=True)
        try:
            if response.is_error:
                response.read()
                raise _api_error(response)
            with partial.open("wb") as file:
                for chunk in response.iter_bytes():
                    digest.update(chunk)
                    size += len(chunk)
                    file.write(chunk)
        finally:
            response.close()
        if digest.hexdigest() != artifact.sha256 or size != artifact.bytes:
            partial.unlink(missing_ok=True)
            raise ChecksumMismatch(
                f"{artifact.name}: got {size} bytes with sha256 {digest.hexdigest()}, "
                f"expected {artifact.bytes} bytes with sha256 {artifact.sha256}"
            )
        partial.replace(target)
        return target
