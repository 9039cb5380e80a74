"""tenant limits, Stripe customer and webhook secret

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('tenants') as batch:
        batch.add_column(sa.Column('max_concurrent_trainings', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('monthly_unit_limit', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('stripe_customer_id', sa.String(length=255), nullable=True))
        batch.add_column(sa.Column('webhook_secret', sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tenants') as batch:
        batch.drop_column('webhook_secret')
        batch.drop_column('stripe_customer_id')
        batch.drop_column('monthly_unit_limit')
        batch.drop_column('max_concurrent_trainings')
