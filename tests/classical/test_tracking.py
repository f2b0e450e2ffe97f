"""Tracking in MLflow against a real tracking server process: what a sweep logs is its report.json."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_TOP_WEIGHTS, ROOT, blobs, copy_files, make_dataset, photo, write_cache
from support.mlflow_server import free_port, mlflow_server
from typer.testing import CliRunner

from classical import predict
from classical.cli import app
from classical.report import best_row, verdict
from classical.tracking import curve_steps, parent_metrics, row_metrics, row_params, run_params
from embedder import Backbone, extract, load_files

mlflow = pytest.importorskip("mlflow")
from mlflow import MlflowClient  # noqa: E402

TINY = Backbone(size=96, weights=None)
GRIDS = {"lr": {"C": [1.0]}, "knn": {"n_neighbors": [3]}, "dense": {"learning_rate": [1e-2], "dropout": [0.0]}}
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as uri:
        yield uri


@pytest.fixture(scope="module")
def logged(server: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`classical sweep ... --mlflow URI --register tiny-best` on a tiny extracted cache, and new photos."""
    folder = tmp_path_factory.mktemp("tracked")
    make_dataset(folder / "photos", per_class=8)
    extract(folder / "photos", folder / "c.h5", TINY, progress=False)
    (folder / "grids.json").write_text(json.dumps(GRIDS))
    run = folder / "run"
    args = ["sweep", str(folder / "c.h5"), "--out", str(run), "--models", "lr,knn,dense"]
    args += ["--grid", str(folder / "grids.json"), "--cv", "2", "--no-progress", "--no-embedding-cost"]
    args += ["--repeats", "2", "--learning-curve", "3", "--curve-seeds", "1"]
    args += ["--mlflow", server, "--experiment", "sweeps", "--register", "tiny-best"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    new = folder / "new"
    new.mkdir()
    for i, color in enumerate([(200, 30, 30), (30, 180, 40), (30, 50, 200), (120, 120, 40)]):
        photo(color, seed=700 + i, size=(120, 90)).save(new / f"{i}.jpg")
    return {"uri": server, "run": run, "new": sorted(new.iterdir()), "output": result.output}


def runs_of(uri: str, experiment: str) -> tuple[object, dict[str, object]]:
    """The parent run of an experiment and its nested runs by model name."""
    client = MlflowClient(uri)
    found = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    parents = [run for run in found if "mlflow.parentRunId" not in run.data.tags]
    assert len(parents) == 1
    children = {
        run.data.tags["bottleneck_lab.model"]: run
        for run in found
        if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id
    }
    return parents[0], children


def test_a_sweep_is_one_parent_run_and_a_nested_run_per_model_row_with_the_reports_values(logged: dict) -> None:
    report = json.loads((logged["run"] / "report.json").read_text())
    parent, children = runs_of(logged["uri"], "sweeps")
    assert re.search(
        r"mlflow: logged run \w+ to experiment 'sweeps' .*3 model runs, 3 models, registered tiny-best/1",
        logged["output"],
    )
    assert set(children) == {row["name"] for row in report["models"]} == {"lr", "knn", "dense"}
    client = MlflowClient(logged["uri"])
    for row in report["models"]:
        child = children[row["name"]]
        metrics = row_metrics(row, report)
        assert {"test_accuracy_ci_low", "macro_f1_ci_high", "log_loss", "fit_seconds", "repeats_mean"} <= set(metrics)
        assert {key: child.data.metrics[key] for key in metrics} == metrics
        assert child.data.metrics["test_accuracy"] == row["test_accuracy"]
        assert [child.data.metrics["test_accuracy_ci_low"], child.data.metrics["test_accuracy_ci_high"]] == row[
            "test_accuracy_ci"
        ]
        assert child.data.params == row_params(row, report)
        assert all(child.data.params[f"hp.{key}"] == json.dumps(value) for key, value in row["params"].items())
        asked = GRIDS[row["name"]]  # the grid asked for, recorded in report.json (in the estimator's own names)
        assert list(row["grid"].values()) == list(asked.values())
        assert all(name.endswith(key) for name, key in zip(row["grid"], asked))
        assert json.loads(child.data.params["grid"]) == row["grid"]
        history = client.get_metric_history(child.info.run_id, "learning_curve_accuracy")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
            (x, mean) for x, mean, _ in curve_steps(report, row["name"])
        ]
        assert [m.value for m in client.get_metric_history(child.info.run_id, "repeats_accuracy")] == report["repeats"][
            "models"
        ][row["name"]]["accuracies"]
        assert child.data.tags["bottleneck_lab.best"] == str(row is best_row(report) or row == best_row(report)).lower()
    assert curve_steps(report, "lr")[0][0] == 3
    audit = json.loads((logged["run"] / "audit.json").read_text())
    expected = parent_metrics(report, audit)
    assert {"comparison_difference", "comparison_p_value", "comparison_difference_ci_low", "audit.outliers"} <= set(
        expected
    )
    assert {key: parent.data.metrics[key] for key in expected} == expected
    assert parent.data.metrics["comparison_difference"] == report["comparison"]["difference"]
    assert parent.data.params == run_params(report, parent_provenance(parent))
    assert parent.data.params["split.id"] == report["split"]["id"]
    tags = parent.data.tags
    assert tags["bottleneck_lab.verdict"] == verdict(report) and tags["bottleneck_lab.command"] == "sweep"
    assert re.fullmatch(r"[0-9a-f]{64}", tags["bottleneck_lab.cache_fingerprint"])
    assert tags["bottleneck_lab.cache"] == report["cache"] and tags["bottleneck_lab.version"]
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "report.json", "audit.json", "split.json", "plots", "repeats"} <= artifacts
    plots = {Path(item.path).name for item in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"accuracy_vs_fit_time.png", "learning_curve.png"} <= plots
    copy = mlflow.artifacts.download_artifacts(
        run_id=parent.info.run_id, artifact_path="report.json", tracking_uri=logged["uri"]
    )
    assert Path(copy).read_text() == (logged["run"] / "report.json").read_text()


