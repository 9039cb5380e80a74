"""Per-image captions of an image training: `.txt` files beside the images (in a zip, or as parts of
the `images` field) and the `captions` form field, checked and matched to the images by name.

A caption file belongs to the image with the same name before its suffix, in the same folder of a
zip (photo.png and photo.txt). The `captions` field, a JSON object {image name: caption} or a JSON
array in image order, replaces the files' captions for the images it names. The trainer places the
token in each caption (models.trainer.data.caption_template).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import Any

from app.errors import InvalidImages, ValidationFailed
from app.validation import NUL
from models.trainer.captions import MAX_CAPTION_CHARS

CAPTIONS_FIELD = "captions"
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_FILE_BYTES = 4 * MAX_CAPTION_CHARS
"""A caption file's limit: MAX_CAPTION_CHARS characters of up to 4 UTF-8 bytes each."""


def stem(name: str) -> str:
    """An input's name without its suffix, folders kept: `set/photo.png` -> `set/photo`."""
    path = PurePosixPath(name.replace("\\", "/"))
    return str(path.with_suffix("")) if path.suffix else str(path)


def is_caption_file(name: str) -> bool:
    return name.lower().endswith(CAPTION_SUFFIX)


def pair_caption_files(caption_names: Iterable[str], image_names: Sequence[str]) -> dict[str, str]:
    """{caption file name: image name} for the caption files whose stem is an image's stem."""
    images = {stem(name): name for name in image_names}
    return {name: images[stem(name)] for name in caption_names if stem(name) in images}


def caption_text(name: str, data: bytes) -> str:
    """A caption file's text (UTF-8, one line); 422 invalid_images naming the file when it is not one."""
    if len(data) > MAX_CAPTION_FILE_BYTES:
        raise InvalidImages(
            f"{name}: caption file is over {MAX_CAPTION_FILE_BYTES} bytes", details={"file": name, "field": "images"}
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidImages(
            f"{name}: caption file is not UTF-8 text (byte {error.start})", details={"file": name, "field": "images"}
        ) from error
    return _checked(text, where=name, details={"file": name, "field": "images"}, error=InvalidImages)


def parse_captions_field(value: Any) -> Any:
    """The `captions` field as sent: a JSON object or array (a multipart part is text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"not JSON ({error.msg}); send an object {{image name: caption}} or an array") from error
    if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        return value
    if isinstance(value, list) and all(item is None or isinstance(item, str) for item in value):
        return value
    raise ValueError("must be a JSON object {image name: caption} or an array of captions (or null) in image order")


def captions_for_images(
    image_names: Sequence[str], from_files: dict[str, str], field: dict[str, str] | list[str | None] | None
) -> list[str | None]:
    """Each image's caption, in image order: the `captions` field's where it gives one, else its caption
    file's, else None. 422 naming `captions` for an array of another length or a name of no image."""
    captions: list[str | None] = [from_files.get(name) for name in image_names]
    if field is None:
        return captions
    details = {"field": CAPTIONS_FIELD}
    if isinstance(field, list):
        if len(field) != len(image_names):
            raise ValidationFailed(
                f"{CAPTIONS_FIELD}: {len(field)} captions for {len(image_names)} images; give one per image "
                "(null for none), in image order, or an object by image name",
                details={**details, "count": len(field), "images": len(image_names)},
            )
        given = dict(enumerate(field))
    else:
        index = {name: i for i, name in enumerate(image_names)}
        index.update({PurePosixPath(name).name: i for i, name in enumerate(image_names)})
        unknown = [name for name in field if name not in index]
        if unknown:
            raise ValidationFailed(
                f"{CAPTIONS_FIELD}: {unknown[0]!r} is not the name of an image of this training "
                f"(its images: {', '.join(image_names[:5])}{', ...' if len(image_names) > 5 else ''})",
                details={**details, "name": unknown[0]},
            )
        given = {index[name]: caption for name, caption in field.items()}
    for position, caption in given.items():
        if caption is not None:
            where = f"{CAPTIONS_FIELD}: caption of {image_names[position]}"
            captions[position] = _checked(caption, where=where, details=details, error=ValidationFailed)
    return captions


def _checked(
    text: str, *, where: str, details: dict[str, Any], error: type[ValidationFailed] | type[InvalidImages]
) -> str:
    caption = " ".join(text.split())
    if NUL in caption:
        raise error(f"{where} has a NUL character (\\u0000)", details=details)
    if len(caption) > MAX_CAPTION_CHARS:
        raise error(f"{where} is over {MAX_CAPTION_CHARS} characters", details=details)
    return caption
