"""The `classical` command line: sweep, report, and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import blobs, write_cache
from typer.testing import CliRunner

from classical.cli import app

runner = CliRunner()


def run(*args: object) -> tuple[int, str]:
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    X, labels = blobs(per_class=20)
    write_cache(tmp_path / "c.h5", X, labels)
    return tmp_path / "c.h5"


def test_sweep_then_report(cache: Path, tmp_path: Path) -> None:
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"lr": {"C": [0.1, 1.0]}, "knn": {"n_neighbors": [3]}}))
    code, output = run(
        "sweep", cache, "--out", tmp_path / "run", "--models", "lr,knn", "--grid", grid, "--cv", "3", "--no-progress"
    )
    assert code == 0, output
    assert "model" in output and "test acc" in output and "Best on the test split" in output
    assert output.index("lr ") > 0 and f"report: {tmp_path / 'run' / 'report.html'} (open it in a browser" in output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [row["name"] for row in report["models"]] == ["lr", "knn"]
    assert "over 2 candidates" in report["models"][0]["selection"]
    assert [row["strategy"] for row in report["models"]] == ["exact", "exact"]  # small sets: today's search
    (tmp_path / "run" / "plots" / "per_class_f1.png").unlink()
    code, output = run("report", tmp_path / "run")
    assert code == 0 and "Best on the test split" in output
    assert (tmp_path / "run" / "plots" / "per_class_f1.png").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "{tmp}/none.h5", "--out", "{tmp}/run"], "does not exist"),
        (["sweep", "{cache}", "--out", "{tmp}/run", "--models", "lr,xgb"], "unknown models ['xgb']"),
        (["sweep", "{cache}", "--out", "{tmp}/run", "--fractions", "0.5,0.5"], "fractions must be three"),
        (["sweep", "{cache}", "--out", "{tmp}/run", "--grid", "{tmp}/none.json"], "grid file"),
        (
            [
                "sweep",
                "{cache}",
                "--out",
                "{tmp}/run",
                "--models",
                "lr,knn",
                "--no-audit",
                "--no-embedding-cost",
                "--time-budget",
                "0.001",
            ],
            "too small for one fit per model: it needs about",
        ),
        (["report", "{tmp}/nothing"], "no report in"),
        (["predict", "{tmp}/nothing/lr", "{tmp}"], "does not exist"),
    ],
    ids=[
        "missing-cache",
        "unknown-model",
        "bad-fractions",
        "missing-grid",
        "tiny-budget",
        "no-report",
        "missing-model",
    ],
)
def test_bad_input_exits_2(cache: Path, tmp_path: Path, args: list[str], message: str) -> None:
    code, output = run(*(a.format(tmp=tmp_path, cache=cache) for a in args))
    assert code == 2 and "error:" in output and message in output, output
