"""publishable keys: api_keys.kind, allowed_origins and per-key rate_limits

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="secret"))
        batch.add_column(sa.Column("allowed_origins", sa.Text(), nullable=True))
        batch.add_column(sa.Column("rate_limits", sa.String(512), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rate_limits")
        batch.drop_column("allowed_origins")
        batch.drop_column("kind")
