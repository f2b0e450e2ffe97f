"""The README stays true: its quick start matches CI and ../shared, and the docs' Python examples run."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, make_dataset

from embedder import pack

README = (ROOT / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readme_test_command() -> None:
    test_command = blocks("bash")[1].strip()
    assert "pytest" in test_command and test_command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.real_data
def test_quick_start_paths_exist(shared: Path) -> None:
    main_job = blocks("bash")[0]
    for path in re.findall(r"\.\./shared/\S+", main_job):
        assert (ROOT / path).exists(), path


@pytest.mark.real_data
def test_python_examples_run(keras_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.chdir(tmp_path)
    make_dataset(tmp_path / "photos", per_class=2)
    guide = ROOT / "docs" / "guides" / "extract.md"  # the README's Python example lives in the extract guide
    for code in re.findall(r"```python\n(.*?)```", guide.read_text(), flags=re.S):
        exec(compile(code, str(guide), "exec"), {})
    assert (tmp_path / "photos.h5").is_file()
    # the other guides' examples, on that cache: formats' h5py read, similarity's three searches
    pack("photos.h5", "cache.h5")
    shutil.copy(tmp_path / "photos" / "blue" / "blue_000.jpg", "query.jpg")
    for page, names in (("reference/formats.md", {}), ("guides/similarity.md", {"X": np.ones((2, 1280), np.float32)})):
        found = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.S)
        assert found, page
        for code in found:
            exec(compile(code, page, "exec"), dict(names))
