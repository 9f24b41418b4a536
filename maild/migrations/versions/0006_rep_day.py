"""a rep's working day by mail (attachments, desk addresses, assignment, pending life cycle)

Revision ID: 0006
Revises: 0005
"""

from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


# --- notices to reps are outbox rows, not interactions (issue 15, part A) ---------

_outbox = sa.table("outbox", sa.column("id", sa.Integer), sa.column("interaction_id", sa.Integer),
                   sa.column("to_customer", sa.Boolean), sa.column("subject", sa.Text))
_interactions = sa.table("interactions", sa.column("id", sa.Integer), sa.column("subject", sa.Text),
                         sa.column("direction", sa.String), sa.column("channel", sa.String),
                         sa.column("raw_message_id", sa.Integer))
_actions = sa.table("actions", sa.column("interaction_id", sa.Integer))


def _notices_upgrade() -> None:
    """outbox.subject; earlier notices to reps stop being interactions (their subject moves to the row)."""
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("subject", sa.Text(), nullable=True))
    notice_ids = (
        sa.select(_outbox.c.interaction_id)
        .join(_interactions, _interactions.c.id == _outbox.c.interaction_id)
        .where(_outbox.c.to_customer == sa.false(), _interactions.c.direction == "internal",
               _interactions.c.channel == "email", _interactions.c.raw_message_id.is_(None))
    )
    ids = [r[0] for r in op.get_bind().execute(notice_ids)]
    subject = sa.select(_interactions.c.subject).where(_interactions.c.id == _outbox.c.interaction_id).scalar_subquery()
    op.execute(_outbox.update().where(_outbox.c.interaction_id.is_not(None)).values(subject=subject))
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        op.execute(_actions.delete().where(_actions.c.interaction_id.in_(chunk)))
        op.execute(_outbox.update().where(_outbox.c.interaction_id.in_(chunk)).values(interaction_id=None))
        op.execute(_interactions.delete().where(_interactions.c.id.in_(chunk)))


def _notices_downgrade() -> None:
    """Drops outbox.subject; notices sent meanwhile stay outbox rows only."""
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("subject")


# --- end of part A -----------------------------------------------------------------


def upgrade() -> None:
    _notices_upgrade()


def downgrade() -> None:
    _notices_downgrade()
