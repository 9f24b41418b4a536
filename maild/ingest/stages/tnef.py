"""winmail.dat (application/ms-tnef): Outlook's wrapper around a message's files.

A customer whose Outlook sends rich text mails one opaque winmail.dat; the rep
needs the files and the text inside. tnefparse reads the format, but trusts
every count in it: it copies the rest of the input for every object it reads,
loops as many times as a MAPI property count says (up to 2**32, also when the
data ran out long before), and builds as many values as a multi-value count
says (a 29-byte file asks for two billion). So before handing it the data,
this module walks the same structure the same way (objects, MAPI properties,
recipient rows, multi-values, attached messages; values read with tnefparse's
own parse_property, so it stops where tnefparse stops) and refuses a file in
which a count cannot fit in the bytes that remain, or whose reading would
cost more than a fixed budget: such a file is kept as it came.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from tnefparse import TNEF
from tnefparse.codepage import Codepage
from tnefparse.mapi import GUID_EXISTS_FLAG, IMESSAGE_SIG, MULTI_VALUE_FLAG, parse_property
from tnefparse.util import guid

from maild.ingest.stages.charsets import storable

logging.getLogger("tnefparse").setLevel(logging.ERROR)

_SIGNATURE = 0x223E9F78
_COPY_BUDGET = 256 * 1024 * 1024  # bytes tnefparse may copy while reading one file
_MAX_OBJECTS = 20_000
_MAX_VALUES = 100_000  # MAPI values (properties, multi-values, strings) in one file
_MAX_DEPTH = 8  # messages attached in attached messages

_LVL_ATTACHMENT = 0x02
_ATT_ATTACH_REND_DATA, _ATT_MAPI_PROPS, _ATT_RECIP_TABLE, _ATT_ATTACHMENT = 0x9002, 0x9003, 0x9004, 0x9005
_ATT_OEM_CODEPAGE = 0x9007
_PTYPE_CLASS, _PTYPE_STRING = 0x1, 0x7
_ATTACH_DATA_OBJ = 0x3701
_SHORT, _BOOLEAN = 0x0002, 0x000B
_BYTES_TYPES = (0x0000, 0x000D, 0x0102)  # unspecified, object, binary: values read as bytes
_STRINGS = (0x0000, 0x000D, 0x0102, 0x001E, 0x001F)  # values with a count and a length each
# Smallest size of one value of a type; a string or binary value takes at least its length.
_VALUE_SIZE = {0x0002: 2, 0x000B: 2, 0x0003: 4, 0x0004: 4, 0x000A: 4, 0x0005: 8, 0x0006: 8, 0x0007: 8,
               0x0014: 8, 0x0040: 8, 0x0048: 16}

_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")


class TnefError(ValueError):
    """The data is no TNEF maild can read."""


@dataclass(frozen=True)
class TnefContent:
    files: tuple[tuple[str, bytes], ...]  # (name, data)
    text: str | None
    html: str | None


class _Cost:
    """What reading one file (with the messages attached in it) would cost tnefparse."""

    def __init__(self) -> None:
        self.copied = self.objects = self.values = 0

    def charge(self, copied: int = 0, objects: int = 0, values: int = 0) -> None:
        self.copied += copied
        self.objects += objects
        self.values += values
        if self.copied > _COPY_BUDGET or self.objects > _MAX_OBJECTS:
            raise TnefError("too many objects to decode")
        if self.values > _MAX_VALUES:
            raise TnefError(f"more than {_MAX_VALUES} MAPI values")


def _check_cost(data: bytes, cost: _Cost | None = None, depth: int = 0) -> None:
    """Walk the objects as tnefparse's TNEF() will, checking every count on the way."""
    cost = cost or _Cost()
    if len(data) < 6 or _U32.unpack_from(data)[0] != _SIGNATURE:
        raise TnefError("no TNEF signature")
    if depth > _MAX_DEPTH:
        raise TnefError(f"messages attached more than {_MAX_DEPTH} deep")
    offset, codepage, attachment = 6, None, False
    attachment_codepage: str | None = None
    try:
        while offset + 12 < len(data):
            level, (name,), (kind,) = data[offset], _U16.unpack_from(data, offset + 1), _U16.unpack_from(data, offset + 3)
            size = min(len(data) - offset, _U32.unpack_from(data, offset + 5)[0] + 11)
            cost.charge(copied=len(data) - offset, objects=1)
            body = data[offset + 9 : offset + size - 2]
            offset += size
            if name == _ATT_ATTACH_REND_DATA:
                attachment, attachment_codepage = True, codepage
            if level == _LVL_ATTACHMENT:
                if not attachment:
                    raise TnefError("attachment data before its attachment")
                if name == _ATT_ATTACHMENT:
                    for embedded in _check_mapi(body, 0, attachment_codepage, cost)[1]:
                        _check_cost(embedded, cost, depth + 1)
            elif name == _ATT_MAPI_PROPS:
                _check_mapi(body, 0, codepage, cost)
            elif name == _ATT_OEM_CODEPAGE:
                codepage = Codepage(_U32.unpack_from(body)[0]).codepage()
            elif name == _ATT_RECIP_TABLE and kind not in (_PTYPE_CLASS, _PTYPE_STRING):
                _check_rows(body, codepage, cost)
    except struct.error:
        raise TnefError("truncated") from None


