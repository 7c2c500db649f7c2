"""stages record what their rollout controls did.

Hand-written. ``stages.rollout``: a nullable JSON object with the stage's disruption budget, alert blocking,
canary analysis, its measurements and its reboot debt summed up (``patchflow.store.db.stage_rollout``); ``NULL``
for the rows already there and for stages that use none of these. A plain ALTER (no batch mode): both
databases add and drop a column in place.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 18:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stages", sa.Column("rollout", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("stages", "rollout")  # in place: SQLite ≥ 3.35
