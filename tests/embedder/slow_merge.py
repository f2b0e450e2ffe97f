"""`embedder` with each row copy of the merge slowed down, so a test can kill -9 it mid-merge."""

import sys
import time

import embedder.cache.writer
from embedder.cli import app

copy_rows = embedder.cache.writer._copy_rows


def slow_copy_rows(*args: object) -> None:
    time.sleep(0.02)
    copy_rows(*args)


embedder.cache.writer._copy_rows = slow_copy_rows
sys.exit(app())
