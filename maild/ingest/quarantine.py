"""The quarantine as people see it: messages that failed a stage, with the
stage and the error, in the documented JSON shape (fields only ever added).
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.models import RawMessage
from maild.timefmt import iso as _iso


def quarantine_json(r: RawMessage, with_raw: bool = False) -> dict:
    out = {
        "id": r.id,
        "mailbox": r.mailbox,
        "source": r.source,
        "state": r.state,
        "stage": r.stage,
        "error": r.error,
        "attempts": r.attempts,
        "size": r.size,
        "received": _iso(r.received_at),
        "dedupe_key": r.dedupe_key,
    }
    if with_raw:
        out["raw"] = r.data.decode("utf-8", "replace")
    return out


def list_quarantine(session: Session) -> list[dict]:
    rows = session.scalars(select(RawMessage).where(RawMessage.state == "quarantined").order_by(RawMessage.id))
    return [quarantine_json(r) for r in rows]
