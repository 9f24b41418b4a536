"""issue search index, picklists on actions, merges and order/gift references

The search index is kept in step by triggers, so every writer (the ingest
store stage, the outbox recording mail, a rep's note, a merge) updates it
without knowing it exists. SQLite: an FTS5 table over the interactions'
subject and new text (external content: the text is not stored twice).
PostgreSQL: a tsvector column filled by a trigger, with a GIN index.

Revision ID: 0008
Revises: 0007
"""

from alembic import op
import sqlalchemy as sa

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# PostgreSQL refuses a tsvector over 1 MB: only this much of one interaction's text is indexed.
PG_INDEXED_CHARS = 200_000

_SQLITE_UP = [
    "CREATE VIRTUAL TABLE interaction_fts USING fts5("
    "subject, new_text, content='interactions', content_rowid='id', "
    "tokenize='unicode61 remove_diacritics 2')",
    "CREATE TRIGGER interaction_fts_insert AFTER INSERT ON interactions BEGIN "
    "INSERT INTO interaction_fts(rowid, subject, new_text) VALUES (new.id, new.subject, new.new_text); END",
    "CREATE TRIGGER interaction_fts_delete AFTER DELETE ON interactions BEGIN "
    "INSERT INTO interaction_fts(interaction_fts, rowid, subject, new_text) "
    "VALUES ('delete', old.id, old.subject, old.new_text); END",
    "CREATE TRIGGER interaction_fts_update AFTER UPDATE OF subject, new_text ON interactions BEGIN "
    "INSERT INTO interaction_fts(interaction_fts, rowid, subject, new_text) "
    "VALUES ('delete', old.id, old.subject, old.new_text); "
    "INSERT INTO interaction_fts(rowid, subject, new_text) VALUES (new.id, new.subject, new.new_text); END",
    "INSERT INTO interaction_fts(interaction_fts) VALUES ('rebuild')",
]
_SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS interaction_fts_update",
    "DROP TRIGGER IF EXISTS interaction_fts_delete",
    "DROP TRIGGER IF EXISTS interaction_fts_insert",
    "DROP TABLE IF EXISTS interaction_fts",
]

_PG_VECTOR = (
    "setweight(to_tsvector('simple', coalesce({row}.subject, '')), 'A') || "
    f"setweight(to_tsvector('simple', left(coalesce({{row}}.new_text, ''), {PG_INDEXED_CHARS})), 'B')"
)
_PG_UP = [
    "ALTER TABLE interactions ADD COLUMN search_vector tsvector",
    "CREATE FUNCTION interactions_search_vector() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    f"new.search_vector := {_PG_VECTOR.format(row='new')}; RETURN new; END $$",
    "CREATE TRIGGER interactions_search_vector BEFORE INSERT OR UPDATE OF subject, new_text ON interactions "
    "FOR EACH ROW EXECUTE FUNCTION interactions_search_vector()",
    f"UPDATE interactions SET search_vector = {_PG_VECTOR.format(row='interactions')}",
    "CREATE INDEX ix_interactions_search_vector ON interactions USING gin (search_vector)",
]
_PG_DOWN = [
    "DROP INDEX IF EXISTS ix_interactions_search_vector",
    "DROP TRIGGER IF EXISTS interactions_search_vector ON interactions",
    "DROP FUNCTION IF EXISTS interactions_search_vector()",
    "ALTER TABLE interactions DROP COLUMN IF EXISTS search_vector",
]


def upgrade() -> None:
    # A plain ADD COLUMN (with its REFERENCES) on both backends: no rebuild of the issues table.
    if op.get_bind().dialect.name == "sqlite":  # Alembic would rebuild the table for the constraint
        op.execute("ALTER TABLE issues ADD COLUMN merged_into_id INTEGER REFERENCES issues (id)")
    else:
        op.add_column("issues", sa.Column(
            "merged_into_id", sa.Integer(), sa.ForeignKey("issues.id", name="fk_issues_merged_into_id_issues"),
            nullable=True))
    op.create_index("ix_issues_merged_into_id", "issues", ["merged_into_id"])
    op.create_index("ix_issues_order_id", "issues", ["order_id"])
    op.create_index("ix_issues_gift_certificate_id", "issues", ["gift_certificate_id"])
    op.create_table(
        "action_picks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("action_id", sa.Integer(), nullable=False),
        sa.Column("picklist", sa.String(length=50), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["action_id"], ["actions.id"], name="fk_action_picks_action_id_actions"),
        sa.PrimaryKeyConstraint("id", name="pk_action_picks"),
        sa.UniqueConstraint("action_id", "picklist", "value", name="uq_action_picks_pick"),
    )
    op.create_index("ix_action_picks_picklist_value", "action_picks", ["picklist", "value"])
    for statement in _PG_UP if op.get_bind().dialect.name == "postgresql" else _SQLITE_UP:
        op.execute(statement)


def downgrade() -> None:
    for statement in _PG_DOWN if op.get_bind().dialect.name == "postgresql" else _SQLITE_DOWN:
        op.execute(statement)
    op.drop_index("ix_action_picks_picklist_value", table_name="action_picks")
    op.drop_table("action_picks")
    op.drop_index("ix_issues_gift_certificate_id", table_name="issues")
    op.drop_index("ix_issues_order_id", table_name="issues")
    op.drop_index("ix_issues_merged_into_id", table_name="issues")
    with op.batch_alter_table("issues") as batch:
        batch.drop_column("merged_into_id")
