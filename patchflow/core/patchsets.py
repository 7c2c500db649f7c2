"""The content-addressed store of pinned patch sets.

A patch set is written once under ``<data_dir>/patch-sets/<id>.json`` and never changes: its id is a hash of
its content, so the same id always means the same patches.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from patchflow.core.evaluation import PatchSet
from patchflow.errors import InputError, NotFoundError

_ID_RE = re.compile(r"^ps-[0-9a-f]{24}$")


class PatchSetStore:
    """Pinned patch sets on the local file system."""

    def __init__(self, directory: Path):
        self.directory = directory

    def path_of(self, patch_set_id: str) -> Path:
        if not _ID_RE.match(patch_set_id):
            raise InputError(f"{patch_set_id!r} is not a patch set id (expected 'ps-' and 24 hex digits)")
        return self.directory / f"{patch_set_id}.json"

    def save(self, patch_set: PatchSet) -> Path:
        """Write the set atomically (idempotent: the same id is the same content)."""
        target = self.path_of(patch_set.id)
        if target.exists():
            return target
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(patch_set.to_json(), fh, indent=2, sort_keys=True)
                fh.write("\n")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return target

    def load(self, patch_set_id: str) -> PatchSet:
        path = self.path_of(patch_set_id)
        if not path.exists():
            raise NotFoundError(
                f"patch set {patch_set_id} is not in {self.directory}; list stored sets with "
                "'patchflow patch-set list' or pass the JSON file written by 'baseline evaluate'"
            )
        return load_patch_set_file(path)

    def list_ids(self) -> list[str]:
        if not self.directory.exists():
            return []
        return sorted(p.stem for p in self.directory.glob("ps-*.json"))

    def resolve(self, id_or_file: str) -> PatchSet:
        """Accept a stored id or a path to a patch set / evaluation JSON file."""
        if _ID_RE.match(id_or_file) and not Path(id_or_file).exists():
            return self.load(id_or_file)
        path = Path(id_or_file)
        if not path.exists():
            raise NotFoundError(f"{id_or_file!r} is neither a stored patch set id nor an existing file")
        return load_patch_set_file(path)


def load_patch_set_file(path: Path) -> PatchSet:
    """Read a patch set from a file holding either the set itself or a whole evaluation result."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read patch set file: {exc}", source=str(path)) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"patch set file is not valid JSON: {exc.msg} at line {exc.lineno}", source=str(path)
        ) from None
    if isinstance(data, dict) and "patch_set" in data:
        data = data["patch_set"]
    if not isinstance(data, dict):
        raise InputError("not a patch set: expected a JSON object", source=str(path))
    return PatchSet.from_json(data, source=str(path))
