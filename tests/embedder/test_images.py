"""Decoding policy: formats, orientation, colour modes, resize policies, bad files."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from embedder import ImageError, InputRangeError
from embedder.inputs.decoding import DEFAULT_MAX_PIXELS, as_uint8_batch, decode_image, fit_square


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def png16(array: np.ndarray) -> bytes:
    """A 16-bit RGB(A) PNG written by hand (Pillow cannot write one)."""
    height, width, channels = array.shape
    raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 16, {3: 2, 4: 6}[channels], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def solid(color: tuple[int, ...], mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.new(mode, size, color)


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [("JPEG", {"quality": 95}, 6), ("PNG", {}, 0), ("BMP", {}, 0), ("GIF", {}, 8), ("WEBP", {"lossless": True}, 0)],
)
def test_formats_decode_to_rgb_uint8(fmt: str, options: dict, tolerance: int) -> None:
    pixels = decode_image(encode(solid((200, 100, 50)), fmt, **options), size=16)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8
    assert np.abs(pixels.astype(int) - (200, 100, 50)).max() <= tolerance


def test_gif_uses_first_frame() -> None:
    frames = [solid((255, 0, 0), "RGB").convert("P"), solid((0, 0, 255), "RGB").convert("P")]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    pixels = decode_image(buffer.getvalue(), size=8)
    assert pixels[..., 0].min() > 200 and pixels[..., 2].max() < 50


def test_exif_orientation_is_applied() -> None:
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 20, 20))  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    pixels = decode_image(encode(image, "JPEG", exif=exif, quality=95), size=20, resize="squash")
    # displayed upright the image is 20 wide, 40 tall, with white on top
    assert pixels[:8].mean() > 200 and pixels[12:].mean() < 50


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (solid(128, "L"), (128, 128, 128)),
        (solid(1, "1"), (255, 255, 255)),
        (solid((10, 20, 30)).convert("P", palette=Image.Palette.ADAPTIVE), (10, 20, 30)),
        (solid((255, 0, 0, 0), "RGBA"), (255, 255, 255)),  # fully transparent: the white background
        (solid((255, 0, 0, 255), "RGBA"), (255, 0, 0)),
        (solid((0, 255, 255, 0), "CMYK"), (255, 0, 0)),
    ],
    ids=["grayscale", "bilevel", "palette", "transparent", "opaque-rgba", "cmyk"],
)
def test_colour_modes_become_rgb(image: Image.Image, expected: tuple[int, int, int]) -> None:
    fmt = "TIFF" if image.mode == "CMYK" else "PNG"
    pixels = decode_image(encode(image, fmt), size=8)
    assert np.abs(pixels.astype(int) - expected).max() <= 1


def test_16_bit_grayscale_is_rescaled_not_clipped() -> None:
    array = np.full((8, 8), 32768, np.uint16)
    pixels = decode_image(encode(Image.fromarray(array), "PNG"), size=8)
    assert np.all(np.abs(pixels.astype(int) - 128) <= 1)


def test_16_bit_rgb_png() -> None:
    array = np.zeros((8, 8, 3), np.uint16)
    array[..., 0], array[..., 1] = 65535, 32768
    pixels = decode_image(png16(array), size=8)
    assert np.abs(pixels[0, 0].astype(int) - (255, 128, 0)).max() <= 1


def test_crop_keeps_the_centre_and_squash_keeps_everything() -> None:
    image = Image.new("RGB", (300, 100), (0, 0, 255))
    image.paste((255, 0, 0), (100, 0, 200, 100))  # red centre square, blue sides
    cropped = fit_square(np.asarray(image), size=50, resize="crop")
    squashed = fit_square(np.asarray(image), size=60, resize="squash")
    inner = cropped[:, 1:-1]  # edge columns blend with their outside neighbours, as in resize-then-crop
    assert inner[..., 0].min() > 240 and inner[..., 2].max() < 15
    assert squashed[:, :15, 2].min() > 240 and squashed[:, 25:35, 0].min() > 240


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty file"),
        (b"this is text, not a picture" * 10, "not an image"),
        (encode(Image.effect_noise((200, 200), 60).convert("RGB"), "JPEG")[:6000], "truncated or corrupt image data"),
    ],
    ids=["zero-bytes", "not-an-image", "truncated-jpeg"],
)
def test_bad_bytes_raise_image_error(data: bytes, reason: str) -> None:
    with pytest.raises(ImageError, match=reason) as raised:
        decode_image(data, size=16)
    assert raised.value.limits == {}  # no limit would admit these bytes


def test_decompression_bomb_is_refused_before_decoding() -> None:
    data = encode(Image.new("L", (3000, 3000)), "PNG")  # tiny file, 9 Mpx
    with pytest.raises(ImageError, match=r"3000x3000 = 9 Mpx, over the limit of 1 Mpx") as raised:
        decode_image(data, size=16, max_pixels=1_000_000)
    assert raised.value.limits == {"max_pixels": 1_000_000}
    assert decode_image(data, size=16, max_pixels=10_000_000).shape == (16, 16, 3)


def png_header(width: int, height: int) -> bytes:
    """A PNG that is only its header: enough for Pillow to read the size, nothing to decode."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_pillows_own_bomb_refusal_records_the_limit_too() -> None:
    with pytest.raises(ImageError, match="--max-pixels") as raised:
        decode_image(png_header(20_000, 20_000), size=16, max_pixels=DEFAULT_MAX_PIXELS)  # 400 Mpx > 2x Pillow's limit
    assert raised.value.limits == {"max_pixels": DEFAULT_MAX_PIXELS}


def test_uint8_batches_are_resized_to_the_backbone_size() -> None:
    batch = np.zeros((2, 40, 30, 3), np.uint8)
    assert as_uint8_batch(batch, size=16).shape == (2, 16, 16, 3)


@pytest.mark.parametrize(
    ("values", "message"),
    [(np.full((1, 8, 8, 3), 0.5), r"\[0, 1\]"), (np.full((1, 8, 8, 3), -0.5), r"\[-1, 1\]")],
    ids=["zero-one", "minus-one-one"],
)
def test_already_scaled_floats_are_refused(values: np.ndarray, message: str) -> None:
    with pytest.raises(InputRangeError, match=message):
        as_uint8_batch(values, size=8)
    assert as_uint8_batch(values.clip(0), size=8, check_range=False).dtype == np.uint8


def test_float_0_255_is_accepted_as_is() -> None:
    batch = np.full((1, 8, 8, 3), 200.0)
    assert np.all(as_uint8_batch(batch, size=8) == 200)
