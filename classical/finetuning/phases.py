"""The phases of a fine-tuning run, and its progress on disk so that an interrupted run continues.

Variant "a": train the new head on the frozen base, then unfreeze the top `unfreeze` layer groups
(or `unfreeze_layers` layers) at a low learning rate with a schedule; with `gradual`, the groups are
unfrozen one at a time from the top: stage k of K unfreezes the top k groups and runs epochs // K
epochs (the last stage also takes the remainder). Variant "b": the whole network trainable from the
first epoch, at the low learning rate.

Progress is kept in OUT/finetune-<variant>/: state.json (epochs done, best validation accuracy),
best.npz (the weights of the best epoch so far), phase-<i>.npz (the weights at the end of each
finished phase) and Keras' BackupAndRestore state of the phase in progress.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classical.errors import DataError
from classical.models.network import N_GROUPS
from embedder import atomic_path

logger = logging.getLogger(__name__)

VARIANTS = ("a", "b")


@dataclass(frozen=True)
class Phase:
    """One stretch of training with a fixed set of trainable layers and its own compiled optimizer."""

    name: str
    epochs: int
    learning_rate: float
    groups: int = 0  # base layer groups unfrozen, from the top (0: base frozen)
    layers: int | None = None  # or: base layers unfrozen, from the top

    @property
    def unfrozen(self) -> bool:
        return bool(self.layers) if self.layers is not None else self.groups > 0


def plan_phases(
    variant: str,
    *,
    head_epochs: int,
    epochs: int,
    head_learning_rate: float,
    learning_rate: float,
    unfreeze: int,
    unfreeze_layers: int | None,
    gradual: bool,
) -> list[Phase]:
    """The phases of a variant, in order (see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be 'a' or 'b'. Received: variant={variant!r}")
    if epochs < 1 or head_epochs < 0:
        raise ValueError(
            f"epochs must be >= 1 and head_epochs >= 0. Received: epochs={epochs}, head_epochs={head_epochs}"
        )
    if variant == "b":
        if gradual:
            raise ValueError(
                "gradual unfreezing is a schedule of variant 'a'; variant 'b' trains everything from the start."
            )
        return [Phase("all", epochs, learning_rate, groups=N_GROUPS)]
    if not 1 <= unfreeze <= N_GROUPS:
        raise ValueError(f"unfreeze must be between 1 and {N_GROUPS} layer groups. Received: unfreeze={unfreeze}")
    phases = [Phase("head", head_epochs, head_learning_rate)] if head_epochs else []
    if unfreeze_layers is not None:
        if gradual:
            raise ValueError("gradual unfreezing works on layer groups; drop unfreeze_layers or gradual.")
        return [*phases, Phase(f"top-{unfreeze_layers}-layers", epochs, learning_rate, layers=unfreeze_layers)]
    if not gradual:
        return [*phases, Phase(f"top-{unfreeze}-groups", epochs, learning_rate, groups=unfreeze)]
    if epochs < unfreeze:
        raise ValueError(
            f"gradual unfreezing of {unfreeze} groups needs at least {unfreeze} epochs. Received: epochs={epochs}"
        )
    per_stage = epochs // unfreeze
    return phases + [
        Phase(
            f"unfreeze-{k}",
            per_stage + (epochs - per_stage * unfreeze if k == unfreeze else 0),
            learning_rate,
            groups=k,
        )
        for k in range(1, unfreeze + 1)
    ]


class TrainingState:
    """Progress of a fine-tuning run on disk: finished phases, epochs, best validation accuracy."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.folder, self.path = folder, folder / "state.json"
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
        record = json.loads(self.path.read_text()) if self.path.is_file() else None
        if record and record["config_id"] != digest:
            if not record.get("finished"):
                raise DataError(
                    f"'{folder}' holds an unfinished fine-tuning with other settings ({record['config']}); "
                    "rerun it with those settings to continue, or delete the folder to start over."
                )
            shutil.rmtree(folder)
            record = None
        folder.mkdir(parents=True, exist_ok=True)
        self.record = record or {
            "config_id": digest,
            "config": config,
            "done": [],
            "epochs": {},
            "best_val_accuracy": None,
            "finished": False,
            "runs": 0,
        }
        self.record["runs"] += 1

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.record, indent=1))

    def record_epoch(self, phase: Phase, epoch: int, seconds: float, logs: dict[str, float], network: Any) -> None:
        """Record a finished epoch (1-based); keep the network's weights when its validation accuracy is the best yet."""
        best = self.record["best_val_accuracy"]
        if best is None or logs["val_accuracy"] > best:
            save_weights(network, self.folder / "best.npz")  # before the state that points to it
            self.record["best_val_accuracy"] = logs["val_accuracy"]
        self.record["epochs"][f"{phase.name}:{epoch}"] = {
            "phase": phase.name,
            "epoch": epoch,
            "run": self.record["runs"],
            "seconds": seconds,
            **logs,
        }
        self.save()
        logger.info(
            "%s epoch %d: %.1f s, loss %.3f, accuracy %.3f, val_accuracy %.3f",
            phase.name,
            epoch,
            seconds,
            logs.get("loss", math.nan),
            logs.get("accuracy", math.nan),
            logs["val_accuracy"],
        )


def save_weights(network: Any, path: Path) -> None:
    """The network's weights alone (no optimizer state), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, *network.get_weights())


def load_weights(network: Any, path: Path) -> None:
    with np.load(path) as arrays:
        network.set_weights([arrays[f"arr_{i}"] for i in range(len(arrays.files))])


def epoch_logger(state: TrainingState, phase: Phase, network: Any) -> Any:
    """A Keras callback recording each epoch of `phase` in the state; `network` is the whole one, whose weights are kept."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        """Records each finished epoch (time, metrics) in the state file; keeps the best weights so far."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = {key: float(value) for key, value in (logs or {}).items()}
            state.record_epoch(phase, epoch + 1, time.perf_counter() - self.started, logs, network)

    return EpochLog()
