"""Finding any case again: issues by text, and issues by their fields.

`search` ranks issues by the text of their interactions (subject and new
text) through the database's own full-text index: SQLite FTS5, PostgreSQL
tsvector with a GIN index. Triggers created by migration 0008 keep the index
in step with every writer. Only the SEARCH_WINDOW newest matching
interactions are ranked, so a word in every mail costs a bounded amount of
work. `list_issues` filters and sorts on the issue's own columns. Read-only:
nothing here writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Select, and_, bindparam, case, func, or_, select, text
from sqlalchemy.orm import Session, selectinload

from maild.desk.queries import issue_row
from maild.models import Action, Category, Customer, CustomerAddress, Issue, Rep

SEARCH_WINDOW = 5000  # newest matching interactions ranked per search
MAX_TERMS = 16
_TERM = re.compile(r"(\w{1,64})\w*(\*?)")
_HEADLINE_CHARS = 50_000  # PostgreSQL: a snippet is taken from this much of the text

PRIORITY_ORDER = ("low", "normal", "high", "urgent")
SORTS = ("id", "status", "category", "priority", "subject", "mailbox", "customer", "assignee", "created",
         "updated", "closed", "interactions", "order")


class SearchError(Exception):
    """A search or filter that cannot run as given; the message says what to give instead."""


@dataclass(frozen=True)
class IssueFilter:
    statuses: tuple[str, ...] = ()  # none: every status but merged
    assignee_id: int | None = None
    unassigned: bool = False
    priorities: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()  # all of them, case-insensitively
    category: str | None = None
    mailbox: str | None = None
    customer_key: str | None = None  # the comparison form of one of the customer's addresses
    order_id: str | None = None
    gift_certificate_id: str | None = None
    opened_after: datetime | None = None
    opened_before: datetime | None = None
    updated_after: datetime | None = None
    updated_before: datetime | None = None
    breached: bool = False
    sort: str = "id"
    desc: bool = False
    limit: int | None = None
    offset: int = 0


def rep_id(session: Session, who: str) -> int:
    """A rep named by email or name, case-insensitively."""
    found = session.scalar(select(Rep.id).where(or_(func.lower(Rep.email) == who.strip().lower(),
                                                    func.lower(Rep.name) == who.strip().lower())))
    if found is None:
        names = ", ".join(f"{n} <{e}>" for n, e in session.execute(select(Rep.name, Rep.email).order_by(Rep.name)))
        raise SearchError(f"no rep called {who!r} (reps: {names or 'none'})")
    return found


def _counts(ids: list[int] | None = None):
    q = select(Action.issue_id, func.count(Action.id).label("n"), func.max(Action.created_at).label("last"))
    if ids is not None:
        q = q.where(Action.issue_id.in_(ids))
    return q.group_by(Action.issue_id).subquery()


def _has_tag(dialect: str, n: int):
    if dialect == "postgresql":
        sql = f"EXISTS (SELECT 1 FROM json_array_elements_text(issues.tags) AS t(v) WHERE lower(t.v) = :tag{n})"
    else:
        sql = f"EXISTS (SELECT 1 FROM json_each(issues.tags) AS t WHERE lower(t.value) = :tag{n})"
    return text(sql)


def _sort_key(name: str, updated, count):
    if name not in SORTS:
        raise SearchError(f"cannot sort by {name!r}; columns: {', '.join(SORTS)}")
    first_address = (select(CustomerAddress.email).where(CustomerAddress.customer_id == Issue.customer_id)
                     .order_by(CustomerAddress.id).limit(1).scalar_subquery())
    return {
        "id": Issue.id, "status": Issue.status, "subject": Issue.subject, "mailbox": Issue.mailbox,
        "category": select(Category.name).where(Category.id == Issue.category_id).scalar_subquery(),
        "priority": case({p: n for n, p in enumerate(PRIORITY_ORDER)}, value=Issue.priority, else_=len(PRIORITY_ORDER)),
        "customer": first_address,
        "assignee": select(Rep.email).where(Rep.id == Issue.assignee_id).scalar_subquery(),
        "created": Issue.opened_at, "updated": updated, "closed": Issue.closed_at, "interactions": count,
        "order": Issue.order_id,
    }[name]


def _where(q: Select, f: IssueFilter, dialect: str, updated) -> Select:
    q = q.where(Issue.status.in_(f.statuses)) if f.statuses else q.where(Issue.status != "merged")
    if f.unassigned:
        q = q.where(Issue.assignee_id.is_(None))
    elif f.assignee_id is not None:
        q = q.where(Issue.assignee_id == f.assignee_id)
    if f.priorities:
        q = q.where(Issue.priority.in_(f.priorities))
    for n, tag in enumerate(f.tags):
        q = q.where(_has_tag(dialect, n).bindparams(bindparam(f"tag{n}", tag.lower())))
    if f.category:
        q = q.where(Issue.category.has(Category.name == f.category))
    if f.mailbox:
        q = q.where(Issue.mailbox == f.mailbox)
    if f.customer_key:
        q = q.where(Issue.customer_id.in_(select(CustomerAddress.customer_id).where(CustomerAddress.key == f.customer_key)))
    if f.order_id:
        q = q.where(func.lower(Issue.order_id) == f.order_id.lower())
    if f.gift_certificate_id:
        q = q.where(func.lower(Issue.gift_certificate_id) == f.gift_certificate_id.lower())
    for column, after, before in ((Issue.opened_at, f.opened_after, f.opened_before),
                                  (updated, f.updated_after, f.updated_before)):
        if after is not None:
            q = q.where(column >= after)
        if before is not None:
            q = q.where(column < before)
    if f.breached:
        breached_at = getattr(Issue, "breached_at", None)  # recorded by turnaround (desk/turnaround.py)
        if breached_at is None:
            raise SearchError("breaches are not recorded by this version (no turnaround targets)")
        q = q.where(breached_at.is_not(None))
    return q


def _row(issue: Issue, count: int, last: datetime | None) -> dict:
    return issue_row(issue, count, last) | {
        "priority_rank": PRIORITY_ORDER.index(issue.priority) if issue.priority in PRIORITY_ORDER else None,
        "order_id": issue.order_id,
        "gift_certificate_id": issue.gift_certificate_id,
        "merged_into": issue.merged_into_id,
    }


def list_issues(session: Session, f: IssueFilter) -> list[dict]:
    """Issues matching every filter given, sorted by one column (then by id), a page at a time."""
    counts = _counts()
    count = func.coalesce(counts.c.n, 0)
    updated = case((and_(counts.c.last.is_not(None), counts.c.last > Issue.updated_at), counts.c.last),
                   else_=Issue.updated_at)
    key = _sort_key(f.sort, updated, count)
    q = (
        select(Issue, count, counts.c.last)
        .outerjoin(counts, counts.c.issue_id == Issue.id)
        .options(selectinload(Issue.category), selectinload(Issue.assignee),
                 selectinload(Issue.customer).selectinload(Customer.addresses))
        .order_by(key.desc().nulls_last() if f.desc else key.asc().nulls_last(),
                  Issue.id.desc() if f.desc else Issue.id)
    )
    q = _where(q, f, session.get_bind().dialect.name, updated)
    if f.limit is not None:
        q = q.limit(f.limit)
    if f.offset:
        q = q.offset(f.offset)
    return [_row(issue, n, last) for issue, n, last in session.execute(q)]


# -- text search ----------------------------------------------------------------------


def terms(query: str) -> list[tuple[str, bool]]:
    """The words searched for (all must occur), each with whether it is a prefix (`refund*`)."""
    found = [(m.group(1).lower(), bool(m.group(2))) for m in _TERM.finditer(query)][:MAX_TERMS]
    if not found:
        raise SearchError("nothing to search for: give one or more words (a trailing * matches a prefix)")
    return found


def _fts5_query(words: list[tuple[str, bool]]) -> str:
    return " ".join(f'"{w}"' + ("*" if prefix else "") for w, prefix in words)


def _tsquery(words: list[tuple[str, bool]]) -> str:
    return " & ".join(f"'{w}'" + (":*" if prefix else "") for w, prefix in words)


_SQLITE_HITS = f"""
SELECT a.issue_id, min(h.score) AS best, h.iid, count(*) AS n
FROM (SELECT rowid AS iid, bm25(interaction_fts, 4.0, 1.0) AS score FROM interaction_fts
      WHERE interaction_fts MATCH :q ORDER BY rowid DESC LIMIT {SEARCH_WINDOW}) AS h
