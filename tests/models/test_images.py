import io

import numpy as np
import pytest
from PIL import Image

from models.trainer.errors import InvalidImagesError
from models.trainer.images import ImageSource, center_crop_resize, decode_image, decode_images


def encode(image: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def test_modes_are_converted_to_rgb():
    sources = {
        "rgba.png": Image.new("RGBA", (20, 20), (255, 0, 0, 128)),
        "cmyk.jpg": Image.new("CMYK", (20, 20), (0, 255, 255, 0)),
        "grey.png": Image.new("L", (20, 20), 90),
        "palette.gif": Image.new("P", (20, 20), 3),
    }
    for name, image in sources.items():
        fmt = {"png": "PNG", "jpg": "JPEG", "gif": "GIF"}[name.split(".")[1]]
        decoded = decode_image(ImageSource(name, encode(image, fmt)))
        assert decoded.mode == "RGB" and decoded.size == (20, 20), name


def test_16_bit_greyscale_keeps_its_range():
    array = np.linspace(0, 65535, 400, dtype=np.uint16).reshape(20, 20)
    decoded = decode_image(ImageSource("deep.png", encode(Image.fromarray(array))))
    values = np.asarray(decoded)[..., 0]
    assert values.min() == 0 and values.max() == 255


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded = decode_image(ImageSource("rotated.jpg", encode(image, "JPEG", exif=exif.tobytes())))
    assert decoded.size == (20, 40)


def test_truncated_and_non_images_name_the_file():
    data = encode(Image.new("RGB", (64, 64), (10, 200, 30)), "JPEG")
    with pytest.raises(InvalidImagesError, match="cut.jpg"):
        decode_image(ImageSource("cut.jpg", data[: len(data) // 2]))
    with pytest.raises(InvalidImagesError, match="notes.txt"):
        decode_image(ImageSource("notes.txt", b"hello, not an image"))


def test_pixel_bombs_are_refused_before_decoding():
    # A PNG of a million blank pixels compresses to a few KB: refused by its declared size.
    bomb = encode(Image.new("RGB", (20000, 50)))
    assert len(bomb) < 20_000
    with pytest.raises(InvalidImagesError, match="bomb.png.*pixels"):
        decode_image(ImageSource("bomb.png", bomb), max_pixels=500_000)


def test_set_size_is_checked():
    one = [ImageSource("a.png", encode(Image.new("RGB", (16, 16))))]
    with pytest.raises(InvalidImagesError, match="2-50 images, got 1"):
        decode_images(one)


def test_center_crop_resize():
    image = Image.new("RGB", (100, 50))
    assert center_crop_resize(image, 32).size == (32, 32)
