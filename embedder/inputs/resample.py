"""Pillow's BOX and BILINEAR resampling of uint8 RGB arrays, compiled with numba.

The arithmetic is Pillow's own (Resample.c: 22-bit fixed-point taps, 8-bit rounding between
the two passes, the same pass order), so the pixels equal `Image.resize`'s bit for bit. It
works on numpy arrays directly and releases the GIL, so decoding workers resize in parallel
with the runtime instead of queueing behind Pillow's RGB <-> RGBX copies.
"""

from __future__ import annotations

import math

import numba
import numpy as np

PRECISION_BITS = 32 - 8 - 2  # Pillow's: 8 bits of result, 2 of headroom
BOX, BILINEAR = 0, 1


def resample(image: np.ndarray, box: tuple[float, float, float, float], size: int, *, bilinear: bool) -> np.ndarray:
    """The region `box` (left, top, right, bottom) of an (h, w, 3) uint8 image, resized to (size, size, 3).

    Equal to `Image.fromarray(image).resize((size, size), BILINEAR if bilinear else BOX, box=box)`.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"resample needs an (h, w, 3) uint8 array. Received: shape={image.shape}, dtype={image.dtype}")
    if not (image.flags.c_contiguous and image.flags.writeable):
        image = np.array(image, order="C")  # one array type, so numba compiles (and caches) one version
    left, top, right, bottom = (float(value) for value in box)
    return _resample(image, left, top, right, bottom, size, size, BILINEAR if bilinear else BOX)


@numba.njit(cache=True, nogil=True)
def _coefficients(in_size: int, in0: float, in1: float, out_size: int, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """Per output pixel: first source pixel, tap count, and fixed-point weights (Pillow's precompute_coeffs)."""
    scale = np.float64(np.float32(in1) - np.float32(in0)) / out_size  # Pillow keeps the box in C floats
    filterscale = max(scale, 1.0)
    support = (0.5 if kind == BOX else 1.0) * filterscale
    ksize = math.ceil(support) * 2 + 1
    weights = np.zeros((out_size, ksize), np.int64)
    bounds = np.zeros((out_size, 2), np.int64)
    taps = np.zeros(ksize, np.float64)
    start = np.float64(np.float32(in0))
    inverse = 1.0 / filterscale
    for xx in range(out_size):
        center = start + (xx + 0.5) * scale
        first = max(int(center - support + 0.5), 0)
        count = min(int(center + support + 0.5), in_size) - first
        total = 0.0
        for x in range(count):
            t = (x + first - center + 0.5) * inverse
            if kind == BOX:
                w = 1.0 if -0.5 < t <= 0.5 else 0.0
            else:
                w = max(1.0 - abs(t), 0.0)
            taps[x] = w
            total += w
        for x in range(count):
            w = taps[x] / total if total != 0.0 else taps[x]
            weights[xx, x] = int(w * (1 << PRECISION_BITS) + (0.5 if w >= 0 else -0.5))
        bounds[xx, 0] = first
        bounds[xx, 1] = count
    return weights, bounds


@numba.njit(cache=True, nogil=True)
def _clip8(value: int) -> int:
    return min(max(value >> PRECISION_BITS, 0), 255)


@numba.njit(cache=True, nogil=True)
def _horizontal(src: np.ndarray, first_row: int, rows: int, weights: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    out_w = weights.shape[0]
    out = np.empty((rows, out_w, 3), np.uint8)
    half = 1 << (PRECISION_BITS - 1)
    for yy in range(rows):
        row = src[first_row + yy]
        for xx in range(out_w):
            first = bounds[xx, 0]
            r = g = b = half
            for x in range(bounds[xx, 1]):
                k = weights[xx, x]
                r += row[first + x, 0] * k
                g += row[first + x, 1] * k
                b += row[first + x, 2] * k
            out[yy, xx, 0] = _clip8(r)
            out[yy, xx, 1] = _clip8(g)
            out[yy, xx, 2] = _clip8(b)
    return out


@numba.njit(cache=True, nogil=True)
def _vertical(src: np.ndarray, row_shift: int, weights: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    out_h = weights.shape[0]
    width = src.shape[1] * 3
    flat = src.reshape(src.shape[0], width)
    out = np.empty((out_h, width), np.uint8)
    acc = np.empty(width, np.int64)
    for yy in range(out_h):
        acc[:] = 1 << (PRECISION_BITS - 1)
        first = bounds[yy, 0] - row_shift
        for y in range(bounds[yy, 1]):
            k = weights[yy, y]
            row = flat[first + y]
            for j in range(width):
                acc[j] += row[j] * k
        for j in range(width):
            out[yy, j] = _clip8(acc[j])
    return out.reshape(out_h, src.shape[1], 3)


@numba.njit(cache=True, nogil=True)
def _resample(
    image: np.ndarray, left: float, top: float, right: float, bottom: float, out_w: int, out_h: int, kind: int
) -> np.ndarray:
    """Pillow's ImagingResampleInner: which passes run, on which rows, in which order."""
    in_h, in_w = image.shape[0], image.shape[1]
    need_horizontal = out_w != in_w or left != 0 or right != out_w
    need_vertical = out_h != in_h or top != 0 or bottom != out_h
    # Pillow runs the vertical pass first when the height shrinks more than twice as much as the width
    horizontal_first = not (in_h - out_h > 0 and in_h - out_h > (in_w - out_w) * 2)
    weights_v, bounds_v = _coefficients(in_h, top, bottom, out_h, kind)
    weights_h, bounds_h = _coefficients(in_w, left, right, out_w, kind)
    if horizontal_first:
        if not need_horizontal:
            return _vertical(image, 0, weights_v, bounds_v) if need_vertical else image.copy()
        first_row = bounds_v[0, 0]
        last_row = bounds_v[out_h - 1, 0] + bounds_v[out_h - 1, 1]
        temp = _horizontal(image, first_row, last_row - first_row, weights_h, bounds_h)
        return _vertical(temp, first_row, weights_v, bounds_v) if need_vertical else temp
    temp = _vertical(image, 0, weights_v, bounds_v) if need_vertical else image
    return _horizontal(temp, 0, temp.shape[0], weights_h, bounds_h) if need_horizontal else temp.copy()
