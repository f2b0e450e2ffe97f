"""Recipe 3, fine-tuning, trained from the images of a run and scored on the run's stored test split.

Variant "a" (the talk's preferred): train the new head on the frozen base (Adam 1e-3), then unfreeze
the top `unfreeze` layer groups (or `unfreeze_layers` layers) and continue at a low learning rate
(1e-5) with a schedule. With `gradual`, the groups are unfrozen one at a time from the top: stage k
of K unfreezes the top k groups and runs epochs // K epochs (the last stage also takes the
remainder), recompiling at each stage.
Variant "b": the whole network trainable from the first epoch, at the low learning rate.

Every phase recompiles after changing `trainable` and records its trainable / non-trainable
parameter counts and epoch times. Progress is kept in OUT/finetune-<variant>/: state.json (epochs
done, best validation accuracy), best.npz (the weights of the best epoch so far), phase-<i>.npz
(the weights at the end of each finished phase) and Keras' BackupAndRestore state of the phase in
progress, so rerunning an interrupted command continues from the last completed epoch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from classical.errors import DataError
from classical.neural.network import N_GROUPS, build_network, check_learning_rate, discriminative_adam
from classical.neural.network import learning_rate_multipliers, learning_rate_schedule, parameter_counts, set_trainable
from classical.report import add_rows, latency_ms, load_report, new_report, score, write_report
from classical.splits import DEFAULT_FRACTIONS, Split, make_split
from embedder import Backbone, atomic_path, list_source, load_files, open_cache

logger = logging.getLogger(__name__)

VARIANTS = ("a", "b")
SCHEDULES = ("cosine", "plateau", "constant")


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
    variant: str, *, head_epochs: int, epochs: int, head_learning_rate: float, learning_rate: float,
    unfreeze: int, unfreeze_layers: int | None, gradual: bool,
) -> list[Phase]:
    """The phases of a variant, in order (see the module docstring)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be 'a' or 'b'. Received: variant={variant!r}")
    if epochs < 1 or head_epochs < 0:
        raise ValueError(f"epochs must be >= 1 and head_epochs >= 0. Received: epochs={epochs}, head_epochs={head_epochs}")
    if variant == "b":
        if gradual:
            raise ValueError("gradual unfreezing is a schedule of variant 'a'; variant 'b' trains everything from the start.")
        return [Phase("all", epochs, learning_rate, groups=N_GROUPS)]
    if not 1 <= unfreeze <= N_GROUPS:
        raise ValueError(f"unfreeze must be between 1 and {N_GROUPS} layer groups. Received: unfreeze={unfreeze}")
    phases = [Phase("head", head_epochs, head_learning_rate)] if head_epochs else []
    if unfreeze_layers is not None:
        if gradual:
            raise ValueError("gradual unfreezing works on layer groups; drop unfreeze_layers or gradual.")
        return phases + [Phase(f"top-{unfreeze_layers}-layers", epochs, learning_rate, layers=unfreeze_layers)]
    if not gradual:
        return phases + [Phase(f"top-{unfreeze}-groups", epochs, learning_rate, groups=unfreeze)]
    if epochs < unfreeze:
        raise ValueError(f"gradual unfreezing of {unfreeze} groups needs at least {unfreeze} epochs. Received: epochs={epochs}")
    per_stage = epochs // unfreeze
    return phases + [
        Phase(f"unfreeze-{k}", per_stage + (epochs - per_stage * unfreeze if k == unfreeze else 0), learning_rate, groups=k)
        for k in range(1, unfreeze + 1)
    ]


@dataclass
class Images:
    """Decoded images of the split (a uint8 memory map on disk) with class indices and parts."""

    pixels: np.ndarray
    labels: np.ndarray
    parts: dict[str, np.ndarray]


