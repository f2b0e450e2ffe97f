"""TensorFlow's native log lines (oneDNN, CUDA, absl) kept off the user's terminal unless asked for.

TensorFlow writes absl-formatted lines ("I0000 00:00:... port.cc:153] oneDNN custom operations
are on ...", "Could not find cuda drivers ...") to stderr while its libraries load, before
`TF_CPP_MIN_LOG_LEVEL` applies, and a CUDA error line when it first looks for devices. So the
level is set before TensorFlow loads, and its import (with the device lookup) runs with file
descriptor 2 captured: lines in absl's format are dropped, anything else is passed on unchanged.

`quiet()` is on from `import embedder`; `--verbose` (or TF_CPP_MIN_LOG_LEVEL=0 set by the user)
turns it off, so TensorFlow's own lines appear as TensorFlow writes them.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

LEVEL = "TF_CPP_MIN_LOG_LEVEL"
NATIVE_LINE = re.compile(
    rb"^(?:[IWEF]\d{4} \d\d:\d\d:\d+\.\d+ +\d+ [\w.\-]+:\d+\] "  # absl: severity, date, time, thread, file:line]
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$)"
)

_set_by_us = False


@contextmanager
def native_lines_dropped() -> Iterator[None]:
    """Run the body with stderr (the file descriptor, so C++ writes too) captured, then pass on all but absl lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().splitlines(keepends=True) if not NATIVE_LINE.match(line)]
            if kept:
                os.write(2, b"".join(kept))


class _QuietLoader(importlib.abc.Loader):
    """TensorFlow's own loader, run with its native log lines dropped; it also looks for devices then."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with native_lines_dropped():
            self._loader.exec_module(module)
            module.config.list_physical_devices()  # the CUDA probe logs its failure here, not at the first op


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` as the other finders do and wraps its loader; every other module is left alone."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


_FINDER = _QuietFinder()


def quiet() -> None:
    """Keep TensorFlow's native log lines off stderr from now on, unless the user set TF_CPP_MIN_LOG_LEVEL=0."""
    global _set_by_us
    if LEVEL not in os.environ:
        os.environ[LEVEL], _set_by_us = "2", True
    if os.environ[LEVEL] != "0" and _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


def verbose() -> None:
    """Let TensorFlow log as it does by default (takes effect when TensorFlow has not loaded yet)."""
    global _set_by_us
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    if _set_by_us:
        del os.environ[LEVEL]
        _set_by_us = False
