"""The history database: waves, stages, per-instance results, pinned patch sets, gate decisions, the audit
log and API tokens (SQLModel on SQLite or PostgreSQL, schema managed by the Alembic migrations in
``patchflow/store/migrations``).

Who writes what:

* **Activities** record what a wave did (:func:`record_wave_status`, :func:`record_instance_result`,
  :func:`save_patch_set`). Temporal retries activities, so every one of these writes is idempotent: rows have
  natural keys and are written with ``INSERT … ON CONFLICT`` (same statement on SQLite and PostgreSQL); a
  retried call changes nothing, and a late, stale snapshot never overwrites a newer one. Workflows never
  touch the database: what they know reaches it through an activity's input.
* **The edges** (CLI, API, Slack) record gate decisions, operator actions and tokens.

Layering follows the house style: ``<Thing>Base`` (shared fields) → ``<Thing>`` (``table=True``, lives only
inside a session) → ``<Thing>Public`` (what functions return: detached, safe to serialise). Table objects
never leave this module, so none can leak into a Temporal payload. Data-access functions take the session
positionally and everything else by keyword, commit their own unit of work, and accept only timezone-aware
datetimes (stored and returned in UTC).
"""

from __future__ import annotations

import base64
import collections
import contextlib
import dataclasses
import hashlib
import hmac
import json
import secrets
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Engine, make_url
from sqlmodel import JSON, Field, Session, SQLModel, col, select

from patchflow.core.analysis import finite
from patchflow.core.approvers import token_name_problem
from patchflow.core.evaluation import PatchSet
from patchflow.core.wavemodel import (
    WAVE_FINAL_STATES,
    WAVE_STATES,
    StageStatus,
    WaveStatus,
    analysis_json,
)
from patchflow.errors import InputError, NotFoundError, PatchflowError

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig


class DatabaseError(PatchflowError):
    """The database cannot be used: unreachable, or its schema is missing or older than this patchflow.

    Belongs under ``PatchflowError`` in the tree of :mod:`patchflow.errors` (exit code 1).
    """


class Role(StrEnum):
    """What an API token may do. Stored as a plain string, so adding a role needs no enum migration."""

    viewer = "viewer"
    operator = "operator"
    approver = "approver"
    admin = "admin"


class Decision(StrEnum):
    approve = "approve"
    reject = "reject"


class Via(StrEnum):
    """Where a gate decision came from."""

    cli = "cli"
    api = "api"
    slack = "slack"


class WaveKind(StrEnum):
    """What started a wave (:attr:`patchflow.core.wavemodel.WaveStatus.kind`). Stored as a plain string."""

    standard = "standard"
    """From a plan: by hand, through the API or by a schedule."""
    emergency = "emergency"
    """``patchflow emergency``: a CVE fix outside the regular cadence (usually a subset of the baseline)."""


# Named constraints: SQLite ALTERs run in Alembic batch mode, which can only drop constraints it can name.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = SQLModel.metadata
"""What Alembic compares the migrations against (``patchflow/store/migrations/env.py``)."""

_ID = 200  # ids and names: wave ids embed the plan name and a timestamp
_STATE = sa.String(32)  # states and roles are plain strings (a native PG ENUM would need hand-written ALTERs)


def _now() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------- waves


class WaveBase(SQLModel):
    plan: str = Field(max_length=_ID, index=True)
    state: str = Field(sa_type=_STATE, index=True)
    patch_set_id: str = Field(max_length=_ID, index=True)
    started_by: str = Field(default="", max_length=_ID)
    started_at: datetime = Field(index=True)
    """When the workflow recorded its ``start`` audit entry (workflow time)."""
    finished_at: datetime | None = None
    """First time the wave was seen in a final state; never moved by a later snapshot."""
    reason: str = Field(default="", sa_type=sa.Text)
    kind: str = Field(
        default=WaveKind.standard.value,
        sa_type=sa.String(16),
        sa_column_kwargs={"server_default": WaveKind.standard.value},
    )
    """``standard`` or ``emergency`` (:class:`WaveKind`), from ``WaveStatus.kind``. Revision 0002 filled it in
    for the waves recorded before: emergency by their ids (``…-emergency-<hex6>``), standard otherwise."""


class Wave(WaveBase, table=True):
    __tablename__: ClassVar[str] = "waves"

    id: str = Field(primary_key=True, max_length=_ID)
    updated_at: datetime
    """Workflow time of the snapshot written last: an older snapshot (a late retry) never overwrites it."""


class WavePublic(WaveBase):
    id: str


class StageBase(SQLModel):
    name: str = Field(max_length=_ID)
    position: int
    """Index of the stage in the plan (stages run in this order)."""
    state: str = Field(sa_type=_STATE)
    errors: int = 0
    max_errors: int | None = None
    max_concurrency: int | None = None
    window_start: datetime | None = None
    window_cutoff: datetime | None = None
    note: str = Field(default="", sa_type=sa.Text)
    rollout: dict[str, Any] | None = Field(default=None, sa_type=JSON)
    """What the stage's rollout controls did (:func:`stage_rollout`): ``disruption_budget``, ``blocked_by``,
    ``analysis`` (result, instances, per query its tally), ``measurements`` (the newest ones the status keeps)
    and ``reboot_debt`` (``instances``, ``since``, ``deadline_days``, ``reboot_window``,
    ``reboot_window_start``); each key only when the plan uses it. ``None``: none used (and every stage
    recorded before revision 0005)."""


class Stage(StageBase, table=True):
    __tablename__: ClassVar[str] = "stages"
    __table_args__ = (sa.PrimaryKeyConstraint("wave_id", "name"),)

    wave_id: str = Field(max_length=_ID, foreign_key="waves.id")
    updated_at: datetime


class StageInstanceBase(SQLModel):
    """One target of a stage and its current state, as ``wave status`` shows it."""

    instance_id: str = Field(max_length=_ID)
    position: int
    """Dispatch order within the stage."""
    state: str = Field(sa_type=_STATE)
    """pending, in_flight, succeeded, failed, not_attempted, rolled_back, cancelled."""
    detail: str = Field(default="", sa_type=sa.Text)
    hook_steps: list[dict[str, Any]] = Field(
        default_factory=list, sa_type=JSON, sa_column_kwargs={"server_default": "[]"}
    )
    """Lifecycle hooks: what each step did (``phase``, ``step``, ``status``, ``duration_seconds``, ``output`` —
    its tail), in the order they ran; empty for stages without hooks."""


