"""The `embedder` command line, and the building blocks the project's three CLIs share.

`app` is the Typer app of `embedder extract | info | verify | predict`; a layer above may add commands
of its own to it. The option types (`Alpha`, `Size`, `Weights`, ...), `fail` (exit 2
with one line) and `setup_logging` are for command lines built on the package, not library names: code
that embeds images imports from `embedder` itself.
"""

from embedder.cli.commands import app
from embedder.cli.options import Alpha, Engine, Pooling, Resize, Size, Verbose, Weights, fail, setup_logging

__all__ = ["Alpha", "Engine", "Pooling", "Resize", "Size", "Verbose", "Weights", "app", "fail", "setup_logging"]
