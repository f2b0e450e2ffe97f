"""Where a cache's similarity indexes live: one folder per backbone key in the cache's own storage."""

from __future__ import annotations

import os
from pathlib import Path


def index_dir(cache: str | os.PathLike) -> Path:
    """The folder holding the similarity indexes of cache file `cache` (beside it: move, copy or pack both).

    `CACHE.index/<backbone key>/` today, named like the segments folder. This is the only place
    that decides it.
    """
    cache = Path(cache)
    return cache.with_name(cache.name + ".index")


def key_dir(cache: str | os.PathLike, key: str) -> Path:
    """The folder of backbone `key`'s index: `meta.json`, `ids.npz` and the faiss file they name."""
    return index_dir(cache) / key
