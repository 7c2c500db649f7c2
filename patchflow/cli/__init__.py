"""The command line (``patchflow …``): one module per command group, registered on the app in
:mod:`~patchflow.cli.root`; helpers the groups share are public functions of :mod:`~patchflow.cli.common`.

May import anything; nothing imports it (an import-linter contract in ``pyproject.toml`` keeps it so).
"""

from patchflow.cli.root import app, main, run

__all__ = ["app", "main", "run"]