def _check_rows(body: bytes, codepage: str | None, cost: _Cost) -> None:
    (rows,) = _U32.unpack_from(body)
    if rows > (len(body) - 4) // 4:  # a row takes at least its 4-byte property count
        raise TnefError(f"{rows} recipient rows in {len(body)} bytes")
    offset = 4
    for _ in range(rows):
        offset = _check_mapi(body, offset, codepage, cost)[0]


class _At:
    """The offset tnefparse's decode_mapi has reached, moved exactly where it moves its own."""

    def __init__(self, offset: int) -> None:
        self.offset = offset


def _check_mapi(data: bytes, offset: int, codepage: str | None, cost: _Cost) -> tuple[int, list[bytes]]:
    """tnefparse's decode_mapi with every count checked against the bytes left: the offset
    where it stops (where tnefparse's stops: the next recipient row starts there), and the
    attached messages it found."""
    (count,) = _U32.unpack_from(data, offset)
    at = _At(offset + 4)
    if count > max(len(data) - at.offset, 0) // 4:  # a property's type and id alone take 4 bytes
        raise TnefError(f"{count} MAPI properties in {len(data) - at.offset} bytes")
    embedded: list[bytes] = []
    try:
        for _ in range(count):
            if at.offset >= len(data):
                break  # tnefparse skips the rest
            _check_property(data, at, codepage, cost, embedded)
    except TnefError:
        raise
    except Exception:  # where tnefparse's decode_mapi stops reading these properties
        pass
    return at.offset, embedded


def _readable(data: bytes, offset: int) -> int:
    """How many values tnefparse can read from offset on before a length runs past the end."""
    return max(len(data) - offset, 0) // 4 + 1


def _check_property(data: bytes, at: _At, codepage: str | None, cost: _Cost, embedded: list[bytes]) -> None:
    """One property, read as tnefparse reads it."""
    (kind,) = _U16.unpack_from(data, at.offset)
    at.offset += 2
    (name,) = _U16.unpack_from(data, at.offset)
    at.offset += 2
    if name >= GUID_EXISTS_FLAG:
        guid(data, at.offset)
        at.offset += 16
        (id_kind,) = _U32.unpack_from(data, at.offset)
        at.offset += 4
        (length,) = _U32.unpack_from(data, at.offset)
        at.offset += 4
        if id_kind != 0:
            length += -length % 4
            data[at.offset : at.offset + length].decode("utf-16")
            at.offset += length
    values = None
    if kind & MULTI_VALUE_FLAG:
        kind ^= MULTI_VALUE_FLAG
        (values,) = _U32.unpack_from(data, at.offset)
        at.offset += 4
        # A value of fixed size read past the end is empty, not an error: tnefparse
        # would make all of them. A string or binary value stops it there (its
        # length cannot be read), and an unknown type at the first value.
        if kind in _VALUE_SIZE and values * _VALUE_SIZE[kind] > len(data) - at.offset:
            raise TnefError(f"{values} values of MAPI type {kind:#06x} in {len(data) - at.offset} bytes")
    if not values and kind in _STRINGS:  # parse_property reads a count of strings, a length each
        (strings,) = _U32.unpack_from(data, at.offset)
        cost.charge(values=min(strings, _readable(data, at.offset + 4)))
    cost.charge(values=min(values or 1, _readable(data, at.offset)))
    for _ in range(values or 1):
        value, at.offset = parse_property(data, at.offset, name, kind, codepage, values)
        if name == _ATTACH_DATA_OBJ and kind in _BYTES_TYPES:
            joined = b"".join(v.rstrip(b"\x00") for v in value)
            if joined.startswith(IMESSAGE_SIG):
                embedded.append(joined[len(IMESSAGE_SIG) :])
    if (values or 1) % 2 and kind in (_SHORT, _BOOLEAN):
        at.offset += 2


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            return storable(value.decode("utf-8"))
        except UnicodeDecodeError:
            return storable(value.decode("cp1252", errors="replace"))
    return storable(str(value))


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
