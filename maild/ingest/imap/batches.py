"""The IMAP edge's batches: fetched ahead of the store, and processed behind it.

Prefetch keeps the connection's I/O thread a batch (and a window of sizes)
ahead of the intake; Processing runs the pipeline over each stored batch while
the next one is fetched, stored and parsed. Neither moves, flags or deletes
mail: that stays with the folder link, after the bytes are committed.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

from maild.ingest.imap.client import explain
from maild.ingest.imap.state import Frontier
from maild.ingest.intake import Accepted, Incoming
from maild.ingest.pipeline import Ahead

if TYPE_CHECKING:
    from maild.ingest.imap.poller import FolderLink, ImapService

log = logging.getLogger("maild.imap")

SIZE_WINDOW = 1000  # UIDs per FETCH of sizes


def _chunks(items: list[int], size: int) -> Iterator[list[int]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Prefetch:
    """Keeps the I/O thread a batch (and a window of sizes) ahead of the store."""

    def __init__(self, io: ThreadPoolExecutor, link: FolderLink, uids: list[int]) -> None:
        self.io, self.link = io, link
        self.windows = _chunks(uids, SIZE_WINDOW)
        self.parts: deque[list[int]] = deque()
        self.frontier = Frontier(uids)
        self.oversize = 0  # set aside by the I/O thread (moved, or passed over in place)
        self.sizing = self._size_next()

    def _size_next(self) -> Future | None:
        window = next(self.windows, None)
        return None if window is None else self.io.submit(self.link._size_window, window)

    def next(self) -> Future | None:
        """The next batch being fetched: (UIDs fetched, their messages)."""
        while not self.parts and self.sizing is not None:
            parts, oversize = self.sizing.result()
            self.parts.extend(parts)
            self.frontier.add(oversize)
            self.oversize += len(oversize)
            self.sizing = self._size_next()
        return self.io.submit(self.link._fetch, self.parts.popleft()) if self.parts else None


class Processing:
    """Runs the pipeline over each stored batch while the next one is fetched, stored and
    parsed (as `maild import` does), or hands the batches to `on_stored` (the daemon).
    A batch whose processing fails stays pending for the next pass: it is stored."""

    def __init__(self, service: ImapService, label: str) -> None:
        self.service, self.label = service, label
        self.waiting: tuple[list[int], Ahead] | None = None

    def add(self, accepted: list[Accepted], items: list[Incoming]) -> None:
        try:
            if self.service.on_stored is not None:
                self.service.on_stored(accepted)
                return
            fresh = [(a.raw_id, i.data, i.envelope_to, i.envelope_from)
                     for a, i in zip(accepted, items) if not a.duplicate]
            ahead = self.service.pipeline.prepare_ahead(fresh)  # copies stored earlier: read back if pending
        except Exception as exc:
            self._deferred(len(accepted), exc)
            return
        self.finish()
        self.waiting = ([a.raw_id for a in accepted], ahead)

    def finish(self) -> None:
        """Process the batch still waiting, if any."""
        if self.waiting is None:
            return
        raw_ids, ahead = self.waiting
        self.waiting = None
        try:
            self.service.pipeline.process(raw_ids, ahead)
        except Exception as exc:
            self._deferred(len(raw_ids), exc)

    def _deferred(self, count: int, exc: Exception) -> None:
        log.warning("%s: %d message(s) stored, processing deferred: %s", self.label, count,
                    explain(exc, self.service.cfg))
