"""Live burst benchmark: mail in over SMTP, acknowledgements out to a relay, end to end.

`maild run` (acknowledgements on, one rep so notifications are sent too) takes
a burst of N mails from C concurrent smtplib clients and relays what it sends
to a local sink (aiosmtpd in its own process, which notes when each mail
arrives). It prints the accept time, the processing time (until nothing is
pending), the time until the last acknowledgement reached the sink, p50/p99
latency from a mail's `250` to its acknowledgement at the sink, and peak RSS
(each process's own VmHWM, read from /proc while it runs: maild's largest
process and all of maild's processes together), and the CPU seconds the whole
machine spent busy until the last acknowledgement was seen. Beside it, in the same run:
`maild import` of the same mails into a fresh database, a bare smtplib loop
sending the same mails straight to the sink (the floor for a hop), and the
burst's SMTP work alone with no helpdesk behind it (the SMTP floor): the same
mails from the same clients to a bare aiosmtpd listener while, in a process of
its own as maild's sender is, an smtplib loop relays two mails per mail to the
sink (an acknowledgement and a notification each), with the machine's CPU
seconds meanwhile (busy time from /proc/stat, the benchmark's own clients and
sink included, as in maild's run).
`--rate R --seconds T` sends a steady stream instead and reports latency.

    python bench/live_burst.py [--n 1000] [--clients 8] [--db URL] [--repeat 3]
    python bench/live_burst.py --rate 20 --seconds 30 [--db URL]
"""

from __future__ import annotations

import argparse
import mailbox
import multiprocessing
import os
import signal
import smtplib
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from email.parser import BytesHeaderParser
from pathlib import Path

import ingest
import smtp_load

REPO = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789abcdef"
REP = "alice@acme.test"


# --- the relay sink, in its own process -------------------------------------------------------


def sink_server(port: int, out: Path) -> None:
    """Accept everything; note (arrival time, In-Reply-To, whether it went to the rep) per mail."""
    import asyncio

    from aiosmtpd.smtp import SMTP

    f = open(out, "a", buffering=1, encoding="utf-8")

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            head = BytesHeaderParser().parsebytes(envelope.original_content)
            kind = "rep" if REP in [r.lower() for r in envelope.rcpt_tos] else "customer"
            f.write(f"{time.time():.6f}\t{kind}\t{(head.get('In-Reply-To') or '').strip().strip('<>')}\n")
            return "250 2.0.0 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(Handler(), hostname="sink"), "127.0.0.1", port)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with server:
            await stop.wait()

    asyncio.run(main())


class Sink:
    def __init__(self, work: Path) -> None:
        self.port, self.out = smtp_load.free_port(), work / f"sink-{uuid.uuid4().hex[:6]}.tsv"
        self.out.touch()
        self.proc = subprocess.Popen([sys.executable, __file__, "--sink", str(self.port), str(self.out)])
        smtp_load.wait_port(self.port, self.proc)

    def arrivals(self) -> list[tuple[float, str, str]]:
        rows = []
        for line in self.out.read_text(encoding="utf-8").splitlines():
            t, kind, irt = line.split("\t")
            rows.append((float(t), kind, irt))
        return rows

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


# --- sending -----------------------------------------------------------------------------------


def mails(tag: str, n: int, clients: int, size: int) -> list[list[tuple[str, bytes]]]:
    """Per client, its (Message-ID, bytes). Every mail has a customer of its own, so each opens
    an issue and is acknowledged (outbound.max_auto_per_recipient limits mail per address)."""
    per = [[] for _ in range(clients)]  # type: list[list[tuple[str, bytes]]]
    for k in range(n):
        per[k % clients].append((f"load.{tag}.{k}.0@example.com", smtp_load.message(tag, k, 0, size)))
    return per


def send(port: int, per_client: list[list[tuple[str, bytes]]], rate: float | None = None) -> tuple[float, dict, int]:
    """Send every mail; returns (seconds, {Message-ID: time of its 250}, refused). With `rate`,
    mail k leaves no earlier than k/rate seconds after the start (a steady stream)."""
    acked: dict[str, float] = {}
    refused = [0]
    lock = threading.Lock()
    clients = len(per_client)
    go = threading.Barrier(clients + 1)
    start = [0.0]

    def client(c: int) -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=120) as s:
            s.ehlo("burst.test")
            go.wait()
            for i, (mid, body) in enumerate(per_client[c]):
                if rate:
                    time.sleep(max(0.0, start[0] + (i * clients + c) / rate - time.time()))
                try:
                    s.sendmail(f"c{c}@example.com", ["support@acme.test"], body)
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPResponseException):
                    with lock:
                        refused[0] += 1
                    continue
                with lock:
                    acked[mid] = time.time()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    start[0] = time.time()
    go.wait()
    for t in threads:
        t.join()
    return time.time() - start[0], acked, refused[0]


