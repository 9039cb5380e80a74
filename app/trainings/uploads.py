"""Reading a multipart training submission within limits, and turning it into image sources.

Nothing here touches the database or storage: a request that fails these checks leaves no trace.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import hashlib
import io
import json
import re
import tempfile
import threading
import zipfile
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import FormParser, MultiPartException, MultiPartParser

from app.errors import (
    InvalidExamples,
    InvalidImages,
    LeapError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.settings import Settings
from app.trainings import captions
from app.validation import NUL, NUL_MESSAGE
from models.trainer.errors import InvalidImagesError
from models.trainer.images import IMAGE_SUFFIXES, MAX_IMAGES, MIN_IMAGES, decode_image_file

IMAGES_FIELD = "images"
EXAMPLES_FIELD = "examples"
"""Text trainings' .txt or .jsonl files (app.trainings.text_uploads parses them)."""
IMAGES_URL_FIELD = "images_url"
EXAMPLES_URL_FIELD = "examples_url"
"""Text parts naming inputs by URL instead (app.trainings.fetch downloads them into `files`/`examples`)."""
URL_FIELDS = {IMAGES_URL_FIELD: IMAGES_FIELD, EXAMPLES_URL_FIELD: EXAMPLES_FIELD}
# Room for a text training's 500 .txt files; the count of each kind is checked after parsing.
MAX_FILES = 1000
_ZIP_MAGIC = b"PK\x03\x04"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_CHUNK = 1024 * 1024
# Files that archivers and file managers put beside the pictures.
_JUNK_NAMES = {"thumbs.db", "desktop.ini", ".ds_store"}
_SYMLINK_MODE = 0o120000


class MalformedRequest(LeapError):
    status_code = 400
    code = "malformed_request"


@dataclass
class UploadedFile:
    """A file part, spooled by the parser (to disk past 1 MiB): read it in pieces, not at once."""

    filename: str
    file: IO[bytes]
    size: int

    def head(self, count: int) -> bytes:
        self.file.seek(0)
        return self.file.read(count)

    def read_all(self) -> bytes:
        """The whole file (text examples are small: their size is checked before this is called)."""
        self.file.seek(0)
        return self.file.read()


@dataclass
class Submission:
    """The parsed form: text fields by name, the files of the `images` field and those of the
    `examples` field, each in order, and the URLs of `images_url` / `examples_url` (repeatable).

    The files stay open (spooled) until close(): the request's dependency closes them. Files fetched
    from the URLs are added to `files` / `examples` and closed with them."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)
    examples: list[UploadedFile] = field(default_factory=list)
    urls: dict[str, list[str]] = field(default_factory=dict)
    downloaded: bool = False
    """The URLs' files are in `files` / `examples` (app.trainings.fetch fetched them)."""

    def close(self) -> None:
        for upload in (*self.files, *self.examples):
            upload.file.close()


class _TextPartTooLarge(MultiPartException):
    def __init__(self, name: str) -> None:
        super().__init__(f"{name}: text part over the limit")
        self.name = name


class _Parser(MultiPartParser):
    """Starlette's parser, saying which text field is over the part limit."""

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is None and len(part.data) + (end - start) > self.max_part_size:
            raise _TextPartTooLarge(part.field_name)
        super().on_part_data(data, start, end)


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes", details={"limit": limit})
        yield chunk


def _form_fields_limit(settings: Settings) -> int:
    """The largest urlencoded form: the metadata and 50 input URLs of 2048 characters, each up to
    three times longer once percent-encoded, and room for the other fields."""
    return 3 * (settings.max_metadata_bytes + MAX_IMAGES * 2048) + 16 * 1024


async def _read_fields_only(request: Request, settings: Settings) -> Submission:
    """An application/x-www-form-urlencoded body: text fields only (inputs given by URL)."""
    limit = _form_fields_limit(settings)
    form = await FormParser(request.headers, _limited(request.stream(), limit)).parse()
    submission = Submission()
    for name, value in form.multi_items():
        assert isinstance(value, str)
        _add_field(submission, name, value)
    return submission


