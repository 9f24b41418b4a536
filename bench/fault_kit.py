"""What the fault scripts share: configs, maild as child processes, the real sink, database reads.

The fault scripts (bench/faults.py and the modules it runs) drive maild only
through its interfaces, as an operator and a mail server would: the config
file, `maild run`/`import`/`outbox send`/`ingest`, SMTP on loopback and the
database. Every child is ended by its own pid (SIGKILL is the fault under
test). The outbound relay is tests/smtp_sink.py, the project's real sink, in a
process of its own (`--delay`: a slow relay).
"""

from __future__ import annotations

import contextlib
import email
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SECRET = "fault-secret-0123456789abcdef"
SINK = REPO / "tests" / "smtp_sink.py"
WAIT = 120.0  # how long anything may take before it counts as hung; a guard, never a measure

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seeded(seed: int | None, what: str) -> random.Random:
    """A Random for one run, its seed printed so the run can be repeated with --seed."""
    if seed is None:
        seed = random.SystemRandom().randrange(1, 2**31)
    print(f"{what}: seed {seed}", flush=True)
    return random.Random(seed)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "MAILD_SECRET": SECRET, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def maild_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "maild", *args]


def run_maild(config: Path, *args: str, input: bytes | None = None, env: dict | None = None,
              timeout: float = WAIT) -> subprocess.CompletedProcess:
    return subprocess.run(maild_argv(*args, "-c", str(config)), input=input, capture_output=True,
                          env=child_env(env), cwd=REPO, timeout=timeout)


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    """A maild command that must succeed: its own message when it did not."""
    if result.returncode:
        raise RuntimeError(f"{' '.join(map(str, result.args[2:]))} exited {result.returncode}: "
                           f"{result.stderr.decode(errors='replace')[-2000:]}")
    return result


def maild_json(config: Path, *args: str):
    """`maild ARGS --json`, parsed; a clear error with maild's own message when it fails."""
    return json.loads(ok(run_maild(config, *args, "--json")).stdout)


def kill9(proc: subprocess.Popen) -> bool:
    """SIGKILL one child by its pid; True when it was still running (a real kill)."""
    if proc.poll() is not None:
        return False
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(WAIT)
    return True


# -- configuration --------------------------------------------------------------------


def q(value: object) -> str:
    return json.dumps(value)


def write_config(work: Path, db_url: str, *, smtp: str = "", outbound: str = "", acknowledge: bool = False,
                 mailboxes: str | None = None, name: str = "maild.toml") -> Path:
    """Mailboxes support and billing, reps Alice and Bob, and the tables given."""
    boxes = mailboxes if mailboxes is not None else (
        f'[[mailbox]]\nname = "support"\naddress = "support@acme.test"\nacknowledge = {q(acknowledge)}\n\n'
        f'[[mailbox]]\nname = "billing"\naddress = "billing@acme.test"\nacknowledge = {q(acknowledge)}\n'
    )
    text = (f"[database]\nurl = {q(db_url)}\n\n"
            + (f"[smtp]\n{smtp}\n\n" if smtp else "")
            + "[daemon]\ndrain_interval = 1.0\n\n"
            + (f"[outbound]\n{outbound}\n\n" if outbound else "")
            + boxes + "\n"
            '[[rep]]\nname = "Alice"\nemail = "alice@acme.test"\n\n'
            '[[rep]]\nname = "Bob"\nemail = "bob@acme.test"\n')
    path = work / name
    path.write_text(text)
    return path


@contextlib.contextmanager
def scratch_db(url: str | None, work: Path) -> Iterator[str]:
    """A database of its own for one run: SQLite in `work`, or a fresh schema on the
    PostgreSQL server of `url` (dropped afterwards), so a run by hand never meets old rows."""
    if not url:
        yield f"sqlite:///{work / 'maild.db'}"
        return
    if not url.startswith("postgresql"):
        yield url
        return
    import psycopg

    conninfo = url.replace("postgresql+psycopg://", "postgresql://")
    schema = "fault_" + uuid.uuid4().hex[:12]
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    try:
        yield f"{url}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextlib.contextmanager
def workdir(keep: Path | None = None) -> Iterator[Path]:
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="maild-fault-") as name:
        yield Path(name)


# -- mail -----------------------------------------------------------------------------


