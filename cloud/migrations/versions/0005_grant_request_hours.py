"""grant requests keep the length of the grant they ask for

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 19:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("grant_requests", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("valid_hours", sa.Integer(), nullable=False, server_default="24")
        )


def downgrade() -> None:
    with op.batch_alter_table("grant_requests", schema=None) as batch_op:
        batch_op.drop_column("valid_hours")
