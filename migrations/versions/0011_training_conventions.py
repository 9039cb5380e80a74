"""training conventions: a per-training webhook event filter, and the index queue positions count on

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
QUEUED = sa.text("status = 'queued'")


def upgrade() -> None:
    with op.batch_alter_table('trainings') as batch:
        batch.add_column(sa.Column('webhook_events_filter', JSON, nullable=True))
    # Only queued rows: a poll's queue_position counts inside it, however long the history grows.
    op.create_index(
        'ix_trainings_queued',
        'trainings',
        ['attempts', 'created_at', 'id'],
        postgresql_where=QUEUED,
        sqlite_where=QUEUED,
    )


def downgrade() -> None:
    op.drop_index('ix_trainings_queued', table_name='trainings')
    with op.batch_alter_table('trainings') as batch:
        batch.drop_column('webhook_events_filter')
