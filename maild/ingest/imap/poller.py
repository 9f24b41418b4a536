"""The IMAP edge: drain one folder of a mailbox at a mail provider into the durable intake.

Each pass fetches, by UID and in bounded batches, what is new since the folder's
mark (BODY.PEEK[], so \\Seen is never set), commits the bytes with accept_many,
advances the mark, runs the pipeline, and only then moves the messages to the
processed folder (or, with keep_on_server, leaves them be). Mail that was in the
folder when maild first looked at it is a backlog, stored like `maild import`
(no acknowledgements); what arrives after is live. A message is stored under
the mailbox the SMTP edge would choose (the first, in config order, among this
mailbox and its To/Cc), so a copy that also came by SMTP is the same message.
Mail a pass stored but could not process (a locked database) is processed by
the next pass, fetched again or not: never stranded. It must never
move, flag or delete a message before its bytes are committed, and never
trust \\Seen or any other flag: other mail clients change them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from email.parser import BytesHeaderParser

from imapclient import DELETED, IMAPClient
from imapclient.exceptions import IMAPClientError

from maild.config import MailboxConfig
from maild.ingest.imap.client import ImapSetupError, drop, explain, open_client
from maild.ingest.imap.batches import Prefetch, Processing
from maild.ingest.imap.state import Mark, load_mark, record_mark, save_mark
from maild.ingest.intake import Accepted, Incoming, accept_many
from maild.ingest.smtp import Router

log = logging.getLogger("maild.imap")

BATCH_SIZE = 200  # UIDs per FETCH
MOVE_EVERY = 1000  # stored messages per MOVE (fewer, larger moves cost the server less)
BATCH_BYTES = 32 * 1024 * 1024  # message bytes per batch (at least one message); two batches in memory
PROGRESS_EVERY = 1000  # log progress every this many messages of a long sync
IDLE_RENEW = 25 * 60.0  # re-issue IDLE before the 30-minute inactivity limit of RFC 2177
NOOP_EVERY = 300.0  # keep a polling connection alive between long poll intervals
STOP_CHECK = 1.0  # longest wait before noticing that the service should stop
BACKOFF = (1.0, 300.0)  # first and longest wait before reconnecting
REPORT_HEADERS = "BODY.PEEK[HEADER.FIELDS (FROM SUBJECT MESSAGE-ID)]"


@dataclass
class PassReport:
    """What one pass over the folder did."""

    stored: int = 0  # new in the raw message store
    duplicates: int = 0  # fetched, but stored already (another path, or a copy)
    oversize: int = 0  # over ingest.max_message_size: moved aside or passed over, not stored
    moved: int = 0  # moved to the processed folder

    def __bool__(self) -> bool:
        return bool(self.stored or self.duplicates or self.oversize or self.moved)

    def __str__(self) -> str:
        return (f"{self.stored} new, {self.duplicates} already stored, "
                f"{self.oversize} oversize, {self.moved} moved")


def _parts(uids: list[int], sizes: dict[int, int], count: int, limit: int) -> Iterator[list[int]]:
    """Runs of at most `count` UIDs and `limit` bytes (at least one message each)."""
    part: list[int] = []
    held = 0
    for uid in uids:
        if part and (len(part) == count or held + sizes[uid] > limit):
            yield part
            part, held = [], 0
        part.append(uid)
        held += sizes[uid]
    if part:
        yield part


class FolderLink:
    """A logged-in connection to the mailbox's folder, running passes and waiting for mail."""

    def __init__(self, service: ImapService, client: IMAPClient) -> None:
        self.service = service
        self.cfg = service.cfg
        self.client = client
        caps = set(client.capabilities())
        self.can_idle = b"IDLE" in caps
        self.can_move = b"MOVE" in caps
        self.uidplus = b"UIDPLUS" in caps
        self._folders: set[str] = set()
        self.mark = Mark(0, 0)  # where the folder's intake stands, as of the latest pass

    @property
    def _label(self) -> str:
        return f"imap {self.service.name} ({self.cfg.folder})"

    def sync(self, stop: threading.Event | None = None) -> PassReport:
        """One pass: store everything new, then move what is stored (stop: between batches)."""
        report = PassReport()
        self.service.catch_up()
        info = self.client.select_folder(self.cfg.folder, readonly=self.cfg.keep_on_server)
        uidnext = info.get(b"UIDNEXT")
        self.mark = self._load_mark(int(info[b"UIDVALIDITY"]), int(uidnext or 0))
        last = self.mark.last_uid
        if not info.get(b"EXISTS"):
            return report
        if self.cfg.keep_on_server:
            if uidnext is not None and int(uidnext) <= last + 1:
                return report  # nothing arrived since the mark: no listing of the folder
            found = self.client.search(["UID", f"{last + 1}:*"])
        else:
            found = self.client.search("ALL")
        # "n:*" always matches the highest UID, even one below n: filter, never trust the range.
        uids = sorted(int(u) for u in found)
        leftover = [u for u in uids if u <= last]
        if leftover and not self.cfg.keep_on_server:
            # At or below the mark means committed already: a move that failed last time.
            report.moved += self._move(leftover)
        self._take_all([u for u in uids if u > last], report, stop)
        return report

    def _load_mark(self, uidvalidity: int, uidnext: int) -> Mark:
        name, folder = self.service.name, self.cfg.folder
        mark = load_mark(self.service.sessions, name, folder)
        if mark is not None and mark.uidvalidity == uidvalidity:
            return mark
        if mark is None:
            # The first look at this folder: what is already there is a backlog, taken in
            # like `maild import` (no acknowledgements); what arrives after is live mail.
            mark = Mark(uidvalidity, 0, backlog_below=uidnext)
            log.info("%s: first sync; messages below UID %s are imported as a backlog", self._label, uidnext)
        else:
            log.warning("%s: UIDVALIDITY changed from %s to %s: rescanning the whole folder; messages "
                        "stored before are not stored again", self._label, mark.uidvalidity, uidvalidity)
            mark = Mark(uidvalidity, 0)
        save_mark(self.service.sessions, name, folder, mark)
        return mark

    def _advance(self, uid: int) -> None:
        """Everything up to uid is committed (or deliberately passed over): record it."""
        if uid > self.mark.last_uid:
            self.mark = replace(self.mark, last_uid=uid)
            save_mark(self.service.sessions, self.service.name, self.cfg.folder, self.mark)

    def _take_all(self, uids: list[int], report: PassReport, stop: threading.Event | None) -> None:
        """Store every UID in order, the I/O thread fetching the next batch meanwhile.

        All IMAP commands run, in order, on that one thread; a move is queued only
        after its messages are committed, so nothing is moved before it is durable."""
        total = len(uids)
        if total >= PROGRESS_EVERY:
            log.info("%s: %d messages to fetch", self._label, total)
        processing = Processing(self.service, self._label)
        try:
            self._fetch_all(uids, report, stop, processing)
        finally:
            processing.finish()  # the last batch stored (or, on an error, what is stored so far)

    def _fetch_all(self, uids: list[int], report: PassReport, stop: threading.Event | None,
                   processing: Processing) -> None:
        total, done, pending = len(uids), 0, []
        with ThreadPoolExecutor(1, thread_name_prefix=f"imap-{self.service.name}") as io:
            ahead, moving = Prefetch(io, self, uids), None
            batch = ahead.next()
            while batch is not None and not (stop is not None and stop.is_set()):
                got, items = batch.result()
                batch = ahead.next()
                self._store(items, ahead.frontier.add(got), report, processing)
                if not self.cfg.keep_on_server:
                    pending += got
                if pending and (len(pending) >= MOVE_EVERY or batch is None):
                    if moving is not None:
                        report.moved += moving.result()
                    moving, pending = io.submit(self._move, pending), []
                before, done = done, done + len(items)
                if total >= PROGRESS_EVERY and done // PROGRESS_EVERY > before // PROGRESS_EVERY:
                    log.info("%s: %d of %d messages fetched (%s)", self._label, done, total, report)
            if moving is not None:
                report.moved += moving.result()
            report.oversize += ahead.oversize
        self._advance(ahead.frontier.add([]))  # past oversize mail at the end too
        if total >= PROGRESS_EVERY:
            log.info("%s: %s, %d of %d messages fetched (%s)", self._label,
                     "done" if batch is None else "stopped", done, total, report)

    def _size_window(self, window: list[int]) -> tuple[list[list[int]], list[int]]:
        """Sizes first: oversize mail is set aside unfetched; the rest in bounded batches."""
        limit = self.service.max_size
        fetched = self.client.fetch(window, ["RFC822.SIZE"])
        sizes = {u: int(d[b"RFC822.SIZE"]) for u, d in fetched.items() if b"RFC822.SIZE" in d}
        big = [u for u in window if sizes.get(u, 0) > limit]
        if big:
            self._oversize(big, sizes)
        small = [u for u in window if u in sizes and sizes[u] <= limit]
        return list(_parts(small, sizes, self.service.batch_size, BATCH_BYTES)), big

    def _fetch(self, part: list[int]) -> tuple[list[int], list[Incoming]]:
        fetched = self.client.fetch(part, ["BODY.PEEK[]"])
        got = [u for u in part if b"BODY[]" in fetched.get(u, {})]  # others were expunged meanwhile
        backlog = self.mark.backlog_below
        items = [self.service.incoming(fetched[u][b"BODY[]"], "import" if u < backlog else "imap") for u in got]
        return got, items

    def _store(self, items: list[Incoming], last: int, report: PassReport, processing: Processing) -> None:
        mark, name, folder = replace(self.mark, last_uid=last), self.service.name, self.cfg.folder
        # The mark moves in the transaction that commits the bytes it covers.
        accepted = accept_many(self.service.sessions, items, also=(
            (lambda s: record_mark(s, name, folder, mark)) if last > self.mark.last_uid else None))
        # Committed: from here on these messages are ours, whatever happens to the connection.
        if last > self.mark.last_uid:
            self.mark = mark
        report.stored += sum(not a.duplicate for a in accepted)
        report.duplicates += sum(a.duplicate for a in accepted)
        processing.add(accepted, items)

    def _oversize(self, uids: list[int], sizes: dict[int, int]) -> None:
        """Never fetched: moved to the oversize folder (or passed over in place), reported once."""
        heads = self.client.fetch(uids, [REPORT_HEADERS])
        where = "left in place" if self.cfg.keep_on_server else f"moved to {self.cfg.oversize_folder}"
        for uid in uids:
            raw = next((v for k, v in heads.get(uid, {}).items() if k.startswith(b"BODY[")), b"")
            head = BytesHeaderParser().parsebytes(raw or b"")
            log.warning(
                "%s: message UID %s (%d bytes, from %s, subject %r, Message-ID %s) is over "
                "ingest.max_message_size (%d bytes): not stored, %s",
                self._label, uid, sizes[uid], head.get("From", "?"), head.get("Subject", ""),
                head.get("Message-ID", "none"), self.service.max_size, where,
            )
        if not self.cfg.keep_on_server:
            self._ensure_folder(self.cfg.oversize_folder)
            self._transfer(uids, self.cfg.oversize_folder)

    def _move(self, uids: list[int]) -> int:
        folder = self.cfg.processed_folder
        if not uids or folder is None:  # no processed folder: stored mail stays where it is
            return 0
        self._ensure_folder(folder)
        self._transfer(uids, folder)
        return len(uids)

    def _transfer(self, uids: list[int], folder: str) -> None:
        if self.can_move:
            self.client.move(uids, folder)
            return
        self.client.copy(uids, folder)
        self.client.add_flags(uids, [DELETED], silent=True)
        if self.uidplus:
            self.client.uid_expunge(uids)
        else:
            self.client.expunge()

    def _ensure_folder(self, folder: str) -> None:
        if folder in self._folders:
            return
        if not self.client.folder_exists(folder):
            try:
                self.client.create_folder(folder)
            except IMAPClientError:
                if not self.client.folder_exists(folder):  # else another client just made it
                    raise
            try:
                self.client.subscribe_folder(folder)
            except IMAPClientError:
                pass  # only for other mail programs' folder lists
        self._folders.add(folder)

    def wait(self, stop: threading.Event) -> None:
        """Until new mail may be there: IDLE when the server has it, else poll_interval."""
        if not self.can_idle:
            self._sleep(stop, self.cfg.poll_interval)
            return
        deadline = time.monotonic() + min(self.cfg.poll_interval, IDLE_RENEW)
        if self._news_since_pass():
            return
        self.client.idle()
        early = 0
        while not stop.is_set() and (left := deadline - time.monotonic()) > 0:
            step = min(left, STOP_CHECK)
            started = time.monotonic()
            responses = self.client.idle_check(timeout=step)
            bye = next((r for r in responses if r[0] == b"BYE"), None)
            if bye is not None:
                words = b" ".join(w for w in bye[1:] if isinstance(w, bytes)).decode("utf-8", "replace")
                raise ConnectionError(f"the server ended the connection: {words}")
            if any(len(r) > 1 and r[1] in (b"EXISTS", b"EXPUNGE") for r in responses):
                break
            # idle_check returns nothing, at once, when the socket is at EOF: a dropped
            # connection looks like a string of early empty answers.
            early = early + 1 if not responses and time.monotonic() - started < step / 2 else 0
            if early >= 3:
                raise ConnectionError("the server closed the connection")
        self.client.idle_done()

    def _news_since_pass(self) -> bool:
        """Mail that arrived during the pass is not announced once IDLE starts: look first.
        NOOP brings the session's view up to date; the search finds what an earlier
        command of the pass already announced."""
        _, responses = self.client.noop()
        if any(len(r) > 1 and r[1] == b"EXISTS" for r in responses):
            return True
        last = self.mark.last_uid
        return any(int(u) > last for u in self.client.search(["UID", f"{last + 1}:*"]))

    def _sleep(self, stop: threading.Event, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if stop.wait(min(left, NOOP_EVERY)):
                return
            if end - time.monotonic() > 0:
                self.client.noop()


class ImapService:
    """One mailbox's IMAP intake: a single pass (`poll_once`) or a loop (`run`)."""

    def __init__(self, app, mailbox: MailboxConfig, *, batch_size: int = BATCH_SIZE,
                 backoff: tuple[float, float] = BACKOFF,
                 on_stored: Callable[[list[Accepted]], None] | None = None) -> None:
        """on_stored: who processes what a pass stored (the daemon: its drain worker);
        by default the pass processes it itself."""
        if mailbox.imap is None:
            raise ImapSetupError(f"mailbox {mailbox.name!r} has no [mailbox.imap] table")
        self.name = mailbox.name
        self.address = mailbox.address
        self.cfg = mailbox.imap
        self.sessions = app.sessions
        self.pipeline = app.pipeline
        self.router = Router(app.settings.mailbox)
        self.first = self.router.order[self.name] == 0 and self.router.mailbox_for(self.address) == self.name
        self.max_size = app.settings.ingest.max_message_size
        self.batch_size = batch_size
        self.backoff = backoff
        self.on_stored = on_stored

    def incoming(self, data: bytes, source: str) -> Incoming:
        """A fetched message for the intake, under the mailbox the routing rule chooses."""
        # The first mailbox in config order wins whatever else the To/Cc name: no need to read them.
        chosen = self.name if self.first else self.router.choose(data, (self.address,))
        return Incoming(data, chosen, source, delivered_to=self.name)

    def catch_up(self) -> None:
        """Before a pass: mail an earlier pass stored but could not process is processed now
        (in the daemon the drain worker does it)."""
        if self.on_stored is None:
            try:
                self.pipeline.drain()
            except Exception as exc:  # intake first: processing waits for the next pass
                log.warning("imap %s: processing of stored mail deferred: %s", self.name, explain(exc, self.cfg))

    @contextmanager
    def connect(self) -> Iterator[FolderLink]:
        client = open_client(self.cfg)
        try:
            yield FolderLink(self, client)
        except BaseException:
            drop(client)
            raise
        try:
            client.logout()
        except (OSError, IMAPClientError):
            drop(client)

    def poll_once(self) -> PassReport:
        """Connect, run one pass, log out. Errors are raised to the caller."""
        with self.connect() as link:
            return link.sync()

    def run(self, stop: threading.Event) -> None:
        """Until stop is set: pass, wait (IDLE or poll_interval), pass again.

        Never raises: every failure is one log line, then a reconnect after a
        backoff that doubles up to its maximum, so one broken mailbox never
        stops the others.
        """
        failures = 0
        while not stop.is_set():
            try:
                with self.connect() as link:
                    if failures:
                        log.info("imap %s: connected again", self.name)
                    while not stop.is_set():
                        report = link.sync(stop)
                        failures = 0
                        if report:
                            log.info("imap %s: %s", self.name, report)
                        link.wait(stop)
            except Exception as exc:
                failures += 1
                delay = min(self.backoff[0] * 2 ** (failures - 1), self.backoff[1])
                log.warning("imap %s: %s; reconnecting in %.0f s", self.name, explain(exc, self.cfg), delay)
                log.debug("imap %s: details", self.name, exc_info=True)
                stop.wait(delay)


def imap_services(app, on_stored: Callable[[list[Accepted]], None] | None = None) -> list[ImapService]:
    """One service per mailbox with an [mailbox.imap] table, for the daemon and `maild poll`."""
    return [ImapService(app, m, on_stored=on_stored) for m in app.settings.mailbox if m.imap is not None]
