"""Picklists: the configured, ordered values a rep picks from, checked and recorded.

Recording an interaction should take as little effort as possible, so a rep
names a value (`#type billing`, `#used order history`, the channel of `#log`)
instead of typing free text, and the reports can count what was picked. This
module checks a value against its list (a typo gets the choices and the
closest one) and records picks on an action; it never sends mail.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from maild.config_desk import PicklistConfig
from maild.models import Action, ActionPick

# The picklist each command picks from.
ISSUE_TYPE = "issue_type"  # #type VALUE
INFO_USED = "info_used"  # #used VALUE[, VALUE...]
CONTACT_METHOD = "contact_method"  # the channel of #log


class PicklistError(Exception):
    """A value that is not on its list, or a list that is not configured; the message is for the rep."""


class Picklists:
    def __init__(self, lists: Sequence[PicklistConfig]) -> None:
        self._lists = {p.name: p.values for p in lists}

    def values(self, name: str) -> tuple[str, ...]:
        return self._lists.get(name, ())

    def check(self, name: str, value: str) -> str:
        """The list's own spelling of `value` (compared case-insensitively and ignoring extra spaces)."""
        choices = self._lists.get(name)
        if not choices:
            raise PicklistError(f"no picklist {name!r} is configured (add a [[picklist]] named {name} to the config)")
        wanted = " ".join(value.split()).lower()
        for choice in choices:
            if choice.lower() == wanted:
                return choice
        close = difflib.get_close_matches(wanted, [c.lower() for c in choices], n=1, cutoff=0.6)
        hint = ""
        if close:
            hint = f" Did you mean {next(c for c in choices if c.lower() == close[0])!r}?"
        raise PicklistError(f"{value!r} is not on the {name} picklist.{hint} Choices: {', '.join(choices)}")

    def check_all(self, name: str, values: Iterable[str]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.check(name, v) for v in values))


def record_picks(session: Session, action: Action, picklist: str, values: Iterable[str]) -> None:
    """Record checked values on an action; a value already picked there is kept once."""
    session.flush()  # the action needs its id
    have = set(session.scalars(select(ActionPick.value).where(
        ActionPick.action_id == action.id, ActionPick.picklist == picklist)))
    for value in values:
        if value not in have:
            session.add(ActionPick(action_id=action.id, picklist=picklist, value=value))
            have.add(value)


def picks_by_interaction(session: Session, issue_id: int) -> dict[int, dict[str, list[str]]]:
    """What was picked on each interaction of an issue: interaction id -> picklist -> values."""
    out: dict[int, dict[str, list[str]]] = {}
    rows = session.execute(
        select(Action.interaction_id, ActionPick.picklist, ActionPick.value)
        .join(ActionPick, ActionPick.action_id == Action.id)
        .where(Action.issue_id == issue_id)
        .order_by(ActionPick.id)
    )
    for interaction_id, picklist, value in rows:
        out.setdefault(interaction_id, {}).setdefault(picklist, []).append(value)
    return out
