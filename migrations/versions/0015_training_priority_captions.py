"""trainings.priority and wake_up_used (claim order within a tenant), trainings.caption_count

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("trainings", sa.Column("priority", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("trainings", sa.Column("caption_count", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("trainings", sa.Column("wake_up_used", sa.Boolean(), nullable=False, server_default=sa.false()))
    # A worker claims a tenant's best queued training; the queue position ranks them within the tenant.
    op.create_index(
        "ix_trainings_queued_tenant",
        "trainings",
        ["tenant_id", "created_at", "id"],
        postgresql_where=sa.text("status = 'queued'"),
        sqlite_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_trainings_queued_tenant", table_name="trainings")
    op.drop_column("trainings", "wake_up_used")
    op.drop_column("trainings", "caption_count")
    op.drop_column("trainings", "priority")