def _refuse_declared_size(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes is over the limit of {limit} bytes", details={"limit": limit}
        )


async def _read_json(request: Request, settings: Settings) -> Submission:
    """An application/json body: the same fields as the form, with inputs as URLs (images_url,
    examples_url: one string or a list) or as base64 data URIs (images, examples: a list), each
    decoded into a spooled file and then checked exactly as an uploaded file is."""
    limit = min(settings.max_json_body_bytes, settings.max_upload_bytes)
    _refuse_declared_size(request, limit)
    body = bytearray()
    async for chunk in _limited(request.stream(), limit):
        body += chunk
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValidationFailed(f"body: not valid JSON ({error})"[:300], details={"field": "body"}) from error
    del body
    if not isinstance(value, dict):
        raise ValidationFailed(
            f"body: must be a JSON object of the training's fields, got {_json_type(value)}", details={"field": "body"}
        )
    submission = Submission()
    try:
        for name, item in value.items():
            _add_json_field(submission, name, item)
    except BaseException:
        submission.close()
        raise
    return submission


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _add_json_field(submission: Submission, name: str, value: object) -> None:
    """One member of a JSON submission, as the multipart part(s) it stands for."""
    if NUL in name:
        raise ValidationFailed(f"body: a field name {NUL_MESSAGE}", details={"field": "body"})
    if value is None:
        return  # as if left out
    if name in (IMAGES_FIELD, EXAMPLES_FIELD):
        items = value if isinstance(value, list) else None
        if items is None or not all(isinstance(item, str) for item in items):
            raise ValidationFailed(
                f"{name}: must be an array of base64 data URIs (data:image/png;base64,...); send URLs in '{name}_url'",
                details={"field": name},
            )
        if len(items) > MAX_FILES:
            raise ValidationFailed(f"{name}: at most {MAX_FILES} files", details={"field": name})
        target = submission.files if name == IMAGES_FIELD else submission.examples
        for index, item in enumerate(items):
            target.append(_data_uri_file(name, index, item))
        return
    if name in URL_FIELDS:
        urls = [value] if isinstance(value, str) else value
        if not isinstance(urls, list) or not all(isinstance(url, str) for url in urls):
            raise ValidationFailed(f"{name}: must be a URL or an array of URLs", details={"field": name})
        if len(urls) > MAX_IMAGES:
            raise ValidationFailed(f"{name}: at most {MAX_IMAGES} URLs", details={"field": name})
        submission.urls.setdefault(name, []).extend(urls)
        return
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    else:
        # Numbers as JSON writes them (5, 0.0001); metadata and webhook_events_filter as JSON text,
        # which the form's own parsing reads.
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    _add_field(submission, name, text)


_DATA_URI = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<base64>;base64)?,", re.I)


def _data_uri_file(field: str, index: int, uri: str) -> UploadedFile:
    """A base64 data URI as a spooled file named after its index and type (image-3.png)."""
    match = _DATA_URI.match(uri[:300])
    if match is None or not match.group("base64"):
        raise ValidationFailed(
            f"{field}[{index}]: not a base64 data URI (data:<type>;base64,<data>)",
            details={"field": field, "index": index},
        )
    try:
        data = base64.b64decode(uri[match.end() :], validate=True)
    except (binascii.Error, ValueError) as error:
        raise ValidationFailed(
            f"{field}[{index}]: invalid base64 ({error})", details={"field": field, "index": index}
        ) from error
    media_type = (match.group("type") or "").lower()
    suffix = _DATA_SUFFIXES.get(media_type, "")
    stem = "image" if field == IMAGES_FIELD else "example"
    if not suffix and field == EXAMPLES_FIELD:
        suffix = ".txt"
    spooled = tempfile.SpooledTemporaryFile(max_size=_CHUNK)  # noqa: SIM115 - Submission.close() closes it
    spooled.write(data)
    spooled.seek(0)
    return UploadedFile(filename=f"{stem}-{index}{suffix}", file=spooled, size=len(data))


