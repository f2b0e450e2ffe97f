"""The documentation site builds strictly, and every command line it shows parses with the real CLIs."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from conftest import ROOT

PAGES = [*sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    """Broken links, missing pages and unresolved API references fail `mkdocs build --strict`."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "index.html").is_file()


def command_lines() -> list[tuple[str, str]]:
    """(page, line) for each shell line of a ```bash block that runs one of the project's commands."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                for part in re.split(r"&&|;", line.split(" #")[0]):
                    words = part.strip().removeprefix(".venv/bin/")
                    if re.match(r"(embedder|classical|bottleneck-serve) ", words):
                        found.append((str(page.relative_to(ROOT)), words))
    return found


def apps() -> dict[str, typer.Typer]:
    from classical.cli import app as classical_app
    from serving.cli import app as serve_app
    from serving.cli import embedder_app

    return {"embedder": embedder_app, "classical": classical_app, "bottleneck-serve": serve_app}


@pytest.mark.parametrize(("page", "line"), command_lines())
def test_command_lines_in_the_docs_parse(page: str, line: str) -> None:
    """An option or command the docs name that the CLI does not have fails (placeholders in [...] are dropped)."""
    words = shlex.split(re.sub(r"\[[^\]]*\]", "", line).replace("...", ""))
    group = typer.main.get_command(apps()[words[0]])
    name, args = words[1], words[2:]
    command = group.get_command(group.make_context(words[0], [name, "--help"], resilient_parsing=True), name)
    assert command is not None, f"{page}: `{line}`: no command {name!r}"
    context = command.make_context(name, list(args), resilient_parsing=True)
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for word in args:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"{page}: `{line}`: {name} has no option {word}"
    assert context.command is command
