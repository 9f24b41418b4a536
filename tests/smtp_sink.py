"""A real SMTP sink for the outbound tests, run as a separate process.

    python tests/smtp_sink.py --port P --dir D [--reject ADDR ...] [--hold DIR] [--delay S] [--drop-after-data N]

Each accepted message is written to D as <n>.eml with its envelope in <n>.env.
Both are written under temporary names, fsync'd, and renamed, the .eml last,
so a reader that sees <n>.eml finds <n>.env complete beside it. --reject
answers 550 at RCPT for that address. --hold makes the first DATA wait: it
creates HOLD/got, then waits until HOLD/release exists before answering 250.
--delay makes every DATA take S seconds (a slow relay; connections are still
served concurrently). --drop-after-data N stores each of the first N messages
and then closes the connection without answering (the relay took the mail
but the sender never heard so).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from pathlib import Path

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, folder: Path, reject: set[str], hold: Path | None, delay: float = 0.0, drop: int = 0) -> None:
        self.folder, self.reject, self.hold, self.delay, self.drop = folder, reject, hold, delay, drop
        self.count = len(list(folder.glob("*.eml")))

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.hold is not None:
            hold, self.hold = self.hold, None
            (hold / "got").touch()
            while not (hold / "release").exists():
                await asyncio.sleep(0.02)
        if self.delay:
            await asyncio.sleep(self.delay)
        self.count += 1
        name = f"{self.count:05d}"
        envelope_json = json.dumps({"from": envelope.mail_from, "to": envelope.rcpt_tos}).encode()
        self._write(f"{name}.env", envelope_json)
        self._write(f"{name}.eml", envelope.original_content)  # last: its name says both are there
        if self.drop > 0:
            self.drop -= 1
            server.transport.close()
        return "250 2.0.0 stored"

    def _write(self, name: str, data: bytes) -> None:
        tmp = self.folder / f".{name}.tmp"
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, self.folder / name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--reject", action="append", default=[])
    ap.add_argument("--hold", type=Path)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--drop-after-data", type=int, default=0)
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    sink = Sink(args.dir, {a.lower() for a in args.reject}, args.hold, args.delay, args.drop_after_data)
    controller = Controller(sink, hostname="127.0.0.1", port=args.port)
    controller.start()
    (args.dir / "ready").touch()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.05)
    controller.stop()


if __name__ == "__main__":
    main()
