"""Recipe 3, fine-tuning, trained from the images of a run and scored on the run's stored test split.

Like with like: the network trains at the input size of the run's embeddings unless told otherwise,
and a smaller size brings a Dense head on embeddings of that size into the report as its partner.

Affordable by design (`cached=True`, the default), with the same network and forward outputs:
- the head phase trains the Dense head on the cached bottleneck embeddings (recipe 2: the frozen
  base is not run again every epoch), with early stopping on validation, and starts the network's
  head from it;
- phases that unfreeze only the top layer groups train on cached activations of the frozen lower
  part (`classical.finetuning.activations`), with a few cached augmented views per training image.
Variant "b", `unfreeze_layers` and `cached=False` run the full forward pass every epoch. See
`classical.finetuning.phases` for the phases and for resuming an interrupted run.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from classical.data.rows import load_labeled
from classical.data.splits import DEFAULT_FRACTIONS, Split, make_split
from classical.errors import DataError
from classical.finetuning.activations import BOUNDARY, activation_dataset, cache_activations, top_network
from classical.finetuning.images import Images
from classical.finetuning.phases import Phase, TrainingState, epoch_logger, load_weights, plan_phases, save_weights
from classical.modelfiles.saved import EMBEDDING_FIELDS, MODEL_SUFFIX, save_model
from classical.models.dense import DenseHead
from classical.models.network import (
    build_network,
    check_learning_rate,
    discriminative_adam,
    learning_rate_multipliers,
    learning_rate_schedule,
    parameter_counts,
    predict_proba,
    set_trainable,
)
from classical.report import add_rows, align_predictions, latency_ms, load_report, new_report, score, write_report
from embedder import Backbone, extract, list_source, load_files, open_cache

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "plateau", "constant")
DEFAULT_SIZE = 224  # without a swept cache to take the size from


def finetune(
    images: str | os.PathLike,
    out: str | os.PathLike,
    *,
    variant: str = "a",
    size: int | None = None,
    alpha: float | None = None,
    weights: str | None = "auto",
    head_epochs: int = 30,
    epochs: int = 20,
    head_learning_rate: float = 1e-3,
    learning_rate: float = 1e-4,
    unfreeze: int = 2,
    unfreeze_layers: int | None = None,
    gradual: bool = False,
    lr_decay: float = 1.0,
    schedule: str = "cosine",
    warmup_epochs: int = 1,
    augment: bool = True,
    views: int = 4,
    cached: bool = True,
    patience: int = 8,
    dropout: float = 0.2,
    batch_size: int = 32,
    seed: int = 0,
    fractions: tuple[float, ...] = DEFAULT_FRACTIONS,
    progress: bool | None = None,
    learning_curve_neural: bool = False,
) -> dict[str, Any]:
    """Fine-tune MobileNetV2 on the run's images and add the row `finetune-<variant>` to its report.

    `size` None trains at the input size of the run's embeddings (224 without a sweep).
    `weights="auto"` takes the weights (and alpha) of the cache the run was swept on, else
    "imagenet". `lr_decay` < 1 gives base layer group g the learning rate x lr_decay**g
    (discriminative rates; group 1 is the top). `schedule` applies to phases with unfrozen layers:
    "cosine" (decay with `warmup_epochs` of linear warm-up), "plateau" (x0.3 when validation loss
    stalls) or "constant". `patience` epochs without a better validation accuracy end a phase.
    `views` cached versions of each training image (1 plain, the rest augmented) feed the cached phases.
    `learning_curve_neural=True` also trains it on the subsets of the run's learning curve (`classical.finetuning.curve`).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}. Received: schedule={schedule!r}")
    if not 0 < lr_decay <= 1:
        raise ValueError(f"lr_decay must be in (0, 1]. Received: lr_decay={lr_decay}")
    if views < 1 or (views > 1 and not augment):
        raise ValueError(f"views must be >= 1, and 1 without augmentation. Received: views={views}, augment={augment}")
    phases = plan_phases(
        variant,
        head_epochs=head_epochs,
        epochs=epochs,
        head_learning_rate=head_learning_rate,
        learning_rate=learning_rate,
        unfreeze=unfreeze,
        unfreeze_layers=unfreeze_layers,
        gradual=gradual,
    )
    run = Path(out)
    run.mkdir(parents=True, exist_ok=True)
    report = load_report(run) if (run / "report.json").is_file() else None
    if learning_curve_neural:
        from classical.finetuning.curve import add_finetune_curve, require_curve

        require_curve(report, run)  # before any training
    provenance = _cache_provenance(report)
    size = size or (provenance["size"] if provenance else DEFAULT_SIZE)
    backbone = _backbone(provenance, size=size, alpha=alpha, weights=weights)
    listed = list_source(images, labels="folders" if Path(images).is_dir() else "auto")
    class_names = report["class_names"] if report else listed.class_names
    config = {
        "variant": variant,
        "size": size,
        "alpha": backbone.alpha,
        "weights_sha256": backbone.weights_sha256,
        "phases": [asdict(phase) for phase in phases],
        "lr_decay": lr_decay,
        "schedule": schedule,
        "warmup_epochs": warmup_epochs,
        "augment": augment,
        "views": views,
        "cached": cached,
        "patience": patience,
        "dropout": dropout,
        "batch_size": batch_size,
        "seed": seed,
    }
    partners = []
    with tempfile.TemporaryDirectory(dir=run, prefix=".pixels-") as scratch:
        data, split = _load_images(listed, run, class_names, backbone, Path(scratch), fractions=fractions, seed=seed)
        config["split_id"] = split.id
        embeddings, embed_seconds = None, 0.0
        if cached and variant == "a":
            cache = Path(report["cache"]) if provenance and report else run / "embeddings.h5"
            embeddings, embed_seconds = _embeddings(images, cache, backbone, data)
            if provenance and provenance["size"] != size:
                partners.append(_dense_partner(cache, backbone, split, run, seed=seed))

        def trainer(
            images: Images,
            folder: Path,
            inputs: np.ndarray | None,
            model_seed: int,
            extra: dict[str, Any],
            activations: Path | None = None,
        ) -> _Trainer:
            """A training of these settings on `images`, its progress in `folder` (the run's, or a curve subset's)."""
            return _Trainer(
                backbone,
                class_names,
                images,
                folder,
                {**config, "seed": model_seed, **extra},
                embeddings=inputs,
                activations=activations or folder / "activations",
                cached=cached,
                views=views,
                lr_decay=lr_decay,
                schedule=schedule,
                warmup_epochs=warmup_epochs,
                augment=augment,
                patience=patience,
                dropout=dropout,
                batch_size=batch_size,
                seed=model_seed,
                progress=progress,
            )

        main = trainer(data, run / f"finetune-{variant}", embeddings, seed, {}, activations=run / "activations")
        network, phase_rows, best_val = main.run(phases)
        row = _score_and_save(
            network,
            backbone,
            data,
            class_names,
            run,
            variant,
            config,
            phase_rows,
            best_val,
            batch_size,
            cache_seconds=embed_seconds + main.cache_seconds,
        )
        if learning_curve_neural and report is not None:  # (require_curve refused a run without one)
            add_finetune_curve(
                report,
                run,
                data,
                embeddings,
                row,
                batch_size=batch_size,
                train=lambda *args: trainer(*args).run(phases)[0],
            )
    report = report or new_report(
        backbone=backbone.key, cache=str(images), class_names=class_names, split=split.summary()
    )
    test = _test_order(data)
    row["test_predictions"] = align_predictions(
        report, [data.paths[i] for i in test], row["test_predictions"], data.labels[test]
    )
    add_rows(report, [*partners, row])
    write_report(report, run)
    return report


