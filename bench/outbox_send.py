"""Outbox benchmark: how fast the sender empties a full outbox into a local relay.

Queues N rows (not timed), then times `Sender.run_once()` until every row is
`sent`, beside a bare smtplib loop (one connection, one `sendmail` per
message, no database) sending the same bytes to the same sink in the same
run. The sink is a bare aiosmtpd server in its own process that only counts.
Prints per-repeat figures and medians, and the ratio maild / bare loop.

    python bench/outbox_send.py [--n 2000] [--repeat 3] [--connections 8] [--db URL]

Without --db, a fresh SQLite file per repeat; with a PostgreSQL URL, a fresh
schema per repeat (dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_sink(port: int, ready: Path) -> None:
    """The sink process: accepts everything, keeps nothing."""
    from aiosmtpd.controller import Controller

    class Count:
        n = 0

        async def handle_DATA(self, server, session, envelope):
            Count.n += 1
            return "250 2.0.0 ok"

    controller = Controller(Count(), hostname="127.0.0.1", port=port)
    controller.start()
    ready.touch()
    try:
        asyncio.run(asyncio.sleep(10**9))
    finally:
        controller.stop()


def start_sink(work: Path) -> tuple[subprocess.Popen, int]:
    port, ready = free_port(), work / f"sink-{uuid.uuid4().hex}.ready"
    proc = subprocess.Popen([sys.executable, __file__, "--serve-sink", str(port), "--ready", str(ready)])
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the sink did not start")
        time.sleep(0.05)
    return proc, port


def config_text(db_url: str, port: int, connections: int) -> str:
    return (
        f'[database]\nurl = "{db_url}"\n\n'
        f'[outbound]\nrelay = "127.0.0.1:{port}"\nconnections = {connections}\n\n'
        '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\nacknowledge = false\n'
    )


class Database:
    """A fresh database per repeat: a SQLite file, or a PostgreSQL schema."""

    def __init__(self, base: str | None, work: Path) -> None:
        self.base, self.work, self.schema = base, work, None

    def url(self) -> str:
        if not self.base:
            return f"sqlite:///{self.work / f'outbox-{uuid.uuid4().hex[:8]}.db'}"
        import psycopg

        self.schema = "bench_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self._conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {self.schema}")
        sep = "&" if "?" in self.base else "?"
        return f"{self.base}{sep}options=-csearch_path%3D{self.schema}"

    def _conninfo(self) -> str:
        assert self.base is not None
        return self.base.replace("postgresql+psycopg://", "postgresql://")

    def drop(self) -> None:
        if self.base and self.schema:
            import psycopg

            with psycopg.connect(self._conninfo(), autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {self.schema} CASCADE")
            self.schema = None


def queue_rows(app, n: int) -> list[tuple[str, list[str], bytes]]:
    """n customer replies queued as the desk queues them; their envelopes and bytes for the bare loop."""
    from sqlalchemy import select

    from maild.models import OutboxMessage
    from maild.outbound.compose import Outgoing
    from maild.outbound.outbox import enqueue

    body = "Hello Pat,\n\n" + "We have looked into it and the printer is fine now.\n" * 20
    for start in range(0, n, 500):
        with app.sessions() as s, s.begin():
            for i in range(start, min(n, start + 500)):
                out = Outgoing(kind="reply", mailbox="support", to=(f"pat{i}@example.com",),
                               subject=f"Re: printer {i}", body=body, auto=False, to_customer=True)
                enqueue(s, out, app.notifier.policy)
    with app.sessions() as s:
        rows = s.execute(select(OutboxMessage.envelope_from, OutboxMessage.recipients, OutboxMessage.data)).all()
    return [(r[0], list(r[1]), r[2]) for r in rows]


def bare_loop(port: int, mails: list[tuple[str, list[str], bytes]]) -> float:
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for envelope_from, recipients, data in mails:
            smtp.sendmail(envelope_from, recipients, data)
    return time.perf_counter() - t0


def maild_run(app, n: int) -> float:
    from sqlalchemy import func, select

    from maild.models import OutboxMessage

    t0 = time.perf_counter()
    counts = app.sender.run_once()
    elapsed = time.perf_counter() - t0
    with app.sessions() as s:
        sent = s.scalar(select(func.count()).select_from(OutboxMessage).where(OutboxMessage.status == "sent"))
    if counts.get("sent") != n or sent != n:
        raise SystemExit(f"maild sent {counts} ({sent} rows sent), expected {n}")
    return elapsed


def one_repeat(args: argparse.Namespace, work: Path, port: int) -> tuple[float, float]:
    from maild.app import build
    from maild.config import load

    db = Database(args.db, work)
    path = work / "maild.toml"
    path.write_text(config_text(db.url(), port, args.connections))
    try:
        app = build(load(path))
        try:
            mails = queue_rows(app, args.n)
            bare = bare_loop(port, mails)
            ours = maild_run(app, args.n)
        finally:
            app.close()
    finally:
        db.drop()
    return bare, ours


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000, help="rows queued (default 2000)")
    ap.add_argument("--repeat", type=int, default=3, help="runs; medians are reported")
    ap.add_argument("--connections", type=int, default=8, help="outbound.connections (default 8, as the config)")
    ap.add_argument("--db", help="PostgreSQL URL (default: a SQLite file)")
    ap.add_argument("--serve-sink", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ready", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_sink:
        serve_sink(args.serve_sink, args.ready)
        return 0
    os.environ.setdefault("MAILD_SECRET", "bench-secret-0123456789abcdef")
    bares, ours = [], []
    with tempfile.TemporaryDirectory(prefix="maild-outbox-bench-") as tmp:
        work = Path(tmp)
        sink, port = start_sink(work)
        try:
            for i in range(args.repeat):
                bare, mine = one_repeat(args, work, port)
                bares.append(bare)
                ours.append(mine)
                print(f"run {i + 1}: bare smtplib loop {args.n / bare:8.0f} msg/s   "
                      f"maild sender {args.n / mine:8.0f} msg/s   ratio {bare / mine:.2f}x", flush=True)
        finally:
            sink.terminate()
            sink.wait(10)
    bare, mine = statistics.median(bares), statistics.median(ours)
    backend = "postgresql" if args.db else "sqlite"
    print(f"median over {args.repeat} ({backend}, n={args.n}, connections={args.connections}): "
          f"bare {args.n / bare:.0f} msg/s, maild {args.n / mine:.0f} msg/s, ratio {bare / mine:.2f}x of the bare loop")
    return 0


if __name__ == "__main__":
    sys.exit(main())
