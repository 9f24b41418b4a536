"""turnaround targets, reminders and escalations, self-test probes

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issues") as batch:
        batch.add_column(sa.Column("first_response_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("first_response_seconds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("resolution_seconds", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("breached_at", sa.DateTime(timezone=True), nullable=True))
    op.create_table(
        "issue_pauses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), sa.ForeignKey("issues.id", name="fk_issue_pauses_issue_id_issues"),
                  nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_issue_pauses"),
    )
    op.create_index("ix_issue_pauses_issue_id", "issue_pauses", ["issue_id"])
    op.create_table(
        "turnaround_notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(),
                  sa.ForeignKey("issues.id", name="fk_turnaround_notices_issue_id_issues"), nullable=False),
        sa.Column("target", sa.String(length=20), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("elapsed_seconds", sa.Integer(), nullable=False),
        sa.Column("target_seconds", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_turnaround_notices"),
        sa.UniqueConstraint("issue_id", "target", "kind", name="uq_turnaround_notices_once"),
    )
    op.create_index("ix_turnaround_notices_issue_id", "turnaround_notices", ["issue_id"])
    op.create_table(
        "selftest_probes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token", sa.String(length=64), nullable=False),
        sa.Column("mailbox", sa.String(length=100), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("trigger", sa.String(length=20), nullable=False),
        sa.Column("outbox_id", sa.Integer(), sa.ForeignKey("outbox.id", name="fk_selftest_probes_outbox_id_outbox"),
                  nullable=True),
        sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("returned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("returned_via", sa.String(length=20), nullable=True),
        sa.Column("round_trip", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_selftest_probes"),
        sa.UniqueConstraint("token", name="uq_selftest_probes_token"),
    )
    op.create_index("ix_selftest_probes_address", "selftest_probes", ["address", "queued_at"])
    op.create_table(
        "selftest_alerts",
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("mailbox", sa.String(length=100), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("address", name="pk_selftest_alerts"),
    )


def downgrade() -> None:
    op.drop_table("selftest_alerts")
    op.drop_index("ix_selftest_probes_address", table_name="selftest_probes")
    op.drop_table("selftest_probes")
    op.drop_index("ix_turnaround_notices_issue_id", table_name="turnaround_notices")
    op.drop_table("turnaround_notices")
    op.drop_index("ix_issue_pauses_issue_id", table_name="issue_pauses")
    op.drop_table("issue_pauses")
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("breached_at")
        batch.drop_column("resolution_seconds")
        batch.drop_column("first_response_seconds")
        batch.drop_column("first_response_at")
