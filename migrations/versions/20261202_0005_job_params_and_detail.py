"""training_jobs.params (requested mode, time budget) and .detail (live stage, epoch, ETA; cleaning report)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN on both stores: a batch (copy-and-move) on SQLite would drop the expression index
    # uq_training_jobs_one_open of migration 0003.
    op.add_column("training_jobs", sa.Column("params", sa.JSON(), nullable=True))
    op.add_column("training_jobs", sa.Column("detail", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_column("detail")
        batch_op.drop_column("params")
    if op.get_bind().dialect.name == "sqlite":  # the batch rebuilt the table without 0003's expression index
        op.execute(
            "CREATE UNIQUE INDEX IF NOT EXISTS uq_training_jobs_one_open ON training_jobs ((1)) "
            "WHERE status IN ('queued', 'running')"
        )
