"""Reports benchmark: each report beside the one hand-written SQL query that answers it,
and the intake rate while reports run. Figures, not a test.

Generates a history with bulk INSERTs (default 1,000,000 interactions on 200,000
issues over a year; --scale shrinks it), then times every report through
maild.reports.run_report and the hand-written aggregate SQL for the same
numbers in the same run (goal: within 2x), both over the whole year. Then it
stores and processes --mails messages through maild's intake and pipeline (the
daemon's path, in process) alone, and again while another process runs every
report in a loop (goal: intake down at most 20%).

    python bench/reports.py [--db URL] [--scale 1.0] [--repeat 3] [--mails 300] [--keep]

--db defaults to a SQLite file in a temporary folder; a PostgreSQL URL gets a
schema of its own (dropped afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import multiprocessing
import time
import uuid
from datetime import datetime, timedelta, UTC
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sqlalchemy import insert, text  # noqa: E402

from maild import db  # noqa: E402
from maild.models import (  # noqa: E402
    Action, CannedUse, Category, Customer, Interaction, Issue, Rep, table_of,
)
from maild.reports import REPORTS, Filters, run_report  # noqa: E402

START = datetime(2024, 1, 1, tzinfo=UTC)
DAYS = 365
CATEGORIES = ["uncategorized", "billing", "delivery", "returns", "website", "other"]
CHUNK = 20_000
T1, T2 = 24 * 3600.0, 72 * 3600.0


def generate(url: str, issues: int, interactions: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    engine = db.make_engine(url)
    db.migrate(engine)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(insert(table_of(Category)), [{"name": n, "description": ""} for n in CATEGORIES])
        conn.execute(insert(table_of(Rep)), [{"name": f"Rep {i}", "email": f"rep{i}@acme.test", "aliases": [],
                                               "active": True} for i in range(1, 11)])
        customers = max(1, issues // 4)
        for lo in range(0, customers, CHUNK):
            conn.execute(insert(table_of(Customer)), [
                {"id": i + 1, "name": f"Customer {i}", "tags": [], "created_at": START}
                for i in range(lo, min(customers, lo + CHUNK))])
    per_issue = interactions / issues
    next_interaction = 1
    canned = 0
    for lo in range(0, issues, CHUNK):
        issue_rows, inter_rows, action_rows, canned_rows = [], [], [], []
        for n in range(lo, min(issues, lo + CHUNK)):
            iid = n + 1
            opened = START + timedelta(seconds=rng.uniform(0, DAYS * 86400))
            closed = opened + timedelta(hours=rng.expovariate(1 / 40)) if rng.random() < 0.8 else None
            rep = rng.randint(1, 10) if rng.random() < 0.85 else None
            customer = rng.randint(1, customers)
            issue_rows.append({
                "id": iid, "status": "closed" if closed else rng.choice(["open", "open", "pending"]),
                "category_id": rng.randint(1, len(CATEGORIES)), "priority": rng.choice(["normal"] * 4 + ["high"]),
                "assignee_id": rep, "customer_id": customer, "mailbox": rng.choice(["support", "billing"]),
                "subject": f"Issue {iid}", "tags": [], "cc": [], "opened_at": opened, "closed_at": closed,
                "updated_at": closed or opened,
            })
            count = max(1, round(rng.gauss(per_issue, 1.5)))
            when = opened
            for k in range(count):
                if k == 0:
                    direction, channel, who = "inbound", "email", None
                else:
                    when += timedelta(hours=rng.expovariate(1 / 12))
                    r = rng.random()
                    direction, channel = (("outbound", "email") if r < 0.45 else ("inbound", "email") if r < 0.8
                                          else ("internal", "note") if r < 0.9 else ("inbound", "phone"))
                    who = rep or rng.randint(1, 10) if direction != "inbound" else None
                auto = k == 1 and rng.random() < 0.5
                inter_rows.append({
                    "id": next_interaction, "direction": direction, "channel": channel, "mailbox": "support",
                    "customer_id": customer if direction != "internal" else None, "rep_id": who,
                    "from_name": "", "to": [], "cc": [], "subject": "", "references": [], "full_text": "",
                    "new_text": "", "auto": "acknowledgement" if auto else None, "auto_generated": auto,
                    "defects": [], "created_at": when, "date": when,
                })
                action_rows.append({"issue_id": iid, "interaction_id": next_interaction, "created_at": when})
                if direction == "outbound" and rng.random() < 0.1:
                    canned_rows.append({"name": f"canned-{rng.randint(1, 30)}", "issue_id": iid,
                                        "interaction_id": next_interaction, "rep_id": who, "used_at": when})
                next_interaction += 1
        with engine.begin() as conn:
            conn.execute(insert(table_of(Issue)), issue_rows)
            conn.execute(insert(table_of(Interaction)), inter_rows)
            conn.execute(insert(table_of(Action)), action_rows)
            if canned_rows:
                conn.execute(insert(table_of(CannedUse)), canned_rows)
        canned += len(canned_rows)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            for table in ("customers", "issues", "interactions", "actions"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
            conn.execute(text("ANALYZE"))
        else:
            conn.execute(text("ANALYZE"))
    engine.dispose()
    print(f"generated {issues} issues, {next_interaction - 1} interactions, {canned} canned uses "
          f"in {time.perf_counter() - t0:.1f} s")


# -- the hand-written queries ------------------------------------------------------------

def _seconds(kind: str, later: str, earlier: str) -> str:
    if kind == "sqlite":
        return f"(julianday({later}) - julianday({earlier})) * 86400.0"
    return f"extract(epoch from ({later} - {earlier}))"


def _day(kind: str, col: str) -> str:
    return f"date({col})" if kind == "sqlite" else f"to_char(timezone('UTC', {col}), 'YYYY-MM-DD')"


def hand_written(kind: str) -> dict[str, str]:
    first_reply = ("(SELECT min(x.created_at) FROM interactions x JOIN actions a ON a.interaction_id = x.id "
                   "WHERE a.issue_id = i.id AND x.direction = 'outbound' AND NOT x.auto_generated)")
    if kind == "postgresql":
        turnaround = f"""
