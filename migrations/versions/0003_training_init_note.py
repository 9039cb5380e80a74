"""training init_note: why the initialisation used differs from the one requested

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('trainings') as batch:
        batch.add_column(sa.Column('init_note', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('trainings') as batch:
        batch.drop_column('init_note')
