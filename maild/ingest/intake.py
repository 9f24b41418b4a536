"""Durable intake: raw bytes committed to the raw message store, deduplicated.

Every transport edge (SMTP, LMTP, IMAP, the MTA pipe, import) calls `accept`
and acknowledges only after it returns. Nothing here parses a body or threads:
that is the pipeline's job, later, from the stored bytes.

A message is stored once in the whole deployment: the dedupe key (its
Message-ID, or its bytes' hash) is unique whatever mailbox or path a copy came
by, so a mail for support@ over LMTP and for billing@ over IMAP is one raw
message, one interaction. A later copy is recorded in raw_message_copies.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from collections.abc import Callable, Iterable, Sequence

from sqlalchemy import bindparam, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from maild.models import RawMessage, RawMessageCopy, table_of, utcnow

_RAW = table_of(RawMessage)
_COPIES = table_of(RawMessageCopy)
MESSAGE_ID_RE = re.compile(rb"^message-id:[ \t]*(?:\r?\n[ \t]+)*<([^<>\s]{1,250})>", re.I | re.M)


@dataclass(frozen=True)
class Incoming:
    """One message as a transport edge hands it over."""

    data: bytes
    mailbox: str
    source: str
    envelope_from: str | None = None
    envelope_to: tuple[str, ...] = ()
    # The mailbox this copy was delivered to, when the routing rule stores it under
    # another (an IMAP copy from billing@ of a mail also to support@): for the copies' record.
    delivered_to: str | None = None

    @property
    def copy_mailbox(self) -> str:
        return self.delivered_to or self.mailbox


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


_EXISTING = select(_RAW.c.dedupe_key, _RAW.c.id, _RAW.c.mailbox, _RAW.c.source).where(
    _RAW.c.dedupe_key.in_(bindparam("keys", expanding=True)))  # built once: it runs for every store
_INSERT_RAW = insert(_RAW).returning(_RAW.c.id, sort_by_parameter_order=True)


def _existing(session: Session, keys: Sequence[str]) -> dict[str, tuple[int, str, str]]:
    """Stored messages by dedupe key: (raw id, mailbox, source)."""
    found: dict[str, tuple[int, str, str]] = {}
    unique = list(dict.fromkeys(keys))
    for i in range(0, len(unique), 400):
        rows = session.execute(_EXISTING, {"keys": unique[i : i + 400]})
        found.update({key: (rid, mb, src) for key, rid, mb, src in rows})
    return found


def _record_copies(session: Session, copies: list[dict]) -> None:
    """One row per (message, mailbox, path) a later copy came by; the first arrival of each is kept."""
    if not copies:
        return
    dialect = session.get_bind().dialect.name
    insert_ = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert_(_COPIES).on_conflict_do_nothing(
        index_elements=["raw_message_id", "mailbox", "source"]
    )
    session.execute(statement, copies)


def _accept_once(sessions: sessionmaker[Session], items: list[Incoming], keys: list[str],
                 also: Callable[[Session], None] | None) -> list[Accepted]:
    with sessions() as session, session.begin():
        found = _existing(session, keys)
        known = {key: stored[0] for key, stored in found.items()}
        fresh: dict[str, dict] = {}
        for item, key in zip(items, keys):
            if key not in known:
                fresh.setdefault(key, _row(item, key))
        if fresh:
            ids = session.execute(_INSERT_RAW, list(fresh.values())).scalars().all()
            known.update(zip(fresh, ids))
        # The first of several copies in one batch is the new one; the rest are duplicates.
        out: list[Accepted] = []
        seen: set[str] = set()
        copies: dict[tuple[int, str, str], dict] = {}
        for item, key in zip(items, keys):
            duplicate = key not in fresh or key in seen
            seen.add(key)
            out.append(Accepted(known[key], duplicate))
            first = found.get(key) or (known[key], fresh[key]["mailbox"], fresh[key]["source"])
            if duplicate and (item.copy_mailbox, item.source) != first[1:]:
                copies.setdefault((known[key], item.copy_mailbox, item.source), {
                    "raw_message_id": known[key], "mailbox": item.copy_mailbox, "source": item.source,
                    "received_at": utcnow(),
                })
        _record_copies(session, list(copies.values()))
        if also is not None:
            also(session)
    return out


def accept_many(sessions: sessionmaker[Session], items: Iterable[Incoming],
                also: Callable[[Session], None] | None = None) -> list[Accepted]:
    """Store a batch in one transaction; returns once it is committed.

    A message already stored (same dedupe key, for any mailbox) is not stored
    again; its existing row is reported as a duplicate and the copy recorded.
    `also` writes what must commit together with the batch (an edge's own
    record of how far it has stored), in the same transaction.
    """
    items = list(items)
    keys = [dedupe_key(i.data) for i in items]
    try:
        return _accept_once(sessions, items, keys, also)
    except IntegrityError:
        # Another connection stored one of these between our check and insert: now it is known.
        return _accept_once(sessions, items, keys, also)


def accept(sessions: sessionmaker[Session], item: Incoming) -> Accepted:
    """Store one message durably; safe against a concurrent copy of the same message."""
    return accept_many(sessions, [item])[0]


def copies_of(session: Session, raw_ids: Iterable[int]) -> dict[int, list[dict]]:
    """The later copies of stored messages, oldest first, for the audit trail
    (e.g. an interaction's raw_message_id in `maild issues show`)."""
    t = _COPIES
    out: dict[int, list[dict]] = {}
    ids = list(raw_ids)
    for i in range(0, len(ids), 400):
        rows = session.execute(
            select(t.c.raw_message_id, t.c.mailbox, t.c.source, t.c.received_at)
            .where(t.c.raw_message_id.in_(ids[i : i + 400])).order_by(t.c.id)
        )
        for raw_id, mailbox, source, received_at in rows:
            out.setdefault(raw_id, []).append({"mailbox": mailbox, "source": source, "received_at": received_at})
    return out
