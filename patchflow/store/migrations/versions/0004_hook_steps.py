"""stage instances record what their lifecycle hooks did.

Hand-written. ``stage_instances.hook_steps``: a JSON list of the instance's hook step records (phase, step,
status, duration_seconds, output tail), ``[]`` for the rows already there and for stages without hooks. A plain
ALTER (no batch mode): both databases add and drop a column in place.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 17:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stage_instances", sa.Column("hook_steps", sa.JSON(), server_default="[]", nullable=False))


def downgrade() -> None:
    op.drop_column("stage_instances", "hook_steps")  # in place: SQLite ≥ 3.35
