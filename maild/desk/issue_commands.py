"""Applying a rep's emailed commands to an issue: all of them, or none.

Every command is checked against the database first (the rep named in
#assign exists, the category exists, the linked issue exists); only when all
are valid are they applied, so a typo never half-changes an issue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from maild.models import Action, Category, Interaction, Issue, Rep, utcnow
from maild.desk.assign import HeldByOther, RepNotFound, check_take, find_rep
from maild.desk.commands import Command
from maild.desk import merge as merging
from maild.desk.picklists import INFO_USED, ISSUE_TYPE, Picklists, PicklistError, record_picks

PRIORITIES = ("low", "normal", "high", "urgent")


class CommandError(Exception):
    """A command that is well-formed but cannot apply (unknown rep, category, issue)."""


# Commands of a rep's desk address (desk/deskmail.py), never of a reply on an issue.
DESK_ONLY = ("to", "customer", "log", "issue", "queue", "history")


def _rep(session: Session, who: str, short_names: Mapping[str, str] | None) -> Rep:
    try:
        return find_rep(session, who, short_names)
    except RepNotFound as exc:
        raise CommandError(str(exc)) from None


def _take(session: Session, issue: Issue, rep: Rep, force: bool) -> Callable[[], None]:
    try:
        check_take(session, issue, rep, force)
    except HeldByOther as exc:
        raise CommandError(str(exc)) from None
    return lambda: setattr(issue, "assignee_id", rep.id)


def _category(session: Session, name: str) -> Category:
    category = session.scalar(select(Category).where(func.lower(Category.name) == name.strip().lower()))
    if category is None:
        names = ", ".join(session.scalars(select(Category.name).order_by(Category.name)))
        raise CommandError(f"#category: no category {name!r} (categories: {names})")
    return category


def _link(session: Session, issue: Issue, arg: str) -> Issue:
    other = session.get(Issue, int(arg.strip("[]#")))
    if other is None:
        raise CommandError(f"#link: no issue #{arg.strip('[]#')}")
    if other.id == issue.id:
        raise CommandError("#link: an issue cannot be linked to itself")
    return other


def _status(status: str) -> Callable[[Issue], None]:
    def apply(issue: Issue) -> None:
        issue.status = status
        issue.closed_at = utcnow() if status == "closed" else None

    return apply


def _own_action(session: Session, issue: Issue, interaction: Interaction, command: str) -> Action:
    action = session.scalar(select(Action).where(Action.issue_id == issue.id, Action.interaction_id == interaction.id))
    if action is None:  # the mail's own action on the issue is written before commands run
        raise CommandError(f"#{command}: this mail is not recorded on issue #{issue.id}")
    return action


def _pick(session: Session, issue: Issue, interaction: Interaction, cmd: Command,
          picklists: Picklists | None) -> Callable[[], None]:
    """#type, #used: values checked against their picklist, recorded on this mail's action."""
    picklist = ISSUE_TYPE if cmd.name == "type" else INFO_USED
    try:
        values = (picklists or Picklists(())).check_all(picklist, cmd.args)
    except PicklistError as exc:
        raise CommandError(f"#{cmd.name}: {exc}") from None
    action = _own_action(session, issue, interaction, cmd.name)
    return lambda: record_picks(session, action, picklist, values)


def _merge_plan(session: Session, issue: Issue, interaction: Interaction, cmd: Command) -> Callable[[], None]:
    """#merge N: this issue into issue N. #split: a new issue from the interaction this mail answers."""
    try:
        if cmd.name == "split":
            source = merging.split_source(session, issue, interaction)

            def split() -> None:
                merging.split_issue(session, issue, source, interaction)

            return split
        target = session.get(Issue, int(cmd.args[0]))
        if target is None:
            raise CommandError(f"#merge: no issue #{cmd.args[0]}")
        merging.check_merge(issue, target)
    except merging.MergeError as exc:
        raise CommandError(f"#{cmd.name}: {exc}") from None

    def merge() -> None:
        merging.merge_issues(session, issue, target)

    return merge


def _plan(session: Session, issue: Issue, rep: Rep, interaction: Interaction, cmd: Command,
          picklists: Picklists | None = None, short_names: Mapping[str, str] | None = None,
          ) -> Callable[[], None] | None:
    """Validate one command; return what applying it does."""
    name, args = cmd.name, cmd.args
    if name in DESK_ONLY:
        raise CommandError(f"#{name}: write it to your own desk address (shown in every notification), "
                           "not in a reply on an issue")
    if name in ("type", "used"):
        return _pick(session, issue, interaction, cmd, picklists)
    if name in ("merge", "split"):
        return _merge_plan(session, issue, interaction, cmd)
    if name == "order":
        return lambda: setattr(issue, "order_id", args[0])
    if name == "gift":
        return lambda: setattr(issue, "gift_certificate_id", args[0])
    if name in ("close", "reopen", "pending"):
        return lambda: _status({"close": "closed", "reopen": "open", "pending": "pending"}[name])(issue)
    if name in ("take", "take!"):
        return _take(session, issue, rep, force=name == "take!")
    if name == "assign":
        target = _rep(session, " ".join(args), short_names)
        return lambda: setattr(issue, "assignee_id", target.id)
    if name == "priority":
        return lambda: setattr(issue, "priority", args[0].lower())
    if name == "category":
        category = _category(session, args[0])
        return lambda: setattr(issue, "category_id", category.id)
    if name in ("tag", "untag"):
        return lambda: _tags(issue, args, name == "tag")
    if name == "cc":
        return lambda: setattr(issue, "cc", _toggled(issue.cc, args[1], args[0].lower() == "add"))
    if name == "followup":
        text = " ".join(args)
        return lambda: _followup(session, issue, interaction, text)
    if name == "link":
        other = _link(session, issue, args[0])
        return lambda: session.add(Action(issue_id=other.id, interaction_id=interaction.id))
    return None  # note, send: not changes to the issue


def _tags(issue: Issue, tags: Sequence[str], present: bool) -> None:
    for tag in tags:
        issue.tags = _toggled(issue.tags, tag, present)


def _toggled(values: list[str], value: str, present: bool) -> list[str]:
    """A new list (so the JSON column sees the change) with value in or out, case-insensitively."""
    keep = [v for v in values if v.lower() != value.lower()]
    return keep + [value] if present else keep


def _followup(session: Session, issue: Issue, interaction: Interaction, text: str) -> None:
    action = session.scalar(select(Action).where(Action.issue_id == issue.id, Action.interaction_id == interaction.id))
    if action is None:  # the mail's own action on the issue is written before commands run
        raise CommandError(f"#followup: this mail is not recorded on issue #{issue.id}")
    action.follow_up_required = text


def apply_commands(session: Session, issue: Issue, rep: Rep, interaction: Interaction, commands: Sequence[Command],
                   picklists: Picklists | None = None, short_names: Mapping[str, str] | None = None) -> None:
    # #merge and #split go last: the issue's other changes are made before it becomes a pointer.
    ordered = sorted(commands, key=lambda c: c.name in ("merge", "split"))
    plans = [_plan(session, issue, rep, interaction, c, picklists, short_names) for c in ordered]
    for plan in plans:
        if plan is not None:
            plan()
    if plans:
        issue.updated_at = utcnow()
