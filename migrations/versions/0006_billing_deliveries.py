"""billing deliveries

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('billing_deliveries',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('usage_record_id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('sink', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_billing_deliveries_tenant_id_tenants'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['usage_record_id'], ['usage_records.id'], name=op.f('fk_billing_deliveries_usage_record_id_usage_records'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_billing_deliveries')),
    sa.UniqueConstraint('usage_record_id', 'sink', name=op.f('uq_billing_deliveries_usage_record_id_sink'))
    )
    op.create_index(op.f('ix_billing_deliveries_tenant_id'), 'billing_deliveries', ['tenant_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_billing_deliveries_tenant_id'), table_name='billing_deliveries')
    op.drop_table('billing_deliveries')
