"""Bulk mail benchmark: a campaign to N generated customers.

Generates N registered customers with site facts (not timed), then measures
`maild bulk send` (segment, gift certificate and issue per recipient, template,
outbox row; as a process of its own: wall time and its peak RSS, VmHWM read
while it runs), and the
sending: `maild outbox send` emptying the campaign into a local sink, beside
a bare smtplib loop (one connection, no database) sending the same bytes to
the same sink. The sink is a bare aiosmtpd server in its own process.

    python bench/bulk.py [--n 100000] [--db URL] [--skip-send]

Without --db, a fresh SQLite file; with a PostgreSQL URL, a fresh schema
(dropped afterwards).
"""

from __future__ import annotations

import argparse
import os
import smtplib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from outbox_send import Database, start_sink  # noqa: E402

SECRET = "bench-secret-0123456789abcdef-0123"


def config_text(db_url: str, port: int) -> str:
    return (
        f'[database]\nurl = "{db_url}"\n\n'
        f'[outbound]\nrelay = "127.0.0.1:{port}"\n\n'
        '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\nacknowledge = false\n\n'
        '[[rep]]\nname = "Alice"\nemail = "alice@acme.test"\n'
    )


def generate(config: Path, n: int) -> None:
    """N registered customers, one address each, on the newsletter list, with a purchase; bulk inserts."""
    from datetime import date
    from decimal import Decimal

    from sqlalchemy import insert, select

    from maild.app import build
    from maild.config import load
    from maild.models import Customer, CustomerAddress, CustomerSiteFact, utcnow

    app = build(load(config))
    try:
        step = 5000
        for start in range(0, n, step):
            now = utcnow()
            with app.sessions() as s, s.begin():
                ids = range(start, min(n, start + step))
                s.execute(insert(Customer), [
                    {"name": f"User {i}", "registered_user_id": f"g{i}", "tags": [], "created_at": now,
                     "last_visit": date(2026, 1, 1 + i % 28), "total_spent": Decimal(i % 500), "currency": "EUR"}
                    for i in ids])
                got = dict(s.execute(select(Customer.registered_user_id, Customer.id).where(
                    Customer.registered_user_id.in_([f"g{i}" for i in ids]))).all())
                s.execute(insert(CustomerAddress), [
                    {"customer_id": got[f"g{i}"], "email": f"user{i}@example.net", "key": f"user{i}@example.net",
                     "created_at": now} for i in ids])
                s.execute(insert(CustomerSiteFact), [
                    {"customer_id": got[f"g{i}"], "kind": kind, "value": value} for i in ids
                    for kind, value in (("list", "newsletter"), ("bought", f"SKU-{i % 50}"))])
    finally:
        app.close()


def vm_hwm(pid: int) -> int:
    """A process's own peak RSS in bytes (VmHWM: reset by exec, unlike ru_maxrss of a child)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def timed(args: list[str], env: dict) -> tuple[float, int, str]:
    """Run `python -m maild ARGS`; its wall time, peak RSS in bytes (read while it runs) and output."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen([sys.executable, "-m", "maild", *args], cwd=REPO, env=env, stdout=out, stderr=out)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, vm_hwm(proc.pid))
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        out.seek(0)
        text = out.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"maild {' '.join(args)} failed ({proc.returncode}): {text[-2000:]}")
    return elapsed, peak, text


def campaign_mails(config: Path) -> list[tuple[str, list[str], bytes]]:
    from sqlalchemy import select

    from maild.app import build
    from maild.config import load
    from maild.models import OutboxMessage

    app = build(load(config))
    try:
        with app.sessions() as s:
            rows = s.execute(select(OutboxMessage.envelope_from, OutboxMessage.recipients, OutboxMessage.data)
                             .where(OutboxMessage.kind == "campaign").order_by(OutboxMessage.id)).all()
        return [(r[0], list(r[1]), r[2]) for r in rows]
    finally:
        app.close()


def bare_loop(port: int, mails: list[tuple[str, list[str], bytes]]) -> float:
    t0 = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for envelope_from, recipients, data in mails:
            smtp.sendmail(envelope_from, recipients, data)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="customers in the campaign (default 100000)")
    ap.add_argument("--db", help="PostgreSQL URL (default: a SQLite file)")
    ap.add_argument("--skip-send", action="store_true", help="measure queueing only")
    args = ap.parse_args()
    env = {**os.environ, "MAILD_SECRET": SECRET}
    os.environ["MAILD_SECRET"] = SECRET
    backend = "postgresql" if args.db else "sqlite"
    with tempfile.TemporaryDirectory(prefix="maild-bulk-bench-") as tmp:
        work = Path(tmp)
        sink, port = start_sink(work)
        db = Database(args.db, work)
        config = work / "maild.toml"
        config.write_text(config_text(db.url(), port))
        try:
            t0 = time.perf_counter()
            generate(config, args.n)
            print(f"generated {args.n} customers in {time.perf_counter() - t0:.1f} s", flush=True)
            queue_s, queue_rss, out = timed(["bulk", "send", "--template", "newsletter", "--list", "newsletter",
                                             "--gift", "10", "EUR", "--rate", "1000000", "--json",
                                             "-c", str(config)], env)
            print(f"queue ({backend}): {args.n} mails in {queue_s:.1f} s = {args.n / queue_s:.0f} mails/s, "
                  f"peak RSS {queue_rss / 2**20:.0f} MiB", flush=True)
            if '"queued": ' + str(args.n) not in out:
                raise SystemExit(f"not every customer was queued: {out[-500:]}")
            if not args.skip_send:
                send_s, send_rss, _ = timed(["outbox", "send", "-c", str(config)], env)
                mails = campaign_mails(config)
                bare = bare_loop(port, mails)
                print(f"send: maild outbox send {args.n / send_s:.0f} msg/s (peak RSS {send_rss / 2**20:.0f} MiB), "
                      f"bare smtplib loop {len(mails) / bare:.0f} msg/s, ratio {bare / send_s * args.n / len(mails):.2f}x "
                      "of the bare loop", flush=True)
        finally:
            db.drop()
            sink.terminate()
            sink.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
