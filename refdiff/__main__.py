"""``python -m refdiff`` runs the command-line interface."""

import sys

from .cli import run

sys.exit(run())
