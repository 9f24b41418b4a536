"""Canned responses: company-endorsed phrasing a rep inserts into a reply by name.

A rep writes a line `#canned NAME`, or `{{canned:NAME}}` inline, as many as the
reply needs; each is replaced by that canned response with its variables
filled in. Expansion is one pass: a canned response never expands another, so
no set of canned responses can loop. A name that does not exist is reported
and its marker left in place, never silently dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# The line form takes the rest of the line as the name, so "#canned my reply"
# is reported as unknown rather than sent to the customer as text.
_MARKER = re.compile(
    r"^[ \t]*#canned[ \t]+(?P<line>\S[^\r\n]*?)[ \t]*(?=\r?$)"
    r"|\{\{\s*canned\s*:\s*(?P<inline>[^{}\s]+)\s*\}\}",
    re.IGNORECASE | re.MULTILINE,
)
_VARIABLE = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class Expanded:
    body: str
    used: tuple[str, ...]  # canned names inserted, in order of first use, each once
    unknown: tuple[str, ...]  # names asked for that do not exist, in order, each once


def _lookup(name: str, canned: Mapping[str, str]) -> str | None:
    """The canned name meant: exact, else the only one equal ignoring case."""
    if name in canned:
        return name
    folded = [key for key in canned if key.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def fill(text: str, variables: Mapping[str, str]) -> str:
    """`text` with each `{{ variable }}` it has a value for replaced; others stay as written."""
    return _VARIABLE.sub(lambda m: str(variables.get(m.group(1), m.group(0))), text)


def expand(body: str, canned: Mapping[str, str], variables: Mapping[str, str]) -> Expanded:
    """Replace every canned marker in `body` by its canned response."""
    used: dict[str, None] = {}
    unknown: dict[str, None] = {}

    def replace(m: re.Match[str]) -> str:
        asked = m.group("line") or m.group("inline")
        name = _lookup(asked, canned)
        if name is None:
            unknown[asked] = None
            return m.group(0)
        used[name] = None
        text = fill(canned[name], variables)
        return text.strip("\r\n") if m.group("line") else text.strip()

    expanded = _MARKER.sub(replace, body)
    return Expanded(expanded, tuple(used), tuple(unknown))