def message(subject: str, msgid: str, frm: str = "pat@example.com", to: str = "support@acme.test",
            cc: str | None = None, body: str = "Hello,\nmy order has not arrived.\n") -> bytes:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"], m["Message-ID"] = frm, to, subject, msgid
    if cc:
        m["Cc"] = cc
    m.set_content(body)
    return m.as_bytes(policy=policy.SMTP)


# -- maild run ------------------------------------------------------------------------


class Daemon:
    """`maild run` as a child; every start appends to one log file."""

    def __init__(self, config: Path, env: dict[str, str] | None = None) -> None:
        self.config, self.env = config, env
        self.log_path = config.with_suffix(".log")
        self.proc: subprocess.Popen | None = None

    def start(self, ready: bool = True) -> Daemon:
        before = self.log.count("maild.daemon started")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(maild_argv("run", "-c", str(self.config)), stdout=subprocess.DEVNULL,
                                         stderr=log, env=child_env(self.env), cwd=REPO)
        deadline = time.monotonic() + WAIT
        while ready and self.log.count("maild.daemon started") == before:
            if self.proc.poll() is not None:
                raise RuntimeError(f"maild run exited {self.proc.returncode}:\n{self.log[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"maild run did not start:\n{self.log[-3000:]}")
            time.sleep(0.02)
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> bool:
        return self.proc is not None and kill9(self.proc)

    def stop(self) -> int | None:
        """SIGTERM, as systemd stops it; the exit status (None when it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(WAIT)
        except subprocess.TimeoutExpired:
            kill9(self.proc)
            return None


# -- the relay ------------------------------------------------------------------------


class Sink:
    """tests/smtp_sink.py in its own process: a relay that writes each message it takes to a file."""

    def __init__(self, folder: Path, delay: float = 0.0, reject: tuple[str, ...] = ()) -> None:
        self.folder, self.delay, self.reject = folder, delay, reject
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Sink:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "ready").unlink(missing_ok=True)
        argv = [sys.executable, str(SINK), "--port", str(self.port), "--dir", str(self.folder)]
        if self.delay:
            argv += ["--delay", str(self.delay)]
        for address in self.reject:
            argv += ["--reject", address]
        self.proc = subprocess.Popen(argv, cwd=REPO)
        deadline = time.monotonic() + WAIT
        while not (self.folder / "ready").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the sink did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                kill9(self.proc)

    def count(self) -> int:
        return len(list(self.folder.glob("*.eml")))

    def messages(self) -> list[tuple[dict, bytes]]:
        """(envelope, bytes) of every copy the sink holds, in arrival order."""
        out = []
        for path in sorted(self.folder.glob("*.eml")):  # written last: its .env is complete
            out.append((json.loads(path.with_suffix(".env").read_text()), path.read_bytes()))
        return out

    def message_ids(self) -> Counter:
        ids: Counter = Counter()
        for _env, data in self.messages():
            ids[str(email.message_from_bytes(data, policy=policy.default)["Message-ID"]).strip("<>")] += 1
        return ids


# -- the database as an operator reads it ------------------------------------------------


class Db:
    def __init__(self, url: str) -> None:
        from maild import db

        self.engine = db.make_engine(url, write_first=False)  # a reader: never waits for the writer (WAL)

    def close(self) -> None:
        self.engine.dispose()

    def rows(self, query) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(query))

    def scalar(self, query):
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()

    def raw_states(self) -> Counter:
        from sqlalchemy import func, select

        from maild.models import RawMessage

        return Counter(dict(self.rows(select(RawMessage.state, func.count()).group_by(RawMessage.state))))

    def subjects(self, prefix: str) -> Counter:
        """Inbound interactions per subject, for subjects starting with `prefix`."""
        from sqlalchemy import select

        from maild.models import Interaction

        query = select(Interaction.subject).where(Interaction.direction == "inbound",
                                                   Interaction.subject.like(prefix + "%"))
        return Counter(r[0] for r in self.rows(query))

    def wait_drained(self, timeout: float = WAIT) -> bool:
        """Until no stored message is pending; False when it never got there."""
        deadline = time.monotonic() + timeout
        while self.raw_states().get("pending", 0):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def tally(expected: list[str], seen: Counter) -> dict[str, int]:
    """How many of the expected subjects were lost (0 interactions) or doubled (more than 1)."""
    return {"lost": sum(1 for s in expected if seen[s] == 0),
            "doubled": sum(1 for s in expected if seen[s] > 1),
            "exactly_once": sum(1 for s in expected if seen[s] == 1)}

