"""usage records

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('usage_records',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('tenant_id', sa.Uuid(), nullable=False),
    sa.Column('training_id', sa.Uuid(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('base_model', sa.String(length=100), nullable=False),
    sa.Column('mode', sa.String(length=32), nullable=False),
    sa.Column('device', sa.String(length=64), nullable=False),
    sa.Column('device_class', sa.String(length=16), nullable=False),
    sa.Column('steps', sa.Integer(), nullable=False),
    sa.Column('images', sa.Integer(), nullable=False),
    sa.Column('compute_seconds', sa.Float(), nullable=False),
    sa.Column('billable_units', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_usage_records_tenant_id_tenants'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['training_id'], ['trainings.id'], name=op.f('fk_usage_records_training_id_trainings'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_records')),
    sa.UniqueConstraint('training_id', name=op.f('uq_usage_records_training_id'))
    )
    op.create_index('ix_usage_records_tenant_finished', 'usage_records', ['tenant_id', 'finished_at'], unique=False)
    with op.batch_alter_table('trainings') as batch:
        batch.add_column(sa.Column('estimated_units', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('trainings') as batch:
        batch.drop_column('estimated_units')
    op.drop_index('ix_usage_records_tenant_finished', table_name='usage_records')
    op.drop_table('usage_records')
