"""Read-only database lookups the pure stages call (identify, thread).

One DbLookup serves one batch transaction. `prefetch` answers the batch's
address and Message-ID questions with one query each, and the store stage
tells it what it wrote (`remember_*`), so each message costs a dictionary
lookup instead of a round trip. Whatever was not prefetched is read through
from the database; `forget` drops everything, for when a hook has changed
issues behind the cache's back (a rep's emailed commands).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from maild.models import Action, Category, Customer, CustomerAddress, Interaction, Issue, OutboxMessage

_CHUNK = 400  # values per IN list, under every backend's parameter limit

_OWNER = (
    select(CustomerAddress.key, CustomerAddress.customer_id, Customer.merged_into_id)
    .join(Customer, Customer.id == CustomerAddress.customer_id)
)
_OWNERS_BY_KEYS = _OWNER.where(CustomerAddress.key.in_(bindparam("keys", expanding=True)))
_MERGED_INTO = select(Customer.merged_into_id).where(Customer.id == bindparam("id"))
_ISSUES_BY_MESSAGE_IDS = (
    select(Interaction.message_id, Action.issue_id, Issue.status, Action.created_at)
    .join(Action, Action.interaction_id == Interaction.id)
    .join(Issue, Issue.id == Action.issue_id)
    .where(Interaction.message_id.in_(bindparam("ids", expanding=True)))
)
# Notices to reps are outbox rows, not interactions: a bounce of one (or a reply
# that quotes one) still finds its issue.
_NOTICES_BY_MESSAGE_IDS = (
    select(OutboxMessage.message_id, OutboxMessage.issue_id, Issue.status)
    .join(Issue, Issue.id == OutboxMessage.issue_id)
    .where(OutboxMessage.message_id.in_(bindparam("ids", expanding=True)), OutboxMessage.interaction_id.is_(None))
)
_STATUS = select(Issue.status).where(Issue.id == bindparam("id"))
_ISSUE_MERGED_INTO = select(Issue.merged_into_id).where(Issue.id == bindparam("id"))
_CATEGORIES = select(Category.name, Category.id)


def _chunks(values: Sequence[str]) -> Iterable[list[str]]:
    for i in range(0, len(values), _CHUNK):
        yield list(values[i : i + _CHUNK])


class DbLookup:
    def __init__(self, session: Session) -> None:
        self.session = session
        self.conn = session.connection()  # plain statements: this runs per message
        self.forget()

    def forget(self) -> None:
        self._owners: dict[str, int | None] = {}  # address key -> live record, None: nobody's
        self._threads: dict[str, int | None] = {}  # Message-ID -> issue, None: not ours
        self._status: dict[int, str | None] = {}
        self._categories: dict[str, int] | None = None

    # -- batch prefetch ---------------------------------------------------------------

    def prefetch(self, keys: Iterable[str], message_ids: Iterable[str]) -> None:
        """Answer these address keys and Message-IDs now, a query per few hundred."""
        self._fetch_owners(keys)
        self._fetch_threads(message_ids)

    def _fetch_owners(self, keys: Iterable[str]) -> None:
        keys = [k for k in dict.fromkeys(keys) if k and k not in self._owners]
        for chunk in _chunks(keys):
            self._owners.update(dict.fromkeys(chunk))
            for key, customer_id, merged_into in self.conn.execute(_OWNERS_BY_KEYS, {"keys": chunk}):
                self._owners[key] = self._live(customer_id, merged_into)

    def _fetch_threads(self, message_ids: Iterable[str]) -> None:
        ids = [i for i in dict.fromkeys(message_ids) if i and i not in self._threads]
        for chunk in _chunks(ids):
            self._threads.update(dict.fromkeys(chunk))
            self._read_threads(chunk)

    def _read_threads(self, ids: list[str]) -> None:
        """A Message-ID on several issues leads to the one it was filed on last: the issue a
        #split started from it, or the new issue a late reply opened (it stays on the old one
        too, filed at the same moment: the newer issue wins the tie)."""
        filed: dict[str, tuple] = {}
        for row in self.conn.execute(_ISSUES_BY_MESSAGE_IDS, {"ids": ids}):
            mid, issue_id, status = str(row[0]), int(row[1]), row[2]
            when = (row[3], issue_id)
            if mid not in filed or when > filed[mid]:
                filed[mid] = when
                self._threads[mid] = issue_id
            self._status.setdefault(issue_id, status)
        for notice in self.conn.execute(_NOTICES_BY_MESSAGE_IDS, {"ids": ids}):
            mid, notice_issue, status = str(notice[0]), notice[1], notice[2]
            if notice_issue is not None and self._threads.get(mid) is None:
                issue_id = int(notice_issue)
                self._threads[mid] = issue_id
                self._status.setdefault(issue_id, status)

    # -- what the store stage wrote -----------------------------------------------------

    def remember_customer(self, key: str, customer_id: int) -> None:
        self._owners[key] = customer_id

    def remember_issue(self, issue_id: int, status: str) -> None:
        self._status[issue_id] = status

    def remember_message(self, message_id: str | None, issue_ids: Iterable[int]) -> None:
        """A stored interaction's Message-ID now leads to the issue it was filed on (the first
        of `issue_ids`; a late reply is also kept on the old issue, the second)."""
        first = next(iter(issue_ids), None)
        if message_id and first is not None:
            self._threads[message_id] = first

    # -- the lookups the stages call -----------------------------------------------------

    def _live(self, customer_id: int, merged_into: int | None) -> int:
        for _ in range(50):  # a chain never loops; the bound only guards bad data
            if merged_into is None:
                break
            customer_id = merged_into
            merged_into = self.conn.scalar(_MERGED_INTO, {"id": customer_id})
        return customer_id

    def live_customer_by_key(self, key: str) -> int | None:
        """The record owning an address, never a merged one: what it was merged into."""
        self._fetch_owners([key])
        return self._owners.get(key)  # an empty key is nobody's

    def issues_by_message_ids(self, ids: Sequence[str]) -> dict[str, int]:
        ids = list(dict.fromkeys(i for i in ids if i))[:200]
        self._fetch_threads(ids)
        return {i: n for i in ids if (n := self._threads[i]) is not None}

    def live_issue(self, issue_id: int) -> int:
        """The issue mail for `issue_id` lands on: a merged issue's pointer followed
        (desk/merge.py). Free for an issue that is not merged: its status is known."""
        for _ in range(50):  # a chain never loops; the bound only guards bad data
            if self.issue_status(issue_id) != "merged":
                break
            target = self.conn.scalar(_ISSUE_MERGED_INTO, {"id": issue_id})
            if target is None:
                break
            issue_id = target
        return issue_id

    def issue_status(self, issue_id: int) -> str | None:
        if issue_id not in self._status:
            self._status[issue_id] = self.conn.scalar(_STATUS, {"id": issue_id})
        return self._status[issue_id]

    def category_ids(self) -> dict[str, int]:
        if self._categories is None:
            self._categories = dict(self.conn.execute(_CATEGORIES).all())
        return self._categories

    def is_participant(self, issue_id: int, customer_id: int | None, email: str) -> bool:
        issue = self.session.get(Issue, issue_id)
        if issue is None:
            return False
        if customer_id is not None and issue.customer_id == customer_id:
            return True
        email = email.lower()
        if email in (c.lower() for c in issue.cc):
            return True
        sender = self.conn.scalar(
            select(Interaction.id)
            .join(Action, Action.interaction_id == Interaction.id)
            .where(Action.issue_id == issue_id, func.lower(Interaction.from_email) == email)
            .limit(1)
        )
        return sender is not None
