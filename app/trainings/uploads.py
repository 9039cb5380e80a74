"""Reading a multipart training submission within limits, and turning it into image sources.

Nothing here touches the database or storage: a request that fails these checks leaves no trace.
"""

from __future__ import annotations

import io
import re
import zipfile
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.errors import (
    InvalidExamples,
    InvalidImages,
    LeapError,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from app.settings import Settings
from models.trainer.errors import InvalidImagesError
from models.trainer.images import MAX_IMAGES, MIN_IMAGES, ImageSource, decode_image

IMAGES_FIELD = "images"
EXAMPLES_FIELD = "examples"
"""Text trainings' .txt or .jsonl files (app.trainings.text_uploads parses them)."""
# Room for a text training's 500 .txt files; the count of each kind is checked after parsing.
MAX_FILES = 1000
_ZIP_MAGIC = b"PK\x03\x04"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class MalformedRequest(LeapError):
    status_code = 400
    code = "malformed_request"


@dataclass
class UploadedFile:
    filename: str
    data: bytes


@dataclass
class Submission:
    """The parsed form: text fields by name, the files of the `images` field and those of the
    `examples` field, each in order."""

    fields: dict[str, str] = field(default_factory=dict)
    files: list[UploadedFile] = field(default_factory=list)
    examples: list[UploadedFile] = field(default_factory=list)


async def _limited(stream: AsyncIterator[bytes], limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body is over the limit of {limit} bytes", details={"limit": limit})
        yield chunk


async def read_submission(request: Request, settings: Settings) -> Submission:
    """Parse multipart/form-data, refusing oversized bodies while they stream in."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise UnsupportedMediaType("send multipart/form-data with the images in the 'images' field")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"request body of {declared} bytes is over the limit of {settings.max_upload_bytes} bytes",
            details={"limit": settings.max_upload_bytes},
        )
    parser = MultiPartParser(
        request.headers,
        _limited(request.stream(), settings.max_upload_bytes),
        max_files=MAX_FILES,
        max_fields=64,
        max_part_size=settings.max_metadata_bytes + 1024,
    )
    try:
        form = await parser.parse()
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
                if name not in (IMAGES_FIELD, EXAMPLES_FIELD):
                    raise ValidationFailed(
                        f"{name}: unexpected file; images go in the '{IMAGES_FIELD}' field, "
                        f"text examples in the '{EXAMPLES_FIELD}' field",
                        details={"field": name},
                    )
                data = await value.read()
                target = submission.files if name == IMAGES_FIELD else submission.examples
                default_name = f"image-{len(target)}" if name == IMAGES_FIELD else f"example-{len(target)}.txt"
                target.append(UploadedFile(filename=value.filename or default_name, data=data))
            else:
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
                if name in submission.fields:
                    raise ValidationFailed(f"{name}: given more than once", details={"field": name})
                submission.fields[name] = value
    finally:
        await form.close()
    return submission


def _is_zip(upload: UploadedFile) -> bool:
    return upload.data[:4] == _ZIP_MAGIC or upload.filename.lower().endswith(".zip")


def _check_file_size(name: str, size: int, settings: Settings) -> None:
    if size > settings.max_image_bytes:
        raise PayloadTooLarge(
            f"{name}: {size} bytes is over the per-image limit of {settings.max_image_bytes} bytes",
            details={"file": name, "limit": settings.max_image_bytes},
        )


def _skipped_zip_entry(info: zipfile.ZipInfo) -> bool:
    base = info.filename.rsplit("/", 1)[-1]
    return info.is_dir() or info.filename.startswith("__MACOSX/") or not base or base.startswith(".")


def _read_zip(upload: UploadedFile, settings: Settings) -> list[ImageSource]:
    try:
        archive = zipfile.ZipFile(io.BytesIO(upload.data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError) as error:
        raise InvalidImages(
            f"{upload.filename}: not a readable zip ({error})", details={"file": upload.filename}
        ) from error
    with archive:
        entries = archive.infolist()
        if len(entries) > settings.max_zip_entries:
            raise InvalidImages(
                f"{upload.filename}: {len(entries)} zip entries, the limit is {settings.max_zip_entries}",
                details={"file": upload.filename},
            )
        entries = [entry for entry in entries if not _skipped_zip_entry(entry)]
        if len(entries) > MAX_IMAGES:
            raise InvalidImages(
                f"need {MIN_IMAGES}-{MAX_IMAGES} images, the zip holds {len(entries)}",
                details={"count": len(entries)},
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
        sources = []
        for entry in entries:
            try:
                with archive.open(entry) as handle:
                    # The header's sizes may lie: never read more than the limit allows.
                    data = handle.read(settings.max_image_bytes + 1)
            except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError, OSError) as error:
                raise InvalidImages(
                    f"{entry.filename}: corrupt zip entry ({error})", details={"file": entry.filename}
                ) from error
            _check_file_size(entry.filename, len(data), settings)
            sources.append(ImageSource(name=entry.filename, data=data))
        return sources


def collect_images(files: list[UploadedFile], settings: Settings) -> list[ImageSource]:
    """The submission's images: repeated image files, or the entries of one zip; counts and sizes checked."""
    if not files:
        raise InvalidImages(
            f"no images: send {MIN_IMAGES}-{MAX_IMAGES} files in the '{IMAGES_FIELD}' field or a single .zip",
            details={"count": 0},
        )
    zips = [upload for upload in files if _is_zip(upload)]
    if zips and len(files) > 1:
        raise InvalidImages(
            "send either image files or a single .zip, not several files with a zip among them",
            details={"file": zips[0].filename},
        )
    if zips:
        sources = _read_zip(zips[0], settings)
    else:
        for upload in files:
            _check_file_size(upload.filename, len(upload.data), settings)
        sources = [ImageSource(name=upload.filename, data=upload.data) for upload in files]
    if not MIN_IMAGES <= len(sources) <= MAX_IMAGES:
        raise InvalidImages(
            f"need {MIN_IMAGES}-{MAX_IMAGES} images, got {len(sources)}", details={"count": len(sources)}
        )
    return sources


def validate_images(sources: list[ImageSource], settings: Settings) -> None:
    """Fully decode every image (one at a time), refusing pixel bombs before decoding."""
    for source in sources:
        try:
            decode_image(source, max_pixels=settings.max_image_pixels)
        except InvalidImagesError as error:
            raise InvalidImages(error.message, details={"file": error.file}) from error


def storage_name(index: int, name: str) -> str:
    """A safe object name for the index-th input, keeping the original extension."""
    base = name.rsplit("/", 1)[-1]
    stem, dot, suffix = base.rpartition(".")
    cleaned = _SAFE_NAME.sub("_", stem if dot else base).strip("._")[:60] or "image"
    extension = _SAFE_NAME.sub("", suffix.lower())[:8] if dot else "img"
    return f"{index:02d}-{cleaned}.{extension}"
