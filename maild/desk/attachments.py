"""Files between customers and reps: which ride with a notification, what a
rep's reply may carry, and the answer to `#attachments`.

Every mail stays under a configured size, and no file is dropped without a
word: a notification carries the customer's files up to
`outbound.notify_attachments_max` and names the others with their sizes; a
rep's reply whose files pass `outbound.max_attachment_size` is not sent and
the rep is told; the answer to `#attachments` is split into mails under that
size, and a single file over it is named, not sent. Blob bytes are read only
for files a mail will carry. This module returns what to queue; it never
queues or sends.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from maild.models import Action, Blob, Interaction
from maild.outbound.compose import OutAttachment
from maild.outbound.templates import human_size


@dataclass(frozen=True)
class StoredFile:
    """An attachment row, without its bytes."""

    filename: str
    content_type: str
    size: int
    sha256: str
    inline: bool
    content_id: str | None
    source: str  # whose mail it came with, for the rep: "pat@example.com, 2026-11-02"


def _source(i: Interaction) -> str:
    when = (i.date or i.created_at).strftime("%Y-%m-%d")
    who = i.from_name or i.from_email or "?"
    return f"{who}, {when}"


def of_interaction(interaction: Interaction) -> list[StoredFile]:
    return [StoredFile(a.filename, a.content_type, a.size, a.sha256, a.inline, a.content_id, _source(interaction))
            for a in interaction.attachments]


def of_issue(session: Session, issue_id: int) -> list[StoredFile]:
    """Every file of the issue's correspondence, oldest first, each (name, content) once.

    A rep's own mail to maild is left out: the reply that went to the customer
    carries the same files.
    """
    interactions = session.scalars(
        select(Interaction).join(Action, Action.interaction_id == Interaction.id)
        .where(Action.issue_id == issue_id).options(selectinload(Interaction.attachments))
        .order_by(Interaction.id)
    ).all()
    seen: set[tuple[str, str]] = set()
    files = []
    for i in interactions:
        if i.direction == "internal" and i.channel == "email":
            continue
        for f in of_interaction(i):
            if (f.filename.lower(), f.sha256) not in seen:
                seen.add((f.filename.lower(), f.sha256))
                files.append(f)
    return files


def fit(files: Sequence[StoredFile], limit: int) -> tuple[list[StoredFile], list[StoredFile]]:
    """Files carried (in order, while the total stays within `limit`) and files left to list."""
    carried, left, total = [], [], 0
    for f in files:
        if total + f.size <= limit:
            carried.append(f)
            total += f.size
        else:
            left.append(f)
    return carried, left


def batches(files: Sequence[StoredFile], limit: int) -> tuple[list[list[StoredFile]], list[StoredFile]]:
    """Files packed in order into mails of at most `limit` bytes each; files over `limit` alone."""
    mails: list[list[StoredFile]] = []
    too_big: list[StoredFile] = []
    current: list[StoredFile] = []
    total = 0
    for f in files:
        if f.size > limit:
            too_big.append(f)
            continue
        if current and total + f.size > limit:
            mails.append(current)
            current, total = [], 0
        current.append(f)
        total += f.size
    if current:
        mails.append(current)
    return mails, too_big


def _key(name: str) -> str:
    return " ".join(name.lower().split())


def named(files: Sequence[StoredFile], names: Iterable[str]) -> tuple[list[StoredFile], list[str]]:
    """The files with these names (case-insensitive; every file of a name), and names matching none."""
    chosen: list[StoredFile] = []
    unknown = []
    for name in names:
        found = [f for f in files if _key(f.filename) == _key(name)]
        if not found:
            unknown.append(name)
        chosen += [f for f in found if f not in chosen]
    return chosen, unknown


def load(session: Session, files: Sequence[StoredFile]) -> tuple[OutAttachment, ...]:
    """The files with their bytes, read from the blob store."""
    if not files:
        return ()
    wanted = {f.sha256 for f in files}
    data = {sha: blob for sha, blob in session.execute(select(Blob.sha256, Blob.data).where(Blob.sha256.in_(wanted)))}
    missing = wanted - set(data)
    if missing:
        raise LookupError(f"attachment content missing from the blob store: {', '.join(sorted(missing))}")
    return tuple(OutAttachment(f.filename, f.content_type, data[f.sha256], f.sha256, f.inline, f.content_id)
                 for f in files)


def listing(files: Sequence[StoredFile]) -> str:
    return "\n".join(f"  {f.filename} ({human_size(f.size)}), from {f.source}" for f in files)


def too_large_for_reply(files: Sequence[StoredFile], limit: int) -> str | None:
    """Why a reply with these files cannot go out, or None when it can."""
    total = sum(f.size for f in files)
    if total <= limit:
        return None
    return (f"Your reply was not sent: its attachments total {human_size(total)}, over the limit of "
            f"{human_size(limit)} for mail to customers:\n\n{listing(files)}\n\n"
            "Send it again with smaller files, or with a link to them instead.")


@dataclass(frozen=True)
class Answer:
    """The mails answering `#attachments`: each a body and its files."""

    mails: tuple[tuple[str, tuple[StoredFile, ...]], ...]


def answer(files: Sequence[StoredFile], names: Sequence[str], limit: int, issue_id: int) -> Answer:
    """What to send a rep who asked for the issue's files (all of them when `names` is empty)."""
    chosen, unknown = named(files, names) if names else (list(files), [])
    mails, too_big = batches(chosen, limit)
    notes = []
    if unknown:
        known = ", ".join(dict.fromkeys(f.filename for f in files)) or "none"
        notes.append(f"No attachment named {', '.join(repr(n) for n in unknown)} on issue #{issue_id} "
                     f"(its attachments: {known}).")
    if too_big:
        notes.append(f"Too large to send by mail (over {human_size(limit)}):\n{listing(too_big)}")
    if not files:
        notes.append(f"Issue #{issue_id} has no attachments.")
    tail = ("\n\n" + "\n\n".join(notes)) if notes else ""
    out = []
    for n, part in enumerate(mails, 1):
        of = f" (mail {n} of {len(mails)})" if len(mails) > 1 else ""
        out.append((f"The files you asked for on issue #{issue_id}{of}:\n{listing(part)}" + (tail if n == 1 else ""),
                    tuple(part)))
    if not mails:
        out.append((tail.strip() or f"Nothing to send from issue #{issue_id}.", ()))
    return Answer(tuple(out))
