"""Durable intake: raw bytes committed to the raw message store, deduplicated.

Every transport edge (SMTP, LMTP, IMAP, the MTA pipe, import) calls `accept`
and acknowledges only after it returns. Nothing here parses a body or threads:
that is the pipeline's job, later, from the stored bytes.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from collections.abc import Iterable, Sequence

from sqlalchemy import insert, select, tuple_
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from maild.models import RawMessage, utcnow

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


def header_end(data: bytes, limit: int | None = None) -> int | None:
    """Where the header ends (just after its last line), or None without an empty line."""
    # bytes.find, not a regex: this runs per message at intake, and is ten times faster.
    limit = len(data) if limit is None else limit
    ends = [i for i in (data.find(b"\n\n", 0, limit), data.find(b"\n\r\n", 0, limit)) if i >= 0]
    return min(ends) + 1 if ends else None


def dedupe_key(data: bytes) -> str:
    """The message's own Message-ID, or a hash of its bytes when it has none."""
    end = header_end(data)
    head = data[: 65536 if end is None else end]
    found = MESSAGE_ID_RE.search(head)
    if found:
        return "mid:" + found.group(1).decode("ascii", "replace")[:250]
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _row(item: Incoming, key: str) -> dict:
    return {
        "mailbox": item.mailbox,
        "dedupe_key": key,
        "sha256": hashlib.sha256(item.data).hexdigest(),
        "size": len(item.data),
        "data": item.data,
        "source": item.source,
        "envelope_from": item.envelope_from,
        "envelope_to": list(item.envelope_to),
        "received_at": utcnow(),
        "state": "pending",
        "attempts": 0,
    }


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
    table = RawMessage.__table__
    with sessions() as session, session.begin():
        known = _existing(session, [(i.mailbox, k) for i, k in zip(items, keys)])
        fresh: dict[tuple[str, str], dict] = {}
        for item, key in zip(items, keys):
            if (item.mailbox, key) not in known:
                fresh.setdefault((item.mailbox, key), _row(item, key))
        if fresh:
            ids = session.execute(
                insert(table).returning(table.c.id, sort_by_parameter_order=True), list(fresh.values())
            ).scalars().all()
            known.update(zip(fresh, ids))
    # The first of several copies in one batch is the new one; the rest are duplicates.
    out, seen = [], set()
    for item, key in zip(items, keys):
        pair = (item.mailbox, key)
        out.append(Accepted(known[pair], pair not in fresh or pair in seen))
        seen.add(pair)
    return out


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
