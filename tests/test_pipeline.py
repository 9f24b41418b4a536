"""The ingest pipeline end to end against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

from email.message import EmailMessage
from email.utils import format_datetime
from datetime import datetime, UTC

from sqlalchemy import func, select

from maild.desk import queries
from maild.ingest import quarantine as quarantine_view
from maild.ingest.intake import Incoming, accept
from maild.models import Customer, Interaction, Issue, RawMessage


def mail(
    frm="Pat Customer <pat@example.com>", to="support@acme.test", subject="Printer on fire", body="It burns.",
    msgid=None, in_reply_to=None, references=None, headers=None, cc=None,
) -> bytes:
    m = EmailMessage()
    m["From"] = frm
    m["To"] = to
    if cc:
        m["Cc"] = cc
    m["Subject"] = subject
    m["Date"] = format_datetime(datetime(2026, 11, 2, 9, 30, tzinfo=UTC))
    if msgid is not False:
        m["Message-ID"] = msgid or f"<{abs(hash((frm, subject, body)))}@example.com>"
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
    if references:
        m["References"] = references
    for k, v in (headers or {}).items():
        m[k] = v
    m.set_content(body)
    return m.as_bytes()


def ingest(app, raw: bytes, mailbox: str = "support", envelope_to=(), source: str = "test"):
    accepted = accept(app.sessions, Incoming(raw, mailbox, source, envelope_to=tuple(envelope_to)))
    if accepted.duplicate:
        return None
    (outcome,) = app.pipeline.process([accepted.raw_id])
    return outcome


def count(app, model) -> int:
    with app.sessions() as s:
        if model is Interaction:  # the mail that came in, not what maild queued in answer
            return s.scalar(select(func.count(Interaction.id)).where(Interaction.direction == "inbound"))
        return s.scalar(select(func.count()).select_from(model))


def issue(app, issue_id: int) -> dict:
    with app.sessions() as s:
        return queries.show_issue(s, issue_id)


def test_new_mail_opens_issue_with_customer_record(app):
    o = ingest(app, mail(msgid="<a1@example.com>"))
    assert o.state == "done" and o.stored.new_issue
    data = issue(app, o.stored.issue_id)
    assert data["status"] == "open" and data["category"] == "uncategorized"
    assert data["customer"] == "pat@example.com"
    assert data["customer_record"]["name"] == "Pat Customer"
    assert [i["message_id"] for i in data["interactions"] if i["direction"] == "inbound"] == ["a1@example.com"]


def test_mailbox_category_applies_to_new_issues(app):
    o = ingest(app, mail(to="billing@acme.test", msgid="<b1@example.com>"), mailbox="billing")
    assert issue(app, o.stored.issue_id)["category"] == "billing"


def test_reply_threads_by_in_reply_to(app):
    first = ingest(app, mail(msgid="<t1@example.com>"))
    reply = ingest(app, mail(subject="Re: Printer on fire", body="Still burning", msgid="<t2@example.com>",
                             in_reply_to="<t1@example.com>"))
    assert reply.stored.issue_id == first.stored.issue_id
    assert reply.stored.thread_reason == "in-reply-to"


def test_reply_threads_by_references_when_in_reply_to_is_unknown(app):
    first = ingest(app, mail(msgid="<r1@example.com>"))
    reply = ingest(app, mail(subject="Totally different", msgid="<r3@example.com>",
                             in_reply_to="<not-ours@elsewhere.test>",
                             references="<r1@example.com> <r2@elsewhere.test>"))
    assert reply.stored.issue_id == first.stored.issue_id
    assert reply.stored.thread_reason == "references"


def test_subject_tag_threads_only_for_participants(app):
    first = ingest(app, mail(msgid="<s1@example.com>"))
    n = first.stored.issue_id
    same = ingest(app, mail(subject=f"Re: [#{n}] Printer", body="more", msgid="<s2@example.com>"))
    assert same.stored.issue_id == n and same.stored.thread_reason == "subject-tag"
    stranger = ingest(app, mail(frm="eve@evil.test", subject=f"[#{n}] gimme", msgid="<s3@evil.test>"))
    assert stranger.stored.new_issue and stranger.stored.issue_id != n
    # A rep's From alone proves nothing on live mail (it is forgeable) ...
    forged = ingest(app, mail(frm="Bob <bob@acme.test>", subject=f"[#{n}] note", msgid="<s4@acme.test>"))
    assert forged.stored.new_issue and forged.stored.rep_id is None
    # ... but in an imported archive, reps' mail is theirs.
    rep = ingest(app, mail(frm="Bob <bob@acme.test>", subject=f"[#{n}] note 2", msgid="<s5@acme.test>"), source="import")
    assert rep.stored.issue_id == n and rep.stored.rep_id is not None


def test_signed_token_in_recipient_threads(app):
    first = ingest(app, mail(msgid="<k1@example.com>"))
    n = first.stored.issue_id
    addr = app.signer.address("support@acme.test", n, None, "customer")
    o = ingest(app, mail(to=addr, subject="unrelated subject", msgid="<k2@example.com>"))
    assert o.stored.issue_id == n and o.stored.thread_reason == "token"
    forged = addr[:-15] + "aaaaaa" + addr[-9:]
    o2 = ingest(app, mail(to=forged, subject="unrelated subject", msgid="<k3@example.com>"))
    assert o2.stored.new_issue


def test_same_message_twice_creates_one_interaction(app):
    raw = mail(msgid="<dup@example.com>")
    assert ingest(app, raw).state == "done"
    assert ingest(app, raw) is None
    # Same Message-ID, different bytes (another path added headers): still one.
    assert ingest(app, b"Received: from relay\r\n" + raw) is None
    assert count(app, Interaction) == 1 and count(app, RawMessage) == 1


def test_message_without_message_id_dedupes_by_content(app):
    raw = mail(msgid=False)
    assert ingest(app, raw).state == "done"
    assert ingest(app, raw) is None
    assert count(app, Interaction) == 1


def test_the_dedupe_key_is_the_header_message_id_or_the_content():
    from maild.ingest.intake import dedupe_key

    crlf = b"From: a@example.com\r\nMessage-ID:\r\n  <folded@example.com>\r\n\r\nbody\r\n"
    assert dedupe_key(crlf) == "mid:folded@example.com"
    assert dedupe_key(crlf.replace(b"\r\n", b"\n")) == "mid:folded@example.com"
    # A Message-ID line in the body (a quoted or forwarded mail) is not the message's own.
    quoted = b"From: a@example.com\n\nMessage-ID: <inner@example.com>\n"
    assert dedupe_key(quoted).startswith("sha256:")
    assert dedupe_key(quoted) != dedupe_key(quoted + b"more")


def test_customer_recognised_by_any_address_case_insensitively(app):
    a = ingest(app, mail(frm="Pat <Pat@Example.COM>", msgid="<c1@example.com>"))
    b = ingest(app, mail(frm="pat@example.com", subject="Another thing", msgid="<c2@example.com>"))
    assert a.stored.customer_id == b.stored.customer_id
    assert count(app, Customer) == 1


def test_a_sender_recorded_meanwhile_by_another_transaction_is_that_record(app, monkeypatch):
    # Two deliveries of one new sender at once: identify saw no record, but by the time
    # this mail is stored another transaction has claimed the address. Its record is the
    # sender's: no second customer, no key violation, nothing quarantined.
    first = ingest(app, mail(frm="Pat <pat@example.com>", msgid="<r1@example.com>"))
    from maild.ingest.stages.lookup import DbLookup
    monkeypatch.setattr(DbLookup, "live_customer_by_key", lambda self, key: None)
    second = ingest(app, mail(frm="pat@example.com", subject="Another thing", msgid="<r2@example.com>"))
    assert second.state == "done"
    assert second.stored.customer_id == first.stored.customer_id
    assert count(app, Customer) == 1


def test_mail_from_our_own_address_never_creates_customer(app):
    o = ingest(app, mail(frm="help@acme.test", msgid="<own1@example.com>"))
    assert o.state == "done"
    assert count(app, Customer) == 0


def test_archived_rep_mail_is_recorded_without_a_customer_record(app):
    first = ingest(app, mail(msgid="<p1@example.com>"))
    o = ingest(app, mail(frm="Alice <alice@home.test>", to="pat@example.com", cc="support@acme.test",
                         subject="Re: Printer on fire", msgid="<p2@acme.test>", in_reply_to="<p1@example.com>"),
               source="import")
    assert o.stored.issue_id == first.stored.issue_id and o.stored.rep_id is not None
    assert count(app, Customer) == 1


def test_auto_reply_that_threads_nowhere_opens_no_issue(app):
    o = ingest(app, mail(subject="Out of office", headers={"Auto-Submitted": "auto-replied"},
                         msgid="<ooo@example.com>"))
    assert o.stored.outcome == "unmatched-auto"
    assert count(app, Issue) == 0


def test_auto_reply_on_closed_issue_reopens_nothing_but_customer_reply_does(app):
    first = ingest(app, mail(msgid="<z1@example.com>"))
    n = first.stored.issue_id
    with app.sessions() as s, s.begin():
        s.get(Issue, n).status = "closed"
    auto = ingest(app, mail(subject="Auto: Re: Printer", headers={"Auto-Submitted": "auto-replied"},
                            msgid="<z2@example.com>", in_reply_to="<z1@example.com>"))
    assert auto.stored.issue_id == n and auto.stored.auto and not auto.stored.reopened
    assert issue(app, n)["status"] == "closed"
    human = ingest(app, mail(subject="Re: Printer", msgid="<z3@example.com>", in_reply_to="<z1@example.com>"))
    assert human.stored.reopened and issue(app, n)["status"] == "open"


def test_forwarded_message_headers_never_thread(app):
    first = ingest(app, mail(msgid="<f1@example.com>"))
    inner = mail(frm="Other <other@example.org>", subject="inner", msgid="<inner@example.org>",
                 in_reply_to="<f1@example.com>")
    outer = EmailMessage()
    outer["From"] = "Sam <sam@example.net>"
    outer["To"] = "support@acme.test"
    outer["Subject"] = "Fwd: inner"
    outer["Message-ID"] = "<fw@example.net>"
    outer.set_content("See below")
    from email import message_from_bytes

    outer.add_attachment(message_from_bytes(inner))
    o = ingest(app, outer.as_bytes())
    assert o.stored.new_issue and o.stored.issue_id != first.stored.issue_id
    data = issue(app, o.stored.issue_id)
    assert data["customer"] == "sam@example.net"
    assert [a["content_type"] for a in data["interactions"][0]["attachments"]] == ["message/rfc822"]


def test_stage_failure_quarantines_and_retry_stores_once(app, monkeypatch):
    import maild.ingest.pipeline as pipeline

    real = pipeline.thread
    monkeypatch.setattr(pipeline, "thread", lambda *a: (_ for _ in ()).throw(RuntimeError("threading broke")))
    o = ingest(app, mail(msgid="<q1@example.com>"))
    assert o.state == "quarantined" and o.stage == "thread" and "threading broke" in o.error
    with app.sessions() as s:
        (row,) = quarantine_view.list_quarantine(s)
    assert row["stage"] == "thread" and "RuntimeError" in row["error"]
    assert count(app, Interaction) == 0
    monkeypatch.setattr(pipeline, "thread", real)
    with app.sessions() as s, s.begin():
        s.get(RawMessage, o.raw_id).state = "pending"
    (again,) = app.pipeline.process([o.raw_id])
    assert again.state == "done"
    (again2,) = app.pipeline.process([o.raw_id]) or [None]
    assert again2 is None or again2.state == "done"
    assert count(app, Interaction) == 1


def test_no_sender_and_no_thread_is_quarantined_with_reason(app):
    raw = b"To: support@acme.test\r\nSubject: who am I\r\nMessage-ID: <nosender@x.test>\r\n\r\nhello\r\n"
    o = ingest(app, raw)
    assert o.state == "quarantined" and o.stage == "store" and "From" in o.error


def test_attachment_content_stored_once(app):
    from maild.models import Blob

    for i in range(2):
        m = EmailMessage()
        m["From"] = "pat@example.com"
        m["To"] = "support@acme.test"
        m["Subject"] = f"logs {i}"
        m["Message-ID"] = f"<att{i}@example.com>"
        m.set_content("attached")
        m.add_attachment(b"\x89PNG same bytes", maintype="image", subtype="png", filename="../../etc/passwd.png")
        ingest(app, m.as_bytes())
    assert count(app, Blob) == 1
    with app.sessions() as s:
        names = [a.filename for a in s.scalars(select(Interaction)).first().attachments]
    assert names == ["passwd.png"]


def test_reply_long_after_close_opens_a_new_issue_linked_to_the_old(tmp_path, db_url, monkeypatch):
    from datetime import timedelta

    from maild.app import build
    from maild.config import load
    from maild.models import utcnow
    from conftest import SECRET, write_config

    monkeypatch.setenv("MAILD_SECRET", SECRET)
    boxes = '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\nreopen_days = 30\n'
    app = build(load(write_config(tmp_path / "m.toml", db_url, mailboxes=boxes)))
    first = ingest(app, mail(msgid="<old1@example.com>"))
    with app.sessions() as s, s.begin():
        old = s.get(Issue, first.stored.issue_id)
        old.status, old.closed_at = "closed", utcnow() - timedelta(days=40)
    late = ingest(app, mail(subject="Re: Printer on fire", body="It is back.", msgid="<old2@example.com>",
                            in_reply_to="<old1@example.com>"))
    assert late.stored.new_issue and late.stored.issue_id != first.stored.issue_id and not late.stored.reopened
    assert issue(app, first.stored.issue_id)["status"] == "closed"
    old_ids = [i["message_id"] for i in issue(app, first.stored.issue_id)["interactions"]]
    assert "old2@example.com" in old_ids  # the reply is linked to the old issue too
    # The conversation goes on on the new issue: a reply to the late reply lands there.
    more = ingest(app, mail(subject="Re: Printer on fire", body="Still.", msgid="<old3@example.com>",
                            in_reply_to="<old2@example.com>"))
    assert more.stored.issue_id == late.stored.issue_id and not more.stored.new_issue
    app.close()


# Bounded work per message: parse and classify run in a worker process under a budget.

def _budget_app(tmp_path, db_url, monkeypatch, **ingest):
    from maild.app import build
    from maild.config import load
    from conftest import SECRET, write_config

    monkeypatch.setenv("MAILD_SECRET", SECRET)
    extra = "[ingest]\n" + "".join(f"{k} = {v}\n" for k, v in ingest.items())
    return build(load(write_config(tmp_path / "budget.toml", db_url, extra=extra)))


def parse_or_hang(data, envelope_to, own, memory, envelope_from=None):
    """A worker task for a message that never finishes parsing (marked X-Test-Parse: hang[, mark FILE])."""
    import time

    from maild.ingest.budget import _prepare_limited

    if b"X-Test-Parse: hang" in data:
        import re
        from pathlib import Path

        if mark := re.search(rb"X-Test-Parse: hang, mark (\S+)", data):
            Path(mark.group(1).decode()).touch()  # tells the test that parsing has begun
        time.sleep(3600)
    return _prepare_limited(data, envelope_to, own, memory, envelope_from)


def _store(app, *raws) -> list[int]:
    return [accept(app.sessions, Incoming(raw, "support", "smtp")).raw_id for raw in raws]


def _states(app, raw_ids) -> dict[int, tuple]:
    with app.sessions() as s:
        rows = s.execute(select(RawMessage.id, RawMessage.state, RawMessage.stage, RawMessage.error)
                         .where(RawMessage.id.in_(raw_ids)))
        return {r.id: (r.state, r.stage, r.error) for r in rows}


def test_a_message_over_its_time_budget_is_quarantined_and_its_batch_goes_on(tmp_path, db_url, monkeypatch):
    from maild.ingest.budget import Budget

    app = _budget_app(tmp_path, db_url, monkeypatch, parse_timeout=2.0)
    app.pipeline.budget.close()
    app.pipeline.budget = Budget(app.pipeline.own_mail, 2.0, app.settings.ingest.parse_memory, task=parse_or_hang)
    normal = [mail(subject=f"Normal {i}", msgid=f"<n{i}@example.com>") for i in range(3)]
    hostile = mail(subject="Hostile", msgid="<hang@example.com>", headers={"X-Test-Parse": "hang"})
    ids = _store(app, normal[0], hostile, normal[1], normal[2])
    outcomes = {o.raw_id: o for o in app.pipeline.process(ids)}
    assert (outcomes[ids[1]].state, outcomes[ids[1]].stage, outcomes[ids[1]].error) == (
        "quarantined", "parse", "too-slow: over 2 s")
    assert [outcomes[i].state for i in (ids[0], ids[2], ids[3])] == ["done"] * 3
    assert count(app, Interaction) == 3
    # The stopped worker was replaced: the next message is parsed as usual.
    (after,) = app.pipeline.process(_store(app, mail(subject="After", msgid="<after@example.com>")))
    assert after.state == "done"
    app.close()
    # A restart does not try it again: it is in quarantine, not pending.
    again = _budget_app(tmp_path, db_url, monkeypatch, parse_timeout=2.0)
    assert again.pipeline.drain().counts == {}
    assert _states(again, [ids[1]])[ids[1]][0] == "quarantined"
    with again.sessions() as s:
        (row,) = quarantine_view.list_quarantine(s)
    assert row["stage"] == "parse" and row["error"] == "too-slow: over 2 s"
    again.close()


def hostile_subject(words: int) -> bytes:
    """A Subject of `words` RFC 2047 encoded words: minutes of CPU in the parser before its rewrite."""
    subject = " ".join(f"=?iso-8859-{1 + i % 9}?q?abc=E9?=" for i in range(words))
    return (f"From: eve@example.com\r\nTo: support@acme.test\r\nMessage-ID: <words{words}@example.com>\r\n"
            f"Subject: {subject}\r\n\r\nhello\r\n").encode()


def test_a_hostile_subject_never_holds_up_the_mail_beside_it(tmp_path, db_url, monkeypatch):
    app = _budget_app(tmp_path, db_url, monkeypatch, parse_timeout=1.0)
    ids = _store(app, mail(subject="Before", msgid="<before@example.com>"), hostile_subject(32000),
                 mail(subject="Beside", msgid="<beside@example.com>"))
    outcomes = {o.raw_id: o for o in app.pipeline.process(ids)}
    assert outcomes[ids[0]].state == outcomes[ids[2]].state == "done"
    hostile = outcomes[ids[1]]
    # Slow today: quarantined at its budget. Once parsing is fast it is simply processed.
    assert hostile.state == "done" or (hostile.stage, hostile.error) == ("parse", "too-slow: over 1 s")
    assert app.pipeline.pending_ids(10) == []
    app.close()


def test_a_message_over_its_memory_budget_is_quarantined(tmp_path, db_url, monkeypatch):
    app = _budget_app(tmp_path, db_url, monkeypatch, parse_memory=16 * 1024 * 1024)
    big = EmailMessage()
    big["From"], big["To"], big["Subject"] = "pat@example.com", "support@acme.test", "Scans"
    big["Message-ID"] = "<big@example.com>"
    big.set_content("All the scans attached.")
    big.add_attachment(bytes(range(256)) * (96 * 1024), maintype="application", subtype="octet-stream",
                       filename="scans.bin")  # 24 MiB
    ids = _store(app, big.as_bytes(), mail(subject="Small", msgid="<small@example.com>"))
    outcomes = {o.raw_id: o for o in app.pipeline.process(ids)}
    assert (outcomes[ids[0]].stage, outcomes[ids[0]].error) == ("parse", "too-large: over 16777216 bytes of memory")
    assert outcomes[ids[1]].state == "done"
    app.close()


# One message, one interaction, whatever mailboxes and paths its copies come by.

def test_a_copy_for_another_mailbox_by_another_path_is_recorded_not_stored(app):
    from maild.ingest.intake import copies_of
    from maild.models import OutboxMessage

    raw = mail(to="support@acme.test", cc="billing@acme.test", msgid="<both@example.com>")
    first = accept(app.sessions, Incoming(raw, "support", "lmtp", envelope_to=("support@acme.test",)))
    copy = accept(app.sessions, Incoming(b"Delivered-To: billing@acme.test\r\n" + raw, "billing", "pipe"))
    assert not first.duplicate and copy.duplicate and copy.raw_id == first.raw_id
    assert accept(app.sessions, Incoming(raw, "billing", "pipe")).duplicate  # the same copy again: one record
    app.pipeline.drain()
    assert count(app, RawMessage) == 1 and count(app, Interaction) == 1 and count(app, Issue) == 1
    with app.sessions() as s:
        acks = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.kind == "acknowledgement"))
        copies = copies_of(s, [first.raw_id])[first.raw_id]
    assert acks == 1
    assert [(c["mailbox"], c["source"]) for c in copies] == [("billing", "pipe")]
