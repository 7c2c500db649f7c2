"""the audit log cannot be rewritten: a hash chain over its rows, no REPLACE (SQLite), no TRUNCATE (PostgreSQL);
refused attempts are marked.

Hand-written. Two columns link every row to the one before it (``prev_hash``, ``row_hash``: see
:func:`patchflow.store.db.audit_row_hash`); the rows already there are chained in id order. ``refused`` marks a
refused attempt (:func:`patchflow.store.db.append_refusal` counts them for its rate limit). Revision 0001's
triggers refuse ``UPDATE`` and ``DELETE``; this one adds what they missed:

* SQLite: ``INSERT OR REPLACE`` deletes the row it collides with without firing DELETE triggers, so a
  ``BEFORE INSERT`` trigger refuses any insert whose id or idempotency key is already in the log;
* PostgreSQL: ``TRUNCATE`` fires no row trigger, so a statement-level ``BEFORE TRUNCATE`` trigger refuses it.

Plain ALTERs (no batch mode): both databases add and drop a column in place.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

from patchflow.store.db import AUDIT_GENESIS, audit_row_hash

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_REFUSAL = "audit_log is append-only"  # the words of revision 0001's triggers


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    op.add_column(
        "audit_log", sa.Column("prev_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
    )
    op.add_column(
        "audit_log", sa.Column("row_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
    )
    op.add_column(
        "audit_log", sa.Column("refused", sa.Boolean(), server_default=sa.text("false"), nullable=False)
    )
    # Chaining the rows already there updates them: lift 0001's UPDATE guard for this transaction only.
    _drop_update_guard(postgres)
    _chain_existing_rows()
    _create_update_guard(postgres)
    if postgres:
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION patchflow_audit_log_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_log_no_replace BEFORE INSERT ON audit_log "
            "WHEN EXISTS (SELECT 1 FROM audit_log WHERE id = NEW.id) "
            "OR (NEW.key IS NOT NULL AND EXISTS (SELECT 1 FROM audit_log WHERE key = NEW.key)) "
            f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}: an entry with this id or key exists'); END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_log_no_truncate ON audit_log")
    else:
        op.execute("DROP TRIGGER audit_log_no_replace")
    op.drop_column("audit_log", "refused")
    op.drop_column("audit_log", "row_hash")
    op.drop_column("audit_log", "prev_hash")


def _chain_existing_rows() -> None:
    audit = sa.table(
        "audit_log",
        sa.column("id", sa.Integer),
        sa.column("at", sqlmodel.sql.sqltypes.UTCDateTime()),
        sa.column("actor", sa.String),
        sa.column("action", sa.String),
        sa.column("wave_id", sa.String),
        sa.column("stage", sa.String),
        sa.column("detail", sa.JSON),
        sa.column("key", sa.String),
        sa.column("refused", sa.Boolean),
        sa.column("prev_hash", sa.String),
        sa.column("row_hash", sa.String),
    )
    bind = op.get_bind()
    prev_hash = AUDIT_GENESIS
    for row in bind.execute(sa.select(audit).order_by(audit.c.id)).mappings().all():
        row_hash = audit_row_hash(dict(row), prev_hash)
        bind.execute(
            audit.update().where(audit.c.id == row["id"]).values(prev_hash=prev_hash, row_hash=row_hash)
        )
        prev_hash = row_hash


def _drop_update_guard(postgres: bool) -> None:
    if postgres:
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
    else:
        op.execute("DROP TRIGGER audit_log_no_update")


def _create_update_guard(postgres: bool) -> None:
    """Revision 0001's guard, exactly as it created it."""
    if postgres:
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION patchflow_audit_log_append_only()"
        )
    else:
        op.execute(
            "CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log "
            f"BEGIN SELECT RAISE(ABORT, '{_REFUSAL}'); END"
        )
