"""``python -m patchflow`` runs the CLI."""

from patchflow.cli import main

main()
