"""Merging two issues and splitting one: every interaction kept, and threading follows.

Real mail through the intake and pipeline on SQLite and PostgreSQL; the
merge by `maild issues merge` and by a rep's `#merge`, the split by a rep's
`#split` answering the notification of the customer's mail.
"""

from __future__ import annotations

from sqlalchemy import select

from maild.models import OutboxMessage
from test_rep_commands import deliver, outbox, rep_mail
from test_search import conversation, mail


def interaction_ids(cli, issue_id: int) -> list[int]:
    return [i["id"] for i in cli.json("issues", "show", str(issue_id))["interactions"]]


def acknowledgement_of(app, issue_id: int) -> str:
    with app.sessions() as s:
        return s.scalar(select(OutboxMessage.message_id).where(
            OutboxMessage.issue_id == issue_id, OutboxMessage.kind == "acknowledgement"))


def test_merge_moves_every_interaction_and_replies_to_the_old_issue_land_on_the_target(app, cli):
    a = conversation(app, "Pat <pat@example.com>", "Broken kettle", ["It leaks.", "Still leaking."])
    b = conversation(app, "Pat <pat@example.com>", "Kettle again", ["About my kettle: it leaks."])
    ack_a = acknowledgement_of(app, a)  # recorded on A before the merge
    before = set(interaction_ids(cli, a)) | set(interaction_ids(cli, b))
    r = cli("issues", "merge", str(a), str(b))
    assert r.exit_code == 0 and f"merged issue #{a} into #{b}" in r.output
    assert set(interaction_ids(cli, b)) == before and interaction_ids(cli, a) == []
    merged = cli.json("issues", "show", str(a))
    assert (merged["status"], merged["merged_into"]) == ("merged", b)
    assert [i["id"] for i in cli.json("issues", "list")] == [b]  # a pointer is not a case to work on
    assert [i["id"] for i in cli.json("issues", "list", "--status", "merged")] == [a]
    # The customer answers the acknowledgement of A; a rep answers A's notification (its token names A).
    raw, _ = mail("Pat <pat@example.com>", f"Re: Broken kettle [#{a}]", "Any news?", in_reply_to=ack_a)
    assert deliver(app, raw).issue_id == b
    rep_mail_on_merged = deliver_rep_token(app, a)
    assert rep_mail_on_merged == b
    assert cli.json("issues", "search", "news")[0]["id"] == b
    r = cli("issues", "merge", str(a), str(b))
    assert r.exit_code == 1 and f"issue #{a} was already merged into #{b}" in r.output
    assert cli("issues", "merge", str(b), str(b)).exit_code == 1
    assert cli("issues", "merge", str(b), "999").exit_code == 1


def deliver_rep_token(app, issue_id: int) -> int | None:
    """Bob's mail to the signed reply address of an issue: where it lands."""
    from test_rep_commands import _mail, rep_id

    address = app.signer.address("support@acme.test", issue_id, rep_id(app, "bob@acme.test"), "reply")
    raw = _mail("bob@acme.test", address, f"Re: [#{issue_id}] kettle", "#note\nChecked the stock.")
    return deliver(app, raw, envelope_to=(address,)).issue_id


def test_merge_by_mail(app, cli):
    a = conversation(app, "Pat <pat@example.com>", "Order late", ["Where is it?"])
    b = conversation(app, "Pat <pat@example.com>", "Order still late", ["Still waiting."])
    rep_mail(app, a, f"#tag shipping\n#merge {b}")
    assert interaction_ids(cli, a) == []
    shown = cli.json("issues", "show", str(b))
    assert "shipping" in shown["tags"] and len(shown["interactions"]) >= 3
    before = outbox(app)
    rep_mail(app, b, f"#merge {a}")  # into a pointer: refused, nothing changes, the rep is told
    notice = outbox(app)[len(before):][-1]
    assert notice["kind"] == "rep-notice" and f"issue #{a} was already merged into #{b}" in notice["body"]


