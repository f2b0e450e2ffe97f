"""The first fp32 "auto" run on a machine: embed with the Keras reference at once, then hand over to the fastest runtime.

Choosing "auto"'s runtime needs the ONNX export and a measurement of each candidate (about 13 s on
2 cores), which a new user would otherwise wait for before the first image is embedded. `Handover`
embeds with the reference from the first batch while a background thread exports the reference's
own trace to ONNX and builds and checks the fast runtimes. (In a process of its own the export
would not hold this one's GIL, but it would load TensorFlow and build the model a second time:
measured side by side on 2 shared cores, the thread hands over sooner.) Each candidate, once
ready, is checked once more on the first real batch it gets and then embeds real batches, timed
one call at a time; when each has had TRIAL_SECONDS of them the fastest takes over for the rest of
the run and is remembered as "auto"'s choice. No work is thrown away, and every runtime that embeds
rows passed the parity check against the reference, so rows from before and after the handover
share one cache key as any fp32 runtimes' rows do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from embedder.backbone import Backbone
from embedder.errors import RuntimeUnavailableError
from embedder.runtimes.choice import CANDIDATES, build, load_encoder, remember, remembered, throughput
from embedder.runtimes.encoders import Encoder, KerasEncoder
from embedder.runtimes.exports import compare, onnx_backbone, within_parity

logger = logging.getLogger(__name__)

TRIAL_SECONDS = 1.0  # inference time each fast runtime gets on real batches before the choice
CHECKED_IMAGES = 4  # images of a candidate's first real batch also embedded by the reference and compared


def start_encoder(backbone: Backbone, runtime: str = "auto", *, threads: int | None = None) -> Encoder:
    """The fp32 encoder for `runtime`, embedding at once: "auto" before this machine has chosen is a `Handover`."""
    if runtime == "auto" and remembered(backbone, "fp32") is None:
        return Handover(backbone, threads=threads)
    return load_encoder(backbone, runtime, threads=threads)


@dataclass
class _Trial:
    """A fast runtime being tried on real batches."""

    encoder: Encoder
    checked: bool = False  # its first real batch matched the reference
    seconds: float = 0.0  # timed on real batches
    images: int = 0
    on_test_images: float = 0.0  # images/s on test images, when the run ended before it had TRIAL_SECONDS

    @property
    def timed(self) -> bool:
        return self.on_test_images > 0 or (self.checked and self.seconds >= TRIAL_SECONDS)

    @property
    def rate(self) -> float:
        if self.on_test_images:
            return self.on_test_images
        return self.images / self.seconds if self.seconds > 0 else 0.0


class Handover:
    """The Keras reference until the fastest fp32 runtime is exported, checked and measured; then that runtime.

    Safe to call from several threads. Call `finish()` at the end of a run: it waits for the
    export and measures on test images what the run had too few images for, so that the choice
    is made and later runs load the chosen runtime directly.
    """

    precision, calibration = "fp32", ""

    def __init__(self, backbone: Backbone, *, threads: int | None = None) -> None:
        self.key = backbone.key
        self._backbone, self._threads = backbone, threads
        self._reference = KerasEncoder(backbone)
        self._trials: dict[str, _Trial] = {}
        self._chosen: Encoder | None = None
        self._prepared = False
        self._remember = True  # False after an unexpected failure: a later run prepares again
        self._problems: list[str] = []
        self._lock = threading.Lock()  # guards the trials and the choice, and runs timed calls one at a time
        self._counting = threading.Lock()
        self.images: Counter[str] = Counter()  # images embedded, per runtime
        self._preparing = threading.Thread(target=self._prepare, name="embedder-handover")
        self._preparing.start()
        logger.info(
            "%s: no runtime chosen on this machine yet: embedding with the Keras reference while the fast "
            "runtimes are exported and timed",
            self.key,
        )

    @property
    def runtime(self) -> str:
        """The runtime embedding now."""
        return (self._chosen or self._reference).runtime

    @property
    def prepared(self) -> bool:
        """True once the export is done and every fast runtime is built and checked (or known unavailable)."""
        return self._prepared

    def describe(self) -> str:
        """Which runtimes embedded how many images, e.g. "onnx (before the handover: keras 96 images)"."""
        used = {runtime: count for runtime, count in self.images.items() if count}
        if self.runtime not in used:  # the run ended before the handover
            return f"{', '.join(used) or 'none'} ({self.runtime} chosen for the next runs)"
        before = ", ".join(f"{runtime} {count}" for runtime, count in used.items() if runtime != self.runtime)
        return f"{self.runtime} (before the handover: {before} images)" if before else self.runtime

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self._chosen is None:
            with self._lock:
                trial = self._next_trial()
                if trial is not None:
                    return self._try(trial, images)
        return self._run(self._chosen or self._reference, images)

    def finish(self) -> None:
        """Wait for the export; measure on test images what the run's batches did not, and remember the choice."""
        self._preparing.join()
        with self._lock:
            if self._chosen is None:
                for trial in self._trials.values():
                    if not trial.timed:
                        trial.on_test_images = throughput(trial.encoder, self._backbone.size)
                self._choose()

    def _run(self, encoder: Encoder, images: np.ndarray) -> np.ndarray:
        output = encoder(images)
        with self._counting:
            self.images[encoder.runtime] += len(images)
        return output

    def _next_trial(self) -> _Trial | None:
        """The ready runtime least measured yet, else the fastest measured one while the others are prepared."""
        if not self._trials:
            return None
        return min(self._trials.values(), key=lambda t: (t.timed, t.checked, t.seconds if not t.timed else -t.rate))

    def _try(self, trial: _Trial, images: np.ndarray) -> np.ndarray:
        """With the lock held: embed with a trial runtime; its first batch is checked against the reference, later ones timed."""
        started = time.perf_counter()
        output = trial.encoder(images)
        elapsed = time.perf_counter() - started
        if not trial.checked:
            sample = images[:CHECKED_IMAGES]
            parity = compare(self._reference(sample), output[:CHECKED_IMAGES])
            if not within_parity(parity):
                self._drop(
                    trial,
                    f"runtime '{trial.encoder.runtime}' differs from the reference on real images "
                    f"(max abs {parity['max_abs']:.2e}, min cosine {parity['min_cosine']:.7f})",
                )
                return self._run(self._reference, images)
            trial.checked = True  # this first call also warmed it up: not timed
        else:
            trial.seconds += elapsed
            trial.images += len(images)
        with self._counting:
            self.images[trial.encoder.runtime] += len(images)
        if self._prepared and all(t.timed for t in self._trials.values()):
            self._choose()
        return output

    def _drop(self, trial: _Trial, problem: str) -> None:
        """With the lock held: a candidate that failed its check on real images is never used."""
        logger.warning("%s; it is not used.", problem)
        self._problems.append(problem)
        del self._trials[trial.encoder.runtime]
        if self._prepared and all(t.timed for t in self._trials.values()):
            self._choose()

    def _prepare(self) -> None:
        """Background: export from the reference, then build and check each fast candidate."""
        problem = None
        try:
            onnx_backbone(self._backbone, reference=self._reference)  # the reference's own trace, converted
        except (RuntimeUnavailableError, ImportError) as exc:  # no export: no fast runtime at all
            problem = str(exc)
        except Exception as exc:
            problem, self._remember = f"preparing the fast runtimes failed ({exc}); a later run tries again.", False
        if problem is not None:
            self._problems.append(problem)
        else:
            for runtime in CANDIDATES["fp32"]:
                if runtime != "keras":
                    self._add_candidate(runtime)
        with self._lock:
            self._prepared = True
            if all(t.timed for t in self._trials.values()):
                self._choose()

    def _add_candidate(self, runtime: str) -> None:
        """Build a fast runtime on the export (checked against it, for OpenVINO) and put it on trial."""
        try:
            encoder = build(self._backbone, runtime, "fp32", None, None, self._threads)
        except (RuntimeUnavailableError, ImportError) as exc:
            self._problems.append(str(exc))
            return
        with self._lock:
            self._trials[runtime] = _Trial(encoder)

    def _choose(self) -> None:
        """With the lock held: hand over to the fastest checked runtime (the reference if none) and remember it."""
        if self._chosen is not None:
            return
        if self._problems:
            logger.warning("%s", " ".join(self._problems))
        measured = {runtime: trial.rate for runtime, trial in self._trials.items() if trial.rate > 0}
        on = "test images" if any(trial.on_test_images for trial in self._trials.values()) else "real batches"
        if not measured:
            measured, on = {"keras": throughput(self._reference, self._backbone.size)}, "test images"
        best = max(measured, key=lambda name: measured[name])
        if self._remember:
            remember(self._backbone, "fp32", measured, on=on)
        self._chosen = self._trials[best].encoder if best in self._trials else self._reference
        self._trials.clear()  # the other candidates' memory goes
        logger.info("%s: embedding with %s from now on (images so far: %s)", self.key, best, dict(self.images))