WITH b AS (SELECT c.name AS category, coalesce(r.name, 'unassigned') AS rep,
                  {_seconds(kind, first_reply, 'i.opened_at')} AS frt,
                  {_seconds(kind, 'i.closed_at', 'i.opened_at')} AS res,
                  {_seconds(kind, ':e', 'i.opened_at')} AS age, i.status = 'closed' AS closed
           FROM issues i JOIN categories c ON c.id = i.category_id LEFT JOIN reps r ON r.id = i.assignee_id
           WHERE i.opened_at >= :s AND i.opened_at < :e)
SELECT category, rep, count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY frt), percentile_cont(0.9) WITHIN GROUP (ORDER BY frt),
       count(*) FILTER (WHERE frt <= {T1}), count(*) FILTER (WHERE frt IS NOT NULL OR (NOT closed AND age > {T1})),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY res), percentile_cont(0.9) WITHIN GROUP (ORDER BY res),
       count(*) FILTER (WHERE res <= {T2}), count(*) FILTER (WHERE res IS NOT NULL OR age > {T2}),
       count(*) FILTER (WHERE frt > {T1} OR (frt IS NULL AND NOT closed AND age > {T1}) OR res > {T2}
                              OR (res IS NULL AND age > {T2}))
FROM b GROUP BY GROUPING SETS ((category), (rep))"""
    else:  # no percentile function: ranks, as anyone would write it by hand
        turnaround = f"""
WITH b AS (SELECT c.name AS category, coalesce(r.name, 'unassigned') AS rep,
                  {_seconds(kind, first_reply, 'i.opened_at')} AS frt,
                  {_seconds(kind, 'i.closed_at', 'i.opened_at')} AS res
           FROM issues i JOIN categories c ON c.id = i.category_id LEFT JOIN reps r ON r.id = i.assignee_id
           WHERE i.opened_at >= :s AND i.opened_at < :e),
