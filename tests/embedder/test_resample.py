"""The compiled resampler and the JPEG fast path give exactly the pixels of the Pillow policy."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from embedder.inputs.decoding import decode_image, to_rgb
from embedder.inputs.resample import resample

ORIENTATION = 0x0112


def pillow_decode(data: bytes, *, size: int, resize: str = "crop") -> np.ndarray:
    """The decoding policy written with Pillow calls only: the reference the fast path must equal."""
    image = Image.open(io.BytesIO(data))
    if image.format == "JPEG":
        image.draft("RGB", (size, size))
    image = to_rgb(ImageOps.exif_transpose(image))
    width, height = image.size
    side = min(width, height)
    box = (
        ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        if resize == "crop"
        else (0, 0, width, height)
    )
    enlarging = min(box[2] - box[0], box[3] - box[1]) < size
    return np.asarray(
        image.resize((size, size), Image.Resampling.BILINEAR if enlarging else Image.Resampling.BOX, box=box)
    )


def textured(width: int, height: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: every resampling error shows."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return np.clip(base + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray, *, mode: str = "RGB", orientation: int = 1, **options: object) -> bytes:
    image = Image.fromarray(pixels).convert(mode)
    exif = Image.Exif()
    if orientation != 1:
        exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90, exif=exif, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("seed", range(40))
def test_resample_equals_pillow_resize_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    width, height = (int(v) for v in rng.integers(1, 700, 2))
    if seed % 4 == 0:  # much taller than wide: Pillow runs the vertical pass first
        height = width * 3 + int(rng.integers(0, 50))
    size = int(rng.choice([8, 32, 96, 224, 300]))
    left, top = rng.uniform(0, width / 3), rng.uniform(0, height / 3)
    box = (left, top, rng.uniform(left + 0.5, width), rng.uniform(top + 0.5, height))
    if seed % 5 == 0:
        box = (0, 0, width, height)
    pixels = textured(width, height, seed)
    for bilinear in (False, True):
        expected = Image.fromarray(pixels).resize(
            (size, size), Image.Resampling.BILINEAR if bilinear else Image.Resampling.BOX, box=box
        )
        assert np.array_equal(resample(pixels, box, size, bilinear=bilinear), np.asarray(expected)), (
            width,
            height,
            box,
        )


def test_resample_takes_views_and_leaves_its_input_alone() -> None:
    pixels = textured(90, 60, 1)
    view = pixels[::-1].transpose(1, 0, 2)  # neither contiguous nor in row order
    before = view.copy()
    expected = Image.fromarray(np.ascontiguousarray(view)).resize((32, 32), Image.Resampling.BOX, box=(0, 10, 60, 70))
    assert np.array_equal(resample(view, (0, 10, 60, 70), 32, bilinear=False), np.asarray(expected))
    assert np.array_equal(view, before)
    with pytest.raises(ValueError, match=r"\(h, w, 3\) uint8"):
        resample(pixels.astype(np.float32), (0, 0, 90, 60), 32, bilinear=False)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_fast_path_applies_every_exif_orientation_like_pillow(orientation: int) -> None:
    data = jpeg(textured(120, 70, orientation), orientation=orientation)
    for resize in ("crop", "squash"):
        assert np.array_equal(decode_image(data, size=48, resize=resize), pillow_decode(data, size=48, resize=resize))


@pytest.mark.parametrize(
    ("name", "data", "size"),
    [
        ("grayscale", jpeg(textured(150, 100, 2), mode="L"), 64),
        ("cmyk (Pillow path)", jpeg(textured(150, 100, 3), mode="CMYK"), 64),
        ("progressive", jpeg(textured(150, 100, 4), progressive=True), 64),
        ("draft scale 2", jpeg(textured(500, 410, 5)), 200),
        ("draft scale 4, rotated", jpeg(textured(900, 1300, 6), orientation=6), 200),
        ("draft scale 8", jpeg(textured(1700, 1650, 7)), 200),
        ("enlarged", jpeg(textured(40, 30, 8)), 64),
    ],
)
def test_jpeg_fast_path_equals_pillow(name: str, data: bytes, size: int) -> None:
    assert np.array_equal(decode_image(data, size=size), pillow_decode(data, size=size)), name


def test_a_jpeg_simplejpeg_refuses_still_goes_to_pillow() -> None:
    data = bytearray(jpeg(textured(150, 100, 9)))
    marker = data.index(b"\xff\xda")  # start of scan: insert bytes Pillow skips with a warning
    data[marker:marker] = b"\x00\x00\x00"
    assert np.array_equal(decode_image(bytes(data), size=32), pillow_decode(bytes(data), size=32))


@pytest.mark.real_data
def test_real_photos_decode_exactly_as_with_pillow(shared: Path) -> None:
    from conftest import FLOWERS

    for path in sorted(FLOWERS.rglob("*.jpg"))[::10]:
        data = path.read_bytes()
        for resize in ("crop", "squash"):
            assert np.array_equal(
                decode_image(data, size=224, resize=resize), pillow_decode(data, size=224, resize=resize)
            ), path