def _cache_provenance(report: dict[str, Any] | None) -> dict[str, Any] | None:
    """Provenance of the embeddings the run was swept on, when its cache is here."""
    if not report or Path(report["cache"]).suffix != ".h5" or not Path(report["cache"]).is_file():
        return None
    with open_cache(report["cache"]) as cache:
        return cache.backbone(report["backbone"]).provenance


def _backbone(provenance: dict[str, Any] | None, *, size: int, alpha: float | None, weights: str | None) -> Backbone:
    """The base network: the weights of the run's cache when `weights="auto"`, else as given."""
    if weights == "auto" and provenance:
        return Backbone.from_provenance(provenance, size=size, pooling="avg", **({"alpha": alpha} if alpha else {}))
    return Backbone(alpha=alpha or 1.0, size=size, weights="imagenet" if weights == "auto" else weights)


def _embeddings(images: str | os.PathLike, cache: Path, backbone: Backbone, data: Images) -> tuple[np.ndarray, float]:
    """Bottleneck embeddings of the backbone for every image of `data`, in its order, and the seconds it took to
    embed those the cache did not hold yet."""
    summary = extract(images, cache, backbone, progress=False)
    labeled = load_labeled(cache, backbone.key)
    row_of = {path: i for i, path in enumerate(labeled.paths)}
    missing = [path for path in data.paths if path not in row_of]
    if missing:
        raise DataError(
            f"cache '{cache}' has no embedding of {len(missing)} images of the run (e.g. {missing[0]}); "
            "pass the folder (or list) the run's cache was extracted from."
        )
    return labeled.X[[row_of[path] for path in data.paths]], summary.seconds if summary.embedded else 0.0