_DATA_SUFFIXES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "image/gif": ".gif",
    "image/bmp": ".bmp",
    "image/tiff": ".tiff",
    "application/zip": ".zip",
    "application/x-zip-compressed": ".zip",
    "text/plain": ".txt",
    "application/jsonl": ".jsonl",
    "application/x-ndjson": ".jsonl",
    "application/json": ".jsonl",
}


async def read_submission(request: Request, settings: Settings) -> Submission:
    """Parse multipart/form-data, refusing oversized bodies while they stream in; file parts are
    spooled to temporary files, never held whole in memory. The caller closes the submission.

    A body of text fields only (inputs by URL) may also come as application/x-www-form-urlencoded,
    and any submission as application/json (files as base64 data URIs, for small sets)."""
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("application/x-www-form-urlencoded"):
        return await _read_fields_only(request, settings)
    if content_type.startswith("application/json"):
        return await _read_json(request, settings)
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(
            "send multipart/form-data with the images in the 'images' field (or their URL in 'images_url'), "
            "or application/json"
        )
    _refuse_declared_size(request, settings.max_upload_bytes)
    parser = _Parser(
        request.headers,
        _limited(request.stream(), settings.max_upload_bytes),
        max_files=MAX_FILES,
        max_fields=64 + MAX_IMAGES,  # room for 50 repeated images_url parts
        max_part_size=settings.max_metadata_bytes + 1024,
    )
    try:
        form = await parser.parse()
    except _TextPartTooLarge as error:
        raise ValidationFailed(
            f"{error.name}: over {settings.max_metadata_bytes} bytes",
            details={"field": error.name, "limit": settings.max_metadata_bytes},
        ) from error
    except MultiPartException as error:
        if error.message.startswith("Too many files"):
            raise InvalidImages(
                f"too many files: send at most {MAX_IMAGES} images (or a text model's 500 examples)"
            ) from error
        raise MalformedRequest(f"malformed multipart body: {error.message}") from error
    submission = Submission()
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                target = submission.files if name == IMAGES_FIELD else submission.examples
                target.append(_uploaded_file(name, value, index=len(target)))
            else:
                _add_field(submission, name, value)
    except BaseException:
        await form.close()
        raise
    return submission


def _uploaded_file(name: str, value: UploadFile, *, index: int) -> UploadedFile:
    if name not in (IMAGES_FIELD, EXAMPLES_FIELD):
        raise ValidationFailed(
            f"{name}: unexpected file; images go in the '{IMAGES_FIELD}' field, "
            f"text examples in the '{EXAMPLES_FIELD}' field",
            details={"field": name},
        )
    filename = value.filename or (f"image-{index}" if name == IMAGES_FIELD else f"example-{index}.txt")
    if NUL in filename:
        # Postgres cannot store it, and a name cut at the NUL would hide what was sent.
        raise ValidationFailed(f"{name}: file name {filename!r} {NUL_MESSAGE}", details={"field": name})
    return UploadedFile(filename=filename, file=value.file, size=value.size or 0)


def _add_field(submission: Submission, name: str, value: str) -> None:
    if name == EXAMPLES_FIELD:
        raise InvalidExamples(
            f"'{EXAMPLES_FIELD}' must be file parts (e.g. curl -F examples=@one.txt), not text",
            details={"field": name},
        )
    if name == IMAGES_FIELD:
        raise InvalidImages(
            f"'{IMAGES_FIELD}' must be file parts (e.g. curl -F images=@photo.png), not text",
            details={"field": name},
        )
    if name in URL_FIELDS:
        # Repeatable, like the file fields: several single images may be given by URL.
        submission.urls.setdefault(name, []).append(value)
        return
    if name in submission.fields:
        raise ValidationFailed(f"{name}: given more than once", details={"field": name})
    submission.fields[name] = value


