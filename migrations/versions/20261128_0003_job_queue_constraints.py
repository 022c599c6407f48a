"""job queue: one open training job, one active model version, the event watermark of a job

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

The two partial unique indexes over a constant make the database itself refuse a second open job
(queued or running) and a second active version, so concurrent requests cannot race past a check.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("training_jobs", sa.Column("max_event_id", sa.BigInteger(), nullable=True))
    # If an older store somehow holds several open jobs, keep the oldest open and fail the rest.
    op.execute(
        "UPDATE training_jobs SET status = 'failed', error = 'superseded by migration 0003' "
        "WHERE status IN ('queued', 'running') AND id > "
        "(SELECT MIN(id) FROM training_jobs WHERE status IN ('queued', 'running'))"
    )
    op.execute(
        "UPDATE model_versions SET status = 'retired' WHERE status = 'active' AND id < "
        "(SELECT MAX(id) FROM model_versions WHERE status = 'active')"
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_training_jobs_one_open ON training_jobs ((1)) "
        "WHERE status IN ('queued', 'running')"
    )
    op.execute(
        "CREATE UNIQUE INDEX uq_model_versions_one_active ON model_versions ((1)) WHERE status = 'active'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX uq_model_versions_one_active")
    op.execute("DROP INDEX uq_training_jobs_one_open")
    with op.batch_alter_table("training_jobs", schema=None) as batch_op:
        batch_op.drop_column("max_event_id")
