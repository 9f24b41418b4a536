"""The command line as an MTA, an admin and a script use it."""

from __future__ import annotations

import json
import mailbox
import sqlite3
import subprocess
import sys

import pytest

from conftest import REPO, run_maild, write_config
from test_pipeline import mail

sys.path.insert(0, str(REPO / "bench"))
import corpusgen


@pytest.mark.slow
def test_ingest_from_stdin_stores_once_and_exits_zero(config_path):
    raw = mail(msgid="<pipe1@example.com>")
    r = run_maild("ingest", "-c", str(config_path), input=raw)
    assert r.returncode == 0, r.stderr
    assert b"interaction issue 1" in r.stderr
    before = json.loads(run_maild("issues", "list", "--json", "-c", str(config_path)).stdout)
    again = run_maild("ingest", "-c", str(config_path), input=raw)
    assert again.returncode == 0 and b"duplicate" in again.stderr
    after = json.loads(run_maild("issues", "list", "--json", "-c", str(config_path)).stdout)
    assert len(after) == 1 and after == before


def test_ingest_exits_75_when_the_database_is_unreachable(tmp_path):
    cfg = write_config(tmp_path / "down.toml", "postgresql://postgres@127.0.0.1:1/test")
    r = run_maild("ingest", "-c", str(cfg), input=mail())
    assert r.returncode == 75, r.stderr
    assert b"try again later" in r.stderr


