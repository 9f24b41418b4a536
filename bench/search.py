"""Search benchmark: `issues search` through the full-text index beside a plain LIKE scan
of the same data, and what keeping the index costs `maild import`. Figures, not a test.

Generates a history with bulk INSERTs (default 200,000 interactions on 40,000
issues; the migration's triggers index it as it goes), then runs --queries
searches (one, two and three words of every frequency, rare to common) through
maild.desk.search.search_issues, and the same words as a LIKE scan (`%word%`
on subject and text, every word required, issues ranked by matching
interactions) in the same run: p50 and p99 of each (goal: search at least 20x
faster at p50). Then it imports --mails generated messages with `maild import`
into a fresh database as migrated, and into one whose index triggers (and
PostgreSQL's GIN index) were dropped, alternating --rounds times (goal: the
import rate down at most 15%).

    python bench/search.py [--db URL] [--n 200000] [--queries 200] [--mails 2000] [--rounds 2] [--keep]

--db defaults to a SQLite file in a temporary folder; a PostgreSQL URL gets
schemas of its own (dropped afterwards unless --keep).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from sqlalchemy import insert, text  # noqa: E402

import corpusgen  # noqa: E402
from maild import db  # noqa: E402
from maild.desk.search import search_issues  # noqa: E402
from maild.models import Action, Category, Customer, Interaction, Issue, table_of  # noqa: E402

START = datetime(2024, 1, 1, tzinfo=UTC)
CHUNK = 10_000
VOCABULARY = 20_000  # words drawn with a Zipf-like skew: a few very common, most rare


def _words(rng: random.Random) -> list[str]:
    syllables = ["ka", "lo", "mi", "ren", "tu", "sa", "vel", "dor", "pi", "qua", "zen", "bro", "fi", "gal", "nu"]
    out: set[str] = set()
    while len(out) < VOCABULARY:
        out.add("".join(rng.choice(syllables) for _ in range(rng.randint(2, 4))))
    return sorted(out)


def _text(rng: random.Random, vocab: list[str], words: int) -> str:
    n = len(vocab)
    return " ".join(vocab[min(n - 1, int(rng.paretovariate(1.1))) - 1] if rng.random() < 0.7
                    else vocab[rng.randrange(n)] for _ in range(words))


def generate(url: str, interactions: int, seed: int = 1) -> list[str]:
    """The history; returns the vocabulary."""
    rng = random.Random(seed)
    vocab = _words(rng)
    engine = db.make_engine(url)
    db.migrate(engine)
    issues = max(1, interactions // 5)
    t0 = time.perf_counter()
    with engine.begin() as conn:
        conn.execute(insert(table_of(Category)), [{"name": "uncategorized", "description": ""}])
        conn.execute(insert(table_of(Customer)), [{"id": i + 1, "name": f"Customer {i}", "tags": [], "created_at": START}
                                                  for i in range(max(1, issues // 4))])
    next_interaction = 1
    for lo in range(0, issues, CHUNK // 5):
        issue_rows, inter_rows, action_rows = [], [], []
        for iid in range(lo + 1, min(issues, lo + CHUNK // 5) + 1):
            opened = START + timedelta(seconds=rng.uniform(0, 365 * 86400))
            subject = _text(rng, vocab, rng.randint(3, 8)).capitalize()
            issue_rows.append({"id": iid, "status": rng.choice(["open", "pending", "closed", "closed"]),
                               "category_id": 1, "priority": "normal", "customer_id": rng.randint(1, issues // 4 or 1),
                               "mailbox": "support", "subject": subject, "tags": [], "cc": [], "opened_at": opened,
                               "updated_at": opened})
            for k in range(5):
                body = _text(rng, vocab, rng.randint(20, 200))
                inter_rows.append({
                    "id": next_interaction, "direction": "inbound" if k % 2 == 0 else "outbound", "channel": "email",
                    "mailbox": "support", "from_name": "", "to": [], "cc": [], "references": [], "defects": [],
                    "subject": subject if k == 0 else f"Re: {subject}", "full_text": body, "new_text": body,
                    "auto_generated": False, "created_at": opened + timedelta(hours=k), "date": opened,
                })
                action_rows.append({"issue_id": iid, "interaction_id": next_interaction, "created_at": opened})
                next_interaction += 1
        with engine.begin() as conn:
            conn.execute(insert(table_of(Issue)), issue_rows)
            conn.execute(insert(table_of(Interaction)), inter_rows)
            conn.execute(insert(table_of(Action)), action_rows)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            for table in ("customers", "issues", "interactions", "actions"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))"))
        conn.execute(text("ANALYZE"))
    engine.dispose()
    print(f"generated {issues} issues, {next_interaction - 1} interactions in {time.perf_counter() - t0:.1f} s "
          "(indexed by the triggers as inserted)")
    return vocab


def _like(conn, words: list[str], limit: int = 20) -> list[int]:
    op = "ILIKE" if conn.dialect.name == "postgresql" else "LIKE"  # SQLite's LIKE ignores ASCII case
    where = " AND ".join(f"(i.subject {op} :w{n} OR i.new_text {op} :w{n})" for n in range(len(words)))
    sql = (f"SELECT a.issue_id, count(*) AS n FROM interactions i JOIN actions a ON a.interaction_id = i.id "
           f"JOIN issues s ON s.id = a.issue_id WHERE s.status <> 'merged' AND {where} "
           f"GROUP BY a.issue_id ORDER BY n DESC, a.issue_id LIMIT {limit}")
    return [r[0] for r in conn.execute(text(sql), {f"w{n}": f"%{w}%" for n, w in enumerate(words)})]


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


def compare(url: str, vocab: list[str], queries: int, seed: int = 2) -> None:
    rng = random.Random(seed)
    # Rare to common: ranks spread on a log scale, one to three words each.
    picks = [[vocab[min(len(vocab) - 1, int(10 ** rng.uniform(0, 4.3)))] for _ in range(rng.choice((1, 1, 2, 3)))]
             for _ in range(queries)]
    engine = db.make_engine(url, write_first=False)
    fts, like, found = [], [], []
    with db.session_factory(engine)() as session:
        search_issues(session, picks[0][0])  # warm the caches once for both
        _like(session.connection(), picks[0])
        for words in picks:
            t = time.perf_counter()
            hits = search_issues(session, " ".join(words))
            fts.append(time.perf_counter() - t)
            t = time.perf_counter()
            _like(session.connection(), words)
            like.append(time.perf_counter() - t)
            found.append(len(hits))
    engine.dispose()
    p50f, p99f, p50l, p99l = (_pct(fts, 50), _pct(fts, 99), _pct(like, 50), _pct(like, 99))
    print(f"\n{queries} searches (1-3 words, rare to common; median {statistics.median(found):.0f} issues found, "
          f"first page of 20):")
    print(f"  index search  p50 {1000 * p50f:8.2f} ms   p99 {1000 * p99f:8.2f} ms")
    print(f"  LIKE scan     p50 {1000 * p50l:8.2f} ms   p99 {1000 * p99l:8.2f} ms")
    print(f"  index faster: {p50l / p50f:.0f}x at p50, {p99l / p99f:.0f}x at p99 (goal: at least 20x at p50)")


# -- the index's cost during `maild import` ------------------------------------------------

def _fresh(base_url: str, folder: Path, name: str, schemas: list[str]) -> str:
    if base_url.startswith("postgres"):
        import psycopg

        schema = f"bench_{name}_{uuid.uuid4().hex[:6]}"
        with psycopg.connect(base_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        schemas.append(schema)
        return f"{base_url}{'&' if '?' in base_url else '?'}options=-csearch_path%3D{schema}"
    return f"sqlite:///{folder / (name + '-' + uuid.uuid4().hex[:6] + '.db')}"


def _migrated(url: str, drop_index: bool) -> None:
    engine = db.make_engine(url)
    db.migrate(engine)
    if not drop_index:
        engine.dispose()
        return
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("DROP TRIGGER interactions_search_vector ON interactions"))
            conn.execute(text("DROP INDEX ix_interactions_search_vector"))
        else:
            for name in ("insert", "update", "delete"):
                conn.execute(text(f"DROP TRIGGER interaction_fts_{name}"))
    engine.dispose()


def _cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def _import(url: str, folder: Path, maildir: str) -> tuple[float, float]:
    """Wall and CPU seconds of one `maild import` (CPU counts its worker processes too, and is
    steadier than wall time on a machine others share)."""
    config = folder / f"import-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(f"[database]\nurl = {json.dumps(url)}\n\n[[mailbox]]\nname = \"support\"\n"
                      f"address = {json.dumps(corpusgen.SUPPORT)}\n", encoding="utf-8")
    t, cpu = time.perf_counter(), _cpu()
    done = subprocess.run([sys.executable, "-m", "maild", "import", "-c", str(config), "--mailbox", "support",
                           maildir], capture_output=True, cwd=REPO, timeout=3600)
    seconds, cpu = time.perf_counter() - t, _cpu() - cpu
    if done.returncode:
        raise RuntimeError(f"maild import exited {done.returncode}: {done.stderr.decode()[-2000:]}")
    return seconds, cpu


def import_cost(base_url: str, folder: Path, mails: int, rounds: int, schemas: list[str]) -> None:
    manifest = corpusgen.generate(mails, 7, folder / "corpus")
    runs: dict[str, list[tuple[float, float]]] = {"indexed": [], "plain": []}
    for _ in range(rounds):  # alternating, so drift in the machine's load hits both alike
        for kind in ("indexed", "plain"):
            url = _fresh(base_url, folder, kind, schemas)
            _migrated(url, drop_index=kind == "plain")  # both migrated here: the import's time is the import's
            runs[kind].append(_import(url, folder, manifest.path))
    print(f"\nmaild import of {mails} messages into a fresh database, median of {rounds}:")
    rates = {}
    for kind, label in (("indexed", "with the search index"), ("plain", "without (triggers dropped)")):
        wall = statistics.median(mails / w for w, _ in runs[kind])
        cpu = statistics.median(mails / c for _, c in runs[kind])
        rates[kind] = (wall, cpu)
        print(f"  {label:<27} {wall:6.0f} messages/s wall, {cpu:6.0f} per CPU second   "
              f"(wall: {', '.join(f'{mails / w:.0f}' for w, _ in runs[kind])})")
    (aw, ac), (bw, bc) = rates["indexed"], rates["plain"]
    print(f"  cost of the index: {100 * (bw - aw) / bw:+.1f}% of the wall rate, {100 * (bc - ac) / bc:+.1f}% "
          "of the rate per CPU second (goal: at most 15%)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--db", help="database URL (default: a temporary SQLite file)")
    p.add_argument("--n", type=int, default=200_000, help="interactions in the generated history")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--mails", type=int, default=2000, help="messages imported per import run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--keep", action="store_true", help="keep the databases (PostgreSQL schemas) afterwards")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="maild-search-"))
    base = args.db or ""
    schemas: list[str] = []
    try:
        url = _fresh(base, folder, "history", schemas) if base else f"sqlite:///{folder / 'history.db'}"
        print(f"database: {db.display_url(url)}")
        vocab = generate(url, args.n)
        compare(url, vocab, args.queries)
        if args.mails:
            import_cost(base, folder, args.mails, args.rounds, schemas)
    finally:
        if schemas and not args.keep:
            import psycopg

            with psycopg.connect(base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
                for schema in schemas:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
