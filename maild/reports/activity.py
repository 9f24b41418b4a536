"""Reports over what people did: reps' load, resources used, channels.

One aggregate statement each. A rep's interactions are the non-automatic
interactions recorded with them: their own mail to maild, the replies it sent
and their notes. Issues closed are counted for the rep the issue is assigned
to (who typed #close is not recorded).
"""

from __future__ import annotations

from sqlalchemy import and_, case, func, literal, select
from sqlalchemy.orm import Session

from maild.models import CannedUse, Interaction, Issue, Rep
from maild.reports.model import Context
from maild.reports.sql import interaction_filters, issue_filters, within


def reps(session: Session, ctx: Context) -> list[tuple]:
    window, filters = ctx.window, ctx.filters
    joined = and_(
        Interaction.rep_id == Rep.id,
        Interaction.auto_generated.is_(False),
        within(Interaction.created_at, window),
        *interaction_filters(filters.with_(rep=None)),
    )
    issue_side = issue_filters(filters.with_(rep=None, channel=None))
    closed = (
        select(func.count()).select_from(Issue)
        .where(Issue.assignee_id == Rep.id, within(Issue.closed_at, window), *issue_side)
        .scalar_subquery()
    )
    assigned = (
        select(func.count()).select_from(Issue)
        .where(Issue.assignee_id == Rep.id, Issue.status != "closed", *issue_side)
        .scalar_subquery()
    )
    q = (
        select(
            Rep.name, Rep.email, func.count(Interaction.id),
            func.sum(case((Interaction.direction == "outbound", 1), else_=0)),
            func.sum(case((Interaction.channel == "note", 1), else_=0)),
            closed, assigned,
        )
        .select_from(Rep)
        .outerjoin(Interaction, joined)
        .group_by(Rep.id, Rep.name, Rep.email)
    )
    if filters.rep:
        q = q.where((func.lower(Rep.email) == filters.rep.lower()) | (Rep.name == filters.rep))
    return [(name, email, int(n), int(replies or 0), int(notes or 0), int(c or 0), int(a or 0))
            for name, email, n, replies, notes, c, a in session.execute(q)]


def resources(session: Session, ctx: Context) -> list[tuple]:
    """Canned responses by uses in the period (picklists' "information used" are not in the schema yet)."""
    window, filters = ctx.window, ctx.filters
    q = (
        select(CannedUse.name, literal("canned"), func.count(), func.count(CannedUse.issue_id.distinct()),
               func.count(CannedUse.rep_id.distinct()))
        .where(within(CannedUse.used_at, window))
        .group_by(CannedUse.name)
    )
    issue_side = issue_filters(filters.with_(rep=None, channel=None))
    if issue_side:  # the issues' table only when a filter needs it
        q = q.join(Issue, Issue.id == CannedUse.issue_id).where(*issue_side)
    if filters.rep:
        q = q.join(Rep, Rep.id == CannedUse.rep_id).where(
            (func.lower(Rep.email) == filters.rep.lower()) | (Rep.name == filters.rep))
    if filters.channel:
        q = q.join(Interaction, Interaction.id == CannedUse.interaction_id).where(
            Interaction.channel == filters.channel)
    return [(name, kind, int(n), int(i), int(r)) for name, kind, n, i, r in session.execute(q)]


def channels(session: Session, ctx: Context) -> list[tuple]:
    q = (
        select(Interaction.channel, Interaction.direction, func.count(),
               func.sum(case((Interaction.auto_generated.is_(True), 1), else_=0)),
               func.count(Interaction.customer_id.distinct()))
        .where(within(Interaction.created_at, ctx.window), *interaction_filters(ctx.filters))
        .group_by(Interaction.channel, Interaction.direction)
    )
    return [(ch, d, int(n), int(auto or 0), int(c)) for ch, d, n, auto, c in session.execute(q)]
