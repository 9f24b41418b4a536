"""Message data in flight, in bounded memory: DATA spooled to disk past a threshold.

aiosmtpd keeps a DATA section as a list of per-line bytearrays until the final
dot (about twice the message's size in memory, for as long as a slow sender
takes), and offers no hook to put it elsewhere. So the edge reads DATA itself
with `read_data` (the same rules: dot-unstuffing, the size limit and the line
limit, excess read and dropped) into a `tempfile.SpooledTemporaryFile`: a
session holds at most `spool_threshold` bytes in memory, the rest is on disk.

A finished message is read back whole only to be stored, under a
`MemoryBudget` shared by all sessions, so the bytes held for stores are
bounded too. Nothing here knows SMTP replies, the database or the pipeline.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from typing import Literal

DataFault = Literal["too-big", "too-long"]


class Spool:
    """One message's bytes: in memory up to `threshold`, then in an unnamed temporary file."""

    def __init__(self, threshold: int) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=threshold, prefix="maild-data-")
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    def read(self) -> bytes:
        self._file.seek(0)
        return self._file.read()

    def close(self) -> None:
        self._file.close()


async def read_data(reader: asyncio.StreamReader, spool: Spool, limit: int | None) -> DataFault | None:
    """Copy a DATA section up to its lone dot into `spool`; a fault stops copying, not reading.

    Lines longer than the reader's limit are a "too-long" fault (RFC 5321
    4.5.3.1.6), more than `limit` bytes a "too-big" one; either way the rest is
    read and dropped so the session can go on after the answer.
    """
    fault: DataFault | None = None
    size, partial = 0, False  # partial: inside a line longer than the reader's limit
    while True:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            line = await reader.read(exc.consumed)
            fault = fault or "too-long"
            partial = True
            continue
        if partial:
            partial = False
            continue
        if line == b".\r\n":
            return fault
        size += len(line)
        if fault is None and limit and size > limit:
            fault = "too-big"
        if fault is None:
            spool.write(line[1:] if line.startswith(b".") else line)


class MemoryBudget:
    """Bytes of finished messages held in memory at once, across sessions (thread-safe).

    A message larger than the whole budget waits until nothing else is held,
    so a budget below `max_message_size` slows such mail but never refuses it.
    """

    def __init__(self, total: int) -> None:
        self.total, self.held = total, 0
        self._cond = threading.Condition()

    def acquire(self, size: int, timeout: float) -> int | None:
        """Reserve `size` bytes within `timeout` s; the amount to release, or None."""
        want = min(size, self.total)
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.held + want > self.total:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            self.held += want
        return want

    def release(self, amount: int) -> None:
        with self._cond:
            self.held -= amount
            self._cond.notify_all()
