"""MkDocs hook: the CLI reference, generated from the three console scripts' Typer apps.

Each line `<!-- cli: NAME -->` of a page is replaced by the reference of console script NAME
(as in pyproject.toml's [project.scripts]): its commands, their usage and a table of their arguments
and options, read from `typer.main.get_command(app)` through each parameter's own help record, the
lines `--help` prints. Typer vendors its own click, which the click-based MkDocs plugins do not read.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

MARKER = re.compile(r"^<!-- cli: (\S+) -->$", flags=re.M)


def console_scripts() -> dict[str, Any]:
    """The click command of each console script, named like the script."""
    import typer.main

    from classical.cli import app as classical_app
    from serving.cli import app as serve_app
    from serving.cli import embedder_app

    apps = {"embedder": embedder_app, "classical": classical_app, "bottleneck-serve": serve_app}
    return {name: typer.main.get_command(app) for name, app in apps.items()}


def cell(text: str) -> str:
    """Text fit for one Markdown table cell."""
    text = " ".join(text.split()).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("|", "\\|")


def reference(command: Any, path: str, context_class: Any, parent: Any = None, level: int = 3) -> str:
    """Markdown for `command` (named `path`) and, for a group, each of its subcommands."""
    ctx = context_class(command, info_name=path.split()[-1], parent=parent)
    lines = [f"{'#' * level} `{path}`", "", (command.help or "").strip(), ""]
    lines += ["```text", command.get_usage(ctx).strip(), "```", ""]
    records = [(param, param.get_help_record(ctx)) for param in command.get_params(ctx) if not param.hidden]
    rows = [(param, record) for param, record in records if record]
    if rows:
        lines += ["| argument / option | description |", "|---|---|"]
        lines += [f"| {cell(record[0])} | {cell(record[1])} |" for _, record in rows]
        lines.append("")
    for name, sub in getattr(command, "commands", {}).items():
        lines.append(reference(sub, f"{path} {name}", context_class, ctx, level + 1))
    return "\n".join(lines)


def on_config(config: Any) -> Any:
    """Put this checkout first on sys.path, so the reference documents its CLIs."""
    root = str(Path(config.config_file_path).resolve().parent)
    if root not in sys.path:
        sys.path.insert(0, root)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace each `<!-- cli: NAME -->` with the reference of console script NAME."""
    if not MARKER.search(markdown):
        return markdown
    commands = console_scripts()
    context_class = next(iter(commands.values())).context_class

    def render(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in commands:
            raise KeyError(f"{page.file.src_path}: no console script {name!r}; known: {sorted(commands)}")
        return reference(commands[name], name, context_class)

    return MARKER.sub(render, markdown)