JOIN actions a ON a.interaction_id = h.iid JOIN issues i ON i.id = a.issue_id
WHERE {{status}}
GROUP BY a.issue_id ORDER BY best, a.issue_id LIMIT :limit OFFSET :offset
"""
_SQLITE_SNIPPETS = ("SELECT rowid, snippet(interaction_fts, -1, '[', ']', '...', 16) FROM interaction_fts "
                    "WHERE interaction_fts MATCH :q AND rowid IN ({ids})")
_PG_HITS = f"""
SELECT a.issue_id, max(h.score) AS best, (array_agg(h.iid ORDER BY h.score DESC, h.iid DESC))[1] AS iid,
       count(*) AS n
FROM (SELECT id AS iid, ts_rank(search_vector, to_tsquery('simple', :q)) AS score FROM interactions
      WHERE search_vector @@ to_tsquery('simple', :q) ORDER BY id DESC LIMIT {SEARCH_WINDOW}) AS h
JOIN actions a ON a.interaction_id = h.iid JOIN issues i ON i.id = a.issue_id
WHERE {{status}}
GROUP BY a.issue_id ORDER BY best DESC, a.issue_id LIMIT :limit OFFSET :offset
"""
_PG_SNIPPETS = (f"SELECT id, ts_headline('simple', left(new_text, {_HEADLINE_CHARS}), to_tsquery('simple', :q), "
                "'StartSel=[, StopSel=], MaxWords=24, MinWords=10, MaxFragments=1, FragmentDelimiter=\" ... \"') "
                "FROM interactions WHERE id IN ({ids})")


def _status_sql(statuses: tuple[str, ...]) -> tuple[str, dict]:
    if not statuses:
        return "i.status <> 'merged'", {}
    names = {f"st{n}": s for n, s in enumerate(statuses)}
    return f"i.status IN ({', '.join(':' + k for k in names)})", names


def _hits(session: Session, words, statuses: tuple[str, ...], limit: int, offset: int) -> list[tuple]:
    dialect = session.get_bind().dialect.name
    status, params = _status_sql(statuses)
    if dialect == "postgresql":
        sql, q, sign = _PG_HITS, _tsquery(words), 1.0
    else:
        sql, q, sign = _SQLITE_HITS, _fts5_query(words), -1.0  # bm25: lower is better
    rows = session.execute(text(sql.format(status=status)), {"q": q, "limit": limit, "offset": offset, **params})
    hits = [(int(issue_id), sign * float(best), int(iid), int(n)) for issue_id, best, iid, n in rows]
    if not hits:
        return []
    ids = ", ".join(str(h[2]) for h in hits)  # integers from the database, not user input
    snippet_sql = _PG_SNIPPETS if dialect == "postgresql" else _SQLITE_SNIPPETS
    snippets = {int(i): str(s or "") for i, s in session.execute(text(snippet_sql.format(ids=ids)), {"q": q})}
    return [(issue_id, score, iid, n, " ".join((snippets.get(iid) or "").split())) for issue_id, score, iid, n in hits]


def _by_reference(session: Session, query: str, statuses: tuple[str, ...]) -> list[int]:
    """Issues whose order or gift certificate id is the whole query (`A-1001`)."""
    ref = query.strip().lower()
    if not ref or len(ref) > 100:
        return []
    spellings = list({query.strip(), ref, ref.upper()})  # as typed, lower, upper: each can use the column's index
    q = select(Issue.id).where(or_(Issue.order_id.in_(spellings), Issue.gift_certificate_id.in_(spellings)))
    q = q.where(Issue.status.in_(statuses)) if statuses else q.where(Issue.status != "merged")
    return list(session.scalars(q.order_by(Issue.id.desc()).limit(50)))


def search_issues(session: Session, query: str, statuses: tuple[str, ...] = (), limit: int = 20,
                  offset: int = 0) -> list[dict]:
    """Issues whose interactions contain every word, best first, each with a snippet of its best match.
    An issue whose order or gift certificate id is the query comes first."""
    words = terms(query)
    refs = _by_reference(session, query, statuses) if offset == 0 else []
    hits = _hits(session, words, statuses, limit, offset)
    order = list(dict.fromkeys([*refs, *(h[0] for h in hits)]))[:limit]
    if not order:
        return []
    rows = _rows_for(session, order)
    by_issue = {h[0]: h for h in hits}
    out = []
    for issue_id in order:
        row = rows[issue_id]
        hit = by_issue.get(issue_id)
        row |= {"score": round(hit[1], 6) if hit else None, "interaction_id": hit[2] if hit else None,
                "matches": hit[3] if hit else 0, "snippet": hit[4] if hit else "",
                "reference_match": issue_id in refs}
        out.append(row)
    return out


def _rows_for(session: Session, ids: list[int]) -> dict[int, dict]:
    counts = _counts(ids)
    q = (
        select(Issue, func.coalesce(counts.c.n, 0), counts.c.last)
        .outerjoin(counts, counts.c.issue_id == Issue.id)
        .where(Issue.id.in_(ids))
        .options(selectinload(Issue.category), selectinload(Issue.assignee),
                 selectinload(Issue.customer).selectinload(Customer.addresses))
    )
    return {issue.id: _row(issue, n, last) for issue, n, last in session.execute(q)}
