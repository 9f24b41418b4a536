"""Console benchmark: the front page under 20 concurrent clients, beside a static file from the
same server. Figures, not a test.

Generates a history with bench/reports.py's generator (--scale 1.0 is 1,000,000
interactions on 200,000 issues; the default 0.05 is 50,000 on 10,000), starts
`maild run` with `[web] listen`, signs a session cookie for a configured rep
(with the daemon's own secret and salt, as the mailed link would end), then
runs --clients keep-alive clients for --seconds against the front page (key
statistics, the attention lists) and against /static/console.css: requests
per second, p50 and p99 latency.

    python bench/console.py [--db URL] [--scale 0.05] [--clients 20] [--seconds 10]

--db defaults to a SQLite file in a temporary folder; a PostgreSQL URL gets a
schema of its own, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

SECRET = "bench-secret-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(folder: Path, url: str, web_port: int) -> Path:
    path = folder / "maild.toml"
    path.write_text(
        f'[database]\nurl = "{url}"\n\n[smtp]\nlisten = "127.0.0.1:{free_port()}"\n\n'
        f'[outbound]\nrelay = "maildir:{folder / "outgoing"}"\n\n[web]\nlisten = "127.0.0.1:{web_port}"\n\n'
        '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\nacknowledge = false\n\n'
        '[[rep]]\nname = "Lead"\nemail = "lead@acme.test"\n'
    )
    return path


def start(cfg: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "MAILD_SECRET": SECRET}
    proc = subprocess.Popen([sys.executable, "-m", "maild", "run", "-c", str(cfg)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=log.open("wb"))
    deadline = time.monotonic() + 120
    while "web console listening" not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"maild run did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.1)
    return proc


def session_cookie(url: str) -> str:
    from itsdangerous import URLSafeTimedSerializer
    from sqlalchemy import select

    from maild import db
    from maild.models import Rep
    from maild.web.signin import SESSION_SALT

    engine = db.make_engine(url)
    with engine.connect() as conn:
        rep_id = conn.execute(select(Rep.id).where(Rep.email == "lead@acme.test")).scalar_one()
    engine.dispose()
    return URLSafeTimedSerializer(SECRET.encode(), salt=SESSION_SALT).dumps({"r": rep_id, "c": "bench"})


async def load(port: int, path: str, cookie: str, clients: int, seconds: float) -> list[float]:
    import aiohttp

    latencies: list[float] = []
    headers = {"Cookie": f"maild_session={cookie}"}

    async def client(session: aiohttp.ClientSession, until: float) -> None:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers, allow_redirects=False) as r:
                await r.read()
                if r.status != 200:
                    raise SystemExit(f"{path}: HTTP {r.status}")
            latencies.append(time.perf_counter() - t0)

    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(session, time.monotonic() + 1.0) for _ in range(clients)))  # warm-up
        latencies.clear()
        await asyncio.gather(*(client(session, time.monotonic() + seconds) for _ in range(clients)))
    return latencies


def report(name: str, latencies: list[float], seconds: float) -> None:
    ms = sorted(x * 1000 for x in latencies)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"{name:<22} {len(ms) / seconds:8.1f} req/s   p50 {statistics.median(ms):7.1f} ms   p99 {p99:7.1f} ms"
          f"   ({len(ms)} requests)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    p.add_argument("--scale", type=float, default=0.05, help="fraction of 1,000,000 interactions / 200,000 issues")
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=10.0)
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="maild-console-"))
    url, schema, base = args.db or f"sqlite:///{folder / 'console.db'}", None, ""
    if url.startswith("postgres"):
        import psycopg

        schema = "bench_" + uuid.uuid4().hex[:8]
        base = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    proc = None
    try:
        from reports import generate

        generate(url, int(200_000 * args.scale), int(1_000_000 * args.scale))
        port = free_port()
        proc = start(config(folder, url, port), folder / "maild.log")
        cookie = session_cookie(url)
        backend = url.split(":", 1)[0]
        print(f"\n{backend}, {int(1_000_000 * args.scale)} interactions on {int(200_000 * args.scale)} issues, "
              f"{args.clients} clients, {args.seconds:.0f} s each")
        for name, path in (("front page /", "/"), ("static /static/*.css", "/static/console.css")):
            report(name, asyncio.run(load(port, path, cookie, args.clients, args.seconds)), args.seconds)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        if schema:
            import psycopg

            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
