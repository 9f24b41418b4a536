"""winmail.dat (application/ms-tnef): Outlook's wrapper around a message's files.

A customer whose Outlook sends rich text mails one opaque winmail.dat; the rep
needs the files and the text inside. tnefparse reads the format. It copies the
rest of the input for every object it reads, so before handing it the data
this module walks the object headers itself and refuses input whose copying
would cost more than a fixed budget: such a file is kept as it came.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from tnefparse import TNEF

logging.getLogger("tnefparse").setLevel(logging.ERROR)

_SIGNATURE = 0x223E9F78
_COPY_BUDGET = 256 * 1024 * 1024  # bytes tnefparse may copy while reading one file
_MAX_OBJECTS = 20_000


class TnefError(ValueError):
    """The data is no TNEF maild can read."""


@dataclass(frozen=True)
class TnefContent:
    files: tuple[tuple[str, bytes], ...]  # (name, data)
    text: str | None
    html: str | None


def _check_cost(data: bytes) -> None:
    if len(data) < 6 or struct.unpack_from("<I", data)[0] != _SIGNATURE:
        raise TnefError("no TNEF signature")
    offset, cost, count = 6, 0, 0
    while offset + 12 < len(data):
        (length,) = struct.unpack_from("<I", data, offset + 5)
        cost += len(data) - offset
        count += 1
        if cost > _COPY_BUDGET or count > _MAX_OBJECTS:
            raise TnefError("too many objects to decode")
        offset += min(len(data) - offset, length + 11)


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return value.decode("cp1252", errors="replace")
    return str(value)


def read_tnef(data: bytes) -> TnefContent:
    """The files and body inside a winmail.dat; TnefError when it cannot be read."""
    _check_cost(data)
    try:
        tnef = TNEF(data, do_checksum=False)
        files = []
        for n, att in enumerate(tnef.attachments, 1):
            name = att.long_filename() or att.name or f"attachment-{n}"
            payload = att.data if isinstance(att.data, bytes) else b""
            files.append((_text(name) or f"attachment-{n}", payload))
        text, html = _text(tnef.body), _text(tnef.htmlbody)
    except Exception as exc:  # a damaged file: the caller keeps it as it came
        raise TnefError(f"{type(exc).__name__}: {str(exc)[:100]}") from None
    return TnefContent(tuple(files), text.rstrip("\x00") if text else None, html.rstrip("\x00") if html else None)
