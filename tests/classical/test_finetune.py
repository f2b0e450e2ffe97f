"""Fine-tuning end to end on tiny settings: same split and report as the sweep, phases, resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset

from classical import load_model, predict, sweep
from classical.finetuning.workflow import finetune, plan_phases
from embedder import Backbone, extract

pytestmark = pytest.mark.slow
TINY = {"size": 96, "weights": None, "batch_size": 8}


@pytest.mark.parametrize(
    ("variant", "options", "expected"),
    [
        ("a", {}, [("head", 3, 1e-3, 0), ("top-2-groups", 5, 1e-5, 2)]),
        (
            "a",
            {"gradual": True, "unfreeze": 3, "epochs": 7},
            [("head", 3, 1e-3, 0), ("unfreeze-1", 2, 1e-5, 1), ("unfreeze-2", 2, 1e-5, 2), ("unfreeze-3", 3, 1e-5, 3)],
        ),
        ("a", {"head_epochs": 0, "unfreeze_layers": 30}, [("top-30-layers", 5, 1e-5, 0)]),
        ("b", {}, [("all", 5, 1e-5, 7)]),
    ],
    ids=["a", "a-gradual", "a-layers", "b"],
)
def test_phase_plans(variant: str, options: dict, expected: list) -> None:
    settings = {
        "head_epochs": 3,
        "epochs": 5,
        "head_learning_rate": 1e-3,
        "learning_rate": 1e-5,
        "unfreeze": 2,
        "unfreeze_layers": None,
        "gradual": False,
        **options,
    }
    phases = plan_phases(variant, **settings)
    assert [(p.name, p.epochs, p.learning_rate, p.groups) for p in phases] == expected


@pytest.mark.parametrize(
    ("variant", "options", "message"),
    [
        ("c", {}, "variant must be"),
        ("b", {"gradual": True}, "variant 'b' trains everything"),
        ("a", {"gradual": True, "unfreeze": 4, "epochs": 3}, "needs at least 4 epochs"),
        ("a", {"unfreeze": 9}, "between 1 and 7"),
    ],
)
def test_bad_plans(variant: str, options: dict, message: str) -> None:
    settings = {
        "head_epochs": 1,
        "epochs": 5,
        "head_learning_rate": 1e-3,
        "learning_rate": 1e-5,
        "unfreeze": 2,
        "unfreeze_layers": None,
        "gradual": False,
        **options,
    }
    with pytest.raises(ValueError, match=message):
        plan_phases(variant, **settings)


@pytest.fixture(scope="module")
def swept_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finetune")
    make_dataset(folder / "photos", per_class=10)
    extract(folder / "photos", folder / "c.h5", Backbone(size=96, weights=None), progress=False)
    sweep(folder / "c.h5", folder / "run", models=["lr"], grids={"lr": {"C": [1.0]}}, cv=3, progress=False)
    return folder


def test_variant_a_joins_the_sweeps_report_on_the_same_split(swept_run: Path) -> None:
    run = swept_run / "run"
    split_before = (run / "split.json").read_text()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the defaults are the safe learning rates: no warning
        report = finetune(
            swept_run / "photos",
            run,
            variant="a",
            head_epochs=1,
            epochs=2,
            unfreeze=2,
            gradual=True,
            lr_decay=0.5,
            **TINY,
        )
    assert (run / "split.json").read_text() == split_before
    assert [row["name"] for row in report["models"]] == ["lr", "finetune-a"]
    lr, tuned = report["models"]
    assert tuned["kind"] == "neural" and tuned["cv_std"] is None
    assert (
        sum(map(sum, tuned["confusion_matrix"])) == sum(map(sum, lr["confusion_matrix"])) == report["split"]["n_test"]
    )
    assert [(p["name"], p["epochs"]) for p in tuned["phases"]] == [("head", 1), ("unfreeze-1", 1), ("unfreeze-2", 1)]
    head, first, second = tuned["phases"]
    assert head["trainable"] == 1280 * 3 + 3 and first["trainable"] < second["trainable"]
    assert head["trainable"] + head["non_trainable"] == second["trainable"] + second["non_trainable"]
    assert all(p["seconds_per_epoch"] > 0 for p in tuned["phases"])
    assert tuned["fit_seconds"] == pytest.approx(sum(p["seconds"] for p in tuned["phases"]) + tuned["cache_seconds"])
    assert [p["method"] for p in tuned["phases"]] == ["cached embeddings"] + [
        "cached activations of block_12_add, 4 view(s) per training image"
    ] * 2
    assert tuned["input_size"] == 96 and tuned["cache_seconds"] > 0
    assert tuned["params"]["lr_decay"] == 0.5 and tuned["params"]["size"] == 96
    saved = load_model(tuned["model_path"])  # a model file: the Keras network, read in safe mode, with its metadata
    assert saved.model.output_shape == (None, 3) and tuned["model_bytes"] == Path(tuned["model_path"]).stat().st_size
    assert saved.takes_pixels and saved.class_names == report["class_names"] and saved.backbone.size == 96
    assert saved.backbone_key == report["backbone"]  # fine-tuned from the run's own backbone (weights and size)
    photo = next((swept_run / "photos" / "red").iterdir())
    assert set(predict(tuned["model_path"], [photo])[0]["probs"]) == set(report["class_names"])  # classical predict
    assert (run / "plots" / "accuracy_vs_fit_time.png").is_file()
    state = json.loads((run / "finetune-a" / "state.json").read_text())
    assert state["finished"] and state["best_val_accuracy"] == tuned["cv_mean"]
    assert not list((run / "finetune-a").glob("phase-*.npz"))


def test_variant_b_without_a_sweep_makes_the_split(tmp_path: Path) -> None:
    make_dataset(tmp_path / "photos", per_class=10)
    report = finetune(tmp_path / "photos", tmp_path / "run", variant="b", epochs=1, schedule="plateau", **TINY)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["counts"] == {"train": 22, "val": 4, "test": 4} and split["backbone_key"] == ""
    row = report["models"][0]
    assert row["name"] == "finetune-b" and [p["name"] for p in row["phases"]] == ["all"]
    assert row["phases"][0]["non_trainable"] == 34_112  # BatchNorm statistics only


def test_a_smaller_size_brings_a_dense_head_of_that_size_as_its_partner(swept_run: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(swept_run / "run", run)
    report = finetune(swept_run / "photos", run, size=128, head_epochs=2, epochs=1, weights="none", batch_size=8)
    rows = {row["name"]: row for row in report["models"]}
    assert set(rows) == {"lr", "dense-128", "finetune-a"}
    assert rows["dense-128"]["input_size"] == rows["finetune-a"]["input_size"] == 128
    assert rows["dense-128"]["kind"] == "neural" and (run / "dense-128.model").is_file()
    from embedder import open_cache

    with open_cache(swept_run / "c.h5") as cache:  # the run's cache gained the embeddings at 128 px
        assert sorted(key.split("-")[2] for key in cache.keys) == ["128", "96"]


def test_cached_activations_give_the_networks_own_outputs(tmp_path: Path) -> None:
    from classical.finetuning.activations import cache_activations, top_network
    from classical.models.network import build_network

    network = build_network(Backbone(size=96, weights=None), 3, dropout=0.2)
    pixels = np.random.default_rng(0).integers(0, 256, (10, 96, 96, 3)).astype(np.uint8)
    for groups in (1, 2, 4):
        folder = tmp_path / str(groups)
        folder.mkdir()
        activations = cache_activations(
            network, pixels, np.arange(6), groups=groups, views=3, folder=folder, provenance={}, batch_size=4, seed=0
        )
        assert activations.values.shape[0] == 10 + 2 * 6 and [len(v) for v in activations.views] == [3] * 6 + [1] * 4
        top = top_network(network, groups)
        clean = np.asarray(activations.values)[[v[0] for v in activations.views]]
        np.testing.assert_allclose(top(clean, training=False), network(pixels, training=False), atol=1e-5)
        augmented = np.asarray(activations.values)[[v[1] for v in activations.views[:6]]]
        assert not np.allclose(augmented, clean[:6], atol=1e-3)  # the extra views are augmented
        again = cache_activations(
            network, pixels, np.arange(6), groups=groups, views=3, folder=folder, provenance={}, batch_size=4, seed=0
        )
        assert again.seconds == 0.0  # same settings: reused, not recomputed


def test_images_missing_from_the_split_are_refused(swept_run: Path, tmp_path: Path) -> None:
    from classical import DataError

    partial = tmp_path / "partial"
    make_dataset(partial, per_class=3)
    with pytest.raises(DataError, match="names .* images missing from the images given"):
        finetune(partial, swept_run / "run", variant="b", epochs=1, **TINY)


def test_an_interrupted_run_continues_from_the_last_completed_epoch(tmp_path: Path) -> None:
    make_dataset(tmp_path / "photos", per_class=10)
    command = [
        sys.executable,
        "-m",
        "classical.cli",
        "finetune",
        str(tmp_path / "photos"),
        "--out",
        str(tmp_path / "run"),
        "--head-epochs",
        "1",
        "--epochs",
        "3",
        "--size",
        "96",
        "--weights",
        "none",
        "--batch-size",
        "8",
        "--no-progress",
    ]
    state = tmp_path / "run" / "finetune-a" / "state.json"
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while (
        time.monotonic() < deadline and process.poll() is None
    ):  # kill once the head phase and one more epoch are done
        if state.is_file() and len(json.loads(state.read_text())["epochs"]) >= 2:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be interrupted"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = json.loads(state.read_text())
    assert done_before["done"] == ["head"] and 2 <= len(done_before["epochs"]) < 4
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "phase             head: 1 epochs" in result.stdout and "top-2-groups: 3 epochs" in result.stdout
    epochs = json.loads(state.read_text())["epochs"]
    assert sorted(epochs) == ["head:1", "top-2-groups:1", "top-2-groups:2", "top-2-groups:3"]  # every epoch once
    for key, epoch in done_before["epochs"].items():  # finished epochs were not trained again
        assert epochs[key]["run"] == 1 and epochs[key]["seconds"] == epoch["seconds"]
    assert [epochs[key]["run"] for key in sorted(epochs) if key not in done_before["epochs"]] == [2] * (
        4 - len(done_before["epochs"])
    )
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["models"][0]["name"] == "finetune-a" and np.isfinite(report["models"][0]["test_accuracy"])


def test_package_exports_the_function_and_imports_keras_only_when_asked() -> None:
    code = (
        "import sys, classical; assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
        "from classical import finetune; assert callable(finetune) and finetune.__module__ == 'classical.finetuning.workflow'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
