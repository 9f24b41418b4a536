"""A stdlib Message that finds its headers by name in one dict lookup.

The parse and classify stages ask each part for its content type and a few
headers about forty times per message, and the stdlib answers every `get`
by lowering and comparing each header name in turn. This subclass keeps an
index from lowered name to the first header of that name, built on first
use and dropped by every method that changes the headers, and keeps the
content type it computed until then. Answers are exactly the stdlib's (same
policy, same first match); the stdlib offers no such index, hence this class.
"""

from __future__ import annotations

import email.message
from typing import Any


class Message(email.message.Message):
    """email.message.Message with its header names indexed (see the module docstring)."""

    _headers: list[tuple[str, Any]]  # the stdlib's own list, in order
    _index: dict[str, int] | None = None
    _ctype: str | None = None

    def _forget(self) -> None:
        self._index = None
        self._ctype = None

    def _lookup(self) -> dict[str, int]:
        index = self._index
        if index is None:
            index = {}
            for i, (name, _) in enumerate(self._headers):
                index.setdefault(name.lower(), i)
            self._index = index
        return index

    def get(self, name, failobj=None):
        i = self._lookup().get(name.lower())
        if i is None:
            return failobj
        return self.policy.header_fetch_parse(*self._headers[i])

    def __contains__(self, name) -> bool:
        return name.lower() in self._lookup()

    def get_content_type(self) -> str:
        if self._ctype is None:
            self._ctype = super().get_content_type()
        return self._ctype


# Every way the stdlib changes headers or the default type drops what was cached,
# after the change (some of them read headers on the way).
_CHANGES = ("__setitem__", "__delitem__", "set_raw", "add_header", "replace_header", "set_boundary",
            "set_default_type", "set_param", "del_param", "set_type")


def _forgetting(name: str):
    change = getattr(email.message.Message, name)

    def method(self: Message, *args, **kwargs):
        result = change(self, *args, **kwargs)
        self._forget()
        return result

    method.__name__ = method.__qualname__ = name
    return method


for _name in _CHANGES:
    setattr(Message, _name, _forgetting(_name))
