"""one raw message per deployment: dedupe across mailboxes, later copies recorded

Revision ID: 0005
Revises: 0004

The same Message-ID delivered for two mailboxes (SMTP for one, IMAP from the
other) used to be stored twice, under each mailbox. From here on the dedupe
key alone is unique and a later copy is a row in raw_message_copies. Copies
stored twice before this revision keep their rows and interactions: all but
the first get a dedupe key of their own ("copy:ID:KEY") so the constraint holds.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "raw_message_copies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("raw_message_id", sa.Integer(), nullable=False),
        sa.Column("mailbox", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=20), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["raw_message_id"], ["raw_messages.id"],
                                name=op.f("fk_raw_message_copies_raw_message_id_raw_messages")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_raw_message_copies")),
        sa.UniqueConstraint("raw_message_id", "mailbox", "source", name="uq_raw_message_copies_copy"),
    )
    raw = sa.table("raw_messages", sa.column("id", sa.Integer), sa.column("dedupe_key", sa.String))
    firsts = sa.select(sa.func.min(raw.c.id)).group_by(raw.c.dedupe_key)
    conn = op.get_bind()
    later = conn.execute(sa.select(raw.c.id, raw.c.dedupe_key).where(raw.c.id.not_in(firsts))).all()
    for raw_id, key in later:
        conn.execute(raw.update().where(raw.c.id == raw_id).values(dedupe_key=f"copy:{raw_id}:{key}"[:255]))
    with op.batch_alter_table("raw_messages") as batch:
        batch.drop_constraint("uq_raw_messages_dedupe", type_="unique")
        batch.create_unique_constraint("uq_raw_messages_dedupe_key", ["dedupe_key"])


def downgrade() -> None:
    with op.batch_alter_table("raw_messages") as batch:
        batch.drop_constraint("uq_raw_messages_dedupe_key", type_="unique")
        batch.create_unique_constraint("uq_raw_messages_dedupe", ["mailbox", "dedupe_key"])
    op.drop_table("raw_message_copies")