def finetune(
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    variant: str = "a",
    size: int = 160,
    alpha: float | None = None,
    weights: str | None = "auto",
    head_epochs: int = 3,
    epochs: int = 5,
    head_learning_rate: float = 1e-3,
    learning_rate: float = 1e-5,
    unfreeze: int = 2,
    unfreeze_layers: int | None = None,
    gradual: bool = False,
    lr_decay: float = 1.0,
    schedule: str = "cosine",
    warmup_epochs: int = 1,
    augment: bool = True,
    dropout: float = 0.2,
    batch_size: int = 32,
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Fine-tune MobileNetV2 on the run's images and add the row `finetune-<variant>` to its report.

    `weights="auto"` takes the weights (and alpha) of the cache the run was swept on, else
    "imagenet". `lr_decay` < 1 gives base layer group g the learning rate x lr_decay**g
    (discriminative rates; group 1 is the top). `schedule` applies to phases with unfrozen layers:
    "cosine" (decay with `warmup_epochs` of linear warm-up), "plateau" (x0.3 when validation loss
    stalls) or "constant".
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}. Received: schedule={schedule!r}")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1]. Received: lr_decay={lr_decay}")
    phases = plan_phases(variant, head_epochs=head_epochs, epochs=epochs, head_learning_rate=head_learning_rate,
                         learning_rate=learning_rate, unfreeze=unfreeze, unfreeze_layers=unfreeze_layers, gradual=gradual)
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    report = load_report(run) if (run / "report.json").is_file() else None
    backbone = _backbone(report, size=size, alpha=alpha, weights=weights)
    listed = list_source(images, labels="folders" if Path(images).is_dir() else "auto")
    class_names = report["class_names"] if report else listed.class_names
    config = {"variant": variant, "size": size, "alpha": backbone.alpha, "weights_sha256": backbone.weights_sha256,
              "phases": [asdict(phase) for phase in phases], "lr_decay": lr_decay, "schedule": schedule,
              "warmup_epochs": warmup_epochs, "augment": augment, "dropout": dropout, "batch_size": batch_size, "seed": seed}
    with tempfile.TemporaryDirectory(dir=run, prefix=".pixels-") as scratch:
        data, split = _load_images(listed, run, class_names, backbone, Path(scratch), fractions=fractions, seed=seed)
        config["split_id"] = split.id
        network, phase_rows, best_val = _train(backbone, class_names, data, phases, run / f"finetune-{variant}", config,
                                               lr_decay=lr_decay, schedule=schedule, warmup_epochs=warmup_epochs,
                                               augment=augment, dropout=dropout, batch_size=batch_size, seed=seed,
                                               progress=progress)
        row = _score_and_save(network, data, class_names, run, variant, config, phase_rows, best_val, batch_size)
    report = report or new_report(backbone=backbone.key, cache=str(images), class_names=class_names, split=split.summary())
    add_rows(report, [row])
    write_report(report, run)
    return report


def _backbone(report: dict[str, Any] | None, *, size: int, alpha: float | None, weights: str | None) -> Backbone:
    """The base network: the weights of the run's cache when `weights="auto"`, else as given."""
    if weights == "auto" and report and Path(report["cache"]).is_file() and Path(report["cache"]).suffix == ".h5":
        with open_cache(report["cache"]) as cache:
            provenance = cache.backbone(report["backbone"]).provenance
        return Backbone.from_provenance(provenance, size=size, pooling="avg", **({"alpha": alpha} if alpha else {}))
    return Backbone(alpha=alpha or 1.0, size=size, weights="imagenet" if weights == "auto" else weights)


