"""Neural heads on the same split: the Dense head on cached embeddings, and fine-tuning (recipe 3).

Importing it does not import TensorFlow: `DenseHead` trains with Keras on first `fit`, and
`finetune` (which builds the network) is imported on first access.
"""

from typing import Any

from classical.neural.dense import DenseHead

__all__ = ["DenseHead", "finetune"]


def __getattr__(name: str) -> Any:
    if name == "finetune":  # imports Keras: only when asked for
        from classical.neural.finetune import finetune

        return finetune
    raise AttributeError(f"module 'classical.neural' has no attribute {name!r}")
