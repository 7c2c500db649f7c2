"""patchflow's one settings object, read from ``PATCHFLOW_*`` environment variables at the edges.

Defaults serve the embedded single-machine stack; production sets the variables.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "patchflow"


class Settings(BaseSettings):
    """Runtime settings (environment variables ``PATCHFLOW_<FIELD>``)."""

    model_config = SettingsConfigDict(env_prefix="PATCHFLOW_", extra="ignore")

    data_dir: Path = Field(default_factory=_default_data_dir)
    """Where patchflow keeps its state: pinned patch sets, the embedded server's database, SQLite."""
    temporal_address: str = "127.0.0.1:7233"
    """host:port of the Temporal frontend; the embedded dev server listens here."""
    task_queue: str = "patchflow"
    """Temporal task queue the workers poll."""
    heartbeat_timeout_seconds: int = Field(default=30, ge=2)
    """How soon a patch batch of a dead worker is taken over by another worker."""
    ssm_region: str | None = None
    """SSM executor: AWS region when the plan names none (else the boto3 chain: AWS_REGION, profile)."""
    ssm_endpoint_url: str | None = None
    """SSM executor: endpoint URL when the plan names none (a local fake endpoint, a VPC endpoint)."""
    ssm_bucket: str | None = None
    """SSM executor: S3 bucket for override lists, operation records and output when the plan names none."""
    ssm_prefix: str = "patchflow"
    """SSM executor: key prefix inside the bucket when the plan names none."""
    ssm_max_requests_per_second: float = Field(default=5.0, gt=0)
    """SSM executor: client-side cap on AWS requests per worker (adaptive retries handle the rest)."""
    ssm_poll_initial_seconds: float = Field(default=2.0, gt=0)
    """SSM executor: first delay between status polls of a running command (×1.5 per poll)."""
    ssm_poll_max_seconds: float = Field(default=30.0, gt=0)
    """SSM executor: longest delay between status polls."""

    @property
    def patch_set_dir(self) -> Path:
        return self.data_dir / "patch-sets"


def get_settings() -> Settings:
    """Read settings from the environment (call at the edges only: CLI, API, worker start-up)."""
    return Settings()
