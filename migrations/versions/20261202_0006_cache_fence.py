"""cache_fence: a durable counter raised when a cache write an acknowledged change needed was missed

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "cache_fence",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cache_fence")),
    )
    op.bulk_insert(table, [{"id": 1, "value": 0, "raised_at": None}])


def downgrade() -> None:
    op.drop_table("cache_fence")