@dataclass(frozen=True)
class InputImage:
    """One image of a submission: an uploaded file or a zip entry, read only when needed."""

    name: str
    open: Callable[[], ContextManager[IO[bytes]]]
    """A reader positioned at the image's first byte."""
    seekable: bool = True
    """Whether the reader seeks cheaply (a spooled file, not a compressed zip entry)."""

    def sha256(self) -> str:
        """Hash of the bytes as sent, read in pieces."""
        digest = hashlib.sha256()
        with _reading(self.name), self.open() as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()

    def reader(self, settings: Settings) -> ContextManager[IO[bytes]]:
        """A seekable reader of the image: its spooled file, or a zip entry's bytes (at most the
        per-image limit: a zip header's sizes may lie)."""
        if self.seekable:
            return self.open()
        with _reading(self.name), self.open() as handle:
            data = handle.read(settings.max_image_bytes + 1)
        _check_file_size(self.name, len(data), settings)
        return contextlib.nullcontext(io.BytesIO(data))


@dataclass
class CollectedImages:
    """The images to train on, the zip entries skipped as not images (in zip order), and the captions
    of caption files sent beside the images (app/trainings/captions.py), by image name."""

    images: list[InputImage]
    skipped: list[str] = field(default_factory=list)
    captions: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _reading(name: str) -> Iterator[None]:
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError) as error:
        raise InvalidImages(f"{name}: corrupt zip entry ({error})", details={"file": name}) from error


def _is_zip(upload: UploadedFile) -> bool:
    return upload.head(4) == _ZIP_MAGIC or upload.filename.lower().endswith(".zip")


def _check_file_size(name: str, size: int, settings: Settings) -> None:
    if size > settings.max_image_bytes:
        raise PayloadTooLarge(
            f"{name}: {size} bytes is over the per-image limit of {settings.max_image_bytes} bytes",
            details={"file": name, "limit": settings.max_image_bytes},
        )


def _unsafe_zip_entry(info: zipfile.ZipInfo) -> str | None:
    """Why an entry's name or type is refused outright (it would escape or point elsewhere)."""
    if NUL in info.orig_filename:
        # zipfile cuts the name at the NUL, so 'a.png\x00.exe' would pass as a.png.
        return "has a NUL character (\\u0000) in its name"
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        return "has an absolute path"
    if ".." in re.split(r"[/\\]", name):
        return "has a '..' path component"
    if (info.external_attr >> 16) & 0o170000 == _SYMLINK_MODE:
        return "is a symbolic link"
    return None


def _junk_zip_entry(info: zipfile.ZipInfo) -> bool:
    """Not an image to train on: macOS resource forks, hidden files, thumbnails caches, text, ..."""
    base = info.filename.rsplit("/", 1)[-1]
    return (
        info.filename.startswith("__MACOSX/")
        or base.startswith(".")
        or base.lower() in _JUNK_NAMES
        or not base.lower().endswith(IMAGE_SUFFIXES)
    )