# --- maild run -----------------------------------------------------------------------------------


def fresh_db(work: Path, url: str | None, name: str) -> str:
    """A SQLite file in the work folder, or a new schema on the PostgreSQL server at url."""
    if not url:
        return f"sqlite:///{work / (name + '.db')}"
    import psycopg

    schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


def config(work: Path, db_url: str, smtp_port: int, relay_port: int, backlog: int) -> Path:
    path = work / f"maild-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(
        f'[database]\nurl = "{db_url}"\n\n[smtp]\nlisten = "127.0.0.1:{smtp_port}"\nmax_backlog = {backlog}\n\n'
        f'[outbound]\nrelay = "127.0.0.1:{relay_port}"\nsend_interval = 1.0\n\n'
        '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\n\n'
        f'[[rep]]\nname = "Alice"\nemail = "{REP}"\n'
    )
    return path


def pending(db_url: str) -> int:
    sys.path.insert(0, str(REPO))
    from sqlalchemy import func, select

    from maild import db
    from maild.models import RawMessage

    engine = db.make_engine(db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(RawMessage).where(RawMessage.state == "pending")).scalar()
    finally:
        engine.dispose()


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000 if xs else float("nan")


def run_live(args, work: Path, tag: str, rate: float | None = None) -> dict:
    sink = Sink(work)
    db_url = fresh_db(work, args.db, f"live{tag}")
    port = smtp_load.free_port()
    cfg = config(work, db_url, port, sink.port, max(1000, args.n + 100))
    per_client = mails(tag, args.n, args.clients, args.size)
    env = {**os.environ, "MAILD_SECRET": SECRET}
    log = open(work / f"maild-{tag}.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "maild", "run", "-c", str(cfg)], cwd=REPO, env=env,
                            stderr=log, stdout=subprocess.DEVNULL)
    try:
        smtp_load.wait_port(port, proc)
        peaks = ingest.Peaks(proc.pid)
        pending(db_url)  # the benchmark's own imports for this done before anything is timed
        cpu, start = busy_seconds(), time.time()
        accept_s, acked, refused = send(port, per_client, rate)
        deadline = time.time() + args.timeout
        while pending(db_url) and time.time() < deadline:
            time.sleep(0.2)
        processed_s = time.time() - start
        wanted = set(acked)
        acks: dict[str, float] = {}
        while time.time() < deadline:
            acks = {irt: t for t, kind, irt in sink.arrivals() if kind == "customer" and irt in wanted}
            if len(acks) >= len(wanted):
                break
            time.sleep(0.2)
        cpu = busy_seconds() - cpu
        notes = sum(kind == "rep" for _, kind, _ in sink.arrivals())
        rss_max, rss_sum = peaks.done()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
        sink.close()
    latencies = [acks[m] - acked[m] for m in acks]
    return {"accept": accept_s, "processed": processed_s, "last_ack": max(acks.values(), default=start) - start,
            "p50": pct(latencies, 0.5), "p99": pct(latencies, 0.99), "acks": len(acks), "sent": len(acked),
            "refused": refused, "notifications": notes, "cpu": cpu, "rss_max": rss_max, "rss_sum": rss_sum}


def run_import(args, work: Path, tag: str) -> float:
    folder = work / f"import-{tag}"
    box = mailbox.Maildir(folder, create=True)
    for client in mails(tag, args.n, args.clients, args.size):
        for _, body in client:
            box.add(body)
    sink_port = smtp_load.free_port()  # import sends nothing; no relay needed
    cfg = config(work, fresh_db(work, args.db, f"import{tag}"), smtp_load.free_port(), sink_port, 1000)
    timing, code = ingest.run_measured(ingest.maild_argv("import", "-c", str(cfg), "--mailbox", "support",
                                                         str(folder)), args.n, work / f"import-{tag}.log",
                                       env={**ingest._env(), "MAILD_SECRET": SECRET})
    if code:
        raise SystemExit(f"maild import exited {code}: see {work / f'import-{tag}.log'}")
    return timing.seconds


