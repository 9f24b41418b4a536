"""web console sign-in links and sessions, digest bookkeeping

Revision ID: 0009
Revises: 0008
"""

from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # -- web console sign-in (maild/web/signin.py): one row per mailed link --
    op.create_table(
        "signin_links",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("rep_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["rep_id"], ["reps.id"], name=op.f("fk_signin_links_rep_id_reps")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_signin_links")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_signin_links_token_hash")),
    )
    op.create_index(op.f("ix_signin_links_rep_id"), "signin_links", ["rep_id"], unique=False)
    # -- end of web console sign-in --
    # -- reports and digest (maild/reports/): canned-response uses, digest periods sent --
    op.create_table(
        "canned_uses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=False),
        sa.Column("interaction_id", sa.Integer(), nullable=True),
        sa.Column("rep_id", sa.Integer(), nullable=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["issue_id"], ["issues.id"], name=op.f("fk_canned_uses_issue_id_issues")),
        sa.ForeignKeyConstraint(["interaction_id"], ["interactions.id"],
                                name=op.f("fk_canned_uses_interaction_id_interactions")),
        sa.ForeignKeyConstraint(["rep_id"], ["reps.id"], name=op.f("fk_canned_uses_rep_id_reps")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_canned_uses")),
    )
    op.create_index(op.f("ix_canned_uses_issue_id"), "canned_uses", ["issue_id"], unique=False)
    op.create_index(op.f("ix_canned_uses_used_at"), "canned_uses", ["used_at"], unique=False)
    op.create_table(
        "digest_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=100), nullable=False),
        sa.Column("period", sa.String(length=40), nullable=False),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"], name=op.f("fk_digest_runs_outbox_id_outbox")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_digest_runs")),
        sa.UniqueConstraint("digest", "period", name="uq_digest_runs_period"),
    )
    # Reports filter issues by the day they opened or closed, interactions by the day recorded.
    op.create_index("ix_issues_opened_at", "issues", ["opened_at"], unique=False)
    op.create_index("ix_issues_closed_at", "issues", ["closed_at"], unique=False)
    op.create_index("ix_interactions_created_at", "interactions", ["created_at"], unique=False)
    # -- end of reports and digest --


def downgrade() -> None:
    # -- reports and digest --
    op.drop_index("ix_interactions_created_at", table_name="interactions")
    op.drop_index("ix_issues_closed_at", table_name="issues")
    op.drop_index("ix_issues_opened_at", table_name="issues")
    op.drop_table("digest_runs")
    op.drop_index(op.f("ix_canned_uses_used_at"), table_name="canned_uses")
    op.drop_index(op.f("ix_canned_uses_issue_id"), table_name="canned_uses")
    op.drop_table("canned_uses")
    # -- end of reports and digest --
    # -- web console sign-in --
    op.drop_index(op.f("ix_signin_links_rep_id"), table_name="signin_links")
    op.drop_table("signin_links")
    # -- end of web console sign-in --
