"""The fault suite's glue: the bench/ fault scripts importable from the tests, the
seed, and the one fault that needs Dovecot (the same message by LMTP and IMAP).

The kill loops and relay faults live in bench/ so they can be run by hand and
print their figures; the tests call the same functions and assert on them.
"""

from __future__ import annotations

import os
import smtplib
import sys
import time
from pathlib import Path

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from dovecot import PASSWORD, Dovecot
from fault_kit import WAIT, Daemon, Db, free_port, message, q, write_config

PASSWORD_ENV = "MAILD_TEST_IMAP_PASSWORD"


def seed() -> int:
    """MAILD_FAULT_SEED repeats a run (each loop prints the seed it used); fixed by default."""
    return int(os.environ.get("MAILD_FAULT_SEED", "20261102"))


def _until(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"after {timeout}s, still waiting for {what}")
        time.sleep(0.1)


def lmtp_and_imap(db_url: str, work: Path, server: Dovecot) -> dict:
    """Two messages, each to support@ over LMTP and to billing@'s IMAP folder (To support,
    Cc billing): the first over LMTP then IMAP, the second the other way round."""
    lmtp = free_port()
    boxes = ('[[mailbox]]\nname = "support"\naddress = "support@acme.test"\nacknowledge = false\n\n'
             '[[mailbox]]\nname = "billing"\naddress = "billing@acme.test"\nacknowledge = false\n\n'
             f'[mailbox.imap]\nhost = "127.0.0.1"\nport = {server.port}\ntls = "none"\nuser = {q(server.user)}\n'
             f'password_env = "{PASSWORD_ENV}"\npoll_interval = 1.0\n')
    config = write_config(work, db_url, mailboxes=boxes,
                          smtp=f'listen = "127.0.0.1:{free_port()}"\nlmtp_listen = "127.0.0.1:{lmtp}"')
    daemon = Daemon(config, env={PASSWORD_ENV: PASSWORD}).start()
    tag = "Fault both paths"
    mails = [message(f"{tag} {i}", f"<fault.both.{i}@example.com>", cc="billing@acme.test") for i in (1, 2)]
    db = Db(db_url)
    try:
        answers = [_lmtp(lmtp, mails[0])]
        server.append("INBOX", mails[0])
        _until(lambda: not server.messages("INBOX"), "maild to take the first message from IMAP")
        server.append("INBOX", mails[1])
        _until(lambda: not server.messages("INBOX"), "maild to take the second message from IMAP")
        answers.append(_lmtp(lmtp, mails[1]))
        _until(lambda: db.subjects(tag).total() >= 2 and db.wait_drained(0), "both messages processed")
        time.sleep(1.5)  # a copy that was to create something more has had its chance: a drain_interval
        _until(lambda: db.wait_drained(0), "the copies processed")
        seen, states = db.subjects(tag), db.raw_states()
    finally:
        db.close()
        code = daemon.stop()
    return {"lmtp_answers": answers, "interactions": dict(seen), "raw": sum(states.values()),
            "quarantined": states.get("quarantined", 0), "exit": code}


def _lmtp(port: int, data: bytes) -> dict:
    with smtplib.LMTP("127.0.0.1", port, timeout=WAIT) as c:
        return c.sendmail("pat@example.com", ["support@acme.test"], data)