def _dense_partner(cache: Path, backbone: Backbone, split: Split, run: Path, *, seed: int) -> dict[str, Any]:
    """The Dense head on embeddings of the fine-tuning's own input size: the same-size row to compare it with."""
    from classical.experiments.sweep import fit_and_score, sorted_test
    from classical.models.zoo import ZOO, grid_for

    spec = dataclasses.replace(
        ZOO["dense"],
        name=f"dense-{backbone.size}",
        description=f"{ZOO['dense'].description}, at {backbone.size} px like the fine-tuning",
    )
    labeled = load_labeled(cache, backbone.key)
    row = fit_and_score(
        spec,
        grid_for("dense"),
        labeled,
        sorted_test(split.indices(labeled.paths), labeled),
        split,
        run=run,
        folds=0,
        search="grid",
        n_jobs=1,
        seed=seed,
    )
    return {**row, "input_size": backbone.size}


def _load_images(
    listed: Any,
    run: Path,
    class_names: list[str],
    backbone: Backbone,
    scratch: Path,
    *,
    fractions: tuple[float, ...],
    seed: int,
) -> tuple[Images, Split]:
    """Decode the images of the run's split (or of a new split of the folder) into a memory map."""
    split_path = run / "split.json"
    split = Split.load(split_path) if split_path.is_file() else None
    items = [item for item in listed.items if split is None or item.rel in split.assignment]
    if split is not None and len(items) < len(split.assignment):
        missing = sorted(set(split.assignment) - {item.rel for item in items})
        raise DataError(
            f"split {split.id} of '{run}' names {len(missing)} images missing from the images given "
            f"(e.g. {missing[0]}); pass the folder (or list) the run's cache was extracted from."
        )
    unknown = sorted({item.label for item in items} - set(class_names))
    if unknown:
        raise DataError(f"images of classes {unknown} are not among the run's classes {class_names}.")
    pixels = np.lib.format.open_memmap(
        scratch / "pixels.npy", mode="w+", dtype=np.uint8, shape=(len(items), backbone.size, backbone.size, 3)
    )
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
    return Images(pixels=pixels, labels=labels, paths=paths, parts=split.indices(paths)), split


def _pixel_dataset(data: Images, part: str, batch_size: int, *, shuffle: bool, seed: int) -> Any:
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


