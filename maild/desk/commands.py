"""Commands a rep writes as `#word` lines at the top of a reply to maild.

Reps act on an issue from their own mail client: `#close`, `#assign Jane`,
`#priority high` and so on, one per line, above the text for the customer.
This module only reads those lines and reports what is wrong with them; it
never applies a command and never touches anything but the text. Only the
top block counts, so a `#` further down is always the customer's text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parseaddr

from maild.config_base import ADDRESS_RE

PRIORITIES = ("low", "normal", "high", "urgent")

# A command line starts with "#" and a letter; "#123 is broken" is text.
_COMMAND_LINE = re.compile(r"#([A-Za-z]\S*)(?:\s+(.*))?$")
_CANNED_LINE = re.compile(r"#canned\s+\S", re.IGNORECASE)
_ISSUE_REF = re.compile(r"\[(?:[A-Za-z0-9_.-]{1,20} )?#(\d{1,12})\]|#?(\d{1,12})")
_LIST_SPLIT = re.compile(r"[\s,]+")

# Commands that say one thing about the issue: two of a group contradict.
_EXCLUSIVE: tuple[tuple[str, ...], ...] = (
    ("close", "reopen", "pending"), ("assign", "take", "take!"), ("priority",), ("category",))
_EXCLUSIVE += (("merge", "split"), ("type",), ("order",), ("gift",))
# At a rep's desk address (desk/deskmail.py).
_EXCLUSIVE += (("to", "customer"), ("queue", "history", "log"), ("issue",))


@dataclass(frozen=True)
class Command:
    name: str  # close, reopen, pending, assign, take, take!, priority, category, tag, untag, followup, cc, link,
    # note, send; at a desk address: to, customer, log, issue, queue, history
    args: tuple[str, ...]
    line: str  # the original line, for error messages


@dataclass(frozen=True)
class CommandParse:
    commands: tuple[Command, ...]
    errors: tuple[str, ...]  # one sentence per bad line
    body: str  # the text with the command lines removed (leading blank lines dropped)


class _Invalid(Exception):
    """A command line whose arguments are wrong; the message is for the rep."""


def _no_args(rest: str) -> tuple[str, ...]:
    if rest:
        raise _Invalid(f"takes no arguments, got {rest!r}")
    return ()


def _required(what: str):
    def parse(rest: str) -> tuple[str, ...]:
        if not rest:
            raise _Invalid(f"expected {what}")
        return (" ".join(rest.split()),)

    return parse


def _assignee(rest: str) -> tuple[str, ...]:
    (who,) = _required("a rep name or email address")(rest)
    if "@" in who and not ADDRESS_RE.match(who):
        raise _Invalid(f"{who!r} is not an email address")
    return (who,)


def _priority(rest: str) -> tuple[str, ...]:
    if rest.lower() not in PRIORITIES:
        got = repr(rest) if rest else "nothing"
        raise _Invalid(f"expected low, normal, high or urgent, got {got}")
    return (rest.lower(),)


def _tags(rest: str) -> tuple[str, ...]:
    tags = tuple(t for t in _LIST_SPLIT.split(rest) if t)
    if not tags:
        raise _Invalid("expected one or more tags")
    return tags


def _cc(rest: str) -> tuple[str, ...]:
    action, address = (rest.split(None, 1) + ["", ""])[:2]
    if action.lower() not in ("add", "remove"):
        got = repr(action) if action else "nothing"
        raise _Invalid(f"expected add or remove and an email address, got {got}")
    if not address:
        raise _Invalid(f"expected an email address after {action.lower()}")
    _, addr = parseaddr(address)
    if not ADDRESS_RE.match(addr) or "," in address:
        raise _Invalid(f"expected one email address, got {address!r}")
    return (action.lower(), addr)


def _link(rest: str) -> tuple[str, ...]:
    m = _ISSUE_REF.fullmatch(rest)
    number = m and (m.group(1) or m.group(2))
    if not number or int(number) == 0:
        got = repr(rest) if rest else "nothing"
        raise _Invalid(f"expected an issue number such as 123 or #123, got {got}")
    return (str(int(number)),)


def _optional(rest: str) -> tuple[str, ...]:
    return (" ".join(rest.split()),) if rest else ()


def _picks(rest: str) -> tuple[str, ...]:
    """#used: one or more picklist values, separated by commas (a value may have spaces)."""
    values = tuple(" ".join(v.split()) for v in rest.split(",") if v.strip())
    if not values:
        raise _Invalid("expected one or more values from the picklist, separated by commas")
    return values