def parent_provenance(parent: object) -> dict:
    """The backbone provenance the parent run's params carry (the cache's, not the report's)."""
    return {
        key.removeprefix("backbone."): value for key, value in parent.data.params.items() if key.startswith("backbone.")
    }


def test_logged_models_load_with_pyfunc_alone_and_predict_like_classical_predict(logged: dict) -> None:
    report = json.loads((logged["run"] / "report.json").read_text())
    _, children = runs_of(logged["uri"], "sweeps")
    mlflow.set_tracking_uri(logged["uri"])
    images = np.stack([item.pixels for item in load_files(logged["new"], size=96, resize="crop")])
    best = best_row(report)
    uris = {name: child.data.tags["bottleneck_lab.model_uri"] for name, child in children.items()}
    uris["registered"] = "models:/tiny-best/1"
    for name, uri in uris.items():
        row = best if name == "registered" else next(r for r in report["models"] if r["name"] == name)
        model = mlflow.pyfunc.load_model(uri)
        assert model.metadata.metadata["class_names"] == report["class_names"]
        assert model.metadata.get_input_schema().inputs[0].shape == (-1, 96, 96, 3)
        output = model.predict(images)
        expected = predict(Path(row["model_path"]), logged["new"])
        np.testing.assert_allclose(
            output["probabilities"], [list(r["probs"].values()) for r in expected], atol=TOLERANCE, rtol=0
        )
        assert [report["class_names"][i] for i in output["label"]] == [r["label"] for r in expected]


