"""Durable intake: raw bytes committed to the raw message store, deduplicated.

Every transport edge (SMTP, LMTP, IMAP, the MTA pipe, import) calls `accept`
and acknowledges only after it returns. Nothing here parses a body or threads:
that is the pipeline's job, later, from the stored bytes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from ..models import RawMessage

HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
MESSAGE_ID_RE = re.compile(rb"^message-id:[ \t]*(?:\r?\n[ \t]+)*<([^<>\s]{1,250})>", re.I | re.M)


@dataclass(frozen=True)
class Incoming:
    """One message as a transport edge hands it over."""

    data: bytes
    mailbox: str
    source: str
    envelope_from: str | None = None
    envelope_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class Accepted:
    raw_id: int
    duplicate: bool


def dedupe_key(data: bytes) -> str:
    """The message's own Message-ID, or a hash of its bytes when it has none."""
    m = HEADER_END_RE.search(data)
    head = data[: m.start()] if m else data[:65536]
    found = MESSAGE_ID_RE.search(head)
    if found:
        return "mid:" + found.group(1).decode("ascii", "replace")[:250]
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _row(item: Incoming, key: str) -> RawMessage:
    return RawMessage(
        mailbox=item.mailbox,
        dedupe_key=key,
        sha256=hashlib.sha256(item.data).hexdigest(),
        size=len(item.data),
        data=item.data,
        source=item.source,
        envelope_from=item.envelope_from,
        envelope_to=list(item.envelope_to),
    )


def _existing(session: Session, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], int]:
    found: dict[tuple[str, str], int] = {}
    for i in range(0, len(pairs), 400):
        chunk = pairs[i : i + 400]
        rows = session.execute(
            select(RawMessage.mailbox, RawMessage.dedupe_key, RawMessage.id).where(
                tuple_(RawMessage.mailbox, RawMessage.dedupe_key).in_(chunk)
            )
        )
        found.update({(mb, key): rid for mb, key, rid in rows})
    return found


def accept_many(sessions: sessionmaker[Session], items: Iterable[Incoming]) -> list[Accepted]:
    """Store a batch in one transaction; returns once it is committed.

    A message already stored (same mailbox and dedupe key) is not stored again;
    its existing row is reported as a duplicate.
    """
    items = list(items)
    keys = [dedupe_key(i.data) for i in items]
    with sessions() as session, session.begin():
        known = _existing(session, [(i.mailbox, k) for i, k in zip(items, keys)])
        out: list[Accepted] = []
        fresh: dict[tuple[str, str], RawMessage] = {}
        for item, key in zip(items, keys):
            pair = (item.mailbox, key)
            if pair in known:
                out.append(Accepted(known[pair], True))
            elif pair in fresh:
                out.append(Accepted(-1, True))
            else:
                fresh[pair] = _row(item, key)
                out.append(Accepted(-1, False))
        session.add_all(fresh.values())
        session.flush()
    ids = {pair: row.id for pair, row in fresh.items()}
    return [
        Accepted(ids[(i.mailbox, k)] if a.raw_id == -1 else a.raw_id, a.duplicate)
        for i, k, a in zip(items, keys, out)
    ]


def accept(sessions: sessionmaker[Session], item: Incoming) -> Accepted:
    """Store one message durably; safe against a concurrent copy of the same message."""
    try:
        return accept_many(sessions, [item])[0]
    except IntegrityError:
        # Another connection stored the same message between our check and insert.
        with sessions() as session:
            rid = session.scalar(
                select(RawMessage.id).where(
                    RawMessage.mailbox == item.mailbox, RawMessage.dedupe_key == dedupe_key(item.data)
                )
            )
        if rid is None:
            raise
        return Accepted(rid, True)
