"""The adapter registry: every LoRA version and which one is live.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adapter_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("base_model", sa.String(length=256), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("parent", sa.String(length=64), nullable=True),
        sa.Column("training_run_id", sa.Integer(), nullable=True),
        sa.Column("data_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("data_to", sa.DateTime(timezone=True), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("replaced", sa.String(length=64), nullable=True),
        sa.Column("note", sa.String(length=1024), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("promoted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adapter_versions")),
        sa.UniqueConstraint("name", name=op.f("uq_adapter_versions_name")),
    )
    with op.batch_alter_table("adapter_versions") as batch:
        batch.create_index(batch.f("ix_adapter_versions_status"), ["status"])
        # At most one live version per base model, enforced by the database itself.
        batch.create_index("uq_adapter_versions_one_live", ["base_model"], unique=True,
                           sqlite_where=sa.text("status = 'live'"),
                           postgresql_where=sa.text("status = 'live'"))


def downgrade() -> None:
    op.drop_table("adapter_versions")
