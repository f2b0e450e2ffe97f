"""Sources given as filesystem URIs that fsspec reads (s3://, gs://, file://, ...), listed like local folders."""

from __future__ import annotations

import os
from pathlib import Path

from embedder.errors import EmbedderError, SourceError
from embedder.inputs.sources import Source, folder_items, is_image_name

FSSPEC_EXTRA = 'pip install "bottleneck-lab[ray]"'


def is_uri(source: str | os.PathLike) -> bool:
    return "://" in str(source)


def list_uri(uri: str, *, labels: str = "auto") -> Source:
    """List the images under a filesystem URI that fsspec reads (s3://, gs://, file://, ...), like a local folder."""
    try:
        import fsspec
    except ImportError:
        raise EmbedderError(f"listing '{uri}' needs fsspec; install it with: {FSSPEC_EXTRA}") from None
    try:
        fs, root = fsspec.core.url_to_fs(uri)
        files = fs.find(root)
    except (OSError, ValueError, ImportError) as exc:
        raise SourceError(
            f"cannot list '{uri}': {exc}. Check the URI, its filesystem package and credentials."
        ) from exc
    protocol = uri.split("://", 1)[0]
    root = root.rstrip("/")
    rels = sorted(path[len(root) + 1 :] for path in files if path.startswith(root + "/"))
    rels = [rel for rel in rels if not any(part.startswith(".") for part in rel.split("/"))]
    images = [rel for rel in rels if is_image_name(rel)]
    others = [rel for rel in rels if not is_image_name(rel)]
    items, class_names = folder_items(uri, images, others, labels=labels, join=lambda rel: f"{protocol}://{root}/{rel}")
    return Source(root=Path(root), items=items, class_names=class_names)


def read_bytes(path: str) -> bytes:
    """A URI's bytes through fsspec (on the worker, with the worker's credentials)."""
    import fsspec

    with fsspec.open(path, "rb") as handle:
        return handle.read()
