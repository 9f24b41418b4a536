"""SMTP load benchmark: `maild run` beside a bare aiosmtpd server, same load, same run.

C concurrent clients (threads, smtplib, one connection each) send M messages
each. For each server it prints msgs/s, p50/p99 accept latency (from sending
MAIL FROM to the 250 after DATA) and the server's peak RSS; then the ratio
maild/baseline. The baseline is aiosmtpd whose handler only writes each
message to a file with fsync. Afterwards it checks that every message maild
accepted became exactly one interaction (read from the database maild wrote).

    python bench/smtp_load.py [--clients 20] [--messages 100] [--repeat 3] [--db URL] [--size 2000]
"""

from __future__ import annotations

import argparse
import os
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef"


@dataclass
class Result:
    name: str
    seconds: float
    latencies: list[float]
    refused: int
    peak_rss_mb: float

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def pct(self, p: float) -> float:
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")

    def line(self) -> str:
        return (f"{self.name:9s} {self.rate:8.0f} msgs/s  p50 {self.pct(0.5):6.1f} ms  p99 {self.pct(0.99):6.1f} ms"
                f"  peak RSS {self.peak_rss_mb:6.1f} MB  accepted {len(self.latencies)}  refused {self.refused}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def message(tag: str, n: int, i: int, size: int) -> bytes:
    m = EmailMessage()
    m["From"] = f"Customer {n} <c{n}@example.com>"
    m["To"] = "support@acme.test"
    m["Subject"] = f"Load {tag} {n}-{i}"
    m["Message-ID"] = f"<load.{tag}.{n}.{i}@example.com>"
    m.set_content("Hello,\n" + ("my order has not arrived yet. " * 3 + "\n") * max(1, size // 91))
    return m.as_bytes(policy=SMTP_POLICY)


def load(port: int, clients: int, messages: int, size: int, tag: str) -> tuple[float, list[float], int]:
    latencies: list[float] = []
    refused = [0]
    lock = threading.Lock()
    go = threading.Barrier(clients + 1)

    def client(n: int) -> None:
        mine = []
        bodies = [message(tag, n, i, size) for i in range(messages)]
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
            s.ehlo("load.test")
            go.wait()
            for body in bodies:
                t = time.perf_counter()
                try:
                    s.sendmail(f"c{n}@example.com", ["support@acme.test"], body)
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException):  # 451: a real sender retries later
                    with lock:
                        refused[0] += 1
                    continue
                mine.append(time.perf_counter() - t)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    go.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, refused[0]


# --- the baseline: bare aiosmtpd, one fsync'd file per message -------------------------------


def baseline_server(port: int, folder: Path) -> None:
    import asyncio

    from aiosmtpd.smtp import SMTP

    class Handler:
        count = 0

        async def handle_DATA(self, server, session, envelope):
            Handler.count += 1
            with open(folder / f"{Handler.count}.eml", "wb") as fh:
                fh.write(envelope.original_content)
                fh.flush()
                os.fsync(fh.fileno())
            return "250 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = await loop.create_server(lambda: SMTP(Handler(), hostname="bench"), "127.0.0.1", port)
        await stop.wait()
        server.close()

    asyncio.run(main())


def run_baseline(args, tmp: Path, tag: str) -> Result:
    port, folder = free_port(), tmp / f"baseline-{tag}"
    folder.mkdir()
    proc = subprocess.Popen([sys.executable, __file__, "--baseline-server", str(port), str(folder)])
    try:
        wait_port(port, proc)
        seconds, lat, refused = load(port, args.clients, args.messages, args.size, tag)
        rss = peak_rss_mb(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    return Result("baseline", seconds, lat, refused, rss)


# --- maild ------------------------------------------------------------------------------------


def maild_config(tmp: Path, db_url: str, port: int, max_backlog: int) -> Path:
    path = tmp / "maild.toml"
    path.write_text(
        f'[database]\nurl = "{db_url}"\n\n'
        f'[smtp]\nlisten = "127.0.0.1:{port}"\nmax_backlog = {max_backlog}\n\n'
        '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\nacknowledge = false\n\n'
        '[[mailbox]]\nname = "billing"\naddress = "billing@acme.test"\nacknowledge = false\n\n'
        '[[rep]]\nname = "Alice"\nemail = "alice@acme.test"\n'
    )
    return path


def run_maild(args, tmp: Path, tag: str, db_url: str) -> tuple[Result, subprocess.Popen, Path]:
    port = free_port()
    config = maild_config(tmp, db_url, port, args.max_backlog)
    env = {**os.environ, "MAILD_SECRET": SECRET}
    log = open(tmp / f"maild-{tag}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "maild", "run", "-c", str(config)], cwd=REPO, env=env,
                            stderr=log, stdout=subprocess.DEVNULL)
    wait_port(port, proc)
    seconds, lat, refused = load(port, args.clients, args.messages, args.size, tag)
    return Result("maild", seconds, lat, refused, peak_rss_mb(proc.pid)), proc, config


def verify(db_url: str, tag: str, expected: int, timeout: float = 600) -> tuple[int, int, float]:
    """Waits for the drain; returns (messages stored, subjects that are exactly one interaction, seconds)."""
    sys.path.insert(0, str(REPO))
    from sqlalchemy import func, select

    from maild import db
    from maild.models import Interaction, RawMessage

    engine = db.make_engine(db_url)
    start = time.monotonic()
    with engine.connect() as conn:
        while conn.execute(select(func.count()).where(RawMessage.state == "pending")).scalar():
            if time.monotonic() - start > timeout:
                break
            conn.rollback()
            time.sleep(0.2)
        drained = time.monotonic() - start
        stored = conn.execute(select(func.count()).where(RawMessage.source == "smtp")).scalar()
        rows = conn.execute(
            select(Interaction.subject, func.count())
            .where(Interaction.direction == "inbound", Interaction.subject.like(f"Load {tag} %"))
            .group_by(Interaction.subject)
        ).all()
    engine.dispose()
    exact = sum(1 for _, n in rows if n == 1)
    if any(n != 1 for _, n in rows):
        print(f"  DUPLICATES: {[s for s, n in rows if n != 1][:5]}")
    return stored, exact, drained


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--messages", type=int, default=100, help="messages per client")
    ap.add_argument("--size", type=int, default=2000, help="approximate body size in bytes")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--max-backlog", type=int, default=100000,
                    help="maild's smtp.max_backlog (default: above the load, to measure acceptance alone)")
    ap.add_argument("--db", help="database URL for maild (default: SQLite in a temporary folder)")
    ap.add_argument("--baseline-server", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_server:
        baseline_server(int(args.baseline_server[0]), Path(args.baseline_server[1]))
        return
    total = args.clients * args.messages
    print(f"{args.clients} clients x {args.messages} messages ({total}), ~{args.size} bytes each")
    ratios, runs = [], []
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="maild-bench-") as name:
            tmp = Path(name)
            db_url = args.db or f"sqlite:///{tmp / 'maild.db'}"
            base = run_baseline(args, tmp, f"b{r}")
            tag = f"{os.getpid()}r{r}"
            mine, proc, _ = run_maild(args, tmp, tag, db_url)
            try:
                stored, exact, drained = verify(db_url, tag, len(mine.latencies))
                rss_drained = peak_rss_mb(proc.pid)
            finally:
                proc.send_signal(signal.SIGTERM)
                code = proc.wait(60)
            ratio = mine.rate / base.rate
            ratios.append(ratio)
            runs.append((mine, base))
            print(f"run {r + 1}:")
            print("  " + base.line())
            print("  " + mine.line())
            print(f"  ratio maild/baseline {ratio:.2f}; maild accepted {len(mine.latencies)}, stored {stored}, "
                  f"{exact} became exactly one interaction (drained {drained:.1f}s after the load, "
                  f"peak RSS then {rss_drained:.1f} MB); exit {code}")
    if args.repeat > 1:
        med = lambda xs: statistics.median(xs)  # noqa: E731
        print(f"median of {args.repeat}: maild {med([m.rate for m, _ in runs]):.0f} msgs/s, "
              f"baseline {med([b.rate for _, b in runs]):.0f} msgs/s, ratio {med(ratios):.2f}, "
              f"p50 {med([m.pct(0.5) for m, _ in runs]):.1f} ms, p99 {med([m.pct(0.99) for m, _ in runs]):.1f} ms, "
              f"peak RSS {med([m.peak_rss_mb for m, _ in runs]):.1f} MB")


if __name__ == "__main__":
    main()
