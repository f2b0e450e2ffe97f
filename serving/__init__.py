"""The HTTP service over both layers: embeddings, predictions of saved models and ImageNet top-k.

Sits above `embedder` and `classical` and uses only their public names. Needs the `service` extra
(`pip install "bottleneck-lab[service]"`); importing this package alone loads none of it.
"""

from typing import Any

__all__ = ["MicroBatcher", "ServiceSettings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from serving.app import create_app

        return create_app
    if name == "ServiceSettings":
        from serving.service import ServiceSettings

        return ServiceSettings
    if name == "MicroBatcher":
        from serving.batching import MicroBatcher

        return MicroBatcher
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
