"""The outbox sender in its own process: it dies with the daemon, and comes back if it dies alone.

`maild run` is a real subprocess relaying to a real SMTP sink process; the
sender is found by the pid the daemon logs when it starts it.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest

from daemon_helpers import Maild, daemon_config, message, smtp_client, wait_until
from test_outbound import outbound, relay  # noqa: F401  (the fixture)

STARTED = re.compile(r"sender process started pid=(\d+)")


def gone(pid: int) -> bool:
    """No such process, or a zombie its new parent has yet to reap."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.fixture
def maild(tmp_path, db_url, relay):  # noqa: F811
    relay.start()
    config = daemon_config(tmp_path, db_url, daemon="\n" + outbound(f"127.0.0.1:{relay.port}", send_interval=3600.0))
    m = Maild(config).start()
    yield m
    m.kill()


def senders(m: Maild) -> list[int]:
    return [int(p) for p in STARTED.findall(m.log)]


def test_the_sender_process_goes_when_the_daemon_is_killed(maild):
    (pid,) = wait_until(lambda: senders(maild), "the sender process to start")
    assert not gone(pid)
    os.kill(maild.proc.pid, signal.SIGKILL)
    maild.proc.wait()
    wait_until(lambda: gone(pid), "the orphaned sender process to exit")


def test_the_daemon_answers_mail_once_its_sender_process_is_ready(maild):
    """The sender process is built (imports, database) before the listener answers, so the
    first mail after a start is acknowledged as promptly as any other."""
    (pid,) = senders(maild)  # logged before the daemon says it listens (Maild.start waited for that)
    ready, started = maild.log.find(f"sender process pid={pid} ready"), maild.log.find("maild.daemon started smtp=")
    assert 0 <= ready < started, maild.log


def notified(relay, subject: str) -> list[str]:  # noqa: F811
    """The reps told of `subject` (acknowledgements are off here)."""
    return sorted(env["to"][0] for env, m in relay.messages() if subject in m["Subject"])


def test_a_sender_process_killed_while_idle_is_started_again_and_mail_still_leaves(maild, relay):  # noqa: F811
    """Killed while it waits for work: the daemon must neither hang on it nor lose the next mail."""
    with smtp_client(maild.config) as s:
        s.sendmail("pat@example.com", ["support@acme.test"], message("Printer on fire"))
    wait_until(lambda: len(notified(relay, "Printer on fire")) == 2, "the first notifications")
    time.sleep(1.5)  # nothing left to send: the sender is waiting for a wake
    (first,) = senders(maild)
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: len(senders(maild)) == 2, "a new sender process")
    assert "exited with status -9; starting it again" in maild.log
    with smtp_client(maild.config) as s:
        s.sendmail("pat@example.com", ["support@acme.test"], message("Kettle leaks"))
    # woken at once (send_interval is an hour), through the new sender
    wait_until(lambda: len(notified(relay, "Kettle leaks")) == 2, "the second notifications")  # sent in parallel
    assert sorted(notified(relay, "Kettle leaks")) == ["alice@acme.test", "bob@acme.test"]
    assert maild.stop() == 0
    assert gone(senders(maild)[1]), "the sender process outlived a clean stop"


def test_a_hangup_to_the_process_group_leaves_the_sender_alone(maild, relay):  # noqa: F811
    (pid,) = wait_until(lambda: senders(maild), "the sender process to start")
    time.sleep(1.0)
    for p in (maild.proc.pid, pid):  # as a closed terminal signals its whole process group
        os.kill(p, signal.SIGHUP)
    with smtp_client(maild.config) as s:
        s.sendmail("pat@example.com", ["support@acme.test"], message("After the hangup"))
    wait_until(lambda: len(notified(relay, "After the hangup")) == 2, "the notifications")
    assert senders(maild) == [pid] and not gone(pid)
