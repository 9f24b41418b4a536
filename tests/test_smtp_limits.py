"""What one SMTP peer may cost `maild run`: sessions, time, memory, and the store's wait;
and envelopes that are not text. Over loopback, with raw sockets where smtplib
would not misbehave on purpose."""

from __future__ import annotations

import select
import smtplib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select as sql_select

from conftest import REPO
from daemon_helpers import InProcess, Maild, daemon_config, message, ports_of, smtp_client
from maild.ingest.smtp_guards import peer_key


@pytest.fixture
def start(tmp_path, db_url):
    """start(store_timeout=S, **daemon_config options) -> a running Maild, stopped at teardown."""
    running: list[Maild] = []

    def go(store_timeout: float = 1.0, **options) -> Maild:
        config = daemon_config(tmp_path, db_url, **options)
        config.write_text(config.read_text().replace("store_timeout = 1.0", f"store_timeout = {store_timeout}"))
        m = Maild(config).start()
        running.append(m)
        return m

    yield go
    for m in running:
        m.stop()
        m.kill()


class Peer:
    """One raw SMTP session: bytes exactly as the test writes them, from `source`
    (any 127.x.y.z address is loopback on Linux, so each can be another client)."""

    def __init__(self, port: int, timeout: float = 30, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
        self.file = self.sock.makefile("rb")

    def reply(self) -> bytes:
        """The last line of the next reply ("250-..." lines skipped)."""
        while (line := self.file.readline()) and line[3:4] == b"-":
            pass
        return line

    def say(self, line: bytes) -> bytes:
        self.sock.sendall(line + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def test_sessions_past_max_sessions_get_421_and_a_freed_slot_serves_again(start, db):
    maild = start(smtp="max_sessions = 3")
    port = ports_of(maild.config)["smtp"]
    held = [Peer(port) for _ in range(3)]
    assert all(p.reply().startswith(b"220 ") for p in held)
    extra = Peer(port)
    assert extra.reply().startswith(b"421 4.7.0")
    assert extra.file.read() == b""  # and closed
    extra.close()
    held.pop().close()
    for _ in range(100):  # the daemon frees the slot once it has seen the close
        try:
            client = smtp_client(maild.config)
            break
        except smtplib.SMTPConnectError as exc:
            assert exc.smtp_code == 421
            time.sleep(0.1)
    with client as s:
        s.sendmail("pat@example.com", ["support@acme.test"], message("After a slot was freed"))
    for p in held:
        p.close()
    db.wait_processed(1)
    assert db.inbound_subjects() == {"After a slot was freed": 1}
    assert "code=421 reason=too-many-sessions limit=3" in maild.log


def test_idle_sessions_from_one_address_stop_at_max_sessions_per_ip_and_other_addresses_are_served(start, db):
    maild = start(smtp="max_sessions_per_ip = 3")
    port = ports_of(maild.config)["smtp"]
    held = [Peer(port, source="127.0.0.2") for _ in range(3)]
    for p in held:  # connections that only keep themselves alive
        assert p.reply().startswith(b"220 ")
        assert p.say(b"NOOP").startswith(b"250")
    extra = Peer(port, source="127.0.0.2")
    assert extra.reply().startswith(b"421 4.7.0")
    assert extra.file.read() == b""  # and closed
    extra.close()
    with smtplib.SMTP("127.0.0.1", port, timeout=30, source_address=("127.0.0.3", 0)) as s:
        s.sendmail("pat@example.com", ["support@acme.test"], message("From another address"))
    assert all(p.say(b"NOOP").startswith(b"250") for p in held)  # the held ones were not cut
    for p in held:
        p.close()
    db.wait_processed(1)
    assert db.inbound_subjects() == {"From another address": 1}
    assert "peer=127.0.0.2 code=421 reason=too-many-sessions-per-ip limit=3" in maild.log


@pytest.mark.parametrize(("peer", "counted_as"), [
    ("127.0.0.2", "127.0.0.2"),
    ("::ffff:192.0.2.7", "192.0.2.7"),  # an IPv4 client on a dual-stack listener
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),  # a client cannot walk its /64 past the cap
    ("2001:db8:1:2:ffff::9", "2001:db8:1:2::/64"),
    ("fe80::1%eth0", "fe80::/64"),
])
def test_max_sessions_per_ip_counts_an_ipv6_client_by_its_64(peer, counted_as):
    assert peer_key(peer) == counted_as


def test_lmtp_hand_off_is_served_while_smtp_is_full_and_has_no_per_ip_cap(start, db):
    maild = start(smtp="max_sessions = 2\nmax_sessions_per_ip = 1\nmax_lmtp_sessions = 3", lmtp=True)
    ports = ports_of(maild.config)
    held = [Peer(ports["smtp"], source=f"127.0.0.{n}") for n in (2, 3)]
    assert all(p.reply().startswith(b"220 ") for p in held)
    extra = Peer(ports["smtp"], source="127.0.0.4")
    assert extra.reply().startswith(b"421 4.7.0")
    extra.close()
    # The MTA's hand-off: three sessions from one loopback address, past SMTP's pool and per-IP cap.
    lmtp_held = [Peer(ports["lmtp"]) for _ in range(2)]
    assert all(p.reply().startswith(b"220 ") for p in lmtp_held)
    with smtplib.LMTP("127.0.0.1", ports["lmtp"], timeout=30) as s:
        assert s.sendmail("pat@example.com", ["support@acme.test"], message("Handed off by the MTA")) == {}
        lmtp_extra = Peer(ports["lmtp"])  # a fourth: LMTP's own pool has its limit too
        assert lmtp_extra.reply().startswith(b"421 4.7.0")
    for p in [*held, *lmtp_held, lmtp_extra]:
        p.close()
    db.wait_processed(1)
    assert db.inbound_subjects() == {"Handed off by the MTA": 1}
    assert "proto=smtp peer=127.0.0.4 code=421 reason=too-many-sessions limit=2" in maild.log
    assert "proto=lmtp peer=127.0.0.1 code=421 reason=too-many-sessions limit=3" in maild.log


def noop_until_closed(peer: Peer) -> bytes:
    """NOOP every 0.1 s (each restarts aiosmtpd's idle timeout) until the daemon answers
    otherwise; at most a minute. Returns that answer, after checking the connection closed."""
    for _ in range(600):
        answer = peer.say(b"NOOP")
        if not answer.startswith(b"250"):
            assert peer.file.read() == b""
            return answer
        time.sleep(0.1)
    raise AssertionError("still open after a minute of NOOPs")


def test_a_session_that_only_sends_noop_ends_at_session_timeout(start, db):
    maild = start(smtp="session_timeout = 1.0\nmax_idle_commands = 100000")
    peer = Peer(ports_of(maild.config)["smtp"])
    assert peer.reply().startswith(b"220 ")
    assert peer.say(b"EHLO client.test").startswith(b"250")
    assert noop_until_closed(peer).startswith(b"421 4.4.2")
    peer.close()
    assert "code=421 reason=session-timeout seconds=1.0" in maild.log


def test_session_timeout_lets_the_message_in_data_finish_then_closes(start, db):
    maild = start(smtp="session_timeout = 2.0")
    peer = Peer(ports_of(maild.config)["smtp"])
    peer.reply()
    for line in (b"EHLO client.test", b"MAIL FROM:<pat@example.com>", b"RCPT TO:<support@acme.test>"):
        assert peer.say(line)[:1] == b"2", line
    assert peer.say(b"DATA").startswith(b"354")
    peer.sock.sendall(message("Under way when the session's time ran out"))
    maild.wait_for("reason=session-timeout in-data")
    peer.sock.sendall(b".\r\n")
    assert peer.reply().startswith(b"250 2.0.0")  # stored and answered
    assert peer.reply().startswith(b"421 4.4.2")  # then the session ends
    assert peer.file.read() == b""
    peer.close()
    db.wait_processed(1)
    assert db.inbound_subjects() == {"Under way when the session's time ran out": 1}


def test_commands_that_move_no_mail_end_the_session_past_max_idle_commands(start, db):
    maild = start(smtp="max_idle_commands = 5")
    peer = Peer(ports_of(maild.config)["smtp"])
    peer.reply()
    for line in (b"EHLO client.test", b"NOOP", b"VRFY <support@acme.test>", b"RSET", b"MAIL FROM:<pat@example.com>",
                 b"RCPT TO:<support@acme.test>", b"NOOP"):  # five that move nothing, with a transaction's own
        assert peer.say(line)[:1] == b"2", line
    assert peer.say(b"DATA").startswith(b"354")
    peer.sock.sendall(message("Sent on a reused connection") + b".\r\n")
    assert peer.reply().startswith(b"250 2.0.0")
    # A message came: the count starts again, as for an MTA that reuses its connection.
    for line in (b"RSET", b"NOOP", b"HELO client.test", b"NOOP", b"NOOP"):
        assert peer.say(line)[:1] == b"2", line
    assert peer.say(b"NOOP").startswith(b"421 4.7.0")
    assert peer.file.read() == b""
    peer.close()
    db.wait_processed(1)
    assert db.inbound_subjects() == {"Sent on a reused connection": 1}
    assert "code=421 reason=too-many-idle-commands limit=5" in maild.log


def test_a_trickle_cannot_stretch_a_transaction_past_transaction_timeout(start, db):
    maild = start(smtp="transaction_timeout = 2.0")
    peer = Peer(ports_of(maild.config)["smtp"])
    peer.reply()
    for line in (b"EHLO client.test", b"MAIL FROM:<slow@example.com>", b"RCPT TO:<support@acme.test>"):
        assert peer.say(line)[:1] == b"2", line
    assert peer.say(b"DATA").startswith(b"354")
    answer = b""
    for _ in range(600):  # a line every 0.1 s, for at most a minute; the daemon ends it long before
        try:
            peer.sock.sendall(b"Subject: slow\r\n")
        except OSError:
            break
        if select.select([peer.sock], [], [], 0.1)[0]:
            answer = peer.file.readline()
            break
    peer.close()
    assert answer.startswith(b"421 4.4.2"), answer
    assert "code=421 reason=transaction-timeout" in maild.log
    with smtp_client(maild.config) as s:  # others are served as before
        s.sendmail("pat@example.com", ["support@acme.test"], message("Sent in time"))
    db.wait_processed(1)
    assert db.inbound_subjects() == {"Sent in time": 1}


def test_envelope_addresses_that_are_not_text_get_precise_refusals(start, db):
    maild = start()
    peer = Peer(ports_of(maild.config)["smtp"])
    peer.reply()
    peer.say(b"EHLO client.test")
    assert peer.say(b"MAIL FROM:<pat\xff@example.com>").startswith(b"501 5.1.7")
    assert peer.say(b"MAIL FROM:<pat\x00@example.com>").startswith(b"501 5.1.7")
    assert peer.say(b"MAIL FROM:<p\xc3\xa4t@example.com>").startswith(b"501 5.1.7")  # UTF-8 without SMTPUTF8
    assert peer.say(b"MAIL FROM:<pat@example.com>").startswith(b"250")
    assert peer.say(b"RCPT TO:<sup\xffport@acme.test>").startswith(b"553 5.1.3")
    assert peer.say(b"RCPT TO:<s\xc3\xbcpport@acme.test>").startswith(b"553 5.1.3")
    assert peer.say(b"RCPT TO:<support\x1b@acme.test>").startswith(b"553 5.1.3")
    assert peer.say(b"VRFY <sup\xffport@acme.test>").startswith(b"252")
    assert peer.say(b"RSET").startswith(b"250")
    # UTF-8 is text in a transaction that says so (RFC 6531).
    assert peer.say(b"MAIL FROM:<p\xc3\xa4t@example.com> SMTPUTF8").startswith(b"250")
    assert peer.say(b"RCPT TO:<support@acme.test>").startswith(b"250")
    assert peer.say(b"DATA").startswith(b"354")
    peer.sock.sendall(message("From an UTF-8 sender") + b".\r\n")
    assert peer.reply().startswith(b"250 2.0.0")
    peer.say(b"QUIT")
    peer.close()
    db.wait_processed(1)
    assert db.inbound_subjects() == {"From an UTF-8 sender": 1}
    log = maild.log_path.read_bytes()
    assert b"\x00" not in log and b"\x1b" not in log
    assert rb"from=<pat\x00@example.com> code=501 reason=sender-control-character" in log
    assert rb"to=<sup\xffport@acme.test> code=553 reason=recipient-undecodable" in log
    assert b"Internal error" not in log


def test_a_message_past_spool_threshold_is_stored_byte_for_byte(start, db):
    maild = start(smtp="spool_threshold = 4096")
    body = "\n".join(f".line {i} starts with a dot, which SMTP doubles on the wire" for i in range(2000))
    raw = message("Spooled to disk", body=body)
    with smtp_client(maild.config) as s:
        s.sendmail("pat@example.com", ["support@acme.test"], raw)
    db.wait_processed(1)
    from maild.models import RawMessage

    assert db.scalar(sql_select(RawMessage.data)) == raw
    assert db.inbound_subjects() == {"Spooled to disk": 1}


LOCK_HOLDER = """
import sys
import sqlite3
from maild import db
from maild.ingest.intake import Incoming, accept

engine = db.make_engine(sys.argv[1])
sessions = db.session_factory(engine)
for i in range(3):  # mail waiting to be processed: the daemon's worker will want the lock too
    data = f"Message-ID: <waiting{i}@example.com>\\r\\nSubject: waiting {i}\\r\\n\\r\\nHello.\\r\\n".encode()
    accept(sessions, Incoming(data, "support", "pipe", "pat@example.com", ("support@acme.test",)))
engine.dispose()
conn = sqlite3.connect(sys.argv[2], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.rollback()
"""


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_store_timeout_bounds_the_wait_while_another_process_holds_the_sqlite_lock(start, db, db_url):
    maild = start(store_timeout=1.0)
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, db_url, db_url.removeprefix("sqlite:///")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline() == "locked\n"
        time.sleep(2.5)  # past drain_interval: the worker is now waiting on the lock, holding its turn
        raw = message("Sent while another process held the lock")
        started = time.monotonic()
        # Without the bound the daemon answered after its worker's 10 s busy wait plus the store's own;
        # the client's timeout turns such a hang into a failure here.
        with smtplib.SMTP("127.0.0.1", ports_of(maild.config)["smtp"], timeout=5) as s:
            with pytest.raises(smtplib.SMTPDataError) as err:
                s.sendmail("pat@example.com", ["support@acme.test"], raw)
            print(f"451 after {time.monotonic() - started:.2f}s with store_timeout 1.0")
            assert (err.value.smtp_code, err.value.smtp_error[:5]) == (451, b"4.3.0")
            holder.communicate("release\n", timeout=30)
            s.sendmail("pat@example.com", ["support@acme.test"], raw)  # the sender's retry
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    db.wait_processed(4)
    assert db.inbound_subjects()["Sent while another process held the lock"] == 1
    assert "code=451 reason=not-stored" in maild.log


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_store_timeout_covers_the_wait_for_the_workers_turn_too(tmp_path, db_url, db):
    """The worker holds its turn while its own transaction waits on another process's lock
    (SQLite's busy wait, up to 10 s); a store waiting behind it is still answered in time."""
    from maild.config import load
    from maild.daemon import build_daemon

    daemon = build_daemon(load(daemon_config(tmp_path, db_url)))  # store_timeout = 1.0
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, db_url, db_url.removeprefix("sqlite:///")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO)
    turn_taken, turn_over = threading.Event(), threading.Event()

    def worker_stuck_on_the_lock() -> None:
        with daemon.intake.gate.process(lambda: True):
            turn_taken.set()
            turn_over.wait(60)

    stuck = threading.Thread(target=worker_stuck_on_the_lock)
    raw = message("Sent while the worker waited on the lock")
    try:
        with InProcess(daemon):
            assert holder.stdout.readline() == "locked\n"
            stuck.start()
            assert turn_taken.wait(30)
            with smtplib.SMTP("127.0.0.1", ports_of(tmp_path / "maild.toml")["smtp"], timeout=5) as s:
                with pytest.raises(smtplib.SMTPDataError) as err:
                    s.sendmail("pat@example.com", ["support@acme.test"], raw)
                assert (err.value.smtp_code, err.value.smtp_error[:5]) == (451, b"4.3.0")
                turn_over.set()
                holder.communicate("release\n", timeout=30)
                s.sendmail("pat@example.com", ["support@acme.test"], raw)  # the sender's retry
            db.wait_processed(4)
    finally:
        turn_over.set()
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        stuck.join(30)
    assert db.inbound_subjects()["Sent while the worker waited on the lock"] == 1


