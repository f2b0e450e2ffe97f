"""Recipe 3, fine-tuning, above the sweep it adds rows to: head phase, then gradual unfreezing.

Importing it imports no TensorFlow; `finetune` (the workflow) is imported on first access.
"""

from typing import Any

__all__ = ["finetune"]


def __getattr__(name: str) -> Any:
    if name == "finetune":  # imports Keras: only when asked for
        from classical.finetuning.workflow import finetune

        return finetune
    raise AttributeError(f"module 'classical.finetuning' has no attribute {name!r}")
