"""text trainings: a training's kind (image or text), its example count, and the same on usage records

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Every existing training and usage record is an image one: the server default fills them.
    with op.batch_alter_table('trainings') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), server_default='image', nullable=False))
        batch.add_column(sa.Column('example_count', sa.Integer(), nullable=True))
        batch.create_check_constraint(op.f('ck_trainings_kind'), "kind IN ('image', 'text')")
    with op.batch_alter_table('usage_records') as batch:
        batch.add_column(sa.Column('kind', sa.String(length=16), server_default='image', nullable=False))
        batch.add_column(sa.Column('examples', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('usage_records') as batch:
        batch.drop_column('examples')
        batch.drop_column('kind')
    with op.batch_alter_table('trainings') as batch:
        batch.drop_constraint(op.f('ck_trainings_kind'), type_='check')
        batch.drop_column('example_count')
        batch.drop_column('kind')