def _load_images(listed: Any, run: Path, class_names: list[str], backbone: Backbone, scratch: Path,
                 *, fractions: tuple[float, float, float], seed: int) -> tuple[Images, Split]:
    """Decode the images of the run's split (or of a new split of the folder) into a memory map."""
    split_path = run / "split.json"
    split = Split.load(split_path) if split_path.is_file() else None
    items = [item for item in listed.items if split is None or item.rel in split.assignment]
    if split is not None and len(items) < len(split.assignment):
        missing = sorted(set(split.assignment) - {item.rel for item in items})
        raise DataError(f"split {split.id} of '{run}' names {len(missing)} images missing from the images given "
                        f"(e.g. {missing[0]}); pass the folder (or list) the run's cache was extracted from.")
    unknown = sorted({item.label for item in items} - set(class_names))
    if unknown:
        raise DataError(f"images of classes {unknown} are not among the run's classes {class_names}.")
    pixels = np.lib.format.open_memmap(scratch / "pixels.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(items), backbone.size, backbone.size, 3))
    hashes, failed = [], []
    loaded_files = load_files([item.path for item in items], size=backbone.size, resize=backbone.resize)
    for i, (item, loaded) in enumerate(zip(items, loaded_files)):
        if loaded.error is not None:
            failed.append(f"{item.rel}: {loaded.error}")
        else:
            pixels[i] = loaded.pixels
        hashes.append(loaded.sha256)
    if failed:
        raise DataError(f"{len(failed)} images cannot be read ({failed[0]}); fix or remove them, then re-extract.")
    labels = np.array([class_names.index(item.label) for item in items], dtype=np.int32)
    paths = [item.rel for item in items]
    if split is None:
        split = make_split(paths, hashes, labels, class_names, fractions=fractions, seed=seed)
        split.save(split_path)
    return Images(pixels=pixels, labels=labels, parts=split.indices(paths)), split


def _dataset(data: Images, part: str, batch_size: int, *, shuffle: bool, seed: int) -> Any:
    """Batches of (uint8 pixels, labels) streamed from the memory map, reshuffled every epoch."""
    import tensorflow as tf

    indices, rng = data.parts[part], np.random.default_rng(seed)
    size = data.pixels.shape[1]

    def batches() -> Any:
        order = rng.permutation(indices) if shuffle else indices
        for start in range(0, len(order), batch_size):
            chosen = np.sort(order[start : start + batch_size])
            yield data.pixels[chosen], data.labels[chosen]

    signature = (tf.TensorSpec((None, size, size, 3), tf.uint8), tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature)
    return dataset.apply(tf.data.experimental.assert_cardinality(math.ceil(len(indices) / batch_size))).prefetch(2)


class _State:
    """Progress of a fine-tuning run on disk: finished phases, epochs, best validation accuracy."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.folder, self.path = folder, folder / "state.json"
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:12]
        record = json.loads(self.path.read_text()) if self.path.is_file() else None
        if record and record["config_id"] != digest:
            if not record.get("finished"):
                raise DataError(f"'{folder}' holds an unfinished fine-tuning with other settings ({record['config']}); "
                                "rerun it with those settings to continue, or delete the folder to start over.")
            shutil.rmtree(folder)
            record = None
        folder.mkdir(parents=True, exist_ok=True)
        self.record = record or {"config_id": digest, "config": config, "done": [], "epochs": {}, "best_val_accuracy": None,
                                 "finished": False, "runs": 0}
        self.record["runs"] += 1

    def save(self) -> None:
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(self.record, indent=1))


def _save_weights(network: Any, path: Path) -> None:
    """The network's weights alone (no optimizer state), written atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, *network.get_weights())


def _load_weights(network: Any, path: Path) -> None:
    with np.load(path) as arrays:
        network.set_weights([arrays[f"arr_{i}"] for i in range(len(arrays.files))])


def _epoch_logger(state: _State, phase: Phase) -> Any:
    import keras

    class EpochLog(keras.callbacks.Callback):
        """Records each finished epoch (time, metrics) in the state file; keeps the best weights so far."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            logs = {key: float(value) for key, value in (logs or {}).items()}
            seconds = time.perf_counter() - self.started
            best = state.record["best_val_accuracy"]
            if best is None or logs["val_accuracy"] > best:
                _save_weights(self.model, state.folder / "best.npz")  # before the state that points to it
                state.record["best_val_accuracy"] = logs["val_accuracy"]
            state.record["epochs"][f"{phase.name}:{epoch + 1}"] = {"phase": phase.name, "epoch": epoch + 1,
                                                                  "run": state.record["runs"], "seconds": seconds, **logs}
            state.save()
            logger.info("%s epoch %d: %.1f s, loss %.3f, accuracy %.3f, val_accuracy %.3f", phase.name, epoch + 1, seconds,
                        logs.get("loss", math.nan), logs.get("accuracy", math.nan), logs["val_accuracy"])

    return EpochLog()


def _train(
    backbone: Backbone, class_names: list[str], data: Images, phases: list[Phase], folder: Path, config: dict[str, Any],
    *, lr_decay: float, schedule: str, warmup_epochs: int, augment: bool, dropout: float, batch_size: int, seed: int,
    progress: bool | None,
) -> tuple[Any, list[dict[str, Any]], float]:
    """Run the phases not finished yet, resuming an interrupted one; return the best network."""
    import keras

    state = _State(folder, config)
    keras.utils.set_random_seed(seed)
    network = build_network(backbone, len(class_names), augment=augment, dropout=dropout)
    train = _dataset(data, "train", batch_size, shuffle=True, seed=seed)
    val = _dataset(data, "val", batch_size, shuffle=False, seed=seed)
    steps_per_epoch = math.ceil(len(data.parts["train"]) / batch_size)
    phase_rows, trained_here = [], False
    for index, phase in enumerate(phases):
        set_trainable(network, groups=phase.groups, layers=phase.layers)
        trainable, non_trainable = parameter_counts(network)
        phase_rows.append({"name": phase.name, "epochs": phase.epochs, "learning_rate": phase.learning_rate,
                           "trainable": trainable, "non_trainable": non_trainable})
        if phase.name in state.record["done"]:
            continue
        if index and not trained_here:  # the previous phase was finished by an earlier, interrupted run
            _load_weights(network, folder / f"phase-{index - 1}.npz")
        trained_here = True
        check_learning_rate(phase.learning_rate, unfrozen=phase.unfrozen)
        rate = learning_rate_schedule(phase.learning_rate, schedule if phase.unfrozen else "constant",
                                      steps=steps_per_epoch * phase.epochs, warmup_steps=steps_per_epoch * warmup_epochs)
        optimizer = (discriminative_adam(rate, learning_rate_multipliers(network, lr_decay))
                     if phase.unfrozen and lr_decay < 1 else keras.optimizers.Adam(learning_rate=rate))
        network.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        logger.info("phase %s: %d epochs at learning rate %g; %s trainable, %s non-trainable parameters",
                    phase.name, phase.epochs, phase.learning_rate, f"{trainable:,}", f"{non_trainable:,}")
        callbacks = [
            keras.callbacks.BackupAndRestore(str(folder / "backup" / phase.name)),
            _epoch_logger(state, phase),
        ]
        if phase.unfrozen and schedule == "plateau":
            callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.3, patience=1,
                                                               min_lr=phase.learning_rate / 100))
        network.fit(train, validation_data=val, epochs=phase.epochs, callbacks=callbacks, shuffle=False,  # shuffled above
                    verbose=2 if progress else 0)
        _save_weights(network, folder / f"phase-{index}.npz")
        state.record["done"].append(phase.name)
        state.save()
    _load_weights(network, folder / "best.npz")
    epochs = state.record["epochs"].values()
    for row in phase_rows:
        times = [epoch["seconds"] for epoch in epochs if epoch["phase"] == row["name"]]
        row["seconds_per_epoch"] = float(np.mean(times)) if times else None
        row["seconds"] = float(np.sum(times))
    state.record["finished"] = True
    state.save()
    for phase_weights in folder.glob("phase-*.npz"):
        phase_weights.unlink()  # the best weights are what is kept
    return network, phase_rows, float(state.record["best_val_accuracy"])


def _score_and_save(network: Any, data: Images, class_names: list[str], run: Path, variant: str, config: dict[str, Any],
                    phase_rows: list[dict[str, Any]], best_val: float, batch_size: int) -> dict[str, Any]:
    """Score the best network on the test split once, save it, and build its report row."""
    test = data.parts["test"]
    proba = np.concatenate([np.asarray(network(data.pixels[np.sort(test[i : i + batch_size])], training=False))
                            for i in range(0, len(test), batch_size)])
    metrics = score(data.labels[np.sort(test)], proba, class_names)
    path = run / f"finetune-{variant}.keras"
    network.save(path)
    sample = np.asarray(data.pixels[np.sort(test)[:batch_size]])
    return {
        "name": f"finetune-{variant}", "kind": "neural",
        "description": ("head on the frozen base, then top layers unfrozen at a low learning rate" if variant == "a"
                        else "whole network trainable from the start at a low learning rate"),
        **metrics, "cv_mean": best_val, "cv_std": None,
        "selection": "weights of the epoch with the best validation accuracy",
        "fit_seconds": float(sum(row["seconds"] for row in phase_rows)),
        "predict_ms_per_image": latency_ms(lambda X: network(X, training=False), sample),
        "model_bytes": path.stat().st_size, "params": {k: v for k, v in config.items() if k != "split_id"},
        "model_path": str(path), "phases": phase_rows,
    }