@pytest.mark.slow
def test_ingest_exits_75_while_sqlite_is_locked(tmp_path):
    db = tmp_path / "locked.db"
    cfg = write_config(tmp_path / "c.toml", f"sqlite:///{db}")
    assert run_maild("ingest", "-c", str(cfg), input=mail(msgid="<l0@example.com>")).returncode == 0
    lock = sqlite3.connect(db, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        r = run_maild("ingest", "-c", str(cfg), input=mail(msgid="<l1@example.com>"), timeout=120)
    finally:
        lock.close()
    assert r.returncode == 75, r.stderr
    retry = run_maild("ingest", "-c", str(cfg), input=mail(msgid="<l1@example.com>"))
    assert retry.returncode == 0
    listed = json.loads(run_maild("issues", "list", "--json", "-c", str(cfg)).stdout)
    assert len(listed) == 2  # both stored, each once


def test_oversize_message_is_refused_with_a_precise_error(tmp_path, db_url):
    cfg = write_config(tmp_path / "c.toml", db_url, extra="[ingest]\nmax_message_size = 1000\n")
    r = run_maild("ingest", "-c", str(cfg), input=mail(body="x" * 5000))
    assert r.returncode == 65 and b"larger than ingest.max_message_size (1000 bytes)" in r.stderr


def test_import_mbox_and_maildir_twice_imports_nothing_twice(cli, tmp_path):
    manifest = corpusgen.generate(60, 7, tmp_path / "md", "maildir")
    box = mailbox.mbox(tmp_path / "archive.mbox")
    for path in sorted((tmp_path / "md" / "cur").iterdir()):
        box.add(path.read_bytes())
    box.flush()
    first = cli("import", "--mailbox", "support", str(tmp_path / "md"))
    assert first.exit_code == 0 and "imported 60 new message(s), 0 already stored" in first.output
    # The same messages again, from an mbox this time: all already stored.
    again = cli("import", "--mailbox", "support", str(tmp_path / "archive.mbox"))
    assert "imported 0 new message(s), 60 already stored" in again.output
    issues = cli.json("issues", "list")
    assert len(issues) == len(manifest.conversations)
    assert sum(i["interactions"] for i in issues) == 60


def test_import_of_something_that_is_no_mailbox_is_an_error(cli, tmp_path):
    (tmp_path / "notes").mkdir()
    r = cli("import", "--mailbox", "support", str(tmp_path / "notes"))
    assert r.exit_code != 0 and "not a Maildir" in r.output


def test_issues_list_filters(cli, tmp_path):
    for i, (frm, to, box) in enumerate([("a@example.com", "support@acme.test", "support"),
                                         ("b@example.com", "billing@acme.test", "billing")]):
        f = tmp_path / f"{i}.eml"
        f.write_bytes(mail(frm=frm, to=to, msgid=f"<f{i}@example.com>"))
        assert cli("ingest", "--mailbox", box, str(f)).exit_code == 0
    assert [i["customer"] for i in cli.json("issues", "list", "--category", "billing")] == ["b@example.com"]
    assert [i["category"] for i in cli.json("issues", "list", "--customer", "A@example.com")] == ["uncategorized"]
    assert len(cli.json("issues", "list", "--status", "open")) == 2
    assert cli.json("issues", "list", "--status", "closed") == []
    shown = cli.json("issues", "show", "1")
    for key in ("id", "status", "category", "subject", "customer", "created", "updated", "interactions"):
        assert key in shown
    first = shown["interactions"][0]
    for key in ("id", "direction", "kind", "from", "to", "cc", "subject", "date", "message_id", "new_text", "auto"):
        assert key in first


def test_quarantine_list_show_retry_and_discard(cli, tmp_path, monkeypatch):
    import maild.ingest.pipeline as pipeline

    nosender = tmp_path / "nosender.eml"
    nosender.write_bytes(b"To: support@acme.test\r\nSubject: x\r\nMessage-ID: <ns@x>\r\n\r\nhi\r\n")
    assert cli("ingest", str(nosender)).exit_code == 0  # stored, then quarantined: exit 0
    good = tmp_path / "good.eml"
    good.write_bytes(mail(msgid="<q1@example.com>"))
    real = pipeline.thread
    monkeypatch.setattr(pipeline, "thread", lambda *a: (_ for _ in ()).throw(RuntimeError("thread index broken")))
    assert cli("ingest", str(good)).exit_code == 0
    listed = cli.json("quarantine", "list")
    assert [(r["stage"], r["error"].split(":")[0]) for r in listed] == [
        ("store", "maild.ingest.stages.store.NoSender"), ("thread", "RuntimeError")]
    assert "Subject: x" in cli.json("quarantine", "show", str(listed[0]["id"]))["raw"]
    # After the fix, a retry stores the message exactly once.
    monkeypatch.setattr(pipeline, "thread", real)
    r = cli("quarantine", "retry", str(listed[1]["id"]))
    assert r.exit_code == 0 and "interaction issue 1" in r.output
    assert cli("quarantine", "retry", str(listed[1]["id"])).exit_code != 0  # no longer quarantined
    assert cli("quarantine", "discard", str(listed[0]["id"])).exit_code == 0
    assert cli.json("quarantine", "list") == []
    (issue,) = cli.json("issues", "list")
    assert issue["interactions"] >= 1
    inbound = [i for i in cli.json("issues", "show", "1")["interactions"] if i["direction"] == "inbound"]
    assert [i["message_id"] for i in inbound] == ["q1@example.com"]


def test_the_command_table_names_the_module_of_each_command():
    from maild.cli import main

    for name in main.list_commands(None):  # loads every command module
        module = main.commands[name].callback.__module__
        assert main.modules.get(name, "") == module.removeprefix("maild.cli").lstrip("."), name


def test_ingest_from_an_mta_loads_neither_the_daemon_nor_imap(config_path):
    code = (
        "import sys\nfrom maild.cli import main\n"
        "sys.argv = ['maild', 'ingest', '-c', sys.argv[1]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print(sorted(m for m in ('aiosmtpd', 'imapclient', 'apscheduler') if m in sys.modules))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(config_path)], input=mail(), capture_output=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert b"interaction issue 1" in r.stderr
    assert r.stdout.strip() == b"[]"


def test_a_maild_process_collects_garbage_again_once_started_and_a_host_process_is_left_alone(config_path):
    """`maild` as its own process turns the cyclic collector off while it loads and
    freezes what it built; the collector must be on again for the work itself (a daemon
    with it off would never free a cycle). Run through `main` from a host process,
    maild leaves the host's collector as it was."""
    code = (
        "import gc, sys\nfrom maild import cli\n"
        "command = ['status', '-c', sys.argv[1]]\n"
        "sys.argv = ['maild', *command]\n"
        "try:\n    cli.main(command)\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('host', gc.isenabled(), gc.get_freeze_count())\n"
        "try:\n    cli.process_main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('own', gc.isenabled(), gc.get_freeze_count() > 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(config_path)], capture_output=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    marks = [line for line in r.stdout.decode().splitlines() if line.startswith(("host ", "own "))]
    assert marks == ["host True 0", "own True True"]
