"""Shared fixtures: factories for catalogs and baselines, an isolated data directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from patchflow.core.baselines import Baseline
from patchflow.core.catalog import Patch

REPO_ROOT = Path(__file__).resolve().parent.parent
BASELINES_DIR = REPO_ROOT / "baselines"
EXAMPLES_DIR = BASELINES_DIR / "examples"


def make_patch(**fields: Any) -> Patch:
    """A catalog patch with sensible defaults (an rpm security fix released 2026-11-01)."""
    base: dict[str, Any] = {
        "name": "pkg",
        "arch": "x86_64",
        "version": "1.0-1",
        "family": "rpm",
        "product": "AmazonLinux2023",
        "classification": "Security",
        "severity": "Critical",
        "release_date": "2026-11-01T00:00:00Z",
        "security": True,
    }
    base.update(fields)
    return Patch.model_validate(base)


def make_baseline(**fields: Any) -> Baseline:
    """A valid AL2023 baseline approving everything on release unless overridden."""
    base: dict[str, Any] = {
        "Name": "test-baseline",
        "OperatingSystem": "AMAZON_LINUX_2023",
        "ApprovalRules": {"PatchRules": [{"PatchFilterGroup": {"PatchFilters": []}, "ApproveAfterDays": 0}]},
    }
    base.update(fields)
    return Baseline.model_validate(base)


def rule(filters: dict[str, list[str]] | None = None, **fields: Any) -> dict[str, Any]:
    """An approval rule dict from ``{KEY: [values]}`` filters."""
    out: dict[str, Any] = {
        "PatchFilterGroup": {"PatchFilters": [{"Key": k, "Values": v} for k, v in (filters or {}).items()]}
    }
    out.update(fields)
    return out


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An isolated PATCHFLOW_DATA_DIR."""
    directory = tmp_path / "data"
    monkeypatch.setenv("PATCHFLOW_DATA_DIR", str(directory))
    yield directory
