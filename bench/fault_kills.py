"""kill -9 at random moments: SMTP intake, `maild import`, the outbox sender.

Each loop kills a maild child with SIGKILL at least `kills` times, at moments
drawn from a seeded Random (printed, so a run can be repeated): mostly "after
the next k messages", with k drawn so that the kills spread over the whole
run, sometimes a plain delay after the start. Then it lets maild finish and
counts what a user depends on: every acknowledged message exactly one
interaction, every queued mail at the relay, at most one resend. The figures
are returned as a dict (the tests assert on them) and printed.
"""

from __future__ import annotations

import email
import mailbox
import random
import smtplib
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from email import policy
from pathlib import Path

from fault_kit import (REPO, WAIT, Daemon, Db, Sink, child_env, free_port, kill9, maild_argv, message,
                       ok, run_maild, seeded, tally, write_config)


def _step(rng: random.Random, remaining: int, kills_left: int) -> int:
    """How many more messages to let through before the next kill: about an even share."""
    return rng.randint(1, max(1, 2 * remaining // (kills_left + 1)))


def _wait(condition: Callable[[], bool], proc: subprocess.Popen | None = None, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline and (proc is None or proc.poll() is None):
        time.sleep(0.02)


# -- SMTP intake ------------------------------------------------------------------------------


class Clients:
    """Senders that retry every message until it gets its 250, as a real MTA does."""

    def __init__(self, port: int, mails: list[tuple[str, bytes]], clients: int, seed: int) -> None:
        self.port, self.mails = port, mails
        self.acked: set[str] = set()
        self.failures = 0
        self.lock = threading.Lock()
        self.give_up = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(k, clients, seed + k), daemon=True)
                        for k in range(clients)]

    def start(self) -> Clients:
        for t in self.threads:
            t.start()
        return self

    def done(self) -> bool:
        return not any(t.is_alive() for t in self.threads)

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for t in self.threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self.give_up.set()

    def _run(self, k: int, clients: int, seed: int) -> None:
        rng = random.Random(seed)
        conn: smtplib.SMTP | None = None
        for subject, data in self.mails[k::clients]:
            while not self.give_up.is_set():
                try:
                    if conn is None:
                        conn = smtplib.SMTP("127.0.0.1", self.port, timeout=20)
                        conn.ehlo("client.test")
                    conn.sendmail(f"c{k}@example.com", ["support@acme.test"], data)
                    break
                except (smtplib.SMTPException, OSError):  # refused, 4xx, cut off, no answer: try again
                    with self.lock:
                        self.failures += 1
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(rng.uniform(0.02, 0.2))
            else:
                return
            with self.lock:
                self.acked.add(subject)
        if conn is not None:
            try:
                conn.quit()
            except (smtplib.SMTPException, OSError):
                conn.close()


def smtp_kill(db_url: str, work: Path, n: int = 200, kills: int = 10, clients: int = 4,
              seed: int | None = None) -> dict:
    rng = seeded(seed, "smtp-kill")
    port = free_port()
    config = write_config(work, db_url, smtp=f'listen = "127.0.0.1:{port}"\nstore_timeout = 1.0')
    tag = "Fault smtp"
    mails = [(f"{tag} {i}", message(f"{tag} {i}", f"<fault.smtp.{i}@example.com>", frm=f"c{i % 17}@example.com"))
             for i in range(n)]
    started = time.monotonic()
    daemon = Daemon(config).start()
    senders = Clients(port, mails, clients, rng.randrange(2**31)).start()
    done = 0
    for k in range(kills):
        if k and rng.random() < 0.2:  # during start-up: migration check, listeners, the first drain
            daemon.kill()
            daemon.start(ready=False)
            time.sleep(rng.uniform(0.05, 1.0))
        else:
            target = len(senders.acked) + _step(rng, n - len(senders.acked), kills - k)
            _wait(lambda: len(senders.acked) >= target or senders.done(), daemon.proc)  # noqa: B023 (called now)
            time.sleep(rng.uniform(0.0, 0.05))
        done += daemon.kill()
        daemon.start()
    senders.join(WAIT)
    db = Db(db_url)
    drained = db.wait_drained()
    code = daemon.stop()
    seen, states = db.subjects(tag), db.raw_states()
    db.close()
    acked = sorted(senders.acked)
    figures = {"kills": done, "mails": n, "acked": len(acked), "client_retries": senders.failures,
               **tally(acked, seen), "interactions": sum(seen.values()), "raw": sum(states.values()),
               "quarantined": states.get("quarantined", 0), "drained": drained, "exit": code,
               "seconds": round(time.monotonic() - started, 1)}
    print("smtp-kill: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return figures


# -- maild import -----------------------------------------------------------------------------


def write_mbox(path: Path, tag: str, n: int) -> list[str]:
    box = mailbox.mbox(str(path), create=True)
    subjects = []
    box.lock()
    for i in range(n):
        subject = f"{tag} {i}"
        box.add(message(subject, f"<fault.import.{i}@example.com>", frm=f"c{i % 23}@example.com"))
        subjects.append(subject)
    box.flush()
    box.unlock()
    box.close()
    return subjects


def _progress(db: Db) -> int:
    """Messages stored plus messages processed so far (0 before the first run made the schema)."""
    try:
        states = db.raw_states()
    except Exception:  # no tables yet
        return 0
    return sum(states.values()) + sum(v for s, v in states.items() if s != "pending")


def import_kill(db_url: str, work: Path, n: int = 1000, kills: int = 12, batch: int = 20,
                seed: int | None = None) -> dict:
    """Kills land while batches are stored and while they are processed: progress counts both."""
    rng = seeded(seed, "import-kill")
    tag = "Fault import"
    source = work / "archive.mbox"
    subjects = write_mbox(source, tag, n)
    config = write_config(work, db_url)
    argv = maild_argv("import", "--mailbox", "support", "--batch", str(batch), str(source), "-c", str(config))
    db = Db(db_url)
    started = time.monotonic()
    done = completed_early = 0
    while done < kills and _progress(db) < 2 * n:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
                                cwd=REPO)
        if rng.random() < 0.2:  # start-up: the drain of what an earlier run left pending
            _wait(lambda: False, proc, timeout=rng.uniform(0.05, 0.5))
        else:
            progress = _progress(db)
            # progress moves a batch at a time, past the target: aim at about a quarter of an even share
            target = progress + rng.randint(1, max(1, (2 * n - progress) // (2 * (kills - done + 1))))
            _wait(lambda: _progress(db) >= target, proc)  # noqa: B023 (called now)
            time.sleep(rng.uniform(0.0, 0.02))
        killed = kill9(proc)
        done += killed
        completed_early += not killed
    final = subprocess.run(argv, capture_output=True, env=child_env(), cwd=REPO, timeout=WAIT * 3)
    again = subprocess.run(argv, capture_output=True, env=child_env(), cwd=REPO, timeout=WAIT * 3)
    seen, states = db.subjects(tag), db.raw_states()
    db.close()
    figures = {"kills": done, "runs_completed_before_kill": completed_early, "mails": n, **tally(subjects, seen),
               "interactions": sum(seen.values()), "raw": sum(states.values()),
               "pending": states.get("pending", 0), "quarantined": states.get("quarantined", 0),
               "final_exit": final.returncode, "rerun_exit": again.returncode,
               "rerun_says": (again.stdout.decode(errors="replace").strip().splitlines() or [""])[-1],
               "seconds": round(time.monotonic() - started, 1)}
    if final.returncode:
        print(final.stderr.decode(errors="replace")[-3000:])
    print("import-kill: " + " ".join(f"{k}={v}" for k, v in figures.items() if k != "rerun_says")
          + f" rerun: {figures['rerun_says']!r}", flush=True)
    return figures


# -- the outbox sender ------------------------------------------------------------------------


OUTBOUND = ("relay = \"127.0.0.1:{port}\"\nretry_base = 0.2\nretry_max = 1.0\nsending_timeout = {timeout}\n"
            "timeout = 10.0\n")


def queue_mail(config: Path, work: Path, n: int, tag: str) -> None:
    """n customer mails from n senders through `maild ingest`: each queues an
    acknowledgement and a notification to each rep."""
    folder = work / "incoming"
    folder.mkdir(exist_ok=True)
    files = []
    for i in range(n):
        path = folder / f"{i}.eml"
        path.write_bytes(message(f"{tag} {i}", f"<fault.{tag.split()[-1]}.{i}@example.com>",
                                 frm=f"customer{i}@example.com"))
        files.append(str(path))
    ok(run_maild(config, "ingest", *files, timeout=WAIT * 3))


def outbox_rows(db: Db) -> list:
    from sqlalchemy import select

    from maild.models import OutboxMessage

    columns = [OutboxMessage.id, OutboxMessage.message_id, OutboxMessage.status, OutboxMessage.data]
    if hasattr(OutboxMessage, "resends"):
        columns.append(OutboxMessage.resends)
    return db.rows(select(*columns).order_by(OutboxMessage.id))


def send_until_done(config: Path, db: Db, timeout: float = WAIT) -> int:
    """`maild outbox send` until no row is queued or sending; returns the runs it took."""
    deadline, runs = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        if not any(r.status in ("queued", "sending") for r in outbox_rows(db)):
            break
        run_maild(config, "outbox", "send")
        runs += 1
        time.sleep(0.3)  # a row left "sending" becomes due again after sending_timeout
    return runs


def _bare(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").rstrip(b"\n")


def delivery(db: Db, sink: Sink) -> dict:
    """What the relay holds against what the outbox holds."""
    rows = outbox_rows(db)
    by_id = {r.message_id.strip("<>"): r for r in rows}
    got: dict[str, list[bytes]] = {}
    for _env, data in sink.messages():
        mid = str(email.message_from_bytes(data, policy=policy.default)["Message-ID"]).strip("<>")
        got.setdefault(mid, []).append(data)
    copies = Counter({mid: len(datas) for mid, datas in got.items()})
    differing = sum(1 for mid, datas in got.items() if mid in by_id
                    for d in datas if _bare(d) != _bare(by_id[mid].data))
    return {"rows": len(rows), "statuses": dict(Counter(r.status for r in rows)),
            "delivered": sum(1 for mid in by_id if copies[mid]),
            "undelivered": sum(1 for mid in by_id if not copies[mid]),
            "undelivered_not_unknown": sum(1 for mid, r in by_id.items() if not copies[mid] and r.status != "unknown"),
            "sent_not_delivered": sum(1 for mid, r in by_id.items() if not copies[mid] and r.status == "sent"),
            "at_sink": sum(copies.values()), "extra_copies": sum(c - 1 for c in copies.values() if c > 1),
            "max_copies": max(copies.values(), default=0),
            "foreign_message_ids": sum(1 for mid in copies if mid not in by_id),
            "differing_copies": differing,
            "max_resends": max((getattr(r, "resends", 0) or 0 for r in rows), default=0)}


def outbox_kill(db_url: str, work: Path, mails: int = 40, kills: int = 10, delay: float = 0.02,
                seed: int | None = None) -> dict:
    rng = seeded(seed, "outbox-kill")
    started = time.monotonic()
    with Sink(work / "sink", delay=delay) as sink:
        config = write_config(work, db_url, acknowledge=True,
                              outbound=OUTBOUND.format(port=sink.port, timeout=1.0))
        queue_mail(config, work, mails, "Fault outbox")
        db = Db(db_url)
        total = len(outbox_rows(db))
        argv = maild_argv("outbox", "send", "-c", str(config))
        done = starts = 0
        # Until `kills` real kills (a sender that finished first is no kill), while rows are left to send.
        while done < kills and starts < 4 * kills and any(r.status in ("queued", "sending") for r in outbox_rows(db)):
            starts += 1
            proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
                                    cwd=REPO)
            if rng.random() < 0.25:
                _wait(lambda: False, proc, timeout=rng.uniform(0.1, 1.0))
            else:
                target = sink.count() + _step(rng, max(0, total - sink.count()), kills - done)
                _wait(lambda: sink.count() >= target, proc)  # noqa: B023 (called now)
                time.sleep(rng.uniform(0.0, 2 * delay))  # between the relay's 250 and marking the row sent
            done += kill9(proc)
            if proc.returncode == 0:
                time.sleep(0.3)  # it finished what was due; the rest is backing off or left "sending"
        runs = send_until_done(config, db)
        figures = {"kills": done, "final_runs": runs, **delivery(db, sink),
                   "seconds": round(time.monotonic() - started, 1)}
        db.close()
    print("outbox-kill: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    return figures