def _reference(what: str):
    """#order, #gift: one reference such as A-1001 (letters, digits and . _ / : # -)."""

    def parse(rest: str) -> tuple[str, ...]:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/:#-]{0,99}", rest):
            got = repr(rest) if rest else "nothing"
            raise _Invalid(f"expected {what} such as A-1001 (no spaces, at most 100 characters), got {got}")
        return (rest,)

    return parse


LOG_CHANNELS = ("phone", "visit", "chat")


def _recipient(rest: str) -> tuple[str, ...]:
    """#to: one address, optionally with a display name: (email, name)."""
    name, addr = parseaddr(rest)
    if not rest or not ADDRESS_RE.match(addr) or "," in rest:
        got = repr(rest) if rest else "nothing"
        raise _Invalid(f"expected one email address, got {got}")
    return (addr, name)


def _customer_ref(rest: str) -> tuple[str, ...]:
    """#customer: a record's id or one of its addresses."""
    if rest.isdigit() and int(rest) > 0:
        return (str(int(rest)),)
    return (_recipient(rest)[0],)


def _channel(rest: str) -> tuple[str, ...]:
    if rest.lower() not in LOG_CHANNELS:
        got = repr(rest) if rest else "nothing"
        raise _Invalid(f"expected {', '.join(LOG_CHANNELS[:-1])} or {LOG_CHANNELS[-1]}, got {got}")
    return (rest.lower(),)


_PARSERS = {
    "close": _no_args,
    "reopen": _no_args,
    "pending": _no_args,
    "take": _no_args,
    "note": _no_args,
    "send": _no_args,
    "assign": _assignee,
    "priority": _priority,
    "category": _required("a category name"),
    "tag": _tags,
    "untag": _tags,
    "followup": _required("a description of the follow-up work"),
    "cc": _cc,
    "link": _link,
    "type": _required("a value from the issue_type picklist"),  # desk/picklists.py
    "used": _picks,  # values from the info_used picklist
    "merge": _link,  # merge this issue into the one named (desk/merge.py)
    "split": _no_args,  # a new issue from the interaction this mail answers
    "order": _reference("an order id"),
    "gift": _reference("a gift certificate id"),
    "attachments": _optional,  # the issue's files by mail: all, or the one named (desk/attachments.py)
    # Desk commands (desk/deskmail.py), and #take! (take it from whoever holds it)
    "take!": _no_args,
    "to": _recipient,
    "customer": _customer_ref,
    "log": _channel,
    "issue": _link,
    "queue": _optional,
    "history": _link,
}


def _parse_line(line: str) -> Command | str | None:
    """A command, an error sentence, or None when the line is not a command line."""
    m = _COMMAND_LINE.match(line)
    if not m or _CANNED_LINE.match(line):
        return None
    word, rest = m.group(1), (m.group(2) or "").strip()
    name = word.lower()
    if name == "canned":  # with a name it is not a command (see _CANNED_LINE)
        return "#canned: expected the name of a canned response"
    parser = _PARSERS.get(name)
    if parser is None:
        return f"unknown command #{word}"
    try:
        return Command(name, parser(rest), line)
    except _Invalid as e:
        return f"#{name}: {e}"


def _conflicts(commands: tuple[Command, ...]) -> list[str]:
    errors = []
    for group in _EXCLUSIVE:
        given = list(dict.fromkeys((c.name, c.args) for c in commands if c.name in group))
        if len(given) < 2:
            continue
        names = list(dict.fromkeys(f"#{name}" for name, _ in given))
        if len(names) == 1:
            errors.append(f"{names[0]} given twice with different values")
        else:
            errors.append(f"{' and '.join(names)} contradict each other: give only one")
    return errors


def parse_commands(text: str) -> CommandParse:
    """Split the command block at the top of `text` from the text for the customer.

    `#canned NAME` lines in the block stay in the body (they are expanded
    later) without ending the block.
    """
    lines = text.splitlines(keepends=True)
    commands: list[Command] = []
    errors: list[str] = []
    kept: list[str] = []
    i = 0
    for i, raw in enumerate(lines):  # noqa: B007  (i is the first body line after the loop)
        line = raw.strip()
        parsed = _parse_line(line) if line else None
        if isinstance(parsed, Command):
            commands.append(parsed)
        elif isinstance(parsed, str):
            errors.append(parsed)
        elif not line or _CANNED_LINE.match(line):
            kept.append(raw)
        else:
            break
    else:
        i = len(lines)
    body_lines = kept + lines[i:]
    while body_lines and not body_lines[0].strip():
        body_lines.pop(0)
    found = tuple(commands)
    return CommandParse(found, tuple(errors + _conflicts(found)), "".join(body_lines))
