"""`python -m embedder.cli`: the `embedder` commands of this package alone."""

import sys

from embedder.cli.commands import app

sys.exit(app())
