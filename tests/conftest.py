"""Shared fixtures: a database per test (SQLite and PostgreSQL), configs, the CLI.

`db_url` is parametrised over the backends named in MAILD_TEST_DATABASES
(default "sqlite,postgresql"); PostgreSQL is reached at MAILD_TEST_PG_URL
(default postgresql://postgres@127.0.0.1:5432/test) and each test gets a
schema of its own, dropped afterwards.

The shared corpus of real mails is read from MAILD_TEST_CORPUS (default
../shared/corpus beside the checkout). Tests over its files parametrise through
`corpus_params`, so without the corpus they show as skipped with the reason
rather than vanishing as an empty parametrisation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
CORPUS_SETTING = os.environ.get("MAILD_TEST_CORPUS") or "../shared/corpus"
CORPUS = (REPO / CORPUS_SETTING).resolve()
CORPUS_ABSENT = f"{CORPUS_SETTING} not found: the shared test corpus is absent"
PG_URL = os.environ.get("MAILD_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = [b.strip() for b in os.environ.get("MAILD_TEST_DATABASES", "sqlite,postgresql").split(",") if b.strip()]
SECRET = "test-secret-0123456789abcdef"


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'maild.db'}"
        return
    import psycopg

    schema = "t_" + uuid.uuid4().hex[:12]
    conninfo = PG_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '30s'")
        try:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
        except psycopg.errors.LockNotAvailable:
            # A connection left idle in a transaction (a daemon thread, a helper) still holds
            # a lock in the schema: end it rather than wait for ever, and say so.
            warnings.warn(f"{schema}: a connection was left in a transaction; ended it to drop the schema",
                          stacklevel=1)
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
                         " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def toml_value(v) -> str:
    return json.dumps(v) if not isinstance(v, bool) else ("true" if v else "false")


def write_config(path: Path, db_url: str, extra: str = "", mailboxes: str | None = None, reps: str | None = None) -> Path:
    mailboxes = mailboxes if mailboxes is not None else (
        '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\naliases = ["help@acme.test"]\n\n'
        '[[mailbox]]\nname = "billing"\naddress = "billing@acme.test"\ncategory = "billing"\n'
    )
    reps = reps if reps is not None else (
        '[[rep]]\nname = "Alice"\nemail = "alice@acme.test"\naliases = ["alice@home.test"]\n\n'
        '[[rep]]\nname = "Bob"\nemail = "bob@acme.test"\n'
    )
    text = (
        f"[database]\nurl = {toml_value(db_url)}\n\n{extra}\n\n"
        '[[category]]\nname = "billing"\n\n'
        f"{mailboxes}\n{reps}\n"
    )
    path.write_text(text)
    return path


@pytest.fixture
def config_path(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    return write_config(tmp_path / "maild.toml", db_url)


@pytest.fixture
def sink(tmp_path):
    """tests/smtp_sink.py running in a process of its own on a free loopback port."""
    from test_outbound import SinkProcess, free_port

    s = SinkProcess(tmp_path / "sink", free_port())
    s.folder.mkdir()
    yield s.start()
    s.stop()


@pytest.fixture
def settings(config_path):
    from maild.config import load

    return load(config_path)


@pytest.fixture
def app(settings):
    from maild.app import build

    a = build(settings)
    yield a
    a.close()


class Cli:
    """Runs `maild` in-process with the test's config; returns (exit code, output)."""

    def __init__(self, config: Path) -> None:
        self.config = config
        self.runner = CliRunner()

    def __call__(self, *args: str, input: bytes | str | None = None):
        from maild.cli import main

        # click takes options after arguments, so -c can always go last.
        return self.runner.invoke(main, [*args, "-c", str(self.config)], input=input, catch_exceptions=False)

    def json(self, *args: str):
        result = self(*args, "--json")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)


@pytest.fixture
def cli(config_path):
    return Cli(config_path)


def run_maild(*args: str, input: bytes | None = None, env: dict | None = None, timeout: float = 120):
    """`python -m maild ARGS` as a real subprocess (exit codes, pipes, signals)."""
    full_env = {**os.environ, "MAILD_SECRET": SECRET, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "maild", *args], input=input, capture_output=True, env=full_env,
        timeout=timeout, cwd=REPO,
    )


def corpus_dir(*parts: str) -> Path:
    """A folder of the corpus; skips the calling test when it is absent."""
    if not CORPUS.is_dir():
        pytest.skip(CORPUS_ABSENT)
    path = CORPUS.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not found in the shared test corpus")
    return path


def corpus_params(paths: Sequence[Path], ids: Callable[[Path], str] | None = None) -> list:
    """Parameters for a test over corpus files: one per file, or a single
    visible skip with the reason when there are none (no corpus)."""
    if paths:
        return [pytest.param(p, id=ids(p) if ids else None) for p in paths]
    reason = CORPUS_ABSENT if not CORPUS.is_dir() else "no such files in the shared test corpus"
    return [pytest.param(None, marks=pytest.mark.skip(reason=reason), id="corpus-absent")]


@pytest.fixture
def db(db_url):
    """Direct reads of the test database, for what the daemon under test stored."""
    from daemon_helpers import Db

    d = Db(db_url)
    yield d
    d.close()