def _read_zip(upload: UploadedFile, settings: Settings) -> CollectedImages:
    try:
        upload.file.seek(0)
        archive = zipfile.ZipFile(upload.file)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as error:
        raise InvalidImages(
            f"{upload.filename}: not a readable zip ({error})", details={"file": upload.filename}
        ) from error
    entries = archive.infolist()
    if len(entries) > settings.max_zip_entries:
        raise InvalidImages(
            f"{upload.filename}: {len(entries)} zip entries, the limit is {settings.max_zip_entries}",
            details={"file": upload.filename},
        )
    for entry in entries:
        reason = _unsafe_zip_entry(entry)
        if reason is not None:
            raise InvalidImages(
                f"{upload.filename}: entry {entry.orig_filename!r} {reason}; refused",
                details={"file": entry.orig_filename},
            )
    files = [entry for entry in entries if not entry.is_dir()]
    entries = [entry for entry in files if not _junk_zip_entry(entry)]
    caption_entries = {entry.filename: entry for entry in files if _caption_zip_entry(entry)}
    paired = captions.pair_caption_files(caption_entries, [entry.filename for entry in entries])
    skipped = [entry.filename for entry in files if _junk_zip_entry(entry) and entry.filename not in paired]
    if len(entries) > MAX_IMAGES:
        raise InvalidImages(
            f"need {MIN_IMAGES}-{MAX_IMAGES} images, the zip holds {len(entries)}",
            details={"count": len(entries), "file": upload.filename},
        )
    declared_total = 0
    for entry in entries:
        name = entry.filename
        if entry.flag_bits & 0x1:
            raise InvalidImages(f"{name}: encrypted zip entries are not supported", details={"file": name})
        _check_file_size(name, entry.file_size, settings)
        ratio = entry.file_size / max(entry.compress_size, 1)
        if ratio > settings.max_zip_ratio:
            raise InvalidImages(
                f"{name}: compression ratio {ratio:.0f} is over the limit of {settings.max_zip_ratio} (zip bomb?)",
                details={"file": name},
            )
        declared_total += entry.file_size
    if declared_total > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"{upload.filename}: unpacks to {declared_total} bytes, over the limit of {settings.max_upload_bytes}",
            details={"file": upload.filename},
        )

    def opener(entry: zipfile.ZipInfo) -> Callable[[], ContextManager[IO[bytes]]]:
        return lambda: archive.open(entry)

    images = [InputImage(entry.filename, opener(entry), seekable=False) for entry in entries]
    found = {}
    for name, image in paired.items():
        with _reading(name), archive.open(caption_entries[name]) as handle:
            text = captions.caption_text(name, handle.read(captions.MAX_CAPTION_FILE_BYTES + 1))
        if text:
            found[image] = text
    return CollectedImages(images, skipped, found)


def _caption_zip_entry(info: zipfile.ZipInfo) -> bool:
    """A .txt entry that may caption an image (not a resource fork or a hidden file)."""
    base = info.filename.rsplit("/", 1)[-1]
    return captions.is_caption_file(base) and not info.filename.startswith("__MACOSX/") and not base.startswith(".")


def _file_image(upload: UploadedFile) -> InputImage:
    def open_file() -> ContextManager[IO[bytes]]:
        upload.file.seek(0)
        return contextlib.nullcontext(upload.file)

    return InputImage(upload.filename, open_file)


def collect_images(files: list[UploadedFile], settings: Settings, *, field: str = IMAGES_FIELD) -> CollectedImages:
    """The submission's images: repeated image files, or the image entries of one zip (other
    entries skipped); counts, sizes and zip entry names checked, nothing decoded yet. A refusal
    of the whole set names `field` (images, or images_url when they were fetched)."""
    if not files:
        raise InvalidImages(
            f"no images: send {MIN_IMAGES}-{MAX_IMAGES} files in the '{IMAGES_FIELD}' field or a single .zip",
            details={"count": 0, "field": IMAGES_FIELD},
        )
    zips = [upload for upload in files if _is_zip(upload)]
    if zips and len(files) > 1:
        raise InvalidImages(
            "send either image files or a single .zip, not several files with a zip among them",
            details={"file": zips[0].filename},
        )
    collected = _read_zip(zips[0], settings) if zips else _collect_files(files, settings)
    count = len(collected.images)
    if not MIN_IMAGES <= count <= MAX_IMAGES:
        skipped = f" (skipped as not images: {', '.join(collected.skipped[:10])})" if collected.skipped else ""
        raise InvalidImages(
            f"{field}: need {MIN_IMAGES}-{MAX_IMAGES} images, got {count}{skipped}",
            details={"count": count, "field": field},
        )
    return collected


