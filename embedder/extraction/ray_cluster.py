"""Joining a Ray cluster (or starting a local one), with errors that say what to install or check."""

from __future__ import annotations

import logging
import os
from typing import Any

from embedder.errors import EmbedderError

RAY_EXTRA = 'pip install "bottleneck-lab[ray]"'


def require_ray() -> Any:
    """The `ray` module, or an error naming the extra that installs it."""
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise EmbedderError(
            f"--engine ray needs Ray, which is not installed ({exc}); install it with: {RAY_EXTRA}"
        ) from None
    return ray


def connect(address: str | None) -> Any:
    """Join the Ray cluster at `address` ("auto", "ray://host:port", "host:port"), or start a local one."""
    ray = require_ray()
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "logging_level": logging.WARNING,
            "runtime_env": {"env_vars": {"TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}},
        }
        if address is None:
            options["include_dashboard"] = False
        try:
            ray.init(address=address, **options)
        except (ConnectionError, ray.exceptions.RayError) as exc:
            raise EmbedderError(
                f"cannot join the Ray cluster at {address!r}: {str(exc).splitlines()[0]}. Check that the head runs "
                "(`ray status`), the address (HOST:PORT of `ray start --head`, or ray://HOST:10001), and that "
                "RAY_AUTH_TOKEN matches the cluster's token if it uses token authentication."
            ) from exc
    return ray
