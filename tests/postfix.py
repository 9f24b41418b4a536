"""A private Postfix instance for the tests, from Debian's `postfix` package.

It has its own config and queue directories in a temporary folder
(`postfix -c DIR`), listens for SMTP on a free loopback port only, uses no
DNS and logs to a file in that folder. It never reads or changes the system's
/etc/postfix/main.cf or queue, and stops only the instance it started. Run as
root: Postfix's master binds and then drops to the `postfix` user.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])

# Everything that does not depend on the scenario. No DNS, loopback only,
# nothing local (mydestination and the alias maps are empty).
MAIN = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = {hostname}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
smtp_dns_support_level = disabled
lmtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
smtpd_peername_lookup = no
maillog_file = {root}/maillog
maillog_file_prefixes = {root}/
biff = no
"""

# The services Postfix needs, none chrooted (the temporary queue directory
# holds no copy of /etc), and SMTP on one loopback port.
MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
lmtp      unix  - - n - - lmtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


def postfix_binary() -> str:
    found = shutil.which("postfix", path=SBIN)
    if not found:
        raise RuntimeError("postfix is not installed: run .ci/setup (Debian package postfix)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _alive(pid: int) -> bool:
    """Whether a process runs (a zombie left for its parent to reap does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class Postfix:
    """One Postfix instance: `main` adds main.cf lines, `maps` are `hash:` tables
    written to the config directory (reference them as `hash:{config}/NAME`)."""

    def __init__(self, main: str = "", maps: Mapping[str, str] | None = None, hostname: str = "mx.acme.test") -> None:
        self.root = Path(tempfile.mkdtemp(prefix="maild-postfix-"))
        self.root.chmod(0o755)  # Postfix's own processes (user postfix) must reach the queue
        self.config = self.root / "etc"
        self.config.mkdir()
        (self.root / "queue").mkdir(mode=0o755)  # root's; `postfix check` makes what goes inside
        self.port = free_port()
        self.started = False
        text = MAIN.format(root=self.root, hostname=hostname) + main.replace("{config}", str(self.config))
        (self.config / "main.cf").write_text(text)
        (self.config / "master.cf").write_text(MASTER.format(port=self.port))
        try:
            for name, table in (maps or {}).items():
                (self.config / name).write_text(table)
                self._run("postmap", f"hash:{self.config / name}")
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        path = shutil.which(args[0], path=SBIN) or args[0]
        result = subprocess.run([path, "-c", str(self.config), *args[1:]], capture_output=True, text=True,
                                timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} exited {result.returncode}:\n{result.stderr}\n{self.log()}")
        return result

    def start(self, timeout: float = 30.0) -> None:
        """Create the queue (owned as `postfix check` wants it) and start; wait for the SMTP port."""
        postfix_binary()
        self._run("postfix", "check")
        self.started = True  # from here on `stop` has something to stop, even if start fails half-way
        self._run("postfix", "start")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix did not start listening on {self.port}:\n{self.log()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """`postfix stop`, then wait until this instance's master (by its pid file) has exited."""
        if not self.started:
            return
        pid_file = self.root / "queue" / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pid = None
        self._run("postfix", "stop", check=False)
        self.started = False
        deadline = time.monotonic() + timeout
        while pid is not None and _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def queue(self) -> list[dict]:
        """The messages Postfix holds (`postqueue -j`): queue_name, recipients with delay_reason, ..."""
        out = self._run("postqueue", "-j").stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def flush(self) -> None:
        """Deliver what is queued now, as an admin's `postqueue -f` does."""
        self._run("postqueue", "-f")

    def log(self) -> str:
        path = self.root / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Postfix:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()
