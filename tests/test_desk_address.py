"""A rep's own desk address: new cases, logged contacts, forwarded customer mail,
#queue and #history, from that rep's From only.

The first tests deliver a rep's mail through the intake and the pipeline and
read the result as `maild issues show --json` prints it and as the outbox
holds it; the working day at the end goes over SMTP to `maild run`, with
everything maild sends delivered to a real SMTP sink and parsed from there.
"""

from __future__ import annotations

import email
import email.policy
import json
import time
from email.message import EmailMessage
from email.utils import format_datetime
from datetime import UTC, datetime
from itertools import count

import pytest
from sqlalchemy import select

from maild.models import OutboxMessage, RawMessage, Rep
from maild.tokens import TokenSigner
from conftest import SECRET, run_maild
from daemon_helpers import Maild, daemon_config, smtp_client
from test_outbound import outbound
from test_rep_commands import deliver, open_issue, outbox, rep_mail, show

_n = count(1)


def desk(app, rep: str = "alice@acme.test") -> str:
    with app.sessions() as s:
        rep_id = s.scalar(select(Rep.id).where(Rep.email == rep))
    return app.signer.desk_address("support@acme.test", rep_id)


def mail(frm: str, to: str, subject: str, body: str, files: tuple = (), forward: bytes | None = None,
         in_reply_to: str | None = None) -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, to, subject
    m["Date"] = format_datetime(datetime(2026, 11, 2, 9, 30, tzinfo=UTC))
    m["Message-ID"] = f"<desk{next(_n)}.{time.monotonic_ns()}@example.com>"
    if in_reply_to:
        m["In-Reply-To"] = in_reply_to
    m.set_content(body)
    for name, ctype, data in files:
        maintype, _, subtype = ctype.partition("/")
        m.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    if forward is not None:
        m.add_attachment(email.message_from_bytes(forward, policy=email.policy.default))
    return m.as_bytes()


def to_desk(app, body: str, subject: str = "Hello", rep: str = "Alice <alice@acme.test>", **kw):
    address = desk(app, rep.split("<")[-1].rstrip(">"))
    return deliver(app, mail(rep, address, subject, body, **kw), envelope_to=(address,))


def issues(cli) -> list[dict]:
    return cli.json("issues", "list")


def sent_to(app, address: str) -> list[dict]:
    return [m for m in outbox(app) if address in m["to"]]


def test_the_desk_token_names_the_rep_and_no_issue():
    signer = TokenSigner(SECRET.encode())
    address = signer.desk_address("support@acme.test", 3)
    local = address.split("@")[0].split("+", 1)[1]
    token = signer.verify(local)
    assert token is not None and (token.issue_id, token.rep_id, token.purpose) == (None, 3, "desk")
    assert signer.verify(local.replace("r3-", "r4-")) is None  # bound to the rep
    assert signer.verify(f"i1-{local}") is None  # and to no issue
    assert TokenSigner(b"another-secret-0123456789").verify(local) is None


def test_reps_address_prints_the_desk_address(app, cli):
    result = cli("reps", "address", "alice@acme.test")
    assert result.exit_code == 0 and result.output.strip() == desk(app)
    result = cli("reps", "address", "nobody@acme.test")
    assert result.exit_code == 78 and "not a configured rep" in result.output


def test_a_new_case_to_a_new_customer_who_replies_onto_it(app, cli):
    stored = to_desk(app, "#to Pat New <pat.new@example.org>\n#priority high\n\nYour replacement lamp ships today.",
                     subject="Your replacement lamp")
    assert stored.outcome == "desk" and stored.issue_id is None
    (row,) = issues(cli)
    assert (row["customer"], row["assignee"], row["priority"], row["status"]) == (
        "pat.new@example.org", "alice@acme.test", "high", "open")
    (out,) = sent_to(app, "pat.new@example.org")
    assert out["kind"] == "reply" and f"[#{row['id']}]" in out["subject"] and "ships today" in out["body"]
    assert "#to" not in out["body"] and "#priority" not in out["body"]
    with app.sessions() as s:
        message_id = s.scalar(select(OutboxMessage.message_id).where(OutboxMessage.kind == "reply"))
    (done,) = [m for m in sent_to(app, "alice@acme.test") if m["subject"].startswith("Done")]
    assert f"Issue #{row['id']} opened" in done["body"]
    reply = deliver(app, mail("Pat New <pat.new@example.org>", "support@acme.test", "Re: Your replacement lamp",
                              "Thanks!", in_reply_to=f"<{message_id}>"))
    assert (reply.issue_id, reply.new_issue) == (row["id"], False)
    shown = show(cli, row["id"])
    assert shown["customer_record"]["name"] == "Pat New"
    assert [i["direction"] for i in shown["interactions"]] == ["outbound", "inbound"]


