"""Header values to text: RFC 2047 encoded words, raw 8-bit bytes, folding.

Written by hand because the stdlib's `email.header.decode_header` is
quadratic in the number of encoded words (it pops from the front of a list),
so a Subject of a few megabytes of encoded words costs minutes of CPU, and it
has no limit on what it returns. This decoder is one regex scan, linear in its
input, and stops after MAX_WORDS encoded words or MAX_CHARS characters of
output: the rest of the header is kept raw, and the caller gets a defect.

RFC 2047 section 6.2: whitespace between two adjacent encoded words is
dropped; adjacent words in the same charset are joined as bytes before
decoding, so a multibyte character split across two words decodes whole.
Charsets are read through their supersets (charsets.py). What comes out
can be stored: no NUL, no lone surrogate.
"""

from __future__ import annotations

import base64
import binascii
import email.header
import re

from maild.ingest.stages.charsets import decode_bytes, storable

MAX_WORDS = 1000  # encoded words decoded per header
MAX_CHARS = 16 * 1024  # characters of a decoded header kept

_FOLD = re.compile(r"\r?\n[ \t]*")
# charset (with an optional RFC 2231 *language), encoding, encoded text.
_WORD = re.compile(r"=\?([^?\s]{1,60})\?([QqBb])\?([^?]*)\?=")
_QP_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # a raw 8-bit byte the stdlib kept as a surrogate


def raw_text(value: object) -> str:
    """A header value as one line of text, even when it arrived as raw 8-bit bytes."""
    if value is None:
        return ""
    if isinstance(value, email.header.Header):
        # compat32 wraps a header with raw 8-bit bytes in a Header of chunks
        # tagged unknown-8bit; for a Header, decode_header only lists those
        # chunks (no encoded-word scan), so this is linear.
        data = b"".join(
            part if isinstance(part, bytes) else part.encode("utf-8", "surrogateescape")
            for part, _ in email.header.decode_header(value)
        )
        value = _eight_bit(data)
    text = str(value)
    if not text.isascii() and _ESCAPED_BYTE.search(text):
        try:
            text = _eight_bit(text.encode("utf-8", "surrogateescape"))
        except UnicodeEncodeError:  # a surrogate that stands for no byte
            pass
    return _FOLD.sub(" ", storable(text))


def _eight_bit(data: bytes) -> str:
    """Raw 8-bit header bytes: UTF-8 when valid, else the usual legacy charsets."""
    return decode_bytes(data, None, [], "header")


def decode(value: object, defects: list[str] | None = None, name: str = "header") -> str:
    """The text of a header: encoded words decoded, whitespace at the ends removed."""
    text = raw_text(value)
    if "=?" not in text:
        return text.strip()[:MAX_CHARS]
    sink: list[str] = [] if defects is None else defects
    return _decode_words(text, sink, name).strip()


def _decode_words(text: str, defects: list[str], name: str) -> str:
    out: list[str] = []
    size = 0
    run_charset: str | None = None
    run: list[bytes] = []
    words = 0
    pos = 0  # end of what has been consumed
    for match in _WORD.finditer(text):
        gap = text[pos : match.start()]
        if gap and (run_charset is None or gap.strip()):
            if run:
                size += _flush(out, run, run_charset, defects, name)
                run, run_charset = [], None
            out.append(gap)
            size += len(gap)
        words += 1
        if words > MAX_WORDS or size > MAX_CHARS:
            defects.append(f"{name}: more than {MAX_WORDS} encoded words or {MAX_CHARS} characters; the rest kept raw")
            break
        charset = match.group(1).split("*", 1)[0].lower()
        data = _word_bytes(match.group(2), match.group(3))
        if data is None:  # not decodable: keep the word as it was sent
            if run:
                size += _flush(out, run, run_charset, defects, name)
                run, run_charset = [], None
            out.append(match.group(0))
            size += len(match.group(0))
            pos = match.end()
            continue
        if run and charset != run_charset:
            size += _flush(out, run, run_charset, defects, name)
            run = []
        run_charset = charset
        run.append(data)
        pos = match.end()
    else:
        match = None
    if run:
        _flush(out, run, run_charset, defects, name)
    out.append(text[pos:] if match is None else text[match.start() :])
    result = "".join(out)
    if len(result) > MAX_CHARS:
        if match is None:
            defects.append(f"{name}: longer than {MAX_CHARS} characters; cut")
        result = result[:MAX_CHARS]
    return result


def _flush(out: list[str], run: list[bytes], charset: str | None, defects: list[str], name: str) -> int:
    decoded = decode_bytes(b"".join(run), charset, defects, name).replace("\x00", "")
    out.append(decoded)
    return len(decoded)


def _word_bytes(encoding: str, encoded: str) -> bytes | None:
    """The bytes an encoded word carries, or None when they cannot be read."""
    try:
        raw = encoded.encode("ascii")
    except UnicodeEncodeError:
        return None
    if encoding in "Bb":
        raw = raw.rstrip(b"=")
        raw += b"=" * (-len(raw) % 4)
        try:
            return base64.b64decode(raw)
        except (binascii.Error, ValueError):
            return None
    return _QP_ESCAPE.sub(lambda m: bytes([int(m.group(1), 16)]), raw.replace(b"_", b" "))
