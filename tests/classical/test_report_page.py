"""RUN/report.html in a real headless Chromium: it loads without console errors, every image loads,
and its table says what report.json says."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import make_dataset

from classical import rerender, sweep
from embedder import Backbone, extract

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium driven by Playwright (no browser download); skipped where absent, except in CI."""
    if not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"chromium expected in CI at {CHROMIUM} (.ci/run installs Debian's chromium)")
        pytest.skip("chromium is not installed")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("page")
    make_dataset(folder / "photos", per_class=12)
    extract(folder / "photos", folder / "c.h5", Backbone(size=96, weights=None), progress=False)
    sweep(
        folder / "c.h5",
        folder / "run",
        models=["lr", "knn"],
        grids={"lr": {"C": [0.01]}, "knn": {"n_neighbors": [1]}},
        cv=3,
        progress=False,
    )
    return folder / "run"


def open_page(browser, path: Path) -> tuple[object, list[str]]:
    page = browser.new_page()
    problems: list[str] = []
    page.on(
        "console",
        lambda message: (
            problems.append(f"console {message.type}: {message.text}") if message.type in ("error", "warning") else None
        ),
    )
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda request: problems.append(f"request failed: {request.url}"))
    page.goto(path.as_uri(), wait_until="load")
    return page, problems


def test_report_page_loads_every_image_and_matches_report_json(browser, run: Path, tmp_path: Path) -> None:
    page, problems = open_page(browser, run / "report.html")
    images = page.eval_on_selector_all(
        "img", "images => images.map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    assert images, "the page shows no images"
    assert [src for src, complete, width in images if not complete or width == 0] == []
    assert any(src.startswith("thumbnails/") for src, _, _ in images)  # the misclassified test photos
    assert any(src.startswith("plots/") for src, _, _ in images)
    report = json.loads((run / "report.json").read_text())
    rows = page.eval_on_selector_all("#models tbody tr", "rows => rows.map(r => [...r.cells].map(c => c.textContent))")
    header = page.eval_on_selector_all("#models thead th", "cells => cells.map(c => c.textContent)")
    by_name = {row["name"]: row for row in report["models"]}
    assert sorted(row[0] for row in rows) == sorted(by_name)
    accuracy = header.index("test acc [95% CI]")
    for cells in rows:
        expected = by_name[cells[0]]
        low, high = expected["test_accuracy_ci"]
        assert cells[accuracy] == f"{expected['test_accuracy']:.3f} [{low:.3f}, {high:.3f}]"
    assert page.text_content("#verdict").startswith("Best on the test split:")
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert problems == []


def test_report_command_rerenders_the_page(run: Path) -> None:
    (run / "report.html").unlink()
    rerender(run)
    assert '<table id="models">' in (run / "report.html").read_text()


def test_page_says_so_when_the_photos_are_gone(browser, run: Path, tmp_path: Path) -> None:
    moved = tmp_path / "run"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("thumbnails"))
    report = json.loads((moved / "report.json").read_text())
    report["cache"] = str(tmp_path / "missing.h5")
    (moved / "report.json").write_text(json.dumps(report))
    rerender(moved)
    page, problems = open_page(browser, moved / "report.html")
    assert "(photo not found)" in page.content() and problems == []


def test_photos_that_cannot_be_read_are_one_warning(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A cache whose photos moved away from its source: one warning with the count and an example, not one per photo."""
    moved = tmp_path / "run"
    shutil.copytree(run, moved, ignore=shutil.ignore_patterns("thumbnails"))
    report = json.loads((moved / "report.json").read_text())
    photos = Path(report["cache"]).parent / "photos"
    shutil.move(photos, tmp_path / "elsewhere")
    try:
        photos.mkdir()  # the source still exists, its photos are gone
        with caplog.at_level("WARNING", logger="classical.report.page"):
            rerender(moved)
    finally:
        photos.rmdir()
        shutil.move(tmp_path / "elsewhere", photos)
    warnings = [record.getMessage() for record in caplog.records if "thumbnail" in record.getMessage()]
    assert len(warnings) == 1 and "no thumbnail of" in warnings[0] and str(photos) in warnings[0], warnings
    assert int(warnings[0].split("no thumbnail of ")[1].split()[0]) > 1
