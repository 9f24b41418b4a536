"""What the command line tells people: help, options anywhere, readable cases, status, first-run hints."""

from __future__ import annotations

import json
from datetime import timedelta

import click
import pytest
from sqlalchemy import update

from conftest import REPO, SECRET, run_maild
from daemon_helpers import Maild, daemon_config
from test_pipeline import mail

EXAMPLE = REPO / "config" / "maild.example.toml"


def _walk(cmd: click.Command, path: tuple[str, ...] = ("maild",)):
    yield path, cmd
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd)
        for name in cmd.list_commands(ctx):
            yield from _walk(cmd.get_command(ctx, name), (*path, name))


def test_every_command_and_option_has_help_and_takes_c_v_h():
    from click.testing import CliRunner

    from maild.cli import main

    runner = CliRunner()
    missing = []
    for path, cmd in _walk(main):
        if not (cmd.help or cmd.short_help):
            missing.append(" ".join(path))
        missing += [f"{' '.join(path)} {p.opts[0]}" for p in cmd.params if isinstance(p, click.Option) and not p.help]
        if not isinstance(cmd, click.Group):
            opts = {o for p in cmd.params for o in p.opts}
            assert {"-c", "-v"} <= opts, path
            helped = runner.invoke(main, [*path[1:], "-h"])
            assert helped.exit_code == 0 and "Usage: " in helped.output, path
    assert not missing, f"commands or options without help text: {missing}"


def test_config_and_verbosity_go_before_or_after_the_command():
    for args in (("-c", str(EXAMPLE), "-v", "check"), ("check", "-vv", "-c", str(EXAMPLE)),
                 ("-v", "check", "-c", str(EXAMPLE))):
        r = run_maild(*args)
        assert r.returncode == 0 and b"mailbox support: support@acme.test" in r.stdout, (args, r.stderr)
    version = run_maild("--version")
    assert version.returncode == 0 and version.stdout.startswith(b"maild, version ")
    helped = run_maild("issues", "show", "-h")
    assert helped.returncode == 0 and b"Usage: " in helped.stdout and b"--json" in helped.stdout


def test_check_warns_about_a_missing_or_short_secret_and_says_how_to_fix_it():
    for value, expected in (("", b"MAILD_SECRET is not set"), ("short-but-16-chars", b"only 18 characters")):
        r = run_maild("check", "-c", str(EXAMPLE), env={"MAILD_SECRET": value})
        assert r.returncode == 0 and expected in r.stderr and b"at least 32 characters" in r.stderr
        assert b"token_urlsafe" in r.stderr
    fine = run_maild("check", "-c", str(EXAMPLE), env={"MAILD_SECRET": "x" * 40})
    assert fine.returncode == 0 and b"warning" not in fine.stderr


def test_parse_needs_no_config(tmp_path):
    eml = tmp_path / "m.eml"
    eml.write_bytes(mail(msgid="<parse1@example.com>", subject="Where is my order?"))
    r = run_maild("parse", "--json", str(eml), env={"MAILD_CONFIG": ""})
    assert r.returncode == 0, r.stderr
    parsed = json.loads(r.stdout)
    assert parsed["message_id"] == "parse1@example.com" and parsed["subject"] == "Where is my order?"


def test_issues_list_and_show_read_as_text(cli, tmp_path):
    first = tmp_path / "1.eml"
    first.write_bytes(mail(frm="Pat Customer <pat@example.com>", subject="Printer on fire", body="It burns.",
                           msgid="<text1@example.com>"))
    assert cli("ingest", str(first)).exit_code == 0
    reply = cli("reply", "--issue", "1", "--rep", "alice@acme.test", input="#priority high\nWe are on our way.\n")
    assert reply.exit_code == 0, reply.output
    listed = cli("issues", "list")
    assert listed.exit_code == 0
    (line,) = listed.output.splitlines()
    assert line.startswith("#1") and "open" in line and "pat@example.com" in line and "Printer on fire" in line

    shown = cli("issues", "show", "1")
    assert shown.exit_code == 0, shown.output
    text = shown.output
    for expected in ("Issue:            #1", "Subject:          Printer on fire", "Status:           open",
                     "Category:         uncategorized", "Priority:         high", "Mailbox:          support",
                     "Customer:         Pat Customer <pat@example.com>", "Order:            -"):
        assert expected in text, text
    inbound = text.index("--- 1. inbound email from Pat Customer <pat@example.com>")
    assert text.index("It burns.") > inbound
    rep_mail = text.index("internal email from Alice <alice@acme.test> (rep Alice)")
    sent = text.index("outbound email from support@acme.test (rep Alice)")
    notices = text.index("Notices to reps")  # the notifications: listed apart, after the interactions
    assert inbound < rep_mail < sent < notices
    assert "We are on our way." in text[sent:notices] and "#priority" not in text[sent:]
    assert "notification" in text[notices:] and "to alice@acme.test" in text[notices:]


