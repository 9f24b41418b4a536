"""Faults from peers: two senders before a slow relay, a relay that refuses one
recipient, and a hostile encoded-word mail among normal mail to `maild run`.

Each returns its figures as a dict (the tests assert on them) and prints them.
"""

from __future__ import annotations

import smtplib
import subprocess
import threading
import time
from pathlib import Path

from fault_kills import OUTBOUND, delivery, queue_mail, send_until_done
from fault_kit import (REPO, WAIT, Daemon, Db, Sink, child_env, free_port, maild_argv, maild_json, message,
                       ok, run_maild,
                       tally, write_config)


def two_senders(db_url: str, work: Path, mails: int = 8, delay: float = 0.2, timeout: float = 1.0) -> dict:
    """The second sender starts once the first has held its rows past `sending_timeout`
    (two daemons whose send jobs overlap, one of them busy with a slow relay)."""
    started = time.monotonic()
    with Sink(work / "sink", delay=delay) as sink:
        config = write_config(work, db_url, acknowledge=True,
                              outbound=OUTBOUND.format(port=sink.port, timeout=timeout))
        queue_mail(config, work, mails, "Fault senders")
        db = Db(db_url)
        argv = maild_argv("outbox", "send", "-c", str(config))
        first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(), cwd=REPO)
        deadline = time.monotonic() + WAIT
        while sink.count() < 1 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(timeout + 0.2)
        second = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=child_env(),
                                  cwd=REPO)
        exits = [p.wait(WAIT * 2) for p in (first, second)]
        runs = send_until_done(config, db)
        figures = {"senders_exit": exits, "final_runs": runs, **delivery(db, sink),
                   "seconds": round(time.monotonic() - started, 1)}
        db.close()
    print("two-senders: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return figures


def refusal(db_url: str, work: Path) -> dict:
    """A rep's reply to the customer with a CC the relay refuses (550 at RCPT)."""
    refused = "boss@example.org"
    with Sink(work / "sink", reject=(refused,)) as sink:
        config = write_config(work, db_url, outbound=OUTBOUND.format(port=sink.port, timeout=1.0))
        ok(run_maild(config, "ingest", input=message("Fault refusal", "<fault.refusal@example.com>")))
        issue_id = maild_json(config, "issues", "list")[0]["id"]
        body = f"#cc add {refused}\nHello Pat,\n\nWe are sending a new printer today.\n\nAlice\n"
        ok(run_maild(config, "reply", "--issue", str(issue_id), "--rep", "alice@acme.test", input=body.encode()))
        db = Db(db_url)
        send_until_done(config, db)
        db.close()
        issue = maild_json(config, "issues", "show", str(issue_id))
        replies = [(env, data) for env, data in sink.messages() if b"new printer" in data]
        outbox = maild_json(config, "outbox", "list")
    reply_rows = [row for row in outbox if row["kind"] == "reply"]
    notes = [i for i in issue["interactions"] if i["kind"] == "note" and refused in (i.get("new_text") or "")]
    figures = {"reply_copies": len(replies), "delivered_to": sorted({a for env, _ in replies for a in env["to"]}),
               "reply_status": [row["status"] for row in reply_rows], "notes_naming_refused": len(notes)}
    print("refusal: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return figures


# -- a hostile encoded-word subject ------------------------------------------------------------


def hostile_mail(size: int = 2_500_000) -> bytes:
    """A Subject of RFC 2047 encoded words, folded, `size` bytes long."""
    word = b"=?utf-8?b?w6nDqMOgw7zDtsOk?="  # "éèàüöä"
    words = b"\r\n ".join([word] * (size // (len(word) + 3)))
    return (b"From: mallory@example.net\r\nTo: support@acme.test\r\nMessage-ID: <fault.hostile@example.net>\r\n"
            b"Subject: " + words + b"\r\n\r\nHello.\r\n")


def _send(port: int, data: bytes, out: dict, key: str, tries: int = 50) -> None:
    """Send until 250 (4xx and lost connections are retried); records the last answer."""
    for _ in range(tries):
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=WAIT) as s:
                s.sendmail("mallory@example.net" if key == "hostile" else "pat@example.com",
                           ["support@acme.test"], data)
            out[key] = "250"
            return
        except smtplib.SMTPResponseException as exc:
            out[key] = f"{exc.smtp_code}"
            if exc.smtp_code >= 500:
                return
        except (smtplib.SMTPException, OSError) as exc:
            out[key] = type(exc).__name__
        time.sleep(0.2)


def hostile(db_url: str, work: Path, normal: int = 20, size: int = 2_500_000) -> dict:
    """The hostile mail first, then normal mail while maild works on it."""
    started = time.monotonic()
    port = free_port()
    config = write_config(work, db_url, smtp=f'listen = "127.0.0.1:{port}"')
    daemon = Daemon(config).start()
    answers: dict[str, str] = {}
    bad = threading.Thread(target=_send, args=(port, hostile_mail(size), answers, "hostile"), daemon=True)
    bad.start()
    bad.join(WAIT)
    tag = "Fault beside hostile"
    subjects = [f"{tag} {i}" for i in range(normal)]
    good = [threading.Thread(target=_send, args=(port, message(s, f"<fault.beside.{i}@example.com>"), answers, s),
                             daemon=True) for i, s in enumerate(subjects)]
    for t in good:
        t.start()
    for t in good:
        t.join(WAIT)
    db = Db(db_url)
    deadline = time.monotonic() + WAIT
    while db.subjects(tag).total() < normal and time.monotonic() < deadline:
        time.sleep(0.1)
    drained = db.wait_drained(max(1.0, deadline - time.monotonic()))
    seen = db.subjects(tag)
    db.close()
    quarantine = maild_json(config, "quarantine", "list")
    hostile_done = db_outcome(db_url)
    code = daemon.stop()
    figures = {"hostile_answer": answers.get("hostile"), "normal": normal,
               "normal_250": sum(1 for s in subjects if answers.get(s) == "250"), **tally(subjects, seen),
               "hostile_quarantined": len(quarantine), "hostile_state": hostile_done, "drained": drained,
               "exit": code, "seconds": round(time.monotonic() - started, 1)}
    print("hostile: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return figures


def db_outcome(db_url: str) -> str | None:
    """The hostile message's raw-store state (done, quarantined, pending), or None if never stored."""
    from sqlalchemy import select

    from maild.models import RawMessage

    db = Db(db_url)
    try:
        rows = db.rows(select(RawMessage.state, RawMessage.envelope_from).where(
            RawMessage.envelope_from == "mallory@example.net"))
    finally:
        db.close()
    return rows[0].state if rows else None

