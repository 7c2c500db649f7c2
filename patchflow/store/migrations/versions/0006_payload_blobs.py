"""payloads too large for Temporal, kept by content hash.

Hand-written. ``payload_blobs``: the claim-check store of :mod:`patchflow.control.payloads` when
``PATCHFLOW_PAYLOAD_STORE`` is ``database`` (or ``auto`` with ``PATCHFLOW_DATABASE_URL`` set): every worker, API
replica and CLI on several machines reads the same blobs. ``touched_at`` is indexed for pruning.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "payload_blobs",
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("touched_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("digest"),
    )
    op.create_index("ix_payload_blobs_touched_at", "payload_blobs", ["touched_at"])


def downgrade() -> None:
    op.drop_index("ix_payload_blobs_touched_at", table_name="payload_blobs")
    op.drop_table("payload_blobs")
