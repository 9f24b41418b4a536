"""How every command fails: one line and a sysexits status, never a traceback.

Config errors exit 78 naming the file, the key and the problem; a locked or
unreachable database 75; a refused request 1. Real `maild` processes, a real
second SQLite connection holding the lock, a PostgreSQL port nobody listens on.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, run_maild, write_config
from test_pipeline import mail

READ_ONLY = [
    ("issues", "list"), ("issues", "show", "1"), ("customers", "list"), ("customers", "show", "1"),
    ("customers", "search", "pat"), ("quarantine", "list"), ("outbox", "list"), ("status",),
]


def _no_traceback(r: subprocess.CompletedProcess) -> str:
    err = r.stderr.decode()
    assert "Traceback" not in err, err
    return err


@pytest.fixture
def eml(tmp_path):
    path = tmp_path / "one.eml"
    path.write_bytes(mail(msgid="<exit1@example.com>"))
    return path


@pytest.mark.parametrize("args, key", [
    (("ingest", "--mailbox", "nosuch"), "mailbox: no mailbox named 'nosuch'"),
    (("import", "--mailbox", "nosuch", "{eml}"), "mailbox: no mailbox named 'nosuch'"),
    (("notify", "--to", "pat@example.com", "--template", "acknowledgement", "--mailbox", "nosuch"),
     "mailbox: no mailbox named 'nosuch'"),
])
def test_an_unknown_mailbox_exits_78_naming_the_file_and_key(config_path, eml, args, key):
    r = run_maild(*(a.format(eml=eml) for a in args), "-c", str(config_path), input=eml.read_bytes())
    err = _no_traceback(r)
    assert r.returncode == 78, err
    assert err.startswith(f"maild: {config_path}: {key}"), err
    assert len(err.strip().splitlines()) == 1


def test_reply_without_the_secret_exits_78_naming_the_key(config_path):
    r = run_maild("reply", "--issue", "1", "--rep", "alice@acme.test", "-c", str(config_path),
                  input=b"Hello", env={"MAILD_SECRET": ""})
    err = _no_traceback(r)
    assert r.returncode == 78, err
    assert str(config_path) in err and "security.secret_env" in err and "MAILD_SECRET" in err


@pytest.mark.parametrize("command", [("status",), ("issues", "list"), ("ingest",), ("check",), ("run",)])
def test_an_invalid_config_exits_78_in_every_command(tmp_path, command):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[mailbox]]\nname = "support"\naddress = "support@acme.test"\n[smtp]\nlisten = 25\n')
    r = run_maild(*command, "-c", str(bad), input=b"")
    err = _no_traceback(r)
    assert r.returncode == 78 and f"{bad}: smtp.listen" in err


def test_without_any_config_the_error_says_how_to_give_one():
    r = run_maild("status", env={"MAILD_CONFIG": ""})
    assert r.returncode == 78 and "pass -c FILE or set MAILD_CONFIG" in _no_traceback(r)


def test_an_unreachable_database_exits_75_with_one_line(tmp_path):
    cfg = write_config(tmp_path / "down.toml", "postgresql://maild:hunter2@127.0.0.1:1/test")
    for command in (("status",), ("issues", "list"), ("outbox", "send")):
        r = run_maild(*command, "-c", str(cfg))
        err = _no_traceback(r)
        assert r.returncode == 75, err
        assert len(err.strip().splitlines()) == 1 and "try again later" in err
        assert "hunter2" not in err  # the URL is shown without its password


def _hold_lock(db_path, exclusive: bool) -> subprocess.Popen:
    """Another process with a write transaction open on the SQLite file, until its stdin closes.

    exclusive: EXCLUSIVE locking mode, which keeps readers out even under WAL."""
    mode = "c.execute('PRAGMA locking_mode=EXCLUSIVE')\n" if exclusive else ""
    begin = "EXCLUSIVE" if exclusive else "IMMEDIATE"
    code = (
        "import sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        + mode + f"c.execute('BEGIN {begin}')\n"
        "c.execute('UPDATE raw_messages SET attempts = attempts + 1')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(db_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, cwd=REPO)
    assert proc.stdout.readline().strip() == b"locked"
    return proc


@pytest.fixture
def sqlite_with_an_issue(tmp_path, eml):
    db_path = tmp_path / "busy.db"
    cfg = write_config(tmp_path / "busy.toml", f"sqlite:///{db_path}")
    assert run_maild("ingest", "-c", str(cfg), input=eml.read_bytes()).returncode == 0
    return db_path, cfg


@pytest.mark.slow
def test_read_only_commands_answer_while_another_process_writes(sqlite_with_an_issue):
    db_path, cfg = sqlite_with_an_issue
    holder = _hold_lock(db_path, exclusive=False)
    try:
        for command in READ_ONLY:
            r = run_maild(*command, "-c", str(cfg))
            assert r.returncode == 0, (command, _no_traceback(r))
        listed = json.loads(run_maild("issues", "list", "--json", "-c", str(cfg)).stdout)
    finally:
        holder.communicate(b"")
    assert [i["id"] for i in listed] == [1]


@pytest.mark.slow
def test_read_only_commands_exit_75_when_the_database_is_locked_against_readers(sqlite_with_an_issue):
    db_path, cfg = sqlite_with_an_issue
    holder = _hold_lock(db_path, exclusive=True)
    try:
        results = {command: run_maild(*command, "-c", str(cfg)) for command in READ_ONLY}
    finally:
        holder.communicate(b"")
    for command, r in results.items():
        err = _no_traceback(r)
        assert r.returncode == 75, (command, err)
        assert len(err.strip().splitlines()) == 1 and "database is locked" in err, err
    assert run_maild("status", "-c", str(cfg)).returncode == 0  # and fine once the lock is gone


def test_refused_requests_exit_1_and_say_what_to_do(config_path):
    r = run_maild("quarantine", "retry", "-c", str(config_path))
    assert r.returncode == 1 and "--all" in _no_traceback(r)
    r = run_maild("quarantine", "retry", "--all", "-c", str(config_path))
    assert r.returncode == 1 and "nothing in quarantine to retry" in _no_traceback(r)
    r = run_maild("issues", "show", "99", "-c", str(config_path))
    assert r.returncode == 1 and "no issue #99" in _no_traceback(r)