def test_a_phone_call_logged_on_an_existing_issue_sends_nothing(app, cli):
    n = open_issue(app)
    before = outbox(app)
    to_desk(app, f"#log phone\n#issue {n}\n\nPat called: the printer works again.", subject="Call")
    shown = show(cli, n)
    call = shown["interactions"][-1]
    assert (call["kind"], call["direction"], call["from"], call["rep_name"]) == (
        "phone", "inbound", "pat@example.com", "Alice")
    assert "works again" in call["new_text"]
    new = outbox(app)[len(before):]
    assert [m["to"] for m in new] == [["alice@acme.test"]]  # only the rep's receipt, nothing to Pat


def test_a_visit_logged_for_a_customer_opens_an_issue(app, cli):
    to_desk(app, "#log visit\n#customer sam@example.net\n\nSam came by with the broken charger.",
            subject="Broken charger", files=(("charger.jpg", "image/jpeg", b"\xff\xd8jpeg"),))
    (row,) = issues(cli)
    assert (row["customer"], row["subject"]) == ("sam@example.net", "Broken charger")
    (visit,) = show(cli, row["id"])["interactions"]
    assert visit["kind"] == "visit" and [a["filename"] for a in visit["attachments"]] == ["charger.jpg"]


def test_a_mail_forwarded_as_an_attachment_is_the_customers_own(app, cli):
    original = mail("Sam Buyer <sam@example.net>", "alice@acme.test", "Invoice wrong", "I was charged twice.",
                    files=(("invoice.pdf", "application/pdf", b"%PDF-1.4 invoice"),))
    to_desk(app, "Sam wrote to me directly.", subject="Fwd: Invoice wrong", forward=original)
    (row,) = issues(cli)
    assert (row["customer"], row["subject"]) == ("sam@example.net", "Invoice wrong")
    fwd, note = show(cli, row["id"])["interactions"]
    assert (fwd["direction"], fwd["from"], fwd["from_name"]) == ("inbound", "sam@example.net", "Sam Buyer")
    assert fwd["new_text"].strip() == "I was charged twice."
    assert [a["filename"] for a in fwd["attachments"]] == ["invoice.pdf"]
    assert (note["kind"], note["new_text"]) == ("note", "Sam wrote to me directly.")
    # The customer's later reply to their own mail threads onto the issue.
    message_id = email.message_from_bytes(original)["Message-ID"]
    reply = deliver(app, mail("sam@example.net", "support@acme.test", "Re: Invoice wrong", "Any news?",
                              in_reply_to=message_id))
    assert reply.issue_id == row["id"]


def test_an_inline_forward_goes_on_the_issue_given(app, cli):
    n = open_issue(app)
    body = (f"#issue {n}\n\n---------- Forwarded message ---------\nFrom: Pat Customer <pat@example.com>\n"
            "Date: Mon, 2 Nov 2026 at 09:30\nSubject: Printer still on fire\nTo: <alice@acme.test>\n\n\n"
            "It is still burning.\n")
    to_desk(app, body, subject="Fwd: Printer still on fire")
    last = show(cli, n)["interactions"][-1]
    assert (last["from"], last["subject"], last["new_text"].strip()) == (
        "pat@example.com", "Printer still on fire", "It is still burning.")


def test_an_inline_forward_names_the_customer_even_with_an_attached_mail(app, cli):
    """A customer's own attachments ride along with an inline forward: a crafted .eml among them
    must not choose who the customer is."""
    crafted = mail("CEO <ceo@victim.test>", "alice@acme.test", "Wire 50k to new account", "Do it now.")
    body = ("---------- Forwarded message ---------\nFrom: Mallory <mallory@example.net>\n"
            "Date: Mon, 2 Nov 2026 at 09:30\nSubject: My order\nTo: <alice@acme.test>\n\n\n"
            "Please see the attached.\n")
    to_desk(app, body, subject="Fwd: My order", forward=crafted)
    (row,) = issues(cli)
    assert (row["customer"], row["subject"]) == ("mallory@example.net", "My order")


def test_queue_and_history_are_answered_by_mail(app, cli):
    first = open_issue(app)
    second = open_issue(app, frm="Sam <sam@example.org>", subject="Invoice twice")
    rep_mail(app, second, "#take\n#priority urgent", rep="bob@acme.test")
    to_desk(app, "#queue")
    answer = sent_to(app, "alice@acme.test")[-1]
    assert answer["subject"] == "Queue (open): 2 issue(s)"
    lines = [line for line in answer["body"].splitlines() if line.startswith("#")]
    assert [line.split()[0] for line in lines] == [f"#{second}", f"#{first}"]  # urgent first
    assert "Bob" in lines[0] and "unassigned" in lines[1]
    assert "body=%23take%21" in answer["body"] and f"body=%23history%20{first}" in answer["body"]
    to_desk(app, "#queue unassigned")
    assert sent_to(app, "alice@acme.test")[-1]["subject"] == "Queue (unassigned): 1 issue(s)"
    to_desk(app, f"#history {first}")
    history = sent_to(app, "alice@acme.test")[-1]
    assert history["subject"].startswith("History: Printer on fire") and "My printer is on fire." in history["body"]
    assert "support+i" in history["body"]  # the note address


