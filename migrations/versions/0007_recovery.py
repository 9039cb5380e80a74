"""recovery: outbox message priority; transient failures counted apart from crashed claims

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('outbox_messages') as batch:
        batch.add_column(sa.Column('priority', sa.Integer(), nullable=True))
    with op.batch_alter_table('trainings') as batch:
        batch.add_column(sa.Column('transient_failures', sa.Integer(), server_default='0', nullable=False))
        batch.add_column(sa.Column('transient_failing_since', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('trainings') as batch:
        batch.drop_column('transient_failing_since')
        batch.drop_column('transient_failures')
    with op.batch_alter_table('outbox_messages') as batch:
        batch.drop_column('priority')