def test_classical_log_relogs_a_run_folder_as_the_same_runs(logged: dict) -> None:
    result = CliRunner().invoke(
        app, ["log", str(logged["run"]), "--mlflow", logged["uri"], "--experiment", "relogged", "--no-models"]
    )
    assert result.exit_code == 0, result.output
    assert "3 model runs, 0 models" in result.output
    first, first_children = runs_of(logged["uri"], "sweeps")
    again, children = runs_of(logged["uri"], "relogged")
    assert again.data.params == first.data.params
    assert again.data.metrics == first.data.metrics
    assert again.data.tags["bottleneck_lab.verdict"] == first.data.tags["bottleneck_lab.verdict"]
    assert again.data.tags["bottleneck_lab.command"] == "log"
    assert set(children) == set(first_children)
    for name, child in children.items():
        assert child.data.params == first_children[name].data.params
        assert child.data.metrics == first_children[name].data.metrics


def test_an_unreachable_server_leaves_the_run_folder_and_one_warning(tmp_path: Path) -> None:
    X, labels = blobs(per_class=12)
    write_cache(tmp_path / "c.h5", X, labels)
    down = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, "-m", "classical.cli", "sweep", str(tmp_path / "c.h5"), "--out", str(tmp_path / "run")]
    command += ["--models", "lr", "--cv", "2", "--no-audit", "--no-embedding-cost", "--no-progress", "--mlflow", down]
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "report.json").is_file() and (tmp_path / "run" / "report.html").is_file()
    warnings = [line for line in done.stderr.splitlines() if "not logged" in line]
    assert len(warnings) == 1, done.stderr
    assert down in warnings[0] and f"classical log {tmp_path / 'run'} --mlflow {down}" in warnings[0]


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--mlflow", "ftp://example.org/x"], {}, "scheme 'ftp'"),
        (["--mlflow", "mlruns"], {}, "scheme 'none'"),
        (["--mlflow", "env"], {"MLFLOW_TRACKING_URI": ""}, "needs a tracking URI"),
        (["--register", "best"], {}, "need --mlflow"),
    ],
)
def test_a_wrong_tracking_uri_fails_before_any_fit(tmp_path: Path, args: list[str], env: dict, message: str) -> None:
    X, labels = blobs(per_class=12)
    write_cache(tmp_path / "c.h5", X, labels)
    result = CliRunner().invoke(
        app, ["sweep", str(tmp_path / "c.h5"), "--out", str(tmp_path / "run"), "--models", "lr", *args], env=env
    )
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "run" / "split.json").exists()


@pytest.mark.real_data
def test_real_flowers_model_logged_to_mlflow_predicts_like_classical_predict(
    shared: Path, server: str, tmp_path: Path
) -> None:
    """Real weights at 224 px on real flowers: the registered svm-rbf, through pyfunc, against `classical predict`."""
    flowers = shared / "data" / "flowers"
    new = []
    for folder in sorted(path for path in flowers.iterdir() if path.is_dir()):
        photos = sorted(folder.glob("*.jpg"))
        copy_files(photos[:8], tmp_path / "photos" / folder.name)
        new += photos[8:10]
    extract(tmp_path / "photos", tmp_path / "c.h5", Backbone(weights=str(NO_TOP_WEIGHTS)), progress=False)
    (tmp_path / "grids.json").write_text(json.dumps({"svm-rbf": {"C": [1.0], "gamma": ["scale"]}}))
    args = ["sweep", str(tmp_path / "c.h5"), "--out", str(tmp_path / "run"), "--models", "svm-rbf", "--cv", "2"]
    args += ["--grid", str(tmp_path / "grids.json"), "--no-audit", "--no-embedding-cost", "--no-progress"]
    args += ["--mlflow", server, "--experiment", "flowers", "--register", "flowers-best"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    model = mlflow.pyfunc.load_model("models:/flowers-best/1")
    output = model.predict(np.stack([item.pixels for item in load_files(new, size=224, resize="crop")]))
    expected = predict(tmp_path / "run" / "svm-rbf.model", new)
    names = model.metadata.metadata["class_names"]
    assert [names[i] for i in output["label"]] == [r["label"] for r in expected]
    np.testing.assert_allclose(
        output["probabilities"], [list(r["probs"].values()) for r in expected], atol=TOLERANCE, rtol=0
    )