def vm_rss(pid: int) -> int:
    """Resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the edge's memory does not depend on the database
def test_thirty_slow_senders_of_3_mb_leave_memory_bounded_and_others_served(start, db):
    mib = 2**20
    maild = start(smtp=f"max_sessions = 40\nmax_sessions_per_ip = 40\nspool_threshold = {mib}\n"
                       f"max_data_memory = {32 * mib}", store_timeout=30.0)
    port, pid = ports_of(maild.config)["smtp"], maild.proc.pid
    with smtp_client(maild.config) as s:  # the daemon's own allocations first
        s.sendmail("pat@example.com", ["support@acme.test"], message("Warm-up"))
    db.wait_processed(1)
    baseline = vm_rss(pid)
    line = b"x" * 998 + b"\r\n"
    in_data, sent, finish = threading.Barrier(31), threading.Barrier(31), threading.Event()
    answers: list[bytes] = []

    def trickle(n: int) -> None:
        peer = Peer(port, timeout=120)
        try:
            peer.reply()
            for cmd in (b"EHLO slow.test", f"MAIL FROM:<slow{n}@example.com>".encode(),
                        b"RCPT TO:<support@acme.test>", b"DATA"):
                peer.say(cmd)
            in_data.wait(60)
            for i in range(30):  # 3 MB in 30 sips of 100 KB
                peer.sock.sendall(f"Subject: slow {n}\r\n\r\n".encode() if i == 0 else line * 100)
                time.sleep(0.25)
            sent.wait(60)
            finish.wait(60)
            peer.sock.sendall(b".\r\n")
            answers.append(peer.reply())
        except Exception as exc:
            answers.append(repr(exc).encode())
        finally:
            peer.close()

    threads = [threading.Thread(target=trickle, args=(n,)) for n in range(30)]
    for t in threads:
        t.start()
    in_data.wait(60)
    in_flight = baseline
    with smtp_client(maild.config) as s:  # a normal sender while thirty trickle
        refused = s.sendmail("pat@example.com", ["support@acme.test"], message("Normal meanwhile"))
    while sent.n_waiting < 30:
        in_flight = max(in_flight, vm_rss(pid))
        time.sleep(0.1)
    in_flight = max(in_flight, vm_rss(pid))
    sent.wait(60)
    finish.set()
    storing = in_flight
    while any(t.is_alive() for t in threads):
        storing = max(storing, vm_rss(pid))
        time.sleep(0.05)
    print(f"RSS baseline {baseline / mib:.0f} MiB; while 30 x 3 MB arrive +{(in_flight - baseline) / mib:.0f} MiB;"
          f" while they are stored +{(storing - baseline) / mib:.0f} MiB")
    assert refused == {}
    assert sorted(a[:9] for a in answers) == [b"250 2.0.0"] * 30, answers[:3]  # each one stored
    # Arriving: 30 x spool_threshold at most. Without the spool the 90 MB sat in memory
    # as per-line buffers, two to three times their size.
    assert in_flight - baseline < 64 * mib
    # Stored: max_data_memory of message bytes at once, and the database driver's copy.
    assert storing - baseline < 64 * mib + 3 * 32 * mib