l AS (SELECT 'category' AS g, category AS k, frt, res FROM b UNION ALL SELECT 'rep', rep, frt, res FROM b),
f AS (SELECT g, k, frt AS v, row_number() OVER (PARTITION BY g, k ORDER BY frt) AS rn,
             count(*) OVER (PARTITION BY g, k) AS n FROM l WHERE frt IS NOT NULL),
r AS (SELECT g, k, res AS v, row_number() OVER (PARTITION BY g, k ORDER BY res) AS rn,
             count(*) OVER (PARTITION BY g, k) AS n FROM l WHERE res IS NOT NULL)
SELECT 'f', g, k, max(CASE WHEN rn = (n + 1) / 2 THEN v END), max(CASE WHEN rn = 1 + 9 * (n - 1) / 10 THEN v END)
FROM f GROUP BY g, k
UNION ALL
SELECT 'r', g, k, max(CASE WHEN rn = (n + 1) / 2 THEN v END), max(CASE WHEN rn = 1 + 9 * (n - 1) / 10 THEN v END)
FROM r GROUP BY g, k"""
    return {
        "issue-types": """
SELECT c.name, sum(CASE WHEN i.opened_at >= :s THEN 1 ELSE 0 END), sum(CASE WHEN i.opened_at < :s THEN 1 ELSE 0 END),
       sum(CASE WHEN i.opened_at >= :s AND i.status <> 'closed' THEN 1 ELSE 0 END)
FROM issues i JOIN categories c ON c.id = i.category_id
WHERE i.opened_at >= :ps AND i.opened_at < :e GROUP BY c.name""",
        "reps": """
SELECT r.name, r.email, count(x.id), sum(CASE WHEN x.direction = 'outbound' THEN 1 ELSE 0 END),
       sum(CASE WHEN x.channel = 'note' THEN 1 ELSE 0 END),
       (SELECT count(*) FROM issues i WHERE i.assignee_id = r.id AND i.closed_at >= :s AND i.closed_at < :e),
       (SELECT count(*) FROM issues i WHERE i.assignee_id = r.id AND i.status <> 'closed')
FROM reps r LEFT JOIN interactions x ON x.rep_id = r.id AND NOT x.auto_generated
     AND x.created_at >= :s AND x.created_at < :e
GROUP BY r.id, r.name, r.email""",
        "resources": """
SELECT name, count(*), count(DISTINCT issue_id), count(DISTINCT rep_id) FROM canned_uses
WHERE used_at >= :s AND used_at < :e GROUP BY name""",
        "turnaround": turnaround,
        "backlog": f"""
SELECT d, sum(o), sum(c), sum(sum(o) - sum(c)) OVER (ORDER BY d) FROM (
  SELECT {_day(kind, 'opened_at')} AS d, count(*) AS o, 0 AS c FROM issues
  WHERE opened_at >= :s AND opened_at < :e GROUP BY 1
  UNION ALL
  SELECT {_day(kind, 'closed_at')}, 0, count(*) FROM issues WHERE closed_at >= :s AND closed_at < :e GROUP BY 1
) t GROUP BY d ORDER BY d""",
        "channels": """
