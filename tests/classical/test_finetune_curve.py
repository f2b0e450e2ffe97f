"""The fine-tuned network on the learning curve (`--learning-curve-neural`), on tiny settings: same subsets, same report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dataset
from typer.testing import CliRunner

from classical import DataError, load_labeled, sweep
from classical.cli import app
from classical.data.splits import Split
from classical.experiments.curves import draw_subset, hold_out
from classical.finetuning.workflow import finetune
from embedder import Backbone, extract

pytestmark = pytest.mark.slow
TINY = {"size": 96, "weights": None, "batch_size": 8, "head_epochs": 1, "epochs": 1, "views": 1}


@pytest.fixture(scope="module")
def photos_and_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("finetune-curve")
    make_dataset(folder / "photos", per_class=8)
    extract(folder / "photos", folder / "c.h5", Backbone(size=96, weights=None), progress=False)
    return folder


def _sweep(folder: Path, run: Path, **options: object) -> dict:
    return sweep(
        folder / "c.h5",
        run,
        models=["lr"],
        grids={"lr": {"C": [1.0]}},
        cv=2,
        n_jobs=1,
        progress=False,
        embedding_cost=False,
        audit=False,
        **options,
    )


@pytest.fixture(scope="module")
def curve_run(photos_and_cache: Path) -> tuple[Path, dict]:
    run = photos_and_cache / "run"
    _sweep(photos_and_cache, run, learning_curve="2,4", curve_seeds=1)
    shutil.copy(run / "plots" / "learning_curve.png", photos_and_cache / "swept_curve.png")
    return run, finetune(photos_and_cache / "photos", run, learning_curve_neural=True, **TINY)


def test_curve_gains_the_fine_tuned_line(curve_run: tuple[Path, dict]) -> None:
    run, report = curve_run
    curve = report["learning_curve"]
    assert curve["per_class"] == [2, 4, "all"] and list(curve["models"]) == ["lr", "finetune-a"]
    values = curve["models"]["finetune-a"]
    assert len(values) == 3 and all(0 <= value <= 1 for value in values)
    assert curve["kinds"]["finetune-a"] == "neural" and curve["std"]["finetune-a"] == [None, None, None]
    row = next(row for row in report["models"] if row["name"] == "finetune-a")
    assert values[-1] == row["test_accuracy"]  # "all", seed 0: the fine-tuning's own row
    assert [len(seeds) for seeds in curve["accuracies"]["finetune-a"]] == [1, 1, 1]
    stored = json.loads((run / "report.json").read_text())["learning_curve"]
    assert stored["models"]["finetune-a"] == values
    markdown = (run / "report.md").read_text()
    curve_section = markdown[markdown.index("## Learning curve") :]
    assert (
        "| finetune-a | neural |" in curve_section
        and "finetune-a: trained with the fine-tuning's settings" in curve_section
    )
    assert "finetune-a" in (run / "report.html").read_text()
    swept = (run.parent / "swept_curve.png").read_bytes()
    assert (run / "plots" / "learning_curve.png").read_bytes() != swept  # redrawn with the new line
    assert not list((run / "learning-curve" / "finetune-a").glob("*/activations"))  # deleted once trained


def test_subsets_are_the_classical_ones(curve_run: tuple[Path, dict]) -> None:
    run, report = curve_run
    data = load_labeled(report["cache"], report["backbone"])
    parts = Split.load(run / "split.json").indices(data.paths)
    pool = np.concatenate([parts["train"], parts["val"]])
    subsets = report["learning_curve"]["finetune"]["finetune-a"]["subsets"]
    assert subsets[-1] == [None]  # "all": the stored train and validation parts
    for p, n in enumerate([2, 4]):
        dense = hold_out(draw_subset(pool, data.y, n, 0), data.y, n, parts, seed=0)  # the Dense head's rows
        for part in ("train", "val"):
            assert sorted(subsets[p][0][part]) == sorted(str(data.paths[i]) for i in dense[part])
        labels = [path.split("/")[0] for path in subsets[p][0]["train"] + subsets[p][0]["val"]]
        assert sorted(labels) == sorted(list(report["class_names"]) * n)
        assert len(subsets[p][0]["val"]) == len(report["class_names"])  # max(1, round(n / 5)) = 1 per class
    state = json.loads((run / "learning-curve" / "finetune-a" / "4-seed0" / "state.json").read_text())
    assert state["finished"] and state["config"]["curve"]["per_class"] == 4


def test_seed_reproduces_a_subsets_training(
    curve_run: tuple[Path, dict], photos_and_cache: Path, tmp_path: Path
) -> None:
    run, report = curve_run
    again = tmp_path / "run"
    shutil.copytree(run, again, ignore=lambda folder, names: ["2-seed0"] if "4-seed0" in names else [])
    repeated = finetune(photos_and_cache / "photos", again, learning_curve_neural=True, **TINY)["learning_curve"]
    assert (again / "learning-curve" / "finetune-a" / "2-seed0" / "state.json").is_file()  # trained again, from scratch
    first = report["learning_curve"]
    assert repeated["finetune"]["finetune-a"]["subsets"] == first["finetune"]["finetune-a"]["subsets"]
    assert repeated["accuracies"]["finetune-a"] == first["accuracies"]["finetune-a"]


def test_run_without_a_curve_is_refused_before_training(photos_and_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "plain"
    _sweep(photos_and_cache, run)
    with pytest.raises(DataError, match="has no learning curve.*--learning-curve 5,10,25,50"):
        finetune(photos_and_cache / "photos", run, learning_curve_neural=True, **TINY)
    assert not (run / "finetune-a").exists()
    result = CliRunner().invoke(
        app,
        [
            "finetune",
            str(photos_and_cache / "photos"),
            "--out",
            str(run),
            "--size",
            "96",
            "--weights",
            "none",
            "--learning-curve-neural",
        ],
    )
    assert result.exit_code == 2 and "error:" in result.output and "--learning-curve" in result.output, result.output
    assert "Traceback" not in result.output