class _Trainer:
    """Runs the phases of one fine-tuning, each the cached way when it can, resuming what an earlier run left."""

    def __init__(
        self,
        backbone: Backbone,
        class_names: list[str],
        data: Images,
        folder: Path,
        config: dict[str, Any],
        *,
        embeddings: np.ndarray | None,
        activations: Path,
        cached: bool,
        views: int,
        lr_decay: float,
        schedule: str,
        warmup_epochs: int,
        augment: bool,
        patience: int,
        dropout: float,
        batch_size: int,
        seed: int,
        progress: bool | None,
    ) -> None:
        self.backbone, self.class_names, self.data, self.folder, self.config = (
            backbone,
            class_names,
            data,
            folder,
            config,
        )
        self.embeddings, self.activations, self.cached, self.views = embeddings, activations, cached, views
        self.lr_decay, self.schedule, self.warmup_epochs = lr_decay, schedule, warmup_epochs
        self.augment, self.patience, self.dropout, self.batch_size, self.seed = (
            augment,
            patience,
            dropout,
            batch_size,
            seed,
        )
        self.progress = progress
        self.cache_seconds = 0.0

    def run(self, phases: list[Phase]) -> tuple[Any, list[dict[str, Any]], float]:
        """Train the phases not finished yet; return the best network, the phase rows and its validation accuracy."""
        import keras

        state = TrainingState(self.folder, self.config)
        keras.utils.set_random_seed(self.seed)
        self.network = build_network(self.backbone, len(self.class_names), augment=self.augment, dropout=self.dropout)
        cacheable = [p.groups for p in phases if p.unfrozen and p.layers is None and p.groups in BOUNDARY]
        self.top_groups = max(cacheable) if self.cached and self.embeddings is not None and cacheable else None
        phase_rows, trained_here = [], False
        for index, phase in enumerate(phases):
            set_trainable(self.network, groups=phase.groups, layers=phase.layers)
            trainable, non_trainable = parameter_counts(self.network)
            phase_rows.append(
                {
                    "name": phase.name,
                    "epochs": phase.epochs,
                    "learning_rate": phase.learning_rate,
                    "trainable": trainable,
                    "non_trainable": non_trainable,
                    "method": self._method(phase),
                }
            )
            if phase.name in state.record["done"]:
                continue
            if index and not trained_here:  # the previous phase was finished by an earlier, interrupted run
                load_weights(self.network, self.folder / f"phase-{index - 1}.npz")
            trained_here = True
            check_learning_rate(phase.learning_rate, unfrozen=phase.unfrozen)
            logger.info(
                "phase %s (%s): up to %d epochs at learning rate %g; %s trainable, %s non-trainable parameters",
                phase.name,
                phase_rows[-1]["method"],
                phase.epochs,
                phase.learning_rate,
                f"{trainable:,}",
                f"{non_trainable:,}",
            )
            if not phase.unfrozen and self.embeddings is not None:
                self._head_on_embeddings(phase, state)
            else:
                self._fit(phase, state)
            save_weights(self.network, self.folder / f"phase-{index}.npz")
            state.record["done"].append(phase.name)
            state.save()
        load_weights(self.network, self.folder / "best.npz")
        epochs = state.record["epochs"].values()
        for row in phase_rows:
            times = [epoch["seconds"] for epoch in epochs if epoch["phase"] == row["name"]]
            row["epochs_run"] = len(times)
            row["seconds_per_epoch"] = float(np.mean(times)) if times else None
            row["seconds"] = float(np.sum(times))
        state.record["finished"] = True
        state.save()
        for phase_weights in self.folder.glob("phase-*.npz"):
            phase_weights.unlink()  # the best weights are what is kept
        return self.network, phase_rows, float(state.record["best_val_accuracy"])

    def _method(self, phase: Phase) -> str:
        if not phase.unfrozen and self.embeddings is not None:
            return "cached embeddings"
        if phase.unfrozen and self.top_groups is not None and phase.layers is None and phase.groups <= self.top_groups:
            return f"cached activations of {BOUNDARY[self.top_groups]}, {self.views} view(s) per training image"
        return "full forward pass"

    def _head_on_embeddings(self, phase: Phase, state: TrainingState) -> None:
        """The head phase as recipe 2: a Dense head on the cached embeddings, copied into the network's head."""
        train, val = self.data.parts["train"], self.data.parts["val"]
        assert self.embeddings is not None, "the head phase on embeddings needs the cached embeddings"
        started = time.perf_counter()
        head = DenseHead(
            learning_rate=phase.learning_rate,
            dropout=self.dropout,
            batch_size=self.batch_size,
            max_epochs=phase.epochs,
            patience=self.patience,
            seed=self.seed,
        )
        head.fit(
            self.embeddings[train],
            self.data.labels[train],
            validation_data=(self.embeddings[val], self.data.labels[val]),
        )
        kernel = np.zeros((head.n_features_in_, len(self.class_names)), np.float32)
        bias = np.full(len(self.class_names), -1e4, np.float32)  # a class absent from train stays improbable
        kernel[:, head.classes_], bias[head.classes_] = head.coef_, head.intercept_
        self.network.get_layer("head").set_weights([kernel, bias])
        seconds = (time.perf_counter() - started) / head.n_epochs_
        for epoch in range(head.n_epochs_):  # the kept weights are the best epoch's: record that epoch last
            logs = {name: head.history_[name][epoch] for name in ("loss", "accuracy", "val_loss", "val_accuracy")}
            if epoch + 1 == head.best_epoch_:
                continue
            state.record["epochs"][f"{phase.name}:{epoch + 1}"] = {
                "phase": phase.name,
                "epoch": epoch + 1,
                "run": state.record["runs"],
                "seconds": seconds,
                **logs,
            }
        best = {
            name: head.history_[name][head.best_epoch_ - 1] for name in ("loss", "accuracy", "val_loss", "val_accuracy")
        }
        state.record_epoch(phase, head.best_epoch_, seconds, best, self.network)

    def _fit(self, phase: Phase, state: TrainingState) -> None:
        """A phase trained with Keras: on cached activations when only the cached top trains, else from pixels."""
        import keras

        cached = self._method(phase).startswith("cached activations")
        if cached:
            assert self.top_groups is not None, "cached activations need the cached top's groups"
            activations = cache_activations(
                self.network,
                self.data.pixels,
                self.data.parts["train"],
                groups=self.top_groups,
                views=self.views,
                folder=self.activations,
                provenance={"backbone_key": self.backbone.key, "split_id": self.config["split_id"]},
                batch_size=self.batch_size,
                seed=self.seed,
            )
            self.cache_seconds += activations.seconds
            model = top_network(self.network, self.top_groups)
            train = activation_dataset(
                activations, self.data.labels, self.data.parts["train"], self.batch_size, shuffle=True, seed=self.seed
            )
            val = activation_dataset(
                activations, self.data.labels, self.data.parts["val"], self.batch_size, shuffle=False, seed=self.seed
            )
        else:
            model = self.network
            train = _pixel_dataset(self.data, "train", self.batch_size, shuffle=True, seed=self.seed)
            val = _pixel_dataset(self.data, "val", self.batch_size, shuffle=False, seed=self.seed)
        steps = math.ceil(len(self.data.parts["train"]) / self.batch_size)
        rate = learning_rate_schedule(
            phase.learning_rate,
            self.schedule if phase.unfrozen else "constant",
            steps=steps * phase.epochs,
            warmup_steps=steps * self.warmup_epochs,
        )
        optimizer = (
            discriminative_adam(rate, learning_rate_multipliers(self.network, self.lr_decay))
            if phase.unfrozen and self.lr_decay < 1
            else keras.optimizers.Adam(learning_rate=rate)
        )
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        callbacks = [
            keras.callbacks.BackupAndRestore(str(self.folder / "backup" / phase.name)),
            epoch_logger(state, phase, self.network),
            keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=self.patience),
        ]
        if phase.unfrozen and self.schedule == "plateau":
            callbacks.append(
                keras.callbacks.ReduceLROnPlateau(
                    monitor="val_loss", factor=0.3, patience=1, min_lr=phase.learning_rate / 100
                )
            )
        model.fit(
            train,
            validation_data=val,
            epochs=phase.epochs,
            callbacks=callbacks,
            shuffle=False,  # shuffled above
            verbose=2 if self.progress else 0,
        )


