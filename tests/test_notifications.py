"""Notifications with context, end to end over SMTP: what a rep reads of a
case (status, assignee, priority, category, the customer and their open
issues, the new text, a digest of the earlier interactions), one thread per
issue in the rep's mail client, the rep's reply still threaded into the
customer's conversation, and notices to reps kept apart from the
interactions (the correspondence with the customer) in `maild issues show`.
"""

from __future__ import annotations

import email
import email.policy
import time

import pytest

from conftest import SECRET, Cli
from desk_helpers import Desk, mail, text_of

CUSTOMER = "Pat Customer <pat@example.com>"
ROOT = "<issue-{n}.root@maild.acme.test>"


@pytest.fixture
def desk(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    with Desk(tmp_path, db_url) as d:
        d.cli = Cli(d.config)
        yield d


def test_notifications_of_one_issue_share_a_thread_root_and_carry_the_case(desk):
    first = mail(CUSTOMER, "support@acme.test", "Printer on fire", "My printer is on fire.")
    desk.send(first)
    desk.send(mail(CUSTOMER, "support@acme.test", "Invoice twice", "You billed me twice."))  # another open issue
    (new,) = desk.to("alice@acme.test", subject="Printer on fire")
    reply_to = new["Reply-To"].addresses[0].addr_spec
    desk.send(mail("Alice <alice@acme.test>", reply_to, "Re: Printer on fire",
                   "#priority high\n#take\nPlease unplug it now."))
    (answer,) = desk.to("pat@example.com")
    # The rep's reply still continues the customer's own conversation.
    assert answer["In-Reply-To"] == first["Message-ID"] and first["Message-ID"] in answer["References"]
    desk.send(mail(CUSTOMER, "support@acme.test", "Re: " + str(answer["Subject"]), "Unplugged, it still smokes.",
                   in_reply_to=answer["Message-ID"]))
    again = desk.to("alice@acme.test", n=2, subject="Printer on fire")[1]
    assert "still smokes" in text_of(again)

    root = ROOT.format(n=1)
    for m in (new, again):  # the same root, never the customer's Message-ID the rep never got
        assert m["In-Reply-To"] == root and m["References"].split()[0] == root
        assert first["Message-ID"] not in (m["References"] or "")
        assert "[#1]" in m["Subject"]
    (other,) = desk.to("alice@acme.test", subject="Invoice twice")
    assert other["In-Reply-To"] == ROOT.format(n=2)

    text = text_of(again)
    assert "Issue #1 · open · high priority · uncategorized · assigned to Alice" in text
    assert "Customer: Pat Customer <pat@example.com> · 2 open issues" in text
    digest = text[text.index("Earlier on this issue:"):]
    assert "Pat Customer (inbound): My printer is on fire." in digest
    assert "(to the customer): Please unplug it now." in digest
    assert "Unplugged" not in digest  # the new text is above, not in the digest
    first_text = text_of(new)
    assert "nobody has taken it" in first_text and "normal priority" in first_text
    assert "Earlier on this issue" not in first_text


def test_issues_show_lists_notices_to_reps_apart_from_the_interactions(desk):
    desk.send(mail(CUSTOMER, "support@acme.test", "Printer on fire", "My printer is on fire."))
    desk.to("alice@acme.test")
    desk.to("bob@acme.test")
    deadline = time.monotonic() + 30
    shown = desk.cli.json("issues", "show", "1")
    while {n["status"] for n in shown["notices"]} != {"sent"}:  # the sender records results a moment later
        assert time.monotonic() < deadline, shown["notices"]
        time.sleep(0.1)
        shown = desk.cli.json("issues", "show", "1")
    # Only the correspondence with the customer is an interaction (acknowledgements are off here).
    assert [(i["direction"], i["from"]) for i in shown["interactions"]] == [("inbound", "pat@example.com")]
    notices = shown["notices"]
    assert sorted(n["to"][0] for n in notices) == ["alice@acme.test", "bob@acme.test"]
    assert {n["kind"] for n in notices} == {"notification"}
    assert all(n["subject"] == "Printer on fire [#1]" and n["created"] and n["id"] for n in notices)
    (listed,) = desk.cli.json("issues", "list")
    assert listed["interactions"] == 1

    text = desk.cli("issues", "show", "1").output
    interactions, notices_text = text.split("Notices to reps")
    assert "inbound email from Pat Customer <pat@example.com>" in interactions
    assert "alice@acme.test" not in interactions
    assert "notification" in notices_text and "to alice@acme.test" in notices_text and "to bob@acme.test" in notices_text


def test_upgrading_moves_earlier_notices_out_of_the_interactions(db_url):
    """A database from before notices were kept apart: migration 0006 leaves the customer's mail and
    the acknowledgement as interactions, and the notification becomes an outbox row with its subject."""
    from alembic import command
    from sqlalchemy import text

    from maild.db import make_engine, migrate
    from test_db import _alembic

    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(_alembic(conn), "0005")
        conn.execute(text("INSERT INTO categories (id, name, description) VALUES (1, 'uncategorized', '')"))
        conn.execute(text("INSERT INTO issues (id, status, category_id, priority, mailbox, subject, tags, cc, "
                          "opened_at, updated_at) VALUES (1, 'open', 1, 'normal', 'support', 'Printer', '[]', '[]', "
                          "CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"))
        for iid, direction, subject in ((1, "inbound", "Printer"), (2, "outbound", "Re: Printer [#1]"),
                                        (3, "internal", "Printer [#1]")):
            conn.execute(text(
                "INSERT INTO interactions (id, direction, channel, mailbox, from_name, \"to\", cc, subject, references, "
                "full_text, new_text, auto_generated, defects, created_at) VALUES (:id, :d, 'email', 'support', '', "
                "'[]', '[]', :s, '[]', '', '', false, '[]', CURRENT_TIMESTAMP)".replace("references", '"references"')),
                {"id": iid, "d": direction, "s": subject})
            conn.execute(text("INSERT INTO actions (issue_id, interaction_id, created_at) "
                              "VALUES (1, :id, CURRENT_TIMESTAMP)"), {"id": iid})
        for oid, iid, to_customer in ((1, 2, True), (2, 3, False)):
            conn.execute(text(
                "INSERT INTO outbox (id, kind, mailbox, issue_id, interaction_id, envelope_from, recipients, "
                "recipient_key, message_id, data, auto, to_customer, status, attempts, next_attempt_at, deadline_at, "
                "created_at, resends) VALUES (:o, 'x', 'support', 1, :i, 'support@acme.test', '[]', 'k', :m, :b, "
                "true, :c, 'sent', 1, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 0)"),
                {"o": oid, "i": iid, "m": f"m{oid}@maild.acme.test", "b": b"", "c": to_customer})
    migrate(engine)
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(text("SELECT interaction_id FROM actions ORDER BY interaction_id"))] == [1, 2]
        assert conn.execute(text("SELECT count(*) FROM interactions")).scalar() == 2
        rows = conn.execute(text("SELECT id, interaction_id, subject FROM outbox ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, 2, "Re: Printer [#1]"), (2, None, "Printer [#1]")]
    engine.dispose()


def test_a_follow_up_in_the_same_batch_is_told_with_what_the_first_mail_caused(app):
    """One batch, one transaction: the second mail's notification digests the first mail and
    the acknowledgement queued for it, though nothing was written between the two."""
    from sqlalchemy import select

    from maild.ingest.intake import Incoming, accept
    from maild.models import OutboxMessage
    from test_pipeline import mail as raw_mail

    first = raw_mail(subject="Printer on fire", body="My printer is on fire.", msgid="<p1@example.com>")
    second = raw_mail(subject="Re: Printer on fire", body="Now it smokes.", msgid="<p2@example.com>",
                      in_reply_to="<p1@example.com>")
    ids = [accept(app.sessions, Incoming(raw, "support", "smtp")).raw_id for raw in (first, second)]
    one, two = app.pipeline.process(ids)
    assert one.stored.issue_id == two.stored.issue_id and two.stored.new_issue is False
    with app.sessions() as s:
        rows = s.scalars(select(OutboxMessage).where(OutboxMessage.to_customer.is_(False))
                         .order_by(OutboxMessage.id)).all()
        texts = [text_of(email.message_from_bytes(r.data, policy=email.policy.default))
                 for r in rows if r.recipients == ["alice@acme.test"]]
    assert len(texts) == 2 and "Earlier on this issue" not in texts[0]
    digest = texts[1][texts[1].index("Earlier on this issue:"):]
    assert "(inbound): My printer is on fire." in digest
    assert "(to the customer)" in digest  # the acknowledgement of the first mail
    assert "Now it smokes" not in digest
