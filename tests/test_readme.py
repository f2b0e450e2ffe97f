"""The README stays true: its Python examples run, its quick start matches CI and ../shared."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import ROOT, make_dataset

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
