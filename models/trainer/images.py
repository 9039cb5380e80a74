"""Loading and normalising user images (Pillow only, no torch: the API uses it to validate)."""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from models.trainer.errors import InvalidImagesError

MIN_IMAGES = 2
MAX_IMAGES = 50
DEFAULT_MAX_PIXELS = 40_000_000
MIN_SIDE = 8
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Pillow names the file object it read in some messages: `<_io.BytesIO object at 0x7f...>` tells the
# caller nothing (the file's own name starts every message) and leaks an address.
_OBJECT_REPR = re.compile(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>")


def _reason(error: BaseException) -> str:
    """Pillow's message without the repr of the file object it read."""
    return _OBJECT_REPR.sub("", str(error)).strip() or type(error).__name__


@dataclass(frozen=True)
class ImageSource:
    """An image's bytes and the name used in error messages."""

    name: str
    data: bytes


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode (RGBA, P, CMYK, L, I;16, F, ...) to 8-bit RGB."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: rescale the real range to 0..255 instead of clipping.
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        image = Image.fromarray(scaled.round().astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    # Already RGB: no copy (a 40-megapixel image is 120 MB).
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_image(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Fully decode one image, apply EXIF orientation and return RGB; raise InvalidImagesError."""
    return decode_image_file(source.name, io.BytesIO(source.data), max_pixels=max_pixels)


def decode_image_file(name: str, file: IO[bytes], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """decode_image for an open, seekable file: a large upload is decoded without a copy in memory."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(file)
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidImagesError(f"{width}x{height} pixels is over the limit of {max_pixels} pixels", name)
            image.load()  # decodes every byte: truncated files fail here
            if getattr(image, "n_frames", 1) > 1:
                image.seek(0)
            ImageOps.exif_transpose(image, in_place=True)  # a copy otherwise: 120 MB at 40 megapixels
    except InvalidImagesError:
        raise
    except UnidentifiedImageError as error:
        raise InvalidImagesError(
            "not an image: no format Pillow reads (PNG, JPEG, WebP, ...) matches it", name
        ) from error
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InvalidImagesError(f"not a decodable image ({_reason(error)})", name) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise InvalidImagesError(f"image data is corrupt or truncated ({_reason(error)})", name) from error
    if min(image.size) < MIN_SIDE:
        raise InvalidImagesError(f"image is {image.size[0]}x{image.size[1]}, below {MIN_SIDE} px", name)
    return _to_rgb(image)


def decode_images(sources: Sequence[ImageSource], *, max_pixels: int = DEFAULT_MAX_PIXELS) -> list[Image.Image]:
    """Decode a training set, checking its size (2-50 images)."""
    if not MIN_IMAGES <= len(sources) <= MAX_IMAGES:
        raise InvalidImagesError(f"need {MIN_IMAGES}-{MAX_IMAGES} images, got {len(sources)}")
    return [decode_image(source, max_pixels=max_pixels) for source in sources]


def read_image_dir(directory: Path) -> list[ImageSource]:
    """Read every image file of a folder (sorted by name) as sources."""
    if not directory.is_dir():
        raise InvalidImagesError(f"{directory} is not a folder")
    paths = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return [ImageSource(name=path.name, data=path.read_bytes()) for path in paths]


def read_captions(directory: Path, sources: Sequence[ImageSource]) -> list[str | None]:
    """Each image's caption: the text of the .txt file with the image's stem beside it (photo.png ->
    photo.txt), None where there is none."""
    captions: list[str | None] = []
    for source in sources:
        path = directory / f"{Path(source.name).stem}.txt"
        captions.append(path.read_text(encoding="utf-8").strip() if path.is_file() else None)
    return captions


def center_crop_resize(image: Image.Image, resolution: int) -> Image.Image:
    """Centre-crop to a square and resize to `resolution` (the model's native size)."""
    side = min(image.size)
    left = (image.size[0] - side) // 2
    top = (image.size[1] - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return square.resize((resolution, resolution), Image.Resampling.BICUBIC)
