"""Exceptions of the classical trainer; messages name the file, what is wrong and what to do."""

from embedder import EmbedderError


class ClassicalError(EmbedderError):
    """Base class of the classical trainer's errors on bad input."""


class DataError(ClassicalError):
    """The cached embeddings cannot be used for training: no labels, too few images, NaN rows."""


class ModelFileError(ClassicalError):
    """A saved model file is missing, not ours, or does not fit the embeddings it is applied to."""