class StageInstance(StageInstanceBase, table=True):
    __tablename__: ClassVar[str] = "stage_instances"
    # Key columns in query order: a wave's instances are read by wave, then stage.
    __table_args__ = (sa.PrimaryKeyConstraint("wave_id", "stage", "instance_id"),)

    wave_id: str = Field(max_length=_ID, foreign_key="waves.id")
    stage: str = Field(max_length=_ID)
    updated_at: datetime


class StageInstancePublic(StageInstanceBase):
    pass


class StagePublic(StageBase):
    instances: list[StageInstancePublic] = []


class WaveDetail(WavePublic):
    """A wave with its stages in plan order and each stage's instances in dispatch order."""

    stages: list[StagePublic] = []


# ---------------------------------------------------------------------------------------------- results


class InstanceResultBase(SQLModel):
    """One executor operation on one instance: an install (or a rollback's restore) of one attempt."""

    wave_id: str = Field(max_length=_ID)
    stage: str = Field(max_length=_ID)
    instance_id: str = Field(max_length=_ID)
    operation: str = Field(default="install", sa_type=sa.String(16))
    """``install`` or ``restore`` (a rollback of that attempt's install)."""
    attempt: int = 0
    """Bumped when an operator resumes a stage; one row per attempt, a retried activity reuses its row."""
    status: str = Field(sa_type=_STATE)
    """Executor status (succeeded, failed, timed_out, undeliverable, cancelled) or ``in_flight`` while running."""
    detail: str = Field(default="", sa_type=sa.Text)
    versions_before: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    """``name.arch`` → version before the operation (only the packages it changed)."""
    versions_after: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    command_id: str | None = Field(default=None, max_length=_ID)
    """The executor's command id (an SSM CommandId), when it has one."""
    started_at: datetime
    finished_at: datetime | None = None


class InstanceResult(InstanceResultBase, table=True):
    # No foreign key to ``waves``: patch batches run in their own activities, which may record a result
    # before (or without) the snapshot activity that writes the wave row.
    __tablename__: ClassVar[str] = "instance_results"
    __table_args__ = (sa.PrimaryKeyConstraint("wave_id", "stage", "instance_id", "operation", "attempt"),)


class InstanceResultPublic(InstanceResultBase):
    pass


# ---------------------------------------------------------------------------------------------- patch sets


class PatchSetRecord(SQLModel, table=True):
    """A pinned patch set. Content-addressed, so saving the same set twice is a no-op by construction."""

    __tablename__: ClassVar[str] = "patch_sets"

    id: str = Field(primary_key=True, max_length=_ID)
    family: str = Field(sa_type=sa.String(16))
    content: dict[str, Any] = Field(sa_type=JSON)
    """``PatchSet.to_json()``; read back through ``PatchSet.from_json``, which refuses edited content."""
    created_at: datetime


# ---------------------------------------------------------------------------------------------- payloads


class PayloadBlob(SQLModel, table=True):
    """A payload too large to travel through Temporal inline, kept by the SHA-256 of its content
    (:mod:`patchflow.control.payloads`, ``PATCHFLOW_PAYLOAD_STORE=database``). Immutable; ``touched_at`` is
    refreshed whenever it is referenced again, so pruning spares blobs in use."""

    __tablename__: ClassVar[str] = "payload_blobs"

    digest: str = Field(primary_key=True, max_length=64)
    data: bytes = Field(sa_type=sa.LargeBinary)
    size: int
    touched_at: datetime = Field(sa_type=sa.DateTime(timezone=True), index=True)


def put_payload_blob(session: Session, *, digest: str, data: bytes) -> None:
    """Store a blob (idempotent: the same digest twice refreshes ``touched_at`` only)."""
    now = _now()
    _insert(
        session,
        _table(PayloadBlob),
        [{"digest": digest, "data": data, "size": len(data), "touched_at": now}],
        keys=["digest"],
        update={"touched_at": _excluded("touched_at")},
    )


def get_payload_blob(session: Session, *, digest: str) -> bytes | None:
    data = session.exec(select(PayloadBlob.data).where(PayloadBlob.digest == digest)).first()
    return None if data is None else bytes(data)


def payload_blob_ages(session: Session) -> list[tuple[str, int, datetime]]:
    """Every blob's digest, size and when it was last written or referenced."""
    rows = session.exec(select(PayloadBlob.digest, PayloadBlob.size, PayloadBlob.touched_at)).all()
    # SQLite hands back naive datetimes (it stores no zone); everything here is written in UTC.
    return [(d, n, t if t.tzinfo else t.replace(tzinfo=UTC)) for d, n, t in rows]


def prune_payload_blobs(session: Session, *, digests: Sequence[str]) -> None:
    t = _table(PayloadBlob)
    for start in range(0, len(digests), _CHUNK):
        session.exec(sa.delete(t).where(t.c.digest.in_(list(digests[start : start + _CHUNK]))))


# ---------------------------------------------------------------------------------------------- decisions


class GateDecisionBase(SQLModel):
    wave_id: str = Field(max_length=_ID)
    stage: str = Field(max_length=_ID)
    who: str = Field(max_length=_ID)
    decision: str = Field(sa_type=sa.String(16))
    """approve or reject."""
    via: str = Field(sa_type=sa.String(16))
    """cli, api or slack."""
    comment: str = Field(default="", sa_type=sa.Text)
    at: datetime


class GateDecision(GateDecisionBase, table=True):
    __tablename__: ClassVar[str] = "gate_decisions"
    # The natural key of a decision: a retried write (same instant) finds its row instead of adding one.
    __table_args__ = (sa.UniqueConstraint("wave_id", "stage", "who", "decision", "at"),)

    id: int | None = Field(default=None, primary_key=True)


class GateDecisionPublic(GateDecisionBase):
    id: int


# ---------------------------------------------------------------------------------------------- audit log


class AuditRecordBase(SQLModel):
    at: datetime = Field(index=True)
    actor: str = Field(max_length=_ID)
    action: str = Field(max_length=64)
    """A verb, dotted for non-wave actions: ``start``, ``approve``, ``halt``, ``token.create`` …"""
    wave_id: str | None = Field(default=None, max_length=_ID, index=True)
    stage: str | None = Field(default=None, max_length=_ID)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    refused: bool = Field(default=False, sa_column_kwargs={"server_default": sa.text("false")})
    """A refused attempt (forged or stale Slack request, a click or call by someone who may not act, an action
    the wave refused): ``detail.reason`` says why. Rate-limited by :func:`append_refusal`."""


