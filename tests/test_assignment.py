"""Assignment that communicates, and an honest `maild reply`.

`#assign` finds a rep by email, full name, configured short name or unique
first name; the new assignee gets the issue's summary with their own reply
and note addresses, the previous one is told; `#take` of someone else's issue
is refused unless written `#take!`. `maild reply` exits 1 with the reason when
a command is refused or the reply is held, and 78 for a rep that is not
configured. The last test runs the README's case over SMTP: `#assign Alice`
by first name reaches Alice at a real sink, and she answers by mail with the
token she got.
"""

from __future__ import annotations

import time

import pytest
from sqlalchemy import select

from maild.app import build
from maild.config import load
from maild.models import Rep
from conftest import SECRET, run_maild, write_config
from daemon_helpers import Maild, daemon_config, message, smtp_client
from test_outbound import SinkProcess, free_port, outbound
from test_rep_commands import open_issue, outbox, rep_mail, state

REPS = (
    '[[rep]]\nname = "Alice Example"\nemail = "alice@acme.test"\n\n'
    '[[rep]]\nname = "Bob Builder"\nemail = "bob@acme.test"\nshort_name = "bb"\n\n'
    '[[rep]]\nname = "Carol Jones"\nemail = "carol@acme.test"\n'
)


@pytest.fixture
def reps_app(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    path = write_config(tmp_path / "maild.toml", db_url, reps=REPS)
    app = build(load(path))
    app.config_path = path
    yield app
    app.close()


def assignee(app, n: int) -> str | None:
    from maild.models import Issue

    with app.sessions() as s:
        issue = s.get(Issue, n)
        return issue.assignee.email if issue.assignee else None


def new_mail(app, before: list[dict]) -> list[dict]:
    return outbox(app)[len(before):]


@pytest.mark.parametrize("who", ["Alice", "alice", "Alice Example", "alice@acme.test"])
def test_assign_by_first_name_full_name_or_email(reps_app, who):
    n = open_issue(reps_app)
    rep_mail(reps_app, n, f"#assign {who}", rep="bob@acme.test")
    assert assignee(reps_app, n) == "alice@acme.test"


def test_assign_by_short_name(reps_app):
    n = open_issue(reps_app)
    rep_mail(reps_app, n, "#assign BB", rep="alice@acme.test")
    assert assignee(reps_app, n) == "bob@acme.test"


def test_a_first_name_two_reps_share_is_refused_naming_both(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    path = write_config(tmp_path / "two.toml", db_url,
                        reps=REPS + '\n[[rep]]\nname = "Alice Other"\nemail = "alice.o@acme.test"\n')
    app = build(load(path))
    try:
        n = open_issue(app)
        before = outbox(app)
        rep_mail(app, n, "#assign Alice", rep="bob@acme.test")
        assert assignee(app, n) is None
        (notice,) = new_mail(app, before)
        assert "could be Alice Example <alice@acme.test> or Alice Other <alice.o@acme.test>" in notice["body"]
    finally:
        app.close()


def test_the_new_assignee_gets_the_summary_and_their_addresses_the_previous_one_is_told(reps_app):
    n = open_issue(reps_app)
    rep_mail(reps_app, n, "#take", rep="carol@acme.test")
    before = outbox(reps_app)
    rep_mail(reps_app, n, "#assign Alice\n#priority high", rep="bob@acme.test")
    told = {m["to"][0]: m for m in new_mail(reps_app, before)}
    assert set(told) == {"alice@acme.test", "carol@acme.test"}  # not Bob, who did it
    alice = told["alice@acme.test"]
    assert alice["subject"].startswith("Assigned to you: Printer on fire") and f"[#{n}]" in alice["subject"]
    body = alice["body"]
    assert "Bob Builder assigned issue" in body and "(it was Carol Jones's)" in body
    assert "Priority: high" in body and "My printer is on fire." in body
    with reps_app.sessions() as s:
        alice_id = s.scalar(select(Rep.id).where(Rep.email == "alice@acme.test"))
    assert reps_app.signer.address("support@acme.test", n, alice_id, "note") in body
    carol = told["carol@acme.test"]
    assert "assigned issue" in carol["body"] and "Alice Example" in carol["body"]


def test_take_of_someone_elses_issue_is_refused_unless_forced(reps_app):
    n = open_issue(reps_app)
    rep_mail(reps_app, n, "#take", rep="alice@acme.test")
    before = outbox(reps_app)
    rep_mail(reps_app, n, "#take\nI'll do it.", rep="bob@acme.test")
    assert assignee(reps_app, n) == "alice@acme.test"
    (notice,) = new_mail(reps_app, before)
    assert notice["to"] == ["bob@acme.test"]
    assert f"issue #{n} is held by Alice Example <alice@acme.test>; write #take!" in notice["body"]
    before = outbox(reps_app)
    rep_mail(reps_app, n, "#take!", rep="bob@acme.test")
    assert assignee(reps_app, n) == "bob@acme.test"
    assert [m["to"] for m in new_mail(reps_app, before)] == [["alice@acme.test"]]


def test_desk_commands_in_a_reply_are_refused(app, cli):
    n = open_issue(app)
    before = outbox(app)
    rep_mail(app, n, "#queue\nHello")
    (notice,) = new_mail(app, before)
    assert "#queue: write it to your own desk address" in notice["body"]
    assert state(cli, n)["status"] == "open"


# --- maild reply ------------------------------------------------------------------------


def test_maild_reply_exits_1_with_the_reason_when_a_command_is_refused(app, cli):
    n = open_issue(app)
    result = cli("reply", "--issue", str(n), "--rep", "alice@acme.test", input="#priority asap\nDone.\n")
    assert result.exit_code == 1
    assert f"not sent on issue #{n}: #priority: expected low, normal, high or urgent, got 'asap'" in result.output
    assert [m["kind"] for m in outbox(app) if m["kind"] == "reply"] == []


@pytest.mark.slow
def test_maild_reply_exits_1_when_the_reply_is_held(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    config = write_config(tmp_path / "hold.toml", db_url, extra='[spelling]\nmode = "hold"\n')
    app = build(load(config))
    try:
        n = open_issue(app)
    finally:
        app.close()
    result = run_maild("reply", "--issue", str(n), "--rep", "alice@acme.test", "-c", str(config),
                       input=b"You will recieve it tomorrow.\n")
    assert result.returncode == 1, result.stderr
    assert b"held on issue" in result.stderr and b"recieve" in result.stderr
    sent = run_maild("reply", "--issue", str(n), "--rep", "alice@acme.test", "-c", str(config), input=b"#send\n")
    assert sent.returncode == 0, sent.stderr


def test_maild_reply_says_what_it_did(app, cli):
    n = open_issue(app)
    result = cli("reply", "--issue", str(n), "--rep", "alice@acme.test", input="It is fixed.\n")
    assert result.exit_code == 0 and result.output.strip() == f"recorded on issue #{n}; reply queued to pat@example.com"
    result = cli("reply", "--issue", str(n), "--rep", "alice@home.test", "--note", input="Old firmware.\n")
    assert result.exit_code == 0 and result.output.strip() == f"note recorded on issue #{n}"


def test_maild_reply_rep_must_be_configured(app, cli):
    n = open_issue(app)
    result = cli("reply", "--issue", str(n), "--rep", "mallory@acme.test", input="Hi\n")
    assert result.exit_code == 78
    assert "--rep: mallory@acme.test is not a configured rep" in result.output and "alice@acme.test" in result.output


# --- end to end -------------------------------------------------------------------------


def _wait(sink, predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        found = [m for _, m in sink.messages() if predicate(m)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no {what}: {[m['Subject'] for _, m in sink.messages()]}"
        time.sleep(0.1)


@pytest.mark.slow
def test_assign_alice_by_first_name_over_smtp_and_she_answers_with_her_token(tmp_path, db_url):
    sink = SinkProcess(tmp_path / "sink", free_port())
    sink.folder.mkdir()
    sink.start()
    config = daemon_config(tmp_path, db_url, daemon="\n" + outbound(f"127.0.0.1:{sink.port}", send_interval=1.0))
    config.write_text(config.read_text().replace('name = "Alice"', 'name = "Alice Example"'))
    maild = Maild(config).start()
    try:
        with smtp_client(config) as c:
            c.sendmail("pat@example.com", ["support@acme.test"], message("Lamp broken", body="It flickers."))
        bobs = _wait(sink, lambda m: m["To"] == "bob@acme.test", "notification to Bob")
        with smtp_client(config) as c:
            c.sendmail("bob@acme.test", [bobs["Reply-To"]],
                       message("Re: " + bobs["Subject"], to=bobs["Reply-To"], frm="Bob <bob@acme.test>",
                               body="#assign Alice", msgid="<bob.assign@acme.test>"))
        alices = _wait(sink, lambda m: m["Subject"].startswith("Assigned to you"), "assignment notice")
        assert alices["To"] == "alice@acme.test" and "It flickers." in alices.get_content()
        token = alices["Reply-To"]
        assert token.startswith("support+i") and "-r" in token
        with smtp_client(config) as c:
            c.sendmail("alice@acme.test", [token],
                       message("Re: " + alices["Subject"], to=token, frm="Alice Example <alice@acme.test>",
                               body="We will send a new lamp today.", msgid="<alice.answer@acme.test>"))
        answer = _wait(sink, lambda m: m["To"] == "pat@example.com", "Alice's answer to the customer")
        assert answer["From"] == "support@acme.test" and "We will send a new lamp today." in answer.get_content()
    finally:
        assert maild.stop() == 0
        sink.stop()
