"""Decoding image files into RGB uint8 arrays of the backbone's size.

Policy, applied identically everywhere (extraction, `Embedder.transform`, top-k prediction):
- formats: anything Pillow opens (JPEG, PNG, BMP, GIF's first frame, WebP, ...);
- EXIF orientation is applied;
- grayscale, palette, CMYK and 16-bit images become 8-bit RGB; transparency is composited
  on a white background;
- resize "crop" (default): the central square of side min(width, height) is resized to
  size x size, which equals resizing the shorter side then center-cropping, as ImageNet
  evaluation does; "squash": the whole image is resized to size x size;
- resampling averages the covered source pixels (box filter, i.e. area interpolation) when
  shrinking and is bilinear when enlarging; large JPEGs are first decoded at a reduced scale
  (never below the target size) with `Image.draft`, which is much faster.

RGB and grayscale JPEGs, most photos, are decoded by libjpeg-turbo through simplejpeg and
resized by `embedder.resample`; both release the GIL and give the very pixels Pillow gives
(tested on real photos), so the fast path is an implementation detail, not a second policy.
Anything simplejpeg refuses goes through Pillow, which decides what is decodable.
"""

from __future__ import annotations

import io

import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from embedder.errors import ImageError, ImageTooLargeError, InputRangeError
from embedder.inputs.resample import resample

DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb threshold
BACKGROUND = (255, 255, 255)
IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".webp")
ORIENTATION = 0x0112  # EXIF tag


def decode_image(data: bytes, *, size: int, resize: str = "crop", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode file bytes into a (size, size, 3) uint8 RGB array; raise ImageError(reason) if impossible."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    image = open_image(data, max_pixels=max_pixels)
    try:
        pixels = _decode_jpeg(data, image, size) if image.format == "JPEG" and image.mode in ("RGB", "L") else None
        if pixels is None:
            if image.format == "JPEG":
                image.draft("RGB", (size, size))
            image.load()
            pixels = np.asarray(to_rgb(image))
        pixels = oriented(pixels, image.getexif().get(ORIENTATION, 1))
    except Image.DecompressionBombError as exc:
        raise _over_limit(exc, max_pixels) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"truncated or corrupt image data ({exc})") from exc
    return fit_square(pixels, size=size, resize=resize)


def _decode_jpeg(data: bytes, image: Image.Image, size: int) -> np.ndarray | None:
    """RGB pixels of a JPEG at Pillow's draft scale for `size`, or None to let Pillow decode it."""
    width, height = image.size
    scale = next((s for s in (8, 4, 2) if min(width // size, height // size) >= s), 1)  # as Pillow's draft()
    shape = (-(-height // scale), -(-width // scale))  # the draft's size, rounded up
    try:
        pixels = simplejpeg.decode_jpeg(
            data, colorspace="RGB", min_height=shape[0], min_width=shape[1], min_factor=scale
        )
    except ValueError:  # corrupt, truncated or unusual: Pillow tolerates or reports it
        return None
    return pixels if pixels.shape[:2] == shape else None


def oriented(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Pixels as EXIF `orientation` (1..8) says the photo is seen, as `ImageOps.exif_transpose` does."""
    if orientation in (5, 6, 7, 8):
        pixels = pixels.transpose(1, 0, 2)
    if orientation in (2, 3, 6, 7):
        pixels = pixels[:, ::-1]
    if orientation in (3, 4, 7, 8):
        pixels = pixels[::-1]
    return pixels


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open image bytes lazily (header only) and refuse decompression bombs before decoding."""
    if max_pixels > (Image.MAX_IMAGE_PIXELS or 0):
        Image.MAX_IMAGE_PIXELS = max_pixels  # let our own, larger limit decide
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise ImageError("not an image: the content is not a format Pillow can decode") from exc
    except Image.DecompressionBombError as exc:
        raise _over_limit(exc, max_pixels) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(f"corrupt image header ({exc})") from exc
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height / 1e6:.3g} Mpx, over the limit of "
            f"{max_pixels / 1e6:.3g} Mpx (decompression-bomb guard); pass a larger --max-pixels "
            "only if you trust this file",
            limits={"max_pixels": max_pixels},
        )
    return image


def _over_limit(exc: Image.DecompressionBombError, max_pixels: int) -> ImageTooLargeError:
    """Pillow's own bomb refusal (its threshold is never below `max_pixels`), as a refusal under `max_pixels`."""
    return ImageTooLargeError(
        f"{exc}; pass a larger --max-pixels only if you trust this file", limits={"max_pixels": max_pixels}
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB (16-bit rescaled, transparency on a white background)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        if image.mode == "F" and values.max(initial=0) <= 1.0:
            values = values * 255.0
        elif image.mode != "F" and (image.mode != "I" or values.max(initial=0) > 255):
            values = values / 257.0  # 16-bit range onto 8-bit
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def fit_square(pixels: np.ndarray, *, size: int, resize: str = "crop") -> np.ndarray:
    """Resize (h, w, 3) uint8 RGB pixels to (size, size, 3) with the "crop" or "squash" policy."""
    height, width = pixels.shape[:2]
    if resize == "crop":
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        box = (left, top, left + side, top + side)
    elif resize == "squash":
        box = (0, 0, width, height)
    else:
        raise ValueError(f"resize must be 'crop' or 'squash'. Received: resize={resize!r}")
    if (width, height) == (size, size):
        return np.ascontiguousarray(pixels)
    return resample(pixels, box, size, bilinear=min(box[2] - box[0], box[3] - box[1]) < size)


def as_uint8_batch(images: np.ndarray, *, size: int, resize: str = "crop", check_range: bool = True) -> np.ndarray:
    """Validate in-memory RGB images (n, h, w, 3) and bring them to uint8 (n, size, size, 3).

    Float input must hold raw 0..255 values. Values within [0, 1] or below 0 mean the images
    were already scaled, and preprocessing them again would silently ruin accuracy, so they are
    refused unless `check_range=False`.
    """
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[np.newaxis]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"images must be RGB arrays of shape (n, height, width, 3). Received: shape={array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
            raise ValueError(f"images must be uint8 or real numbers in 0..255. Received: dtype={array.dtype}")
        low, high = float(array.min(initial=0)), float(array.max(initial=0))
        if check_range and (high <= 1.0 or low < 0.0):
            scale = "[-1, 1] or mean-centred" if low < 0.0 else "[0, 1]"
            raise InputRangeError(
                f"images look already scaled to {scale} (min {low:.3g}, max {high:.3g}); the backbone "
                "applies mobilenet_v2.preprocess_input itself, so pass raw RGB 0..255 (uint8 is best). "
                "If these really are 0..255 values, pass check_range=False."
            )
        if high > 255.0:
            raise InputRangeError(f"images have values up to {high:.3g}; pass raw RGB in 0..255.")
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    if array.shape[1:3] != (size, size):
        array = np.stack([fit_square(image, size=size, resize=resize) for image in array])
    return array