def test_split_starts_a_new_issue_from_the_mail_the_rep_answers(app, cli):
    raw, first = mail("Pat <pat@example.com>", "Two things", "My invoice is wrong.")
    a = deliver(app, raw).issue_id
    raw, _ = mail("Pat <pat@example.com>", "Re: Two things", "Also the parcel is damaged.", in_reply_to=first)
    second_stored = deliver(app, raw)
    assert second_stored.issue_id == a
    with app.sessions() as s:
        notification = s.scalar(select(OutboxMessage.message_id).where(
            OutboxMessage.issue_id == a, OutboxMessage.kind == "notification",
            OutboxMessage.rep_id.is_not(None)).order_by(OutboxMessage.id.desc()).limit(1))
    before = interaction_ids(cli, a)
    from test_rep_commands import _mail, rep_id

    address = app.signer.address("support@acme.test", a, rep_id(app, "alice@acme.test"), "reply")
    raw = _mail("alice@acme.test", address, "Re: Two things", "#split\n#note\n", in_reply_to=f"<{notification}>")
    deliver(app, raw, envelope_to=(address,))
    issues = cli.json("issues", "list")
    (new,) = [i for i in issues if i["id"] != a]
    split = cli.json("issues", "show", str(new["id"]))
    assert second_stored.interaction_id in [i["id"] for i in split["interactions"]]
    assert split["subject"] == "Re: Two things" and split["customer"] == "pat@example.com"
    assert set(before) <= set(interaction_ids(cli, a))  # nothing left the first issue
    # Without a mail to answer, #split says what to do.
    old = outbox(app)
    rep_mail(app, a, "#split")
    assert "reply to the notification of the message to split off" in outbox(app)[len(old):][-1]["body"]


def test_after_a_split_the_customer_s_reply_to_the_split_off_mail_lands_on_the_new_issue(app, cli):
    raw, first = mail("Pat <pat@example.com>", "Two things", "My invoice is wrong.")
    a = deliver(app, raw).issue_id
    raw, second = mail("Pat <pat@example.com>", "Re: Two things", "Also the parcel is damaged.", in_reply_to=first)
    deliver(app, raw)
    with app.sessions() as s:
        notification = s.scalar(select(OutboxMessage.message_id).where(
            OutboxMessage.issue_id == a, OutboxMessage.kind == "notification",
            OutboxMessage.rep_id.is_not(None)).order_by(OutboxMessage.id.desc()).limit(1))
    from test_rep_commands import _mail, rep_id

    address = app.signer.address("support@acme.test", a, rep_id(app, "alice@acme.test"), "reply")
    deliver(app, _mail("alice@acme.test", address, "Re: Two things", "#split\n#note\n",
                       in_reply_to=f"<{notification}>"), envelope_to=(address,))
    (new,) = [i["id"] for i in cli.json("issues", "list") if i["id"] != a]
    # The parcel thread goes on on the new issue; the invoice thread stays on the first.
    raw, _ = mail("Pat <pat@example.com>", "Re: Two things", "The box was crushed.", in_reply_to=second)
    assert deliver(app, raw).issue_id == new
    raw, _ = mail("Pat <pat@example.com>", "Re: Two things", "And the invoice?", in_reply_to=first)
    assert deliver(app, raw).issue_id == a


def test_a_reply_that_merges_its_issue_is_filed_on_the_issue_it_went_into(app, cli):
    a = conversation(app, "Pat <pat@example.com>", "Order late", ["Where is it?"])
    b = conversation(app, "Pat <pat@example.com>", "Order still late", ["Still waiting."])
    rep_mail(app, a, f"#merge {b}\nThanks Pat, I put your two requests together.")
    assert interaction_ids(cli, a) == []
    outbound = [i for i in cli.json("issues", "show", str(b))["interactions"] if i["direction"] == "outbound"
                and "put your two requests together" in (i["new_text"] or "")]
    assert len(outbound) == 1
