"""A real SMTP relay that routes by recipient, run as a separate process: a tiny MTA for the self-test.

    python tests/relay_router.py --port P --dir D [--forward ADDR=HOST:PORT ...] [--maildir ADDR=PATH:UID:GID ...]

Mail for a --forward address is relayed over SMTP to HOST:PORT (maild's own
listener); mail for a --maildir address is delivered into that Maildir
(tmp/, then renamed into new/, owned by UID:GID, as a delivery agent does),
where a Dovecot serving it finds it; anything else is written to D as
<n>.eml with its envelope in <n>.env, as tests/smtp_sink.py does. A
forward that fails answers 451, so the sender retries.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import smtplib
import socket
import time
from pathlib import Path

from aiosmtpd.controller import Controller


class Router:
    def __init__(self, folder: Path, forward: dict[str, tuple[str, int]], maildirs: dict[str, tuple[Path, int, int]]):
        self.folder, self.forward, self.maildirs = folder, forward, maildirs
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        data = envelope.original_content
        try:
            for rcpt in envelope.rcpt_tos:
                key = rcpt.lower()
                if key in self.forward:
                    host, port = self.forward[key]
                    with smtplib.SMTP(host, port, timeout=30) as c:
                        c.sendmail(envelope.mail_from, [rcpt], data)
                elif key in self.maildirs:
                    self._maildir(*self.maildirs[key], data)
                else:
                    self._sink(envelope.mail_from, rcpt, data)
        except (OSError, smtplib.SMTPException) as exc:
            return f"451 4.4.1 next hop failed: {exc}"
        return "250 2.0.0 routed"

    def _maildir(self, path: Path, uid: int, gid: int, data: bytes) -> None:
        for d in (path, path / "tmp", path / "new", path / "cur"):
            if not d.exists():
                d.mkdir(mode=0o700)
                os.chown(d, uid, gid)
        self.count += 1
        name = f"{int(time.time())}.R{self.count}P{os.getpid()}.{socket.gethostname()},S={len(data)}"
        tmp = path / "tmp" / name
        tmp.write_bytes(data)
        os.chown(tmp, uid, gid)
        tmp.rename(path / "new" / name)

    def _sink(self, mail_from: str, rcpt: str, data: bytes) -> None:
        self.count += 1
        name = f"{self.count:05d}"
        (self.folder / f"{name}.env").write_text(json.dumps({"from": mail_from, "to": [rcpt]}))
        tmp = self.folder / f".{name}.tmp"
        tmp.write_bytes(data)
        tmp.rename(self.folder / f"{name}.eml")


def _pairs(values: list[str]) -> dict[str, str]:
    return {k.lower(): v for k, _, v in (x.partition("=") for x in values)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--forward", action="append", default=[])
    ap.add_argument("--maildir", action="append", default=[])
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    forward = {k: (v.rpartition(":")[0], int(v.rpartition(":")[2])) for k, v in _pairs(args.forward).items()}
    maildirs = {}
    for k, v in _pairs(args.maildir).items():
        path, uid, gid = v.rsplit(":", 2)
        maildirs[k] = (Path(path), int(uid), int(gid))
    controller = Controller(Router(args.dir, forward, maildirs), hostname="127.0.0.1", port=args.port)
    controller.start()
    (args.dir / "ready").touch()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.05)
    controller.stop()


if __name__ == "__main__":
    main()
