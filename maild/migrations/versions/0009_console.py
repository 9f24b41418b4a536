"""web console sign-in links and sessions, digest bookkeeping

Revision ID: 0009
Revises: 0008
"""

from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401

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


def downgrade() -> None:
    # -- web console sign-in --
    op.drop_index(op.f("ix_signin_links_rep_id"), table_name="signin_links")
    op.drop_table("signin_links")
    # -- end of web console sign-in --
