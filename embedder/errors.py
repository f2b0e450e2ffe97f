"""Exceptions raised by the embedder; each message names the file, what is wrong and what to do."""


class EmbedderError(Exception):
    """Base class of every error the embedder raises on bad input."""


class SourceError(EmbedderError):
    """The images to embed cannot be listed: missing, empty or unusable source."""


class ImageError(EmbedderError):
    """One image cannot be read or decoded; extraction records it and goes on.

    `limits` holds the limits the refusal depends on (e.g. {"max_pixels": 89478485}): a run with a
    larger limit may succeed. Empty when no limit is involved (corrupt bytes, not an image, ...).
    """

    def __init__(self, reason: str, path: str = "", *, limits: dict[str, int] | None = None) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path
        self.limits = dict(limits or {})


class ImageTooLargeError(ImageError):
    """An image over the pixel limit (Pillow's decompression-bomb guard or `max_pixels`): refused before decoding."""


class WeightsError(EmbedderError):
    """The requested weights cannot be found, downloaded or loaded into the backbone."""


class InputRangeError(EmbedderError, ValueError):
    """Pixel values that look already preprocessed; the backbone preprocesses itself."""


class CacheError(EmbedderError):
    """The cache file cannot be used: wrong type, wrong schema version, unreadable."""


class CacheLockedError(CacheError):
    """Another process is writing the same cache file."""


class RuntimeUnavailableError(EmbedderError):
    """The requested inference runtime is not installed or does not match the reference."""
