"""Bytes to text for mail that lies about its charset.

Mail declares GB2312 and sends GBK, declares ISO-8859-1 and sends Windows
quotes, declares Shift_JIS and sends NEC extensions. Decoding with the
declared name then fails or yields U+FFFD. This module decodes with the
superset each label is used for in practice (as WHATWG's encoding standard and
mail clients do), detects ISO-2022-JP sent without a label, and falls back to
charset_normalizer's guess when nothing fits. It never raises; every guess and
every replacement is recorded as a defect. A label that names one of Python's
codecs that are no text encodings (zlib, base64, hex, rot13, uu, bz2: bytes to
bytes) or that read no mail text (undefined, idna, punycode) counts as unknown.
What it returns can be stored: no NUL (PostgreSQL text refuses it) and no lone
surrogate (no database encodes one; UTF-7 and the escape codecs make them).
"""

from __future__ import annotations

import codecs
import re

from charset_normalizer import from_bytes

# Declared label -> the codec that reads what senders really use that label for.
SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "cp936": "gb18030",
    "euc-cn": "gb18030",
    "iso-8859-1": "cp1252",
    "latin-1": "cp1252",
    "latin1": "cp1252",
    "l1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "ansi_x3.4-1968": "cp1252",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "ms_kanji": "cp932",
    "euc-kr": "cp949",
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "ksc5601": "cp949",
    "big5": "big5hkscs",
    "x-big5": "big5hkscs",
    "iso-2022-jp": "iso2022_jp_ext",
    "csiso2022jp": "iso2022_jp_ext",
    "unicode-1-1-utf-7": "utf-7",
    "utf8": "utf-8",
}

# Text codecs that no mail is written in: they fail on any ordinary text.
_NOT_CHARSETS = frozenset({"undefined", "idna", "punycode"})
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
_GUESS_BYTES = 64 * 1024  # what charset_normalizer looks at for a guess
_ESC_JIS = (b"\x1b$B", b"\x1b$@", b"\x1b(J", b"\x1b(B", b"\x1b$(D")


def codec_for(charset: str | None) -> str | None:
    """The Python codec to read text labelled `charset` with, or None when unknown."""
    if not charset:
        return None
    name = charset.strip().strip("\"'").lower()
    name = SUPERSETS.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    codec = info.name
    if not info._is_text_encoding or codec in _NOT_CHARSETS:  # zlib, base64, hex, ...: bytes to bytes
        return None
    if codec in ("iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_3"):
        return "iso2022_jp_ext"  # ESC ( I half-width katakana, as Outlook sends it
    return codec


def storable(text: str) -> str:
    """text without NUL characters, each lone surrogate replaced by U+FFFD."""
    if _UNSTORABLE.search(text) is None:
        return text
    return _UNSTORABLE.sub(lambda m: "" if m.group() == "\x00" else "\ufffd", text)


def looks_iso2022jp(data: bytes) -> bool:
    """7-bit data with ISO-2022-JP escape sequences: Japanese mail sent without a charset."""
    return b"\x1b" in data and any(esc in data for esc in _ESC_JIS) and max(data, default=0) < 0x80


def decode_bytes(data: bytes, charset: str | None, defects: list[str], what: str = "body") -> str:
    """Text of `data` labelled `charset` (None when unlabelled), storable. Never raises.

    The declared charset's superset first; then ISO-2022-JP when its escapes
    are there, UTF-8, and for unlabelled data Windows-1252 (what unlabelled
    8-bit mail nearly always is). Data whose label is unknown or wrong gets
    charset_normalizer's guess when there is enough of it to guess from.
    """
    return storable(_decode(data, charset, defects, what))


def _decode(data: bytes, charset: str | None, defects: list[str], what: str) -> str:
    if not data:
        return ""
    codec = codec_for(charset)
    if charset and codec is None:
        defects.append(f"{what}: unknown charset {charset[:40]!r}")
    if codec is not None:
        try:
            return data.decode(codec)
        except (UnicodeError, LookupError):  # not only UnicodeDecodeError: some codecs raise their own
            defects.append(f"{what}: not valid {charset[:40]!r}" if charset else f"{what}: not valid {codec}")
    if looks_iso2022jp(data):
        try:
            return data.decode("iso2022_jp_ext")
        except UnicodeDecodeError:
            pass
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if not charset:
        try:
            return data.decode("cp1252")
        except UnicodeDecodeError:
            pass
    return _guess(data, codec, defects, what)


_GUESS_MIN = 64  # bytes: shorter text gives charset_normalizer too little to go on


def _guess(data: bytes, declared: str | None, defects: list[str], what: str) -> str:
    """charset_normalizer's best guess, else the declared codec (or Windows-1252) with replacements."""
    best = None
    if len(data) >= _GUESS_MIN:
        try:
            best = from_bytes(data[:_GUESS_BYTES]).best()
        except Exception:  # a detector bug must not lose the message
            best = None
    if best is not None and best.encoding:
        try:
            text = data.decode(best.encoding)
        except (UnicodeDecodeError, LookupError):
            text = None
        if text is not None:
            defects.append(f"{what}: charset guessed as {best.encoding}")
            return text
    fallback = declared or "cp1252"
    defects.append(f"{what}: undecodable bytes replaced ({fallback})")
    try:
        return data.decode(fallback, errors="replace")
    except (UnicodeError, LookupError):  # a codec without the "replace" handler
        return data.decode("cp1252", errors="replace")
