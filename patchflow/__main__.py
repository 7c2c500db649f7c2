"""``python -m patchflow`` runs the CLI."""

from patchflow.cli import run

run()
