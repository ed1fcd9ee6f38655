"""tiers: per-instance tier, series access statistics and cold bundles, lifecycle jobs, volumes

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-23 22:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("tier", sa.String(length=8), nullable=False, server_default="hot")
        )

    op.create_table(
        "series_tiers",
        sa.Column("series_pk", sa.Integer(), nullable=False),
        sa.Column("last_access_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("access_count", sa.Integer(), nullable=False),
        sa.Column("cold_key", sa.String(length=255), nullable=False),
        sa.Column("cold_sha256", sa.String(length=64), nullable=False),
        sa.Column("cold_bytes", sa.BigInteger(), nullable=False),
        sa.Column("plain_bytes", sa.BigInteger(), nullable=False),
        sa.Column("cold_instances", sa.Integer(), nullable=False),
        sa.Column("tiered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("restored_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["series_pk"],
            ["series.pk"],
            name=op.f("fk_series_tiers_series_pk_series"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("series_pk", name=op.f("pk_series_tiers")),
    )
    op.create_index(
        op.f("ix_series_tiers_last_access_at"), "series_tiers", ["last_access_at"], unique=False
    )

    op.create_table(
        "lifecycle_jobs",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("target", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_lifecycle_jobs")),
    )
    op.create_index(op.f("ix_lifecycle_jobs_state"), "lifecycle_jobs", ["state"], unique=False)
    op.create_index(
        "ix_lifecycle_jobs_kind_target", "lifecycle_jobs", ["kind", "target", "state"], unique=False
    )

    op.create_table(
        "blob_volumes",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(length=1024), nullable=False),
        sa.Column("tier", sa.String(length=8), nullable=False),
        sa.Column("writable", sa.Boolean(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("added_by", sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_blob_volumes")),
        sa.UniqueConstraint("url", name=op.f("uq_blob_volumes_url")),
    )


def downgrade() -> None:
    op.drop_table("blob_volumes")
    op.drop_index("ix_lifecycle_jobs_kind_target", table_name="lifecycle_jobs")
    op.drop_index(op.f("ix_lifecycle_jobs_state"), table_name="lifecycle_jobs")
    op.drop_table("lifecycle_jobs")
    op.drop_index(op.f("ix_series_tiers_last_access_at"), table_name="series_tiers")
    op.drop_table("series_tiers")
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("tier")
