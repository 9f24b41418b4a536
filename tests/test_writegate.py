"""The writer turn: a writer in another process gets SQLite's write lock while this process writes without a gap.

Real SQLite files, real processes: the daemon's side is a thread committing
through the write gate back to back (as a burst's stores and batches do), the
other side a spawned process (as the outbox sender is) with a short busy
timeout, which fails if it polls for the lock in vain.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sqlite3
import threading
import time
from contextlib import nullcontext

import pytest

from maild.writegate import WriteGate, WriterTurn


def _connect(path: str, busy_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA busy_timeout={busy_ms}")
    return conn


def _other_writer(path: str, commits: int, use_turn: bool, result) -> None:
    """Commit `commits` times, each allowed two seconds of waiting for the lock (the daemon's
    transactions here are 5 ms); how many made it."""
    conn, turn, done = _connect(path, 2000), WriterTurn.beside(path), 0
    assert turn is not None
    for _ in range(commits):
        try:
            with turn.asking() if use_turn else nullcontext():
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO t (who) VALUES ('other')")
                conn.execute("COMMIT")
            done += 1
        except sqlite3.OperationalError:  # database is locked: the busy timeout ran out
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        time.sleep(0.01)
    result.value = done


def _busy_writer(path: str, gate: WriteGate, stop: threading.Event, commits: list[int]) -> None:
    """This process's writers: one transaction after another, each holding the lock a few ms."""
    conn = _connect(path, 10_000)
    while not stop.is_set():
        with gate.process(lambda: False):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t (who) VALUES ('daemon')")
            time.sleep(0.005)
            conn.execute("COMMIT")
        commits[0] += 1


def _race(tmp_path, use_turn: bool) -> tuple[int, int]:
    path = str(tmp_path / "maild.db")
    _connect(path, 1000).execute("CREATE TABLE t (id INTEGER PRIMARY KEY, who TEXT)")
    turn = WriterTurn.beside(path) if use_turn else None
    gate = WriteGate(exclusive=True, turn=turn)
    stop, commits = threading.Event(), [0]
    busy = threading.Thread(target=_busy_writer, args=(path, gate, stop, commits), daemon=True)
    busy.start()
    ctx = multiprocessing.get_context("spawn")
    result = ctx.Value("i", -1)
    other = ctx.Process(target=_other_writer, args=(path, 20, use_turn, result))
    try:
        other.start()
        other.join(120)
    finally:
        stop.set()
        busy.join()
        if turn is not None:
            turn.close()
    assert commits[0] > 0
    return result.value, commits[0]


def test_a_writer_in_another_process_gets_its_turn(tmp_path):
    done, daemon_commits = _race(tmp_path, use_turn=True)
    assert done == 20  # every one of its transactions got the lock within its half second
    assert daemon_commits > 20  # and this process's writers went on meanwhile


@pytest.mark.slow
def test_without_the_turn_the_other_writer_starves(tmp_path):
    """What the turn is for: SQLite's polling busy handler loses to back-to-back writers."""
    done, _ = _race(tmp_path, use_turn=False)
    assert done < 20


def _hold_and_hang(path: str, ready) -> None:
    turn = WriterTurn.beside(path)
    assert turn is not None
    with turn.asking():
        ready.set()
        time.sleep(600)


def test_a_writer_killed_while_asking_holds_nobody_up(tmp_path):
    path = str(tmp_path / "maild.db")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    other = ctx.Process(target=_hold_and_hang, args=(path, ready))
    other.start()
    assert ready.wait(60)
    turn = WriterTurn.beside(path)
    assert turn is not None

    def write() -> None:
        with turn.writing():
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    writer.join(0.5)
    assert writer.is_alive()  # it waits while the other writer has its turn...
    os.kill(other.pid, signal.SIGKILL)
    other.join(60)
    writer.join(10)
    assert not writer.is_alive()  # ...and the kernel drops a dead process's locks
    turn.close()


def test_a_writer_that_hangs_holding_its_turn_is_waited_for_a_bounded_time(tmp_path, caplog):
    path = str(tmp_path / "maild.db")
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    other = ctx.Process(target=_hold_and_hang, args=(path, ready))
    other.start()
    try:
        assert ready.wait(60)
        turn = WriterTurn(path, wait=1.0)
        with caplog.at_level(logging.WARNING, logger="maild.daemon"), turn.writing():
            pass  # it gets here although the other writer never lets go...
        assert "has held its turn" in caplog.text  # ...and says it wrote without the turn
        turn.close()
    finally:
        os.kill(other.pid, signal.SIGKILL)
        other.join(60)


def _ask_and_note(path: str, asked, out) -> None:
    turn = WriterTurn.beside(path)
    assert turn is not None
    asked.set()
    with turn.asking():
        out.value = time.monotonic()


def test_the_other_writer_waits_for_the_transaction_in_hand(tmp_path):
    """It asks while this process is mid-transaction: it goes when that ends, not before, and
    this process's next transaction goes after it."""
    path = str(tmp_path / "maild.db")
    turn = WriterTurn.beside(path)
    assert turn is not None
    ctx = multiprocessing.get_context("spawn")
    asked, went = ctx.Event(), ctx.Value("d", 0.0)
    other = ctx.Process(target=_ask_and_note, args=(path, asked, went))
    with turn.writing():
        other.start()
        assert asked.wait(60)
        time.sleep(0.5)
        assert went.value == 0.0  # still in hand here
        ended = time.monotonic()
    other.join(60)
    turn.close()
    assert went.value >= ended


def test_no_turn_without_a_database_file(tmp_path):
    assert WriterTurn.beside(None) is None
    assert WriterTurn.beside(str(tmp_path / "no-such-folder" / "maild.db")) is None
