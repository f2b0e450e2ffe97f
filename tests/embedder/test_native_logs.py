"""TensorFlow's native log lines stay off the terminal unless --verbose; everything else on stderr gets through."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from embedder.native_logs import NATIVE_LINE, native_lines_dropped

NOISE_WORDS = ("oneDNN", "cuda", "cuInit", "absl", "TensorFlow binary")


def user_env() -> dict[str, str]:
    """The environment of a user's terminal: no TF_CPP_MIN_LOG_LEVEL (the test session sets one)."""
    return {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}


def native_lines(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if NATIVE_LINE.match(line.encode()) or any(word in line for word in NOISE_WORDS)
    ]


def test_only_native_lines_are_dropped(capfd: pytest.CaptureFixture[str]) -> None:
    with native_lines_dropped():
        os.write(2, b"I0000 00:00:1796125088.191636    6841 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"E0000 00:00:1796125090.569423    6841 cuda_platform.cc:52] failed call to cuInit\n")
        print("a message of our own", file=sys.stderr)
    assert capfd.readouterr().err == "a message of our own\n"


def test_import_classical_and_tensorflow_is_quiet() -> None:
    code = "import sys, classical, classical.models.network; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=user_env(), timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "True"  # TensorFlow really loaded
    assert native_lines(result.stderr) == []


def test_embedder_command_is_quiet_unless_verbose(dataset: Path, tmp_path: Path) -> None:
    def extract(*flags: str) -> subprocess.CompletedProcess:
        command = [
            sys.executable,
            "-m",
            "embedder.cli",
            *flags,
            "extract",
            str(dataset),
            "--out",
            str(tmp_path / f"c{len(flags)}.h5"),
            "--size",
            "96",
            "--weights",
            "none",
            "--runtime",
            "keras",
            "--no-progress",
        ]
        return subprocess.run(command, capture_output=True, text=True, env=user_env(), timeout=300, check=False)

    quiet = extract()
    assert quiet.returncode == 0 and "12 embedded" in quiet.stdout, quiet.stderr
    assert native_lines(quiet.stderr) == []
    verbose = extract("--verbose")
    assert verbose.returncode == 0, verbose.stderr
    assert any(NATIVE_LINE.match(line.encode()) for line in verbose.stderr.splitlines())  # TensorFlow's own lines