def test_desk_mail_from_anyone_else_is_customer_mail(app, cli):
    address = desk(app)
    stored = deliver(app, mail("Eve <eve@example.org>", address, "Hi", "#queue\n#to x@example.org\nHello"),
                     envelope_to=(address,))
    assert stored.outcome == "interaction" and stored.new_issue and stored.rep_id is None
    (row,) = issues(cli)
    assert row["customer"] == "eve@example.org"
    # Bob's From on Alice's desk address is not Bob's desk either.
    stored = deliver(app, mail("bob@acme.test", address, "Hi", "#queue"), envelope_to=(address,))
    assert stored.outcome == "interaction" and stored.rep_id is None


@pytest.mark.parametrize(("body", "reason"), [
    ("#to pat@example.org\n\nHello.", "A new case needs a subject"),
    ("#log phone\n\nPat called.", "#log phone: say who"),
    ("#history 999", "#history: no issue #999"),
    ("#queue everything", "#queue: expected open, unassigned, mine, pending, closed or a category"),
    ("#to pat@example.org\n#assign Nobody\n\nHello.", "#assign: no rep called 'Nobody'"),
    ("Just some text.", "no command this address understands"),
    ("#to support@acme.test\n\nHello.", "one of our own mailbox addresses"),
])
def test_a_refused_desk_mail_creates_nothing_and_says_why(app, cli, body, reason):
    subject = "" if "subject" in reason else "Hello"
    to_desk(app, body, subject=subject)
    assert issues(cli) == []
    (notice,) = outbox(app)
    assert notice["to"] == ["alice@acme.test"] and reason in notice["body"]
    with app.sessions() as s:
        assert s.scalar(select(RawMessage.outcome)) == "desk"


# --- end to end ---------------------------------------------------------------------


def _wait(relay, predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        found = [m for _, m in relay.messages() if predicate(m)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no {what} at the sink: {[m['Subject'] for _, m in relay.messages()]}"
        time.sleep(0.1)


def _send(config, frm: str, to: str, raw: bytes) -> None:
    with smtp_client(config) as s:
        s.sendmail(frm, [to], raw)


@pytest.fixture
def relay(sink):
    return sink


@pytest.mark.slow
def test_a_reps_working_day_over_smtp(tmp_path, db_url, relay):
    """New case, the customer's reply, a logged call, a forward, #queue and #history, by SMTP to `maild run`."""
    config = daemon_config(tmp_path, db_url, daemon="\n" + outbound(f"127.0.0.1:{relay.port}", send_interval=1.0))
    maild = Maild(config).start()
    try:
        got = run_maild("reps", "address", "alice@acme.test", "-c", str(config))
        assert got.returncode == 0, got.stderr
        address = got.stdout.decode().strip()
        alice = "Alice <alice@acme.test>"
        _send(config, "alice@acme.test", address,
              mail(alice, address, "Your replacement lamp", "#to pat.new@example.org\n\nIt ships today.\n\nAlice"))
        sent = _wait(relay, lambda m: m["To"] == "pat.new@example.org", "new case")
        assert sent["From"] == "support@acme.test" and "It ships today." in sent.get_content()
        n = int(sent["Subject"].split("[#")[1].split("]")[0])
        _send(config, "pat.new@example.org", "support@acme.test",
              mail("pat.new@example.org", "support@acme.test", "Re: " + sent["Subject"], "Great, thanks!",
                   in_reply_to=sent["Message-ID"]))
        told = _wait(relay, lambda m: m["To"] == "alice@acme.test" and "Great, thanks!" in m.get_content(),
                     "notification of the customer's reply")
        assert told["Reply-To"].startswith("support+i")
        _send(config, "alice@acme.test", address,
              mail(alice, address, "Call", f"#log phone\n#issue {n}\n\nPat called: the lamp arrived."))
        _send(config, "alice@acme.test", address, mail(alice, address, "Fwd: Broken cable", (
            "---------- Forwarded message ---------\nFrom: Sam <sam@example.net>\nSubject: Broken cable\n\n"
            "The cable you sent is broken.\n")))
        _send(config, "alice@acme.test", address, mail(alice, address, "q", "#queue mine"))
        queue = _wait(relay, lambda m: m["Subject"].startswith("Queue (mine)"), "#queue answer")
        assert f"#{n} " in queue.get_content() and "Broken cable" in queue.get_content()
        _send(config, "alice@acme.test", address, mail(alice, address, "h", f"#history {n}"))
        history = _wait(relay, lambda m: m["Subject"].startswith("History:"), "#history answer")
        text = history.get_content() if not history.is_multipart() else history.get_body(("plain",)).get_content()
        assert text.index("It ships today.") < text.index("Great, thanks!") < text.index("the lamp arrived")
        shown = json.loads(run_maild("issues", "list", "--json", "-c", str(config)).stdout)
        assert sorted(i["customer"] for i in shown) == ["pat.new@example.org", "sam@example.net"]
        assert not [m for _, m in relay.messages() if m["To"] in ("sam@example.net",)]  # a forward sends nothing
    finally:
        assert maild.stop() == 0
