"""A real Dovecot IMAP server for the tests and the IMAP benchmark.

Started in the foreground from a temporary config on a free loopback port:
passwd-file users, Maildir storage owned by a non-root system account (Dovecot
refuses to serve mail as root), everything under a temporary folder that
Dovecot's own users can traverse. It never touches the system's Dovecot
config, and stops only the server it started.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from collections.abc import Iterable, Iterator

from imapclient import IMAPClient

MAIL_USER = "maild-mail"  # owns the test mail; created as a system account when missing
PASSWORD = "imap-test-password"
_names = count()


def dovecot_binary() -> str:
    found = shutil.which("dovecot", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    if not found:
        raise RuntimeError("dovecot is not installed: run .ci/setup (Debian package dovecot-imapd)")
    return found


def mail_account() -> pwd.struct_passwd:
    """The account that owns the mail: a system user when root, else whoever runs the tests."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam(MAIL_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", MAIL_USER], capture_output=True)
        return pwd.getpwnam(MAIL_USER)  # made now, or by a concurrent run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the child before exec: a test run that is killed takes its Dovecot with it."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {root}/run
state_dir = {root}/state
instance_name = maild-test-{port}
log_path = {root}/dovecot.log
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2
auth_failure_delay = 0
stats_writer_socket_path =
mail_location = maildir:{root}/mail/%u
first_valid_uid = {uid}
last_valid_uid = {uid}
{ssl}
{extra}
# No growing delay after failed logins: the tests fail logins on purpose.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {tls_port}
  }}
}}
"""

# Without root nothing can change user or chroot: everything runs as the caller.
UNPRIVILEGED = """\
default_login_user = {user}
default_internal_user = {user}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
service stats {{
  unix_listener stats-writer {{
    group =
  }}
}}
service imap-hibernate {{
  unix_listener imap-hibernate {{
    group =
  }}
}}
service dict {{
  unix_listener dict {{
    group =
  }}
}}
service dict-async {{
  unix_listener dict-async {{
    group =
  }}
}}
"""


class Dovecot:
    """One Dovecot instance with one mail user; `start`, `stop`, `restart`, `close`."""

    def __init__(self, *, user: str = "support", password: str = PASSWORD, tls: bool = False,
                 capabilities: str | None = None) -> None:
        self.user, self.password, self.tls = user, password, tls
        self.account = mail_account()
        self.root = Path(tempfile.mkdtemp(prefix="maild-dovecot-"))
        self.root.chmod(0o755)  # Dovecot's login and mail processes must reach run/ and mail/
        for sub in ("run", "state", "mail"):
            (self.root / sub).mkdir()
        os.chown(self.root / "mail", self.account.pw_uid, self.account.pw_gid)
        (self.root / "passwd").write_text(f"{user}:{{PLAIN}}{password}::::::\n")
        self.port = free_port()
        self.tls_port = free_port() if tls else 0
        self.cert = self.root / "cert.pem"
        self.config = self.root / "dovecot.conf"
        self.config.write_text(self._config(capabilities))
        self.proc: subprocess.Popen | None = None

    def _config(self, capabilities: str | None) -> str:
        ssl = "ssl = no"
        if self.tls:
            self._make_certificate()
            ssl = f"ssl = yes\nssl_cert = <{self.cert}\nssl_key = <{self.root / 'key.pem'}"
        extra = f"imap_capability = {capabilities}\n" if capabilities else ""
        if os.geteuid() != 0:
            extra += UNPRIVILEGED.format(user=self.account.pw_name)
        return CONFIG.format(root=self.root, port=self.port, tls_port=self.tls_port, uid=self.account.pw_uid,
                             gid=self.account.pw_gid, ssl=ssl, extra=extra)

    def _make_certificate(self) -> None:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(self.root / "key.pem"), "-out", str(self.cert)],
            check=True, capture_output=True,
        )

    # -- the server ---------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        """Start the server; it dies with the thread that started it (so with a killed test run)."""
        out = open(self.root / "master.out", "ab")
        self.proc = subprocess.Popen([dovecot_binary(), "-F", "-c", str(self.config)], stdout=out, stderr=out,
                                     preexec_fn=_die_with_parent)
        out.close()
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dovecot did not start:\n{self.log()}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        for port in filter(None, (self.port, self.tls_port)):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
            except OSError:
                return False
        return True

    def stop(self, graceful: bool = True) -> None:
        """Stop the server and end its sessions, as a restart of a real server does
        (graceful: clients get a BYE), or at once (not graceful: for teardown).

        A foreground master leaves its IMAP processes serving their clients after
        it exits, so those (its own children, by pid) are ended here."""
        if self.proc is None:
            return
        children = _children(self.proc.pid)
        if graceful:
            self.proc.terminate()
        else:
            self.proc.kill()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM if graceful else signal.SIGKILL)
            except ProcessLookupError:
                pass
        # The master is gone; wait until its listeners are too, so a restart can bind.
        deadline = time.monotonic() + 10
        while self._listening() and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop(graceful=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        parts = []
        for name in ("master.out", "dovecot.log"):
            path = self.root / name
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def log_size(self) -> int:
        path = self.root / "dovecot.log"
        return path.stat().st_size if path.exists() else 0

    def logouts(self, since: int, expect: int, timeout: float = 20.0) -> list[dict[str, int]]:
        """For the IMAP sessions that logged in after log offset `since`, the figures
        Dovecot logs when they log out (body_count, body_bytes: message bodies
        fetched), in login order; waits until `expect` of them have logged out."""
        deadline = time.monotonic() + timeout
        while True:
            with open(self.root / "dovecot.log", "rb") as f:
                f.seek(since)
                lines = f.read().decode(errors="replace").splitlines()
            logins = [m.group(1) for m in map(re.compile(r"Login: .*session=<([^>]+)>").search, lines) if m]
            outs = {m.group(1): m.group(2) for m in map(re.compile(r"<([^>]+)>: .*Logged out (.*)").search, lines)
                    if m}
            done = [outs[s] for s in logins if s in outs]
            if len(done) >= expect or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return [{k: int(v) for k, v in (w.split("=", 1) for w in figures.split()) if v.isdigit()}
                for figures in done]

    def __enter__(self) -> Dovecot:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- mail in and out, as another mail client would see it ----------------------

    @contextmanager
    def client(self) -> Iterator[IMAPClient]:
        c = IMAPClient("127.0.0.1", self.port, ssl=False, timeout=60)
        c.login(self.user, self.password)
        try:
            yield c
        finally:
            c.logout()

    def append(self, folder: str, *messages: bytes, flags: Iterable[bytes] = ()) -> None:
        with self.client() as c:
            if not c.folder_exists(folder):
                c.create_folder(folder)
            for raw in messages:
                c.append(folder, raw, flags=tuple(flags))

    def messages(self, folder: str = "INBOX") -> dict[int, tuple[bytes, tuple[bytes, ...]]]:
        """UID -> (bytes, flags), read without setting \\Seen; {} when the folder does not exist."""
        with self.client() as c:
            if not c.folder_exists(folder):
                return {}
            c.select_folder(folder, readonly=True)
            uids = c.search("ALL")
            if not uids:
                return {}
            data = c.fetch(uids, ["BODY.PEEK[]", "FLAGS"])
            return {u: (d[b"BODY[]"], d[b"FLAGS"]) for u, d in data.items()}

    def maildir(self, folder: str = "INBOX") -> Path:
        base = self.root / "mail" / self.user
        return base if folder == "INBOX" else base / f".{folder}"

    def deliver(self, messages: Iterable[bytes], folder: str = "INBOX") -> int:
        """Write messages straight into the folder's Maildir new/, as Dovecot's own delivery
        agent does (much faster than APPEND), with the size (S=) and the size with CRLF
        line ends (W=) in the file name; Dovecot numbers them in this order."""
        path = self.maildir(folder)
        uid, gid = self.account.pw_uid, self.account.pw_gid
        for d in (path.parent, path, path / "tmp", path / "new", path / "cur"):
            if not d.exists():
                d.mkdir(mode=0o700)
                os.chown(d, uid, gid)
        if folder != "INBOX" and not (path / "maildirfolder").exists():
            (path / "maildirfolder").touch()
            os.chown(path / "maildirfolder", uid, gid)
        n, stamp = 0, int(time.time())
        for n, raw in enumerate(messages, 1):  # noqa: B007  (n is the count returned)
            wire = len(raw) + raw.count(b"\n") - raw.count(b"\r\n")
            name = f"{stamp}.M{next(_names) % 1000000:06d}P{os.getpid()}.maild-test,S={len(raw)},W={wire}"
            tmp = path / "tmp" / name
            tmp.write_bytes(raw)
            os.chown(tmp, uid, gid)
            tmp.rename(path / "new" / name)
        return n
