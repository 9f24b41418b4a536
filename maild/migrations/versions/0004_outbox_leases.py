"""outbox leases: the sender that owns a row and until when, ambiguous resends, per-recipient results

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("resends", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("results", sa.JSON(), nullable=True))
    # Rows a sender of the old kind left "sending" have no lease: they count
    # as expired, so the new sender resends them once, as the old one would.


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("results")
        batch.drop_column("resends")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
