"""dashboard: event_counts (per-minute rollup of ingested events), dashboard_secret, events(item_id) and impressions(item_id) indexes

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(  # append-only deltas (one row per batch, minute and type): no hot row to wait on
        "event_counts",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("compacted", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_event_counts")),
    )
    op.create_index("ix_event_counts_bucket_start", "event_counts", ["bucket_start"])
    # one compacted row per (minute, type): what `compact_event_counts` folds the settled deltas into
    op.create_index(
        "uq_event_counts_compacted",
        "event_counts",
        ["bucket_start", "type"],
        unique=True,
        postgresql_where=sa.text("compacted"),
        sqlite_where=sa.text("compacted"),
    )
    op.create_table(
        "dashboard_secret",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dashboard_secret")),
    )
    op.create_index("ix_events_item_id", "events", ["item_id", "type"])
    op.create_index("ix_impressions_item_id", "impressions", ["item_id"])
    # the events already stored, so the charts start complete (one pass, at upgrade time only)
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            "INSERT INTO event_counts (bucket_start, type, count) "
            "SELECT date_trunc('minute', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', type, count(*) "
            "FROM events GROUP BY 1, 2"
        )
    else:
        op.execute(
            "INSERT INTO event_counts (bucket_start, type, count) "
            "SELECT strftime('%Y-%m-%d %H:%M:00.000000', ts), type, count(*) FROM events GROUP BY 1, 2"
        )


def downgrade() -> None:
    op.drop_index("ix_impressions_item_id", table_name="impressions")
    op.drop_index("ix_events_item_id", table_name="events")
    op.drop_table("dashboard_secret")
    op.drop_table("event_counts")
