"""`embedder` with the merge's segment and cache-file writes slowed down, so a test can kill -9 it mid-merge."""

import sys
import time

import embedder.cache.merge
from embedder.cli import app

fill, write_group = embedder.cache.merge._fill, embedder.cache.merge.write_group


def slow_fill(*args: object) -> None:
    time.sleep(0.1)
    fill(*args)


def slow_write_group(*args: object) -> None:
    time.sleep(0.1)
    write_group(*args)


embedder.cache.merge._fill, embedder.cache.merge.write_group = slow_fill, slow_write_group
sys.exit(app())
