"""placements, experiments, impressions; events.recommendation_id (merchandising and A/B tests)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

ID = 256


def upgrade() -> None:
    op.create_table(
        "placements",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_placements")),
    )
    op.create_index(op.f("ix_placements_updated_at"), "placements", ["updated_at"])
    op.create_table(
        "experiments",
        sa.Column("experiment_id", sa.String(64), nullable=False),
        sa.Column("placement", sa.String(64), nullable=False),
        sa.Column("variants", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("winner", sa.String(64), nullable=True),
        sa.Column("attribution_window_s", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("experiment_id", name=op.f("pk_experiments")),
    )
    op.create_index(op.f("ix_experiments_placement"), "experiments", ["placement"])
    op.create_index(op.f("ix_experiments_updated_at"), "experiments", ["updated_at"])
    op.create_table(
        "impressions",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("recommendation_id", sa.String(ID), nullable=False),
        sa.Column("user_id", sa.String(ID), nullable=False),
        sa.Column("item_id", sa.String(ID), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("placement", sa.String(64), nullable=True),
        sa.Column("experiment", sa.String(64), nullable=True),
        sa.Column("variant", sa.String(64), nullable=True),
        sa.Column("ts", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_impressions")),
    )
    op.create_index("uq_impressions_rec_item", "impressions", ["recommendation_id", "item_id"], unique=True)
    op.create_index("ix_impressions_user_ts", "impressions", ["user_id", "ts"])
    op.create_index("ix_impressions_experiment", "impressions", ["experiment", "variant"])
    with op.batch_alter_table("events") as batch:
        batch.add_column(sa.Column("recommendation_id", sa.String(ID), nullable=True))
    op.create_index("ix_events_recommendation_id", "events", ["recommendation_id"])


def downgrade() -> None:
    op.drop_index("ix_events_recommendation_id", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("recommendation_id")
    op.drop_table("impressions")
    op.drop_table("experiments")
    op.drop_table("placements")
