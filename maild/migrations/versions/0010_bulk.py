"""site facts on identification records, campaigns, opt-outs, gift certificates

Revision ID: 0010
Revises: 0009
"""

from alembic import op
import sqlalchemy as sa

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("last_visit", sa.Date(), nullable=True))
        batch.add_column(sa.Column("total_spent", sa.Numeric(14, 2), nullable=True))
        batch.add_column(sa.Column("currency", sa.String(length=3), nullable=True))
        batch.add_column(sa.Column("opted_out_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_customers_last_visit", "customers", ["last_visit"])
    op.create_table(
        "customer_site_facts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("value", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"],
                                name="fk_customer_site_facts_customer_id_customers"),
        sa.PrimaryKeyConstraint("id", name="pk_customer_site_facts"),
        sa.UniqueConstraint("customer_id", "kind", "value", name="uq_customer_site_facts_fact"),
    )
    op.create_index("ix_customer_site_facts_customer_id", "customer_site_facts", ["customer_id"])
    op.create_index("ix_customer_site_facts_kind_value", "customer_site_facts", ["kind", "value"])
    op.create_table(
        "campaigns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("template", sa.String(length=100), nullable=False),
        sa.Column("mailbox", sa.String(length=100), nullable=False),
        sa.Column("segment", sa.JSON(), nullable=False),
        sa.Column("excluded", sa.JSON(), nullable=False),
        sa.Column("gift_amount", sa.Numeric(12, 2), nullable=True),
        sa.Column("gift_currency", sa.String(length=3), nullable=True),
        sa.Column("gift_expires", sa.Date(), nullable=True),
        sa.Column("rate", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_campaigns"),
    )
    op.create_table(
        "campaign_recipients",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("campaign_id", sa.Integer(), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("address_key", sa.String(length=320), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("outbox_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], name="fk_campaign_recipients_campaign_id_campaigns"),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], name="fk_campaign_recipients_customer_id_customers"),
        sa.ForeignKeyConstraint(["issue_id"], ["issues.id"], name="fk_campaign_recipients_issue_id_issues"),
        sa.ForeignKeyConstraint(["outbox_id"], ["outbox.id"], name="fk_campaign_recipients_outbox_id_outbox"),
        sa.PrimaryKeyConstraint("id", name="pk_campaign_recipients"),
        sa.UniqueConstraint("campaign_id", "customer_id", name="uq_campaign_recipients_customer"),
        sa.UniqueConstraint("campaign_id", "address_key", name="uq_campaign_recipients_address"),
    )
    op.create_index("ix_campaign_recipients_state", "campaign_recipients", ["campaign_id", "state", "id"])
    op.create_index("ix_campaign_recipients_customer_id", "campaign_recipients", ["customer_id"])
    op.create_table(
        "gift_certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("amount", sa.Numeric(12, 2), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("expires", sa.Date(), nullable=True),
        sa.Column("campaign_id", sa.Integer(), nullable=True),
        sa.Column("customer_id", sa.Integer(), nullable=False),
        sa.Column("issue_id", sa.Integer(), nullable=True),
        sa.Column("email", sa.String(length=320), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("voided_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["campaign_id"], ["campaigns.id"], name="fk_gift_certificates_campaign_id_campaigns"),
        sa.ForeignKeyConstraint(["customer_id"], ["customers.id"], name="fk_gift_certificates_customer_id_customers"),
        sa.ForeignKeyConstraint(["issue_id"], ["issues.id"], name="fk_gift_certificates_issue_id_issues"),
        sa.PrimaryKeyConstraint("id", name="pk_gift_certificates"),
        sa.UniqueConstraint("code", name="uq_gift_certificates_code"),
    )
    op.create_index("ix_gift_certificates_campaign_id", "gift_certificates", ["campaign_id"])
    op.create_index("ix_gift_certificates_customer_id", "gift_certificates", ["customer_id"])


def downgrade() -> None:
    op.drop_table("gift_certificates")
    op.drop_table("campaign_recipients")
    op.drop_table("campaigns")
    op.drop_table("customer_site_facts")
    op.drop_index("ix_customers_last_visit", table_name="customers")
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("opted_out_at")
        batch.drop_column("currency")
        batch.drop_column("total_spent")
        batch.drop_column("last_visit")
