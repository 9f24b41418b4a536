"""A stdlib Message that finds its headers by name in one dict lookup.

The parse and classify stages ask each part for its content type and a few
headers about forty times per message, and the stdlib answers every `get`
by lowering and comparing each header name in turn. This subclass keeps an
index from lowered name to the first header of that name, built on first
use and dropped by every method that changes the headers, and keeps the
content type it computed until then. Answers are exactly the stdlib's (same policy, same
first match); the stdlib offers no such index, hence this class.
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

    # Every way the stdlib changes headers or the default type drops what was
    # cached, after the change (some of them read headers on the way).

    def __setitem__(self, name, val) -> None:
        super().__setitem__(name, val)
        self._forget()

    def __delitem__(self, name) -> None:
        super().__delitem__(name)
        self._forget()

    def set_raw(self, name, value) -> None:
        super().set_raw(name, value)
        self._forget()

    def add_header(self, _name, _value, **_params) -> None:
        super().add_header(_name, _value, **_params)
        self._forget()

    def replace_header(self, _name, _value) -> None:
        super().replace_header(_name, _value)
        self._forget()

    def set_boundary(self, boundary) -> None:
        super().set_boundary(boundary)
        self._forget()

    def set_default_type(self, ctype) -> None:
        super().set_default_type(ctype)
        self._forget()

    def set_param(self, *args, **kwargs) -> None:
        super().set_param(*args, **kwargs)
        self._forget()

    def del_param(self, *args, **kwargs) -> None:
        super().del_param(*args, **kwargs)
        self._forget()

    def set_type(self, *args, **kwargs) -> None:
        super().set_type(*args, **kwargs)
        self._forget()
