"""training outcome: the guard's start scores, why a training stopped and its evaluation curve

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('trainings') as batch:
        batch.add_column(sa.Column('init_scores', JSON, nullable=True))
        batch.add_column(sa.Column('stop_reason', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('eval_curve', JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('trainings') as batch:
        batch.drop_column('eval_curve')
        batch.drop_column('stop_reason')
        batch.drop_column('init_scores')
