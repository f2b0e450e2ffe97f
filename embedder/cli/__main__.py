"""`python -m embedder.cli`: the `embedder` commands without the service's `serve`."""

import sys

from embedder.cli.commands import app

sys.exit(app())