SELECT channel, direction, count(*), sum(CASE WHEN auto_generated THEN 1 ELSE 0 END), count(DISTINCT customer_id)
FROM interactions WHERE created_at >= :s AND created_at < :e GROUP BY channel, direction""",
    }


def _time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compare(url: str, repeat: int) -> None:
    engine = db.make_engine(url, write_first=False)
    sessions = db.session_factory(engine)
    kind = engine.dialect.name
    filters = Filters(since=START.date(), until=(START + timedelta(days=DAYS - 1)).date())
    window = filters.window(datetime.now(UTC))
    bind = {"s": window.start, "e": window.end, "ps": window.previous.start}
    if kind == "sqlite":  # the stored form of times in SQLite
        bind = {k: v.strftime("%Y-%m-%d %H:%M:%S.%f") for k, v in bind.items()}
    queries = hand_written(kind)
    print(f"\n{kind}: each report over {DAYS} days, median of {repeat} (seconds)")
    print(f"{'report':<12} {'maild':>8} {'by hand':>8} {'ratio':>6}  rows")
    for name in REPORTS:
        with sessions() as session:
            rows = len(run_report(session, name, filters).rows)
            ours = _time(lambda: run_report(session, name, filters), repeat)  # noqa: B023
            conn = session.connection()
            sql = text(queries[name])
            theirs = _time(lambda: conn.execute(sql, bind).all(), repeat)  # noqa: B023
        print(f"{name:<12} {ours:8.3f} {theirs:8.3f} {ours / theirs:6.2f}  {rows}")
    engine.dispose()


# -- intake while reports run ----------------------------------------------------------

def _mail(n: int, tag: str) -> bytes:
    return (f"From: Customer {n} <c{n}@example.com>\r\nTo: support@acme.test\r\n"
            f"Subject: Question {tag} {n}\r\nMessage-ID: <{tag}.{n}@example.com>\r\n"
            f"Date: Mon, 04 Mar 2024 10:00:00 +0000\r\n\r\nHello, question {n}.\r\n").encode()


def _report_loop(url: str, stop, runs) -> None:
    engine = db.make_engine(url, write_first=False)
    sessions = db.session_factory(engine)
    filters = Filters(since=START.date(), until=(START + timedelta(days=DAYS - 1)).date())
    while not stop.is_set():
        for name in REPORTS:
            with sessions() as session:
                run_report(session, name, filters)
            with runs.get_lock():
                runs.value += 1
            if stop.is_set():
                break
    engine.dispose()


def intake(url: str, mails: int, folder: Path) -> None:
    from maild.app import build
    from maild.config import load
    from maild.ingest.intake import Incoming, accept_many

    config = folder / "maild.toml"
    config.write_text(f'[database]\nurl = "{url}"\n\n[outbound]\nrelay = "maildir:{folder / "out"}"\n\n'
                      '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\n')
    app = build(load(config))
    stop = multiprocessing.Event()
    runs = multiprocessing.Value("i", 0)

    def one_pass(tag: str) -> float:
        t = time.perf_counter()
        for lo in range(0, mails, 10):  # batches of ten, as the daemon's drain takes them when busy
            accepted = accept_many(app.sessions, [Incoming(_mail(n, tag), "support", "smtp")
                                                  for n in range(lo, min(mails, lo + 10))])
            app.pipeline.process([a.raw_id for a in accepted])
        return mails / (time.perf_counter() - t)

    tag = uuid.uuid4().hex[:6]
    alone = one_pass(tag + "a")
    # Reports in a process of their own, as `maild report` or the console would run them.
    proc = multiprocessing.Process(target=_report_loop, args=(url, stop, runs))
    proc.start()
    time.sleep(1.0)
    busy = one_pass(tag + "b")
    stop.set()
    proc.join()
    app.close()
    print(f"\nintake (store + process, {mails} mails): alone {alone:.0f}/s, while reports run {busy:.0f}/s "
          f"({100 * (busy - alone) / alone:+.0f}%), {runs.value} reports run meanwhile")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of 1,000,000 interactions / 200,000 issues")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--mails", type=int, default=300)
    p.add_argument("--keep", action="store_true", help="keep the database (PostgreSQL schema) afterwards")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="maild-reports-"))
    url, schema = args.db or f"sqlite:///{folder / 'reports.db'}", None
    if url.startswith("postgres"):
        import psycopg

        schema = "bench_" + uuid.uuid4().hex[:8]
        base = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        url = f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    try:
        generate(url, int(200_000 * args.scale), int(1_000_000 * args.scale))
        compare(url, args.repeat)
        intake(url, args.mails, folder)
    finally:
        if schema and not args.keep:
            with psycopg.connect(base, autocommit=True) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