def test_status_reports_backlog_quarantine_outbox_and_failing_addresses(cli, tmp_path, settings):
    from maild.app import build
    from maild.ingest.intake import Incoming, accept
    from maild.models import CustomerAddress, utcnow

    empty = cli.json("status")
    assert empty["backlog"] == 0 and empty["oldest_pending"] is None and empty["quarantined"] == 0
    assert set(empty["outbox"]) >= {"queued", "sending", "sent", "held", "failed", "unknown"}

    good = tmp_path / "good.eml"
    good.write_bytes(mail(msgid="<st1@example.com>"))
    assert cli("ingest", str(good)).exit_code == 0  # an issue, and an acknowledgement queued
    nosender = tmp_path / "nosender.eml"
    nosender.write_bytes(b"To: support@acme.test\r\nSubject: x\r\nMessage-ID: <st2@x>\r\n\r\nhi\r\n")
    assert cli("ingest", str(nosender)).exit_code == 0  # quarantined
    app = build(settings)
    try:
        accept(app.sessions, Incoming(mail(msgid="<st3@example.com>"), "support", "pipe"))  # stored, not processed
        with app.sessions() as session, session.begin():
            session.execute(update(CustomerAddress).values(failing_until=utcnow() + timedelta(days=3)))
    finally:
        app.close()

    report = cli.json("status")
    assert report["backlog"] == 1 and report["oldest_pending"] is not None
    assert report["oldest_pending_age_seconds"] >= 0
    assert report["quarantined"] == 1
    queued = len(cli.json("outbox", "list", "--status", "queued"))  # the acknowledgement, the reps' notifications
    assert queued >= 1 and report["outbox"]["queued"] == queued and report["outbox"]["sent"] == 0
    assert report["failing_addresses_count"] == 1
    assert [a["email"] for a in report["failing_addresses"]] == ["pat@example.com"]
    text = cli("status").output
    assert "backlog: 1 message(s)" in text and "quarantine: 1" in text and f"{queued} queued" in text
    assert "pat@example.com" in text


@pytest.mark.parametrize("status", ["queued", "sending", "sent", "held", "failed", "unknown"])
def test_outbox_list_takes_every_outbox_status(cli, status):
    assert cli.json("outbox", "list", "--status", status) == []


def test_ingest_processes_a_copy_that_an_earlier_run_stored_but_never_processed(config_path, settings, db):
    from maild.app import build
    from maild.ingest.intake import Incoming, accept

    raw = mail(msgid="<stranded@example.com>")
    app = build(settings)
    try:
        stored = accept(app.sessions, Incoming(raw, "support", "pipe"))  # the run that died after the commit
    finally:
        app.close()
    assert db.pending() == 1
    r = run_maild("ingest", "-c", str(config_path), input=raw)  # the MTA's retry
    assert r.returncode == 0, r.stderr
    assert f"raw {stored.raw_id}: interaction issue 1".encode() in r.stderr
    assert db.pending() == 0
    assert db.inbound_subjects() == {"Printer on fire": 1}
    again = run_maild("ingest", "-c", str(config_path), input=raw)
    assert again.returncode == 0 and b"duplicate, nothing new" in again.stderr
    assert db.inbound_subjects() == {"Printer on fire": 1}


def test_run_prints_one_banner_and_no_migration_chatter(tmp_path, db_url):
    cfg = daemon_config(tmp_path, db_url)
    maild = Maild(cfg, env={"MAILD_SECRET": SECRET + "-long-enough-now"}).start()
    try:
        maild.wait_for("reply tokens on")
    finally:
        assert maild.stop() == 0
    log = maild.log
    (banner,) = [line for line in log.splitlines() if "listening: SMTP on 127.0.0.1:" in line]
    assert "INFO" in banner and "database " in banner and "outgoing mail " in banner
    for chatter in ("Context impl", "Will assume", "Running upgrade"):
        assert chatter not in log
    assert "MAILD_SECRET" not in log  # long enough: no warning


def test_run_warns_at_start_when_the_secret_is_missing(tmp_path, db_url):
    cfg = daemon_config(tmp_path, db_url)
    maild = Maild(cfg, env={"MAILD_SECRET": ""}).start()
    try:
        maild.wait_for("reply tokens off")
    finally:
        assert maild.stop() == 0
    assert "WARNING maild.daemon MAILD_SECRET is not set" in maild.log
    assert "at least 32 characters" in maild.log