class AuditRecord(AuditRecordBase, table=True):
    """Append-only and chained.

    No function here updates or deletes a row, and the migrations add triggers that make the database refuse
    ``UPDATE``, ``DELETE``, ``TRUNCATE`` (PostgreSQL) and ``INSERT OR REPLACE`` over an existing row (SQLite)
    as well. Each row also stores a hash of its content and of the previous row's hash
    (:func:`audit_row_hash`), so an edit by someone who can bypass the triggers — a database owner — breaks
    the chain where it happened (:func:`verify_audit_chain`, ``patchflow audit verify``).
    """

    __tablename__: ClassVar[str] = "audit_log"

    id: int | None = Field(default=None, primary_key=True)
    key: str | None = Field(default=None, max_length=255, unique=True)
    """Idempotency key of a retried writer (``None``: the entry is written once by construction)."""
    prev_hash: str | None = Field(default=None, max_length=64)
    """``row_hash`` of the row before this one in id order (:data:`AUDIT_GENESIS` for the first)."""
    row_hash: str | None = Field(default=None, max_length=64)
    """:func:`audit_row_hash` of this row; ``None`` only for a row written around patchflow (a break)."""


class AuditRecordPublic(AuditRecordBase):
    id: int
    row_hash: str | None = None


# ---------------------------------------------------------------------------------------------- API tokens


class TokenBase(SQLModel):
    name: str = Field(min_length=1, max_length=_ID)
    """What the token is for (``ci``, ``grafana``, ``alice``): the identity gates and the audit log see. A plain
    name, unique among active tokens (a rotated token keeps its name once the old one is revoked)."""
    role: str = Field(sa_type=sa.String(16))


class ApiToken(TokenBase, table=True):
    __tablename__: ClassVar[str] = "api_tokens"

    id: str = Field(primary_key=True, max_length=32)
    secret_hash: str = Field(max_length=255)
    """``scrypt$n$r$p$salt$hash`` (base64): never the token itself."""
    created_at: datetime
    last_used_at: datetime | None = None
    """Updated at most once a minute, so authenticating does not write on every request."""
    revoked: bool = Field(default=False, sa_column_kwargs={"server_default": sa.text("false")})
    revoked_at: datetime | None = None


class TokenPublic(TokenBase):
    id: str
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool
    revoked_at: datetime | None


# ---------------------------------------------------------------------------------------------- engines


