"""trainings.api_base_url: the API's address as the submitting client reached it, for webhook links

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("trainings", sa.Column("api_base_url", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("trainings", "api_base_url")
