"""Where each IMAP folder's intake stands: its UIDVALIDITY and the highest UID handled.

The IMAP edge reads this to fetch only what is new, and advances it only after
every message up to that UID is committed to the raw message store (or was
deliberately passed over as oversize). It must never run ahead of the intake:
a mark past an unstored message would lose that message. Flags such as \\Seen
are never part of it, because other mail clients change them. It also keeps
where the folder's backlog ends: the mail already there when maild first looked.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import BigInteger, String, UniqueConstraint, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, Session, mapped_column, sessionmaker

from maild.models import Base, utcnow


class ImapFolderState(Base):
    """One row per (maild mailbox, IMAP folder)."""

    __tablename__ = "imap_state"
    __table_args__ = (UniqueConstraint("mailbox", "folder", name="uq_imap_state_mailbox_folder"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox: Mapped[str] = mapped_column(String(100))
    folder: Mapped[str] = mapped_column(String(255))
    # UIDs and UIDVALIDITY are unsigned 32-bit numbers in IMAP: too large for a signed INTEGER.
    uidvalidity: Mapped[int] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger)
    # Below this UID the messages were in the folder when maild first looked: a backlog.
    backlog_below: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class Mark:
    uidvalidity: int
    last_uid: int  # every message up to this UID is stored, or was deliberately passed over
    backlog_below: int = 0


class Frontier:
    """The highest UID of a pass below which every UID is stored or was set aside.

    A UID the server listed but did not hand over stays ahead of the mark, so it is
    asked for again next pass and never counted as stored (nor moved as stored)."""

    def __init__(self, uids: list[int]) -> None:
        self.uids, self.at = uids, 0
        self.done: set[int] = set()

    def add(self, handled: list[int]) -> int:
        self.done.update(handled)
        while self.at < len(self.uids) and self.uids[self.at] in self.done:
            self.at += 1
        return self.uids[self.at - 1] if self.at else 0


def _row(session: Session, mailbox: str, folder: str) -> ImapFolderState | None:
    return session.scalar(
        select(ImapFolderState).where(ImapFolderState.mailbox == mailbox, ImapFolderState.folder == folder)
    )


def load_mark(sessions: sessionmaker[Session], mailbox: str, folder: str) -> Mark | None:
    with sessions() as session:
        row = _row(session, mailbox, folder)
        return Mark(row.uidvalidity, row.last_uid, row.backlog_below) if row else None


def record_mark(session: Session, mailbox: str, folder: str, mark: Mark) -> None:
    """save_mark in the caller's transaction: the intake's, committing the mark with the bytes it covers."""
    row = _row(session, mailbox, folder)
    if row is None:
        row = ImapFolderState(mailbox=mailbox, folder=folder)
        session.add(row)
    if row.uidvalidity != mark.uidvalidity:  # new, or a reset: the mark starts afresh
        row.uidvalidity, row.last_uid, row.backlog_below = (mark.uidvalidity, mark.last_uid, mark.backlog_below)
    else:
        row.last_uid = max(row.last_uid, mark.last_uid)
    row.updated_at = utcnow()


def save_mark(sessions: sessionmaker[Session], mailbox: str, folder: str, mark: Mark) -> None:
    """Record the mark. Under the same UIDVALIDITY it only ever moves forward, so a
    second poller (a cron `maild poll` beside the daemon) can never move it back."""
    for attempt in (1, 2):
        try:
            with sessions() as session, session.begin():
                record_mark(session, mailbox, folder, mark)
            return
        except IntegrityError:
            if attempt == 2:  # another poller inserted the row first: the second try updates it
                raise
