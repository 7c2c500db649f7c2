"""Developer tool: ``python -m patchflow.store.migrations "message"`` autogenerates the next revision.

It upgrades a scratch SQLite database to the current head, compares it with the models in
:mod:`patchflow.store.db` and writes ``versions/<NNNN>_<slug>.py`` (numbered revision ids keep the history
readable). Review the result before committing it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from alembic import command
from alembic.script import ScriptDirectory

from patchflow.store import db


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].strip():
        sys.stderr.write('usage: python -m patchflow.store.migrations "what the revision does"\n')
        return 2
    config = db.alembic_config()
    heads = ScriptDirectory.from_config(config).get_heads()
    rev_id = f"{int(heads[0]) + 1:04d}" if heads else "0001"
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{Path(scratch) / 'scratch.db'}"
        if heads:
            db.upgrade(url)
        config.attributes["database_url"] = url
        script = command.revision(config, message=argv[0], autogenerate=True, rev_id=rev_id)
    path = str(getattr(script, "path", script))
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff:  # the house style, so the review diff shows the schema and not the formatting
        subprocess.run([ruff, "check", "--fix", "-q", path], check=False)
        subprocess.run([ruff, "format", "-q", path], check=False)
    sys.stderr.write(f"wrote {path}; review it, then run the tests in tests/db\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