def _collect_files(files: list[UploadedFile], settings: Settings) -> CollectedImages:
    """Image files, and caption files named after them (photo.png and photo.txt)."""
    caption_files = {upload.filename: upload for upload in files if captions.is_caption_file(upload.filename)}
    images = [upload for upload in files if upload.filename not in caption_files]
    for upload in images:
        _check_file_size(upload.filename, upload.size, settings)
    paired = captions.pair_caption_files(caption_files, [upload.filename for upload in images])
    for name in caption_files:
        if name not in paired:
            raise InvalidImages(
                f"{IMAGES_FIELD}: {name} names no image; a caption file takes its image's name (photo.png, photo.txt)",
                details={"file": name, "field": IMAGES_FIELD},
            )
    found = {}
    for name, image in paired.items():
        upload = caption_files[name]
        if upload.size > captions.MAX_CAPTION_FILE_BYTES:
            raise InvalidImages(
                f"{name}: caption file is over {captions.MAX_CAPTION_FILE_BYTES} bytes",
                details={"file": name, "field": IMAGES_FIELD},
            )
        text = captions.caption_text(name, upload.read_all())
        if text:
            found[image] = text
    return CollectedImages([_file_image(upload) for upload in images], captions=found)


@functools.cache
def _decode_slots(count: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(count)


@dataclass(frozen=True)
class CleanCopy:
    """An image re-encoded into a temporary file, with its size and hash."""

    name: str
    """The image's name as sent (file name or zip entry)."""
    path: Path
    bytes: int
    sha256: str


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _re_encode(image: InputImage, path: Path, settings: Settings, min_side: int) -> CleanCopy:
    # At most LEAP_UPLOAD_DECODE_CONCURRENCY images are decoded at once in this process: a decoded
    # image may take LEAP_MAX_IMAGE_PIXELS x 3 bytes, and concurrent uploads must not add that up.
    with _decode_slots(settings.upload_decode_concurrency):
        with _reading(image.name), image.reader(settings) as file:
            try:
                decoded = decode_image_file(image.name, file, max_pixels=settings.max_image_pixels)
            except InvalidImagesError as error:
                raise InvalidImages(error.message, details={"file": error.file}) from error
        if min(decoded.size) < min_side:
            width, height = decoded.size
            raise InvalidImages(
                f"{image.name}: image is {width}x{height}, below the {min_side} px on its shortest side "
                "that this base model needs",
                details={"file": image.name, "min_side": min_side},
            )
        decoded.info.clear()  # no ICC profile, EXIF or text chunks carried into the copy
        decoded.save(path, format="PNG", compress_level=1)
        del decoded
    return CleanCopy(name=image.name, path=path, bytes=path.stat().st_size, sha256=_file_sha256(path))


@contextlib.contextmanager
def clean_copies(images: list[InputImage], settings: Settings, *, min_side: int = 0) -> Iterator[list[CleanCopy]]:
    """Decode every image fully (pixel bombs refused before decoding), one at a time, and re-encode
    each as a plain RGB PNG in a temporary folder, deleted on exit: whatever else an upload carried
    (trailing data, metadata, a second format) is gone, and nothing is stored unless all decode
    (and have at least `min_side` pixels on their shortest side: the base model's minimum)."""
    with tempfile.TemporaryDirectory(prefix="leap-inputs-") as folder:
        yield [
            _re_encode(image, Path(folder) / f"{index:02d}.png", settings, min_side)
            for index, image in enumerate(images)
        ]


def storage_name(index: int, name: str, suffix: str = ".png") -> str:
    """A safe object name for the index-th input: its clean PNG copy, or a text file with its suffix."""
    base = name.rsplit("/", 1)[-1]
    stem, dot, _ = base.rpartition(".")
    cleaned = _SAFE_NAME.sub("_", stem if dot else base).strip("._")[:60] or "input"
    return f"{index:02d}-{cleaned}{suffix}"
