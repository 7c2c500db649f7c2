"""patchflow's one settings object, read from ``PATCHFLOW_*`` environment variables at the edges.

Defaults serve the embedded single-machine stack; production sets the variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
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
    temporal_tls_ca: Path | None = None
    """PEM bundle of the CA that signed the Temporal frontend's certificate. Setting any
    ``PATCHFLOW_TEMPORAL_TLS_*`` makes every Temporal client of this process (API, Slack handler, worker, CLI in
    local mode) speak TLS; unset, the system's roots verify the frontend."""
    temporal_tls_cert: Path | None = None
    """PEM client certificate this component presents to a frontend that requires client authentication
    (mutual TLS, as ``deploy/`` configures it: only the API and the workers hold one). Needs
    ``PATCHFLOW_TEMPORAL_TLS_KEY``."""
    temporal_tls_key: Path | None = None
    """PEM private key of ``PATCHFLOW_TEMPORAL_TLS_CERT``."""
    temporal_tls_server_name: str | None = None
    """Name the frontend's certificate is verified against (and sent as SNI) when it is not the host of
    ``PATCHFLOW_TEMPORAL_ADDRESS`` (e.g. an IP address, or a load balancer's name)."""
    task_queue: str = "patchflow"
    """Temporal task queue the workers poll."""
    heartbeat_timeout_seconds: int = Field(default=30, ge=2)
    """How soon a patch batch of a dead worker is taken over by another worker."""
    worker_shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    """``patchflow worker`` on SIGTERM/Ctrl-C: how long running activities get to finish before they are handed
    to another worker. Installs keep running on the fleet either way (only a cancelled wave cancels them); keep
    it below the orchestrator's kill deadline (Kubernetes ``terminationGracePeriodSeconds``)."""
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
    plan: Path | None = None
    """The plan commands use when they take an optional ``--plan`` and none is given (``patchflow emergency``)."""
    freeze_file: Path | None = None
    """Global change-freeze calendar for every plan: YAML ``{freezes: [...], override_approvers: [...]}`` or an
    iCalendar (``.ics``) file; see the README section "Change freezes"."""
    payload_dir: Path | None = None
    """Where payloads too large to travel through Temporal inline are kept, by content hash (unset:
    ``<data_dir>/payloads``). Every worker, API and CLI process must share it: on several machines, a shared
    volume (see the README, "Scaling out")."""
    payload_store: Literal["auto", "files", "database"] = "auto"
    """Where payloads that travel by reference are kept: ``files`` (``payload_dir``), ``database`` (the history
    database, shared by several machines), ``auto``: the database when ``database_url`` is set, else files."""
    payload_inline_bytes: int = Field(default=240 * 1024, ge=1024, le=1024 * 1024)
    """Payloads larger than this travel by reference (the payload directory); smaller ones inline."""
    database_url: str | None = None
    """SQLAlchemy URL of the history database (``postgresql+psycopg://user@host/db`` in production);
    unset: a SQLite file under ``data_dir``, which serves one machine but not several API replicas."""

    metrics_bind_address: str = "127.0.0.1"
    """Address the worker's two metrics endpoints bind to. Loopback by default, so nothing is exposed until
    an operator decides to; set ``0.0.0.0`` (or one interface) when Prometheus scrapes from another host."""
    worker_metrics_port: int | None = Field(default=9461, ge=0, le=65535)
    """Port of the worker's own Prometheus endpoint (patch durations, executor API errors and throttles);
    empty or ``none`` disables it. Several workers on one host need one port each."""
    temporal_metrics_port: int | None = Field(default=9464, ge=0, le=65535)
    """Port of the Temporal SDK's Prometheus endpoint (task slots, schedule-to-start latency, sticky cache).
    The SDK's Rust core serves it and cannot share prometheus-client's registry, hence a separate port;
    empty or ``none`` disables it."""

    api_host: str = "127.0.0.1"
    """Address ``patchflow api`` (and ``dev``) listens on. Loopback by default: exposing the API beyond the
    machine is an operator's decision (put TLS in front of it when you do)."""
    api_port: int = Field(default=8000, ge=0, le=65535)
    """Port of the REST API (0: any free port, printed at start-up)."""
    api_token_cache_seconds: float = Field(default=30.0, ge=0)
    """How long a verified bearer token is trusted without checking the database again (verifying costs a
    scrypt hash, ~40 ms). A revoked token keeps working for at most this long; 0 checks every request."""
    api_metrics_refresh_seconds: float = Field(default=15.0, gt=0)
    """How often the API refreshes the wave metrics of ``GET /metrics`` from Temporal."""
    api_metrics_public: bool = False
    """Serve ``GET /metrics`` without a bearer token (for a Prometheus on a trusted network that cannot send
    one). Off by default: the metrics name waves, plans and patch groups."""
    api_plans_dir: Path | None = None
    """The directory plans named in API requests are read from (unset: ``<data_dir>/plans``). Paths resolve
    inside it, symlinks included, and so must every file a plan names: a plan path is a way into the
    server's file system, and an operator token must not be a way to read any file the server can."""
    api_max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest request body the API reads (uploaded baselines, catalogs and inventories; a 20,000-patch catalog
    is about 5 MB of JSON); larger ones get 413."""

    api_url: str | None = None
    """The CLI: base URL of a patchflow REST API (``https://patchflow.example.com``). With ``PATCHFLOW_TOKEN``,
    the wave commands act through the API as the token's name instead of talking to Temporal (the
    recommended production set-up: operators hold tokens, not Temporal client certificates)."""
    token: SecretStr | None = None
    """The CLI: the API token (``patchflow token create``) sent as ``Authorization: Bearer`` to
    ``PATCHFLOW_API_URL``; no default."""
    api_insecure_http: bool = False
    """The CLI: allow a plain ``http://`` ``PATCHFLOW_API_URL`` to a host other than this machine (loopback).
    Off: the token would cross the network in clear, so such a URL is refused."""

    slack_signing_secret: SecretStr | None = None
    """Signing secret of the Slack app (Basic Information → App Credentials). No default, as for every secret:
    until it is set, ``POST /slack/actions`` answers 401 to everything rather than trusting unsigned requests."""
    slack_bot_token: SecretStr | None = None
    """Bot token (``xoxb-…``) that posts wave messages, answers clicks and reads user groups; no default."""
    slack_api_url: str = "https://slack.com/api/"
    """Base URL of the Slack Web API; point it at a local stand-in (``patchflow.testing.slack_api``) for tests
    and demos."""
    slack_channel: str | None = None
    """Channel id (``C…``) wave messages go to; unset: no Slack notifications."""
    slack_replay_window_seconds: int = Field(default=300, ge=1, le=300)
    """A signed Slack request is accepted only while ``|now − X-Slack-Request-Timestamp| < this`` (exactly this
    many seconds is refused); within it a repeated (timestamp, signature) pair is refused as a replay. Slack's
    own limit is 5 minutes, and slack_sdk's verifier refuses anything older, so larger values are refused."""
    slack_group_cache_seconds: float = Field(default=60.0, ge=0)
    """How long the members of a Slack user group (``usergroups.users.list``) are trusted before asking Slack
    again: someone removed from an approvers group can still approve for at most this long; 0 asks every time."""
    slack_ack_seconds: float = Field(default=2.0, gt=0, le=2.5)
    """How long ``POST /slack/actions`` waits for the decision before answering anyway (Slack gives up after
    3 s); a slower decision finishes in the background and still updates the message."""

    @field_validator("worker_metrics_port", "temporal_metrics_port", mode="before")
    @classmethod
    def _port_disabled(cls, value: object) -> object:
        """An environment variable cannot hold None: ``""``, ``none``, ``off`` or ``disabled`` mean no endpoint."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "off", "disabled"):
            return None
        return value

    @property
    def api_plans_dir_resolved(self) -> Path:
        """``api_plans_dir``, else ``<data_dir>/plans``."""
        return self.api_plans_dir or self.data_dir / "plans"

    @property
    def patch_set_dir(self) -> Path:
        return self.data_dir / "patch-sets"

    @property
    def payload_dir_resolved(self) -> Path:
        """``payload_dir``, else ``<data_dir>/payloads``."""
        return self.payload_dir or self.data_dir / "payloads"

    @property
    def database_url_resolved(self) -> str:
        """The URL to connect to: ``database_url``, else ``sqlite:///<data_dir>/patchflow.db``."""
        return self.database_url or f"sqlite:///{self.data_dir / 'patchflow.db'}"


def get_settings() -> Settings:
    """Read settings from the environment (call at the edges only: CLI, API, worker start-up)."""
    return Settings()