def run_floor(args, work: Path, tag: str) -> float:
    sink = Sink(work)
    try:
        seconds, _, _ = send(sink.port, mails(tag, args.n, args.clients, args.size))
    finally:
        sink.close()
    return seconds


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (not idle nor waiting on I/O) since boot."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def _relay_loop(port: int, per_client: list[list[tuple[str, bytes]]], go, done) -> None:
    go.wait()
    done.put(send(port, per_client)[0])


def run_smtp_floor(args, work: Path, tag: str) -> tuple[float, float]:
    """The burst's SMTP work and nothing else: (seconds, machine CPU seconds meanwhile)."""
    listener, relay = Sink(work), Sink(work)
    ctx = multiprocessing.get_context("fork")
    go, done = ctx.Event(), ctx.Queue()
    relayed = mails(f"{tag}r", 2 * args.n, args.clients, args.size)
    sender = ctx.Process(target=_relay_loop, args=(relay.port, relayed, go, done))
    try:
        sender.start()
        per_client = mails(tag, args.n, args.clients, args.size)
        cpu, start = busy_seconds(), time.time()
        go.set()
        send(listener.port, per_client)
        done.get(timeout=args.timeout)
        return time.time() - start, busy_seconds() - cpu
    finally:
        sender.join(30)
        listener.close()
        relay.close()


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--sink":
        sink_server(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="mails in the burst")
    parser.add_argument("--clients", type=int, default=8, help="concurrent SMTP clients")
    parser.add_argument("--size", type=int, default=2000, help="approximate body size in bytes")
    parser.add_argument("--db", help="PostgreSQL URL (a fresh schema per run); default SQLite")
    parser.add_argument("--repeat", type=int, default=1, help="runs; medians are reported")
    parser.add_argument("--rate", type=float, help="steady stream: mails per second")
    parser.add_argument("--seconds", type=float, default=30.0, help="steady stream: how long")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for processing and acks")
    args = parser.parse_args()
    ingest.compile_maild()
    with tempfile.TemporaryDirectory(prefix="maild-burst-") as tmp:
        work = Path(tmp)
        if args.rate:
            args.n = max(1, int(args.rate * args.seconds))
            runs = [run_live(args, work, f"s{k}", rate=args.rate) for k in range(args.repeat)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"steady   {args.rate:g} mails/s for {args.seconds:g} s ({args.n} mails, {args.clients} clients): "
                  f"250->ack p50 {med['p50']:.0f} ms  p99 {med['p99']:.0f} ms  acks {med['acks']:.0f}/{med['sent']:.0f}"
                  f"  peak RSS {med['rss_max']:.0f} MB (all processes {med['rss_sum']:.0f} MB)")
            return 0
        lives, imports, floors, smtps = [], [], [], []
        for k in range(args.repeat):
            lives.append(run_live(args, work, f"b{k}"))
            imports.append(run_import(args, work, f"i{k}"))
            floors.append(run_floor(args, work, f"f{k}"))
            smtps.append(run_smtp_floor(args, work, f"m{k}"))
        med = {k: statistics.median(r[k] for r in lives) for k in lives[0]}
        imp, flo = statistics.median(imports), statistics.median(floors)
        backend = "postgresql" if args.db else "sqlite"
        print(f"burst    {args.n} mails, {args.clients} clients, {backend}, median of {args.repeat}")
        print(f"maild    accept {med['accept']:.1f} s ({args.n / med['accept']:.0f}/s)  processed {med['processed']:.1f} s"
              f"  last ack {med['last_ack']:.1f} s ({med['cpu']:.1f} CPU s)  250->ack p50 {med['p50']:.0f} ms  p99 {med['p99']:.0f} ms")
        print(f"         acks {med['acks']:.0f}/{med['sent']:.0f}  refused {med['refused']:.0f}"
              f"  notifications {med['notifications']:.0f}  peak RSS {med['rss_max']:.0f} MB"
              f" (all processes {med['rss_sum']:.0f} MB)")
        print(f"import   {imp:.1f} s ({args.n / imp:.0f}/s)   maild run to last ack / import: {med['last_ack'] / imp:.1f}x")
        print(f"floor    smtplib straight to the sink {flo:.1f} s ({args.n / flo:.0f}/s)")
        smtp_s, smtp_cpu = statistics.median(s for s, _ in smtps), statistics.median(c for _, c in smtps)
        print(f"smtp     the burst's SMTP work alone ({args.n} in, {2 * args.n} relayed): {smtp_s:.1f} s,"
              f" {smtp_cpu:.1f} CPU s of {os.cpu_count()} cores; the 0.5x bar leaves {2 * imp:.1f} s in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
