"""Dynamic micro-batching: images of concurrent requests are gathered into one inference call.

A worker thread takes the first waiting image, then keeps gathering until the batch is full or
`max_wait_ms` have passed, runs the encode function once (off the event loop), and hands each
caller its own row. At most `max_queue` images wait; beyond that `submit` refuses with
`Saturated`, so memory stays bounded however many requests arrive.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import numpy as np

logger = logging.getLogger(__name__)
_STOP = object()


class Saturated(Exception):
    """The batcher's queue is full; the caller should retry later."""


class MicroBatcher:
    """Gathers single images into batches for one encode function (uint8 batch in, rows out)."""

    def __init__(
        self,
        encode: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        max_queue: int = 256,
        name: str = "batcher",
    ) -> None:
        if max_batch < 1 or max_queue < max_batch or max_wait_ms < 0:
            raise ValueError(
                f"need max_batch >= 1, max_queue >= max_batch and max_wait_ms >= 0. Received: "
                f"max_batch={max_batch}, max_queue={max_queue}, max_wait_ms={max_wait_ms}"
            )
        self._encode, self.max_batch, self.max_wait = encode, max_batch, max_wait_ms / 1000
        self.max_queue, self._name = max_queue, name
        self._queue: queue.Queue = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0
        self.images = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the images already queued, then stop the worker."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join()
            self._thread = None

    @property
    def pending(self) -> int:
        return self._pending

    def submit(self, images: Sequence[np.ndarray]) -> list[Future]:
        """Queue the images of one request together, or refuse them all when the queue is full."""
        with self._lock:
            if self._pending + len(images) > self.max_queue:
                raise Saturated(f"{self._pending} images are waiting (limit {self.max_queue})")
            self._pending += len(images)
        futures = []
        for image in images:
            future: Future = Future()
            self._queue.put((image, future))
            futures.append(future)
        return futures

    async def run(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Await the rows of `images` (from an event loop)."""
        return list(await asyncio.gather(*(asyncio.wrap_future(future) for future in self.submit(images))))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            deadline = time.monotonic() + self.max_wait
            stop = False
            while len(batch) < self.max_batch:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._process(batch)
            if stop:
                self._queue.put(_STOP)

    def _process(self, batch: list[tuple[np.ndarray, Future]]) -> None:
        try:
            outputs = self._encode(np.stack([image for image, _ in batch]))
        except Exception as exc:  # every caller of the batch learns why
            logger.exception("%s: a batch of %d failed", self._name, len(batch))
            for _, future in batch:
                future.set_exception(exc)
        else:
            for (_, future), output in zip(batch, outputs):
                future.set_result(output)
        finally:
            with self._lock:
                self._pending -= len(batch)
            self.batches += 1
            self.images += len(batch)