def _score_and_save(
    network: Any,
    backbone: Backbone,
    data: Images,
    class_names: list[str],
    run: Path,
    variant: str,
    config: dict[str, Any],
    phase_rows: list[dict[str, Any]],
    best_val: float,
    batch_size: int,
    *,
    cache_seconds: float,
) -> dict[str, Any]:
    """Score the best network on the test split once, from pixels, save it as a model file, and build its report row.

    Its training cost includes the time spent caching what it trained on (`cache_seconds`)."""
    test = _test_order(data)
    proba = predict_proba(network, data.pixels, test, batch_size)
    metrics = score(data.labels[test], proba, class_names)
    path = run / f"finetune-{variant}{MODEL_SUFFIX}"
    provenance = backbone.provenance()
    params = {k: v for k, v in config.items() if k != "split_id"}
    model_bytes = save_model(
        path,
        network,
        {
            "name": f"finetune-{variant}",
            "kind": "neural",
            "input": "pixels",
            "backbone_key": backbone.key,
            "backbone": {field: provenance[field] for field in EMBEDDING_FIELDS if field in provenance},
            "class_names": class_names,
            "split_id": config["split_id"],
            "params": params,
            "metrics": {
                k: v for k, v in metrics.items() if k not in ("confusion_matrix", "test_predictions", "test_confidence")
            },
        },
    )
    sample = np.asarray(data.pixels[test[:batch_size]])
    return {
        "name": f"finetune-{variant}",
        "kind": "neural",
        "description": (
            "head on the frozen base, then top layers unfrozen at a low learning rate"
            if variant == "a"
            else "whole network trainable from the start at a low learning rate"
        ),
        **metrics,
        "cv_mean": best_val,
        "cv_std": None,
        "selection": "weights of the epoch with the best validation accuracy (early stopping on it in every phase)",
        "fit_seconds": float(sum(row["seconds"] for row in phase_rows)) + cache_seconds,
        "cache_seconds": cache_seconds,
        "predict_ms_per_image": latency_ms(lambda X: network(X, training=False), sample),
        "head_ms_per_image": None,
        "model_bytes": model_bytes,
        "params": params,
        "model_path": str(path),
        "phases": phase_rows,
        "input_size": int(data.pixels.shape[1]),
    }


def _test_order(data: Images) -> np.ndarray:
    """The test images in the order of their paths, the order of the report's `split.test_paths`."""
    return np.array(sorted(data.parts["test"], key=data.paths.__getitem__), dtype=np.int64)