def _normalise_url(url: str) -> sa.URL:
    try:
        parsed = make_url(url)
    except sa_exc.ArgumentError:
        raise InputError(
            f"{url!r} is not a database URL; set PATCHFLOW_DATABASE_URL to e.g. "
            "postgresql+psycopg://user@host:5432/patchflow or sqlite:////var/lib/patchflow/patchflow.db"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise InputError(
            f"database URL {display_url(url)}: patchflow supports sqlite and postgresql, not {backend!r}"
        )
    if parsed.drivername in ("postgresql", "postgres"):
        # SQLAlchemy's default PostgreSQL driver is psycopg2, which patchflow does not install.
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def display_url(url: str | sa.URL) -> str:
    """The URL with its password masked, for messages and logs."""
    try:
        return (make_url(url) if isinstance(url, str) else url).render_as_string(hide_password=True)
    except sa_exc.ArgumentError:
        return "<invalid URL>"


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite
    cursor.execute("PRAGMA journal_mode=WAL")  # API readers do not block the worker's writes
    cursor.close()


def make_engine(url: str, *, timeout_seconds: float | None = None) -> Engine:
    """A new engine for ``url`` (``postgresql://`` means psycopg 3; SQLite files get their directory).

    ``timeout_seconds`` bounds every wait of the engine's users (the worker's history writes, which must never
    stall patching): connecting, checking a connection out of the pool, each statement and lock wait
    (PostgreSQL ``connect_timeout``, ``statement_timeout``, ``lock_timeout``, ``tcp_user_timeout``; SQLite's
    busy timeout). None: the defaults below (waits for locks, no statement limit).

    Raises:
        InputError: the URL is malformed or names an unsupported database.
    """
    parsed = _normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            with contextlib.suppress(OSError):  # an unusable path is reported on connect, with the URL
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        # timeout: several processes (worker, API) share the file; wait for a lock instead of failing.
        engine = sa.create_engine(parsed, connect_args={"timeout": timeout_seconds or 30})
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    if timeout_seconds is None:
        return sa.create_engine(parsed, pool_pre_ping=True)
    millis = int(timeout_seconds * 1000)
    # Kept: options the URL itself carries (``?options=-csearch_path%3D…``) — connect_args would replace them.
    given = parsed.query.get("options")
    given = " ".join(given) if isinstance(given, tuple) else (given or "")
    return sa.create_engine(
        parsed,
        pool_pre_ping=True,
        pool_timeout=timeout_seconds,
        connect_args={
            "connect_timeout": max(1, int(timeout_seconds)),
            "tcp_user_timeout": millis,
            "options": f"{given} -c statement_timeout={millis} -c lock_timeout={millis}".strip(),
        },
    )


_ENGINES: collections.OrderedDict[tuple[str, float | None], Engine] = collections.OrderedDict()
_ENGINES_LOCK = threading.Lock()
_ENGINES_KEPT = 8


def get_engine(url: str, *, timeout_seconds: float | None = None) -> Engine:
    """The shared engine of ``url`` (one connection pool per process, database and timeout).

    At most eight engines are kept; the least recently used one beyond that is disposed of (its pooled
    connections closed), never just dropped with connections still open.
    """
    key = (url, timeout_seconds)
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is not None:
            _ENGINES.move_to_end(key)
            return engine
        engine = make_engine(url, timeout_seconds=timeout_seconds)
        _ENGINES[key] = engine
        evicted = [_ENGINES.popitem(last=False)[1] for _ in range(len(_ENGINES) - _ENGINES_KEPT)]
    for old in evicted:
        old.dispose()
    return engine


def open_session(engine: Engine) -> Session:
    """A session whose returned objects stay readable after commit."""
    return Session(engine, expire_on_commit=False)


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn driver errors about reaching or reading the database into a :class:`DatabaseError` that says
    which database and what to do; anything else (a bug) propagates unchanged."""
    try:
        yield
    except (sa_exc.OperationalError, sa_exc.ProgrammingError, sa_exc.InterfaceError) as exc:
        text = str(exc.orig if exc.orig is not None else exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        if reason.startswith(("no such table", "no such column")) or type(exc.orig).__name__ in (
            "UndefinedTable",
            "UndefinedColumn",
        ):
            raise DatabaseError(
                f"the database at {display_url(url)} has no patchflow schema or an older one ({reason}); "
                "run 'patchflow db upgrade'"
            ) from None
        if isinstance(exc, sa_exc.ProgrammingError):
            raise  # SQL patchflow got wrong: a bug, not the operator's problem
        raise DatabaseError(
            f"cannot use the database at {display_url(url)}: {reason}; check PATCHFLOW_DATABASE_URL and "
            "that the server is running and reachable"
        ) from None


# ---------------------------------------------------------------------------------------------- migrations


def alembic_config() -> AlembicConfig:
    """Alembic's configuration, built in code: the migrations ship inside the package (no alembic.ini)."""
    from alembic.config import Config

    # stdout given explicitly: Alembic's default is the stream current when alembic.config was first imported,
    # which may be a test's captured (and since closed) stream.
    config = Config(stdout=sys.stdout)
    config.set_main_option("script_location", "patchflow.store:migrations")
    return config


def head_revision() -> str:
    """The newest migration this patchflow ships."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "patchflow ships at least one migration"
    return head


def current_revision(url: str) -> str | None:
    """The revision the database is at; ``None`` for a database patchflow never upgraded."""
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(url)
    try:
        with translate_errors(url), engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, *, revision: str = "head") -> str | None:
    """Migrate the database to ``revision`` in one transaction (PostgreSQL rolls back a failed upgrade).

    Returns:
        The revision the database is at afterwards.
    """
    from alembic import command

    config = alembic_config()
    engine = make_engine(url)
    try:
        with translate_errors(url), engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
        return current_revision(url)
    finally:
        engine.dispose()


def require_current(url: str) -> None:
    """Refuse to work on a database whose schema is not the one this patchflow expects."""
    current, head = current_revision(url), head_revision()
    if current != head:
        raise DatabaseError(
            f"the database at {display_url(url)} is at schema revision {current or 'none'}, this patchflow "
            f"needs {head}; run 'patchflow db upgrade'"
        )


# ---------------------------------------------------------------------------------------------- helpers


def _utc(value: datetime, what: str) -> datetime:
    if value.utcoffset() is None:
        raise InputError(f"{what}: {value.isoformat()} has no timezone; pass an aware datetime (UTC)")
    return value.astimezone(UTC)


def _utc_opt(value: datetime | None, what: str) -> datetime | None:
    return None if value is None else _utc(value, what)


def _choice(value: str, allowed: type[StrEnum], what: str) -> str:
    try:
        return allowed(value).value
    except ValueError:
        choices = ", ".join(m.value for m in allowed)
        raise InputError(f"{what}: unknown value {value!r}; choose one of {choices}") from None


_CHUNK = 500  # rows per INSERT: below SQLite's and PostgreSQL's bound-parameter limits for every table here


def _insert(
    session: Session,
    table: sa.Table,
    rows: Sequence[dict[str, Any]],
    *,
    keys: Sequence[str],
    update: dict[str, Any] | None = None,
    where: Any = None,
) -> None:
    """``INSERT … ON CONFLICT (keys) DO NOTHING`` or ``DO UPDATE SET update WHERE where``.

    ``update`` maps a column to an expression of ``excluded`` (the row that was refused), given as a
    callable taking the statement, because ``excluded`` belongs to the statement. Both SQLite (≥ 3.24) and
    PostgreSQL speak this dialect of upsert, which is what makes a retried write a no-op.
    """
    dialect = session.get_bind().dialect.name
    insert: Any = pg_dialect.insert if dialect == "postgresql" else sqlite_dialect.insert
    for start in range(0, len(rows), _CHUNK):
        stmt = insert(table).values(list(rows[start : start + _CHUNK]))
        if update is None:
            stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
        else:
            stmt = stmt.on_conflict_do_update(
                index_elements=list(keys),
                set_={name: value(stmt) for name, value in update.items()},
                where=where(stmt) if where is not None else None,
            )
        session.exec(stmt)


def _excluded(name: str) -> Any:
    return lambda stmt: stmt.excluded[name]


def _table(model: type[SQLModel]) -> sa.Table:
    return model.__table__  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------------------------- waves


def record_wave_status(session: Session, *, status: WaveStatus, at: datetime | None = None) -> None:
    """Upsert a wave, its stages, their instances and its audit entries from one ``WaveStatus`` snapshot.

    Args:
        status: the snapshot, as the workflow's ``status`` query or result returns it.
        at: when the workflow took the snapshot (pass ``workflow.now()`` through the activity input, so a
            retry carries the same instant). A snapshot older than the one stored is ignored row by row,
            so activities finishing out of order cannot move a wave backwards. Default: now.
    """
    at = _utc(at or _now(), "at")
    start = next((entry for entry in status.audit if entry.action == "start"), None)
    started_at = _utc(start.at, "audit[start].at") if start else at
    waves, stages, instances = _table(Wave), _table(Stage), _table(StageInstance)

    def newer(table: sa.Table) -> Any:
        return lambda stmt: table.c.updated_at <= stmt.excluded.updated_at

    wave_row = {
        "id": status.wave_id,
        "plan": status.plan_name,
        "state": status.state,
        "patch_set_id": status.patch_set_id,
        "started_by": start.who if start else "",
        "started_at": started_at,
        "finished_at": at if status.state in WAVE_FINAL_STATES else None,
        "reason": status.reason,
        "kind": status.kind,
        "updated_at": at,
    }
    wave_update = {k: _excluded(k) for k in ("state", "reason", "updated_at", "plan", "patch_set_id", "kind")}
    # The first final snapshot fixes finished_at; later ones (a retry, a re-read result) keep it.
    wave_update["finished_at"] = lambda stmt: sa.func.coalesce(waves.c.finished_at, stmt.excluded.finished_at)
    _insert(session, waves, [wave_row], keys=["id"], update=wave_update, where=newer(waves))

    stage_rows, instance_rows = [], []
    for position, st in enumerate(status.stages):
        stage_rows.append(
            {
                "wave_id": status.wave_id,
                "name": st.name,
                "position": position,
                "state": st.state,
                "errors": st.errors,
                "max_errors": st.max_errors,
                "max_concurrency": st.max_concurrency,
                "window_start": _utc_opt(st.window_start, f"stage {st.name} window_start"),
                "window_cutoff": _utc_opt(st.window_cutoff, f"stage {st.name} window_cutoff"),
                "note": st.note,
                "rollout": stage_rollout(st),
                "updated_at": at,
            }
        )
        for index, (instance_id, state) in enumerate(st.instances.items()):
            instance_rows.append(
                {
                    "wave_id": status.wave_id,
                    "stage": st.name,
                    "instance_id": instance_id,
                    "position": index,
                    "state": state,
                    "detail": st.details.get(instance_id, ""),
                    "hook_steps": [
                        {k: v for k, v in dataclasses.asdict(r).items() if k != "undo"}
                        for r in st.hook_steps.get(instance_id, [])
                    ],
                    "updated_at": at,
                }
            )
    stage_columns = [k for k in (stage_rows[0] if stage_rows else {}) if k not in ("wave_id", "name")]
    stage_update = {k: _excluded(k) for k in stage_columns}  # everything but the key
    _insert(session, stages, stage_rows, keys=["wave_id", "name"], update=stage_update, where=newer(stages))
    instance_update = {k: _excluded(k) for k in ("position", "state", "detail", "hook_steps", "updated_at")}
    _insert(
        session,
        instances,
        instance_rows,
        keys=["wave_id", "stage", "instance_id"],
        update=instance_update,
        where=newer(instances),
    )

    # The workflow's audit list only grows, so an entry's index is its identity across snapshots.
    audit_rows = [
        {
            "at": _utc(entry.at, f"audit[{index}].at"),
            "actor": entry.who,
            "action": entry.action,
            "wave_id": status.wave_id,
            "stage": entry.stage or None,
            "detail": {"comment": entry.comment} if entry.comment else {},
            "key": f"wave/{status.wave_id}/audit/{index}",
        }
        for index, entry in enumerate(status.audit)
    ]
    session.commit()  # the wave's rows first: the chain's lock is held only while appending to it
    _append_chained(session, audit_rows)
    session.commit()


def stage_rollout(st: StageStatus) -> dict[str, Any] | None:
    """The stage's ``rollout`` column: its analysis and alert blocking as ``wave status`` shows them, its
    disruption budget and its reboot debt summed up (a count, not the per-instance map, which grows with the
    stage). ``None`` for a stage that uses none of them."""
    rollout = analysis_json(st)
    for measurement in rollout.get("measurements", []):
        # Prometheus answers NaN and ±Inf (0/0, x/0); JSON has no such numbers and PostgreSQL refuses them.
        measurement["values"] = [finite(v) for v in measurement["values"]]
        measurement["baseline"] = finite(measurement["baseline"])
    if st.disruption:
        rollout["disruption_budget"] = st.disruption
    if st.reboot_debt_count or st.reboot_state:
        rollout["reboot_debt"] = {
            "instances": st.reboot_debt_count,
            "since": _iso(_utc_opt(st.reboot_debt_since, f"stage {st.name} reboot_debt_since")),
            "deadline_days": st.reboot_deadline_days,
            "reboot_window": st.reboot_state or None,
            "reboot_window_start": _iso(
                _utc_opt(st.reboot_window_start, f"stage {st.name} reboot_window_start")
            ),
        }
    return rollout or None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def get_wave(session: Session, *, wave_id: str) -> WaveDetail:
    """A wave with its stages and instances.

    Raises:
        NotFoundError: no wave has this id.
    """
    wave = session.get(Wave, wave_id)
    if wave is None:
        raise NotFoundError(f"no wave {wave_id!r} in the history database")
    stages = session.exec(select(Stage).where(Stage.wave_id == wave_id).order_by(col(Stage.position))).all()
    instances = session.exec(
        select(StageInstance)
        .where(StageInstance.wave_id == wave_id)
        .order_by(col(StageInstance.stage), col(StageInstance.position))
    ).all()
    by_stage: dict[str, list[StageInstancePublic]] = {}
    for row in instances:
        by_stage.setdefault(row.stage, []).append(StageInstancePublic.model_validate(row))
    return WaveDetail.model_validate(
        wave,
        update={
            "stages": [
                StagePublic.model_validate(s, update={"instances": by_stage.get(s.name, [])}) for s in stages
            ]
        },
    )


def list_waves(
    session: Session,
    *,
    state: str | None = None,
    plan: str | None = None,
    since: datetime | None = None,
    kind: str | None = None,
    finished: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[WavePublic]:
    """Waves newest first (by start), optionally only those in ``state``, of ``plan``, started at/after
    ``since``, of ``kind`` (``standard`` or ``emergency``), or finished (``True``: in a final state,
    ``WAVE_FINAL_STATES``; ``False``: still running, waiting or halted).

    Raises:
        InputError: an unknown state or kind, a naive ``since`` or a limit outside 1..1000.
    """
    if state is not None and state not in WAVE_STATES:
        raise InputError(
            f"state: unknown wave state {state!r}; choose one of {', '.join(sorted(WAVE_STATES))}"
        )
    if not 1 <= limit <= 1000:
        raise InputError(f"limit: {limit} is outside 1..1000")
    query = select(Wave)
    if state is not None:
        query = query.where(Wave.state == state)
    if kind is not None:
        query = query.where(Wave.kind == _choice(kind, WaveKind, "kind"))
    if finished is not None:
        final = col(Wave.state).in_(sorted(WAVE_FINAL_STATES))
        query = query.where(final if finished else sa.not_(final))
    if plan is not None:
        query = query.where(Wave.plan == plan)
    if since is not None:
        query = query.where(col(Wave.started_at) >= _utc(since, "since"))
    query = query.order_by(col(Wave.started_at).desc(), col(Wave.id)).offset(max(offset, 0)).limit(limit)
    return [WavePublic.model_validate(w) for w in session.exec(query).all()]


# ---------------------------------------------------------------------------------------------- results


def record_instance_result(
    session: Session,
    *,
    wave_id: str,
    stage: str,
    instance_id: str,
    attempt: int,
    status: str,
    started_at: datetime,
    finished_at: datetime | None = None,
    operation: str = "install",
    detail: str = "",
    versions_before: dict[str, str] | None = None,
    versions_after: dict[str, str] | None = None,
    command_id: str | None = None,
) -> None:
    """Record (or complete) one operation on one instance; keyed by wave, stage, instance, operation and
    attempt.

    A row may be written twice: once when the operation starts (``finished_at=None``) and once when it
    ends. A finished row is only ever replaced by another finished one, so a retried activity that records
    "in flight" again cannot undo a result; ``started_at`` keeps its first value.
    """
    if operation not in ("install", "restore"):
        raise InputError(f"operation: unknown value {operation!r}; choose install or restore")
    if attempt < 0:
        raise InputError(f"attempt: {attempt} is negative")
    table = _table(InstanceResult)
    row = {
        "wave_id": wave_id,
        "stage": stage,
        "instance_id": instance_id,
        "operation": operation,
        "attempt": attempt,
        "status": status,
        "detail": detail,
        "versions_before": dict(versions_before or {}),
        "versions_after": dict(versions_after or {}),
        "command_id": command_id,
        "started_at": _utc(started_at, "started_at"),
        "finished_at": _utc_opt(finished_at, "finished_at"),
    }
    update = {
        k: _excluded(k)
        for k in ("status", "detail", "versions_before", "versions_after", "command_id", "finished_at")
    }
    update["command_id"] = lambda stmt: sa.func.coalesce(stmt.excluded.command_id, table.c.command_id)
    _insert(
        session,
        table,
        [row],
        keys=["wave_id", "stage", "instance_id", "operation", "attempt"],
        update=update,
        where=lambda stmt: sa.or_(table.c.finished_at.is_(None), stmt.excluded.finished_at.is_not(None)),
    )
    session.commit()


def list_instance_results(
    session: Session, *, wave_id: str, stage: str | None = None, instance_id: str | None = None
) -> list[InstanceResultPublic]:
    """A wave's operations by stage, instance, attempt and operation."""
    query = select(InstanceResult).where(InstanceResult.wave_id == wave_id)
    if stage is not None:
        query = query.where(InstanceResult.stage == stage)
    if instance_id is not None:
        query = query.where(InstanceResult.instance_id == instance_id)
    query = query.order_by(
        col(InstanceResult.stage),
        col(InstanceResult.instance_id),
        col(InstanceResult.attempt),
        col(InstanceResult.operation),
    )
    return [InstanceResultPublic.model_validate(r) for r in session.exec(query).all()]


# ---------------------------------------------------------------------------------------------- patch sets


def save_patch_set(session: Session, *, patch_set: PatchSet, at: datetime | None = None) -> str:
    """Store a pinned patch set once (its id is a hash of its content); returns the id."""
    row = {
        "id": patch_set.id,
        "family": patch_set.family,
        "content": patch_set.to_json(),
        "created_at": _utc(at or _now(), "at"),
    }
    _insert(session, _table(PatchSetRecord), [row], keys=["id"])
    session.commit()
    return patch_set.id


def get_patch_set(session: Session, *, patch_set_id: str) -> PatchSet:
    """A stored patch set, verified against its id.

    Raises:
        NotFoundError: no such patch set.
        InputError: the stored content no longer hashes to its id (edited in the database).
    """
    row = session.get(PatchSetRecord, patch_set_id)
    if row is None:
        raise NotFoundError(f"no patch set {patch_set_id!r} in the database")
    return PatchSet.from_json(row.content, source=f"database patch set {patch_set_id}")


# ---------------------------------------------------------------------------------------------- decisions


def record_decision(
    session: Session,
    *,
    wave_id: str,
    stage: str,
    who: str,
    decision: str,
    via: str,
    at: datetime,
    comment: str = "",
) -> None:
    """Record an approval or rejection of a stage's gate (once per wave, stage, person, decision, instant).

    Raises:
        InputError: an unknown decision or channel, or an empty ``who``.
    """
    if not who.strip():
        raise InputError("who: a gate decision names the person who made it")
    row = {
        "wave_id": wave_id,
        "stage": stage,
        "who": who,
        "decision": _choice(decision, Decision, "decision"),
        "via": _choice(via, Via, "via"),
        "comment": comment,
        "at": _utc(at, "at"),
    }
    _insert(session, _table(GateDecision), [row], keys=["wave_id", "stage", "who", "decision", "at"])
    session.commit()


def list_decisions(session: Session, *, wave_id: str) -> list[GateDecisionPublic]:
    """A wave's gate decisions in the order they were made."""
    query = (
        select(GateDecision)
        .where(GateDecision.wave_id == wave_id)
        .order_by(col(GateDecision.at), col(GateDecision.id))
    )
    return [GateDecisionPublic.model_validate(d) for d in session.exec(query).all()]


# ---------------------------------------------------------------------------------------------- audit log


def append_audit(
    session: Session,
    *,
    actor: str,
    action: str,
    at: datetime | None = None,
    wave_id: str | None = None,
    stage: str | None = None,
    detail: dict[str, Any] | None = None,
    key: str | None = None,
) -> None:
    """Append one operator action to the audit log, linked to the chain.

    Args:
        key: an idempotency key for writers that may run twice (activities); a second append with the same
            key is dropped. ``None`` for writers that run once (a CLI command, an API request).
    """
    if not actor.strip() or not action.strip():
        raise InputError("an audit entry names its actor and its action")
    row = {
        "at": _utc(at or _now(), "at"),
        "actor": actor,
        "action": action,
        "wave_id": wave_id,
        "stage": stage,
        "detail": dict(detail or {}),
        "key": key,
        "refused": False,
    }
    _append_chained(session, [row])
    session.commit()


REFUSALS_PER_MINUTE = 60
"""At most this many refused attempts are recorded per minute, across every process sharing the database:
a flood of forged requests grows the log by at most ~86,000 small rows a day instead of filling the disk."""


def append_refusal(
    session: Session,
    *,
    actor: str,
    action: str,
    reason: str,
    at: datetime | None = None,
    wave_id: str | None = None,
    stage: str | None = None,
    detail: dict[str, Any] | None = None,
    per_minute: int = REFUSALS_PER_MINUTE,
) -> bool:
    """Record a refused attempt (who, what, why refused) — unless ``per_minute`` refusals were recorded in
    the minute before ``at``: then nothing is written (the caller logs it) and False is returned.

    The count and the append happen under the chain's lock, so concurrent writers cannot overshoot it.
    """
    if not actor.strip() or not action.strip():
        raise InputError("an audit entry names its actor and its action")
    at = _utc(at or _now(), "at")
    row = {
        "at": at,
        "actor": actor[:_ID],
        "action": action[:64],
        "wave_id": wave_id[:_ID] if wave_id else None,
        "stage": stage[:_ID] if stage else None,
        "detail": {**(detail or {}), "reason": reason[:2000]},
        "key": None,
        "refused": True,
    }
    _lock_audit_chain(session)
    table = _table(AuditRecord)
    recent = session.connection().execute(
        sa.select(sa.func.count())
        .select_from(table)
        .where(table.c.refused.is_(True), table.c.at > at - timedelta(minutes=1))
    )
    if recent.scalar_one() >= per_minute:
        session.rollback()  # frees the lock
        return False
    _append_chained(session, [row])
    session.commit()
    return True


AUDIT_GENESIS = "0" * 64
"""``prev_hash`` of the first row of the audit chain."""

_AUDIT_LOCK = 0x70666175646974  # "pfaudit": PostgreSQL advisory lock serialising appends to the chain
_TOKEN_LOCK = 0x7066746F6B656E  # "pftoken": serialises token creation (one active token per name)


def audit_row_hash(row: Any, prev_hash: str) -> str:
    """SHA-256 of the previous row's hash and this row's content (id, instant, actor, action, wave, stage,
    detail, key, refused) as canonical JSON. The format is part of every stored row: never change it.

    Args:
        row: a mapping or an object with those fields (``at`` timezone-aware).
    """

    def get(name: str) -> Any:
        return row.get(name) if isinstance(row, dict) else getattr(row, name)

    content = {
        "id": get("id"),
        "at": _utc(get("at"), "at").isoformat(timespec="microseconds"),
        "actor": get("actor"),
        "action": get("action"),
        "wave_id": get("wave_id"),
        "stage": get("stage"),
        "detail": get("detail"),
        "key": get("key"),
        "refused": bool(get("refused")),
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode()).hexdigest()


def _lock_audit_chain(session: Session) -> None:
    """Serialise appends until this transaction ends, so two writers never link to the same predecessor."""
    _serialise(session, _AUDIT_LOCK)


def _serialise(session: Session, key: int) -> None:
    """Hold a lock until this transaction ends, for a read-then-write that must not interleave with another
    process's: a transaction-level advisory lock ``key`` on PostgreSQL, SQLite's write lock (``BEGIN
    IMMEDIATE``, the whole database) taken before the read."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
        return
    raw = connection.connection.dbapi_connection
    if raw is not None and not raw.in_transaction:  # a write already in this transaction holds the lock
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _append_chained(session: Session, rows: Sequence[dict[str, Any]]) -> int:
    """Append ``rows`` in order, each linked to the one before; rows whose key is already in the log (a
    retried writer) are skipped. Returns how many were appended. The caller commits (which frees the lock).
    """
    if not rows:
        return 0
    _lock_audit_chain(session)
    table = _table(AuditRecord)
    connection = session.connection()
    keys = [row["key"] for row in rows if row.get("key") is not None]
    existing: set[str] = set()
    for start in range(0, len(keys), _CHUNK):
        chunk = keys[start : start + _CHUNK]
        existing.update(connection.execute(sa.select(table.c.key).where(table.c.key.in_(chunk))).scalars())
    fresh = [row for row in rows if row.get("key") is None or row["key"] not in existing]
    if not fresh:
        return 0
    head = connection.execute(
        sa.select(table.c.id, table.c.row_hash).order_by(table.c.id.desc()).limit(1)
    ).first()
    last_id, prev_hash = (head[0], head[1] or "") if head is not None else (0, AUDIT_GENESIS)
    chained = []
    for row in fresh:  # ids follow the chain: max + 1 under the lock
        last_id += 1
        linked = {**row, "id": last_id, "prev_hash": prev_hash}
        linked["row_hash"] = prev_hash = audit_row_hash(linked, prev_hash)
        chained.append(linked)
    for start in range(0, len(chained), _CHUNK):
        connection.execute(sa.insert(table).values(chained[start : start + _CHUNK]))
    if connection.dialect.name == "postgresql":  # an INSERT without an id (by hand) continues above ours
        sequence = sa.func.pg_get_serial_sequence("audit_log", "id")
        connection.execute(sa.select(sa.func.setval(sequence, last_id)))
    return len(chained)


@dataclass(frozen=True)
class AuditVerification:
    """What :func:`verify_audit_chain` found."""

    rows: int
    """Rows checked and found linked (all of them when the chain is intact)."""
    head: str | None
    """``row_hash`` of the last intact row (``None``: an empty log, or the first row is broken)."""
    broken_at: int | None = None
    """Id of the first row whose link is broken; ``None`` when the chain is intact."""
    problem: str = ""
    """What is wrong at ``broken_at`` (or with ``expected_head``), and what it means."""

    @property
    def ok(self) -> bool:
        return not self.problem


def verify_audit_chain(
    session: Session, *, expected_head: str | None = None, batch: int = 1000
) -> AuditVerification:
    """Walk the audit log in id order and report the first broken link.

    A row is broken when its ``prev_hash`` is not the previous row's ``row_hash`` (a row before it was
    removed, inserted or rewritten) or its ``row_hash`` does not match its content (the row was edited).
    Whoever can rewrite every later hash can hide an edit from this walk alone; ``expected_head`` (a
    ``row_hash`` recorded earlier, e.g. from a previous verification's output) closes that gap: it must still
    be a row of the intact chain.
    """
    table = _table(AuditRecord)
    prev_hash, prev_id, checked, head_seen = AUDIT_GENESIS, None, 0, expected_head is None
    last_id = -(2**31)  # below any id (PostgreSQL: INTEGER)
    while True:
        rows = (
            session.connection()
            .execute(sa.select(table).where(table.c.id > last_id).order_by(table.c.id).limit(batch))
            .all()
        )
        if not rows:
            break
        for row in rows:
            problem = _audit_link_problem(row, prev_hash, prev_id)
            if problem:
                return AuditVerification(checked, prev_hash if checked else None, row.id, problem)
            checked, prev_hash, prev_id = checked + 1, row.row_hash, row.id
            head_seen = head_seen or row.row_hash == expected_head
        last_id = rows[-1].id
    head = prev_hash if checked else None
    if not head_seen:
        return AuditVerification(
            checked,
            head,
            None,
            f"the head {expected_head} recorded earlier is no longer in the chain: rows were removed from "
            "its end or the chain was rewritten from an earlier row",
        )
    return AuditVerification(checked, head)


def _audit_link_problem(row: Any, prev_hash: str, prev_id: int | None) -> str:
    after = f"row {prev_id}" if prev_id is not None else "the start of the log"
    if row.row_hash is None or row.prev_hash is None:
        return (
            f"row {row.id} carries no hash: it was inserted around patchflow (or by a patchflow older than "
            "schema revision 0003)"
        )
    if row.prev_hash != prev_hash:
        return (
            f"row {row.id} does not link to {after}: a row between them was removed or inserted, or "
            f"{after} was rewritten"
        )
    if audit_row_hash(row, row.prev_hash) != row.row_hash:
        return f"row {row.id}'s content does not match its hash: the row was edited after it was written"
    return ""


def list_audit(
    session: Session,
    *,
    wave_id: str | None = None,
    since: datetime | None = None,
    limit: int = 1000,
) -> list[AuditRecordPublic]:
    """Audit entries oldest first (by time, then by the order they were appended)."""
    query = select(AuditRecord)
    if wave_id is not None:
        query = query.where(AuditRecord.wave_id == wave_id)
    if since is not None:
        query = query.where(col(AuditRecord.at) >= _utc(since, "since"))
    query = query.order_by(col(AuditRecord.at), col(AuditRecord.id)).limit(limit)
    return [AuditRecordPublic.model_validate(a) for a in session.exec(query).all()]


# ---------------------------------------------------------------------------------------------- API tokens

TOKEN_PREFIX = "pft"
# scrypt at the interactive-login cost (16 MiB, tens of ms). The secret has 256 random bits, so this guards a
# leaked table, not weak passwords; the parameters travel in the stored hash and may change later.
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _hash_secret(
    secret: str, *, salt: bytes, n: int = _SCRYPT_N, r: int = _SCRYPT_R, p: int = _SCRYPT_P
) -> str:
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def _secret_matches(secret: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, _digest = stored.split("$")
        if scheme != "scrypt":
            return False
        candidate = _hash_secret(secret, salt=_unb64(salt), n=int(n), r=int(r), p=int(p))
    except ValueError:
        return False
    return hmac.compare_digest(candidate.encode(), stored.encode())


# Hashed when a token id is unknown, so a miss costs as much time as a wrong secret.
_DUMMY_HASH = _hash_secret("patchflow-no-such-token", salt=b"\0" * 16)


def create_token(session: Session, *, name: str, role: str, at: datetime | None = None) -> tuple[str, str]:
    """Create an API token.

    Returns:
        ``(token_id, token)``: ``token`` (``pft_<id>_<secret>``) is what clients send as a bearer token. It
        is not stored anywhere; show it once.

    Raises:
        InputError: an unknown role; a name that is empty, over-long, not a plain name
            (:func:`patchflow.core.approvers.token_name_problem`: never ``slack:…``), or already the name of
            an active token (revoke that one first: a name is an identity).
    """
    name = name.strip()
    if not name or len(name) > _ID:
        raise InputError(f"name: give the token a name of 1 to {_ID} characters (what it is for)")
    problem = token_name_problem(name)
    if problem:
        raise InputError(f"name: {problem}")
    role = _choice(role, Role, "role")
    _serialise(session, _TOKEN_LOCK)  # the check below and the insert, atomically
    taken = session.exec(
        select(ApiToken).where(ApiToken.name == name, col(ApiToken.revoked).is_(False))
    ).first()
    if taken is not None:
        session.rollback()
        raise InputError(
            f"name: the active token {taken.id} is already named {name!r}, and a name is an identity that "
            f"gates and the audit log see; revoke it first ('patchflow token revoke {taken.id}') or choose "
            "another name"
        )
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    session.add(
        ApiToken(
            id=token_id,
            name=name,
            role=role,
            secret_hash=_hash_secret(secret, salt=secrets.token_bytes(16)),
            created_at=_utc(at or _now(), "at"),
        )
    )
    session.commit()
    return token_id, f"{TOKEN_PREFIX}_{token_id}_{secret}"


def verify_token(session: Session, *, token: str, at: datetime | None = None) -> Role | None:
    """The role of a valid, unrevoked token; ``None`` for anything else (malformed, unknown, wrong secret,
    revoked, or named like a Slack identity — possible only for a token created before names were checked). Compares in constant time and records when the token was last used."""
    prefix, _, rest = token.strip().partition("_")
    token_id, _, secret = rest.partition("_")
    row = session.get(ApiToken, token_id) if prefix == TOKEN_PREFIX and token_id and secret else None
    if row is None:
        _secret_matches(secret or "x", _DUMMY_HASH)
        return None
    if not _secret_matches(secret, row.secret_hash) or row.revoked:
        return None
    if token_name_problem(row.name):  # created before names were checked: it could pose as someone else
        return None
    now = _utc(at or _now(), "at")
    if row.last_used_at is None or now - row.last_used_at >= _LAST_USED_RESOLUTION:
        row.last_used_at = now
        session.add(row)
        session.commit()
    return Role(row.role)


def list_tokens(session: Session, *, include_revoked: bool = True) -> list[TokenPublic]:
    """Tokens oldest first, without their hashes."""
    query = select(ApiToken)
    if not include_revoked:
        query = query.where(col(ApiToken.revoked).is_(False))
    query = query.order_by(col(ApiToken.created_at), col(ApiToken.id))
    return [TokenPublic.model_validate(t) for t in session.exec(query).all()]


def revoke_token(session: Session, *, token_id: str, at: datetime | None = None) -> TokenPublic:
    """Revoke a token for good (revoking it again changes nothing).

    Raises:
        NotFoundError: no token has this id.
    """
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"no API token {token_id!r}; 'patchflow token list' shows the ids")
    if not row.revoked:
        row.revoked = True
        row.revoked_at = _utc(at or _now(), "at")
        session.add(row)
        session.commit()
    return TokenPublic.model_validate(row)


# ---------------------------------------------------------------------------------------------- leader lease


class LeaderLease:
    """One holder among the processes that share a database, for a duty that must run once however many
    replicas run (the API's Slack notifier: two replicas would post every message twice).

    PostgreSQL: a session-level advisory lock, held by a connection kept open for nothing else; it goes with
    the connection, so when the holder dies (or loses the database) another replica takes over at its next
    :meth:`held`. SQLite, which one machine shares: an exclusive ``flock`` on a file beside the database,
    released by the kernel when the holding process dies.

    Args:
        url: the history database.
        name: the duty; one lease per name.
    """

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self._engine: Engine | None = None
        self._connection: sa.Connection | None = None
        self._file: Any = None

    def held(self) -> bool:
        """Hold the lease if nobody else does; True while this process holds it. Blocking (a round trip or a
        system call): call it from a thread in async code. Never raises: an unusable database holds nothing."""
        try:
            if _normalise_url(self.url).get_backend_name() == "postgresql":
                return self._held_postgres()
            return self._held_file()
        except Exception:  # noqa: BLE001 - see the docstring; the next call tries again
            self.release()
            return False

    def _held_postgres(self) -> bool:
        if self._connection is not None:
            self._connection.execute(sa.text("SELECT 1"))  # still ours while the connection lives
            return True
        if self._engine is None:
            self._engine = sa.create_engine(
                _normalise_url(self.url), poolclass=sa.pool.NullPool, connect_args={"connect_timeout": 5}
            )
        connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        # Advisory locks are per database server: key on the duty, the database and the schema patchflow's
        # tables live in, however each replica spells its URL.
        where = connection.execute(
            sa.text("SELECT current_database() || '/' || current_schema()")
        ).scalar_one()
        digest = hashlib.sha256(f"patchflow:{self.name}:{where}".encode()).digest()
        key = int.from_bytes(digest[:8], "big", signed=True)
        if connection.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar_one():
            self._connection = connection
            return True
        connection.close()
        return False

    def _held_file(self) -> bool:
        import fcntl

        if self._file is not None:
            return True
        database = _normalise_url(self.url).database
        if not database or database == ":memory:" or database.startswith("file:"):
            return True  # a database no other process can open
        lock_file = Path(f"{database}.{self.name}.lock")
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        handle = lock_file.open("a+b")  # held open while leading
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        self._file = handle
        return True

    def release(self) -> None:
        """Let another process take the lease (also what dying does)."""
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.close()
            self._connection = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None
