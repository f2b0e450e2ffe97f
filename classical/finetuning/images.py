"""The decoded images of a fine-tuning run's split: what the network trains on."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Images:
    """Decoded images of the split (a uint8 memory map on disk) with class indices and parts."""

    pixels: np.ndarray
    labels: np.ndarray
    paths: list[str]
    parts: dict[str, np.ndarray]
