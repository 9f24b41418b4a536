"""The new text of a plain-text reply: quoted history and signature removed.

The parse stage calls this on every ingested message so an interaction shows
what the sender wrote now, not the thread below it. It is a pure function of
the text. It must never raise, never return an empty string for a non-blank
body, and never let a pattern look at more than a bounded slice of a line
(multi-megabyte quote chains arrive too).
"""

from __future__ import annotations

import re

_SCAN = 400  # characters of a line that any pattern looks at
_HEADER_MAX = 500  # a reply header, joined over up to three lines, is shorter
_FOOTER_MAX = 120  # a mobile footer line is shorter
_BLOCK_LOOKAHEAD = 8  # lines after "From:" searched for Sent/To/Subject
_QUOTE_LOOKAHEAD = 50  # blank lines allowed between a reply header and its quote
_WRAP_MIN = 60  # a quoted line this long may have been wrapped by the client

_LINE_BREAK = re.compile(r"\r\n|\r|\n")

# "-- " (RFC 3676), its trimmed form "--", and the em dash some clients use.
_SIGNATURE = re.compile(r"(?:--|\u2014)[ \t]*$")

_WORDS = r"[\w'\u2019.&-]+(?: [\w'\u2019.&-]+){0,3}"
_MOBILE_FOOTER = re.compile(
    r"[ \t]*(?:"
    rf"Sent from my {_WORDS}"
    r"|Sent from (?:Mail for Windows|Outlook|Yahoo Mail|TypeApp|BlueMail"
    r"|Proton ?Mail|Gmail|AOL|Samsung|Spark|myMail|Edison)\b[^.,;!?<]{0,40}"
    r"|Get Outlook for (?:iOS|Android)"
    rf"|Envoy\u00e9 (?:de|depuis) mon {_WORDS}"
    r"|Envoy\u00e9 \u00e0 partir de Outlook pour (?:iOS|Android)"
    rf"|Von meinem {_WORDS} gesendet"
    rf"|Gesendet von (?:meinem {_WORDS}|Outlook f\u00fcr (?:iOS|Android)"
    r"|Mail f\u00fcr Windows(?: 10)?)"
    rf"|Enviado desde mi {_WORDS}"
    rf"|Enviado do meu {_WORDS}"
    rf"|Verzonden (?:vanaf|met) (?:mijn )?{_WORDS}"
    rf"|Inviato da(?:l mio)? {_WORDS}"
    rf"|Skickat fr\u00e5n min {_WORDS}"
    rf"|Sendt fra min {_WORDS}"
    rf"|\u041e\u0442\u043f\u0440\u0430\u0432\u043b\u0435\u043d\u043e \u0441 {_WORDS}"
    rf"|Wys\u0142ane z {_WORDS}"
    r")[ \t]*(?:<[^<>\s]*>|\([^()\s]*\))?\.?[ \t]*$",
    re.IGNORECASE,
)

# "-----Original Message-----" and its localised and forwarding relatives.
_DELIMITER = re.compile(
    r"[ \t]*(?:[-_=*]{2,}[ \t]*(?:Original Message|Urspr\u00fcngliche Nachricht"
    r"|Message d'origine|Oprindelig (?:besked|meddelelse)|Mensaje original"
    r"|Oorspronkelijk bericht|Messaggio originale|Mensagem original"
    r"|Ursprungligt meddelande|Opprinnelig melding|Alkuper\u00e4inen viesti"
    r"|\u0418\u0441\u0445\u043e\u0434\u043d\u043e\u0435 \u0441\u043e\u043e\u0431\u0449\u0435\u043d\u0438\u0435"
    r"|Oryginalna wiadomo\u015b\u0107|Forwarded message|Weitergeleitete Nachricht"
    r"|Message transf\u00e9r\u00e9|Mensaje reenviado|Doorgestuurd bericht"
    r"|Messaggio inoltrato|Mensagem encaminhada|Vidarebefordrat meddelande"
    r"|Videresendt (?:besked|meddelelse|melding)|Reply message)"
    r"[ \t]*(?:[-_=*]{2,})?|Begin forwarded message:)[ \t]*$",
    re.IGNORECASE,
)

_SEPARATOR = re.compile(r"[ \t]*[-_=*~]{4,}[ \t]*$")

# Header labels of an Outlook-style block, grouped by what they name.
_LABEL = re.compile(
    r"[ \t\u00a0]*\*?(?:"
    r"(?P<from>From|Von|De|Van|Da|Fra|Fr\u00e5n|L\u00e4hett\u00e4j\u00e4|\u041e\u0442|Od"
    r"|Felad\u00f3|Kimden|\u53d1\u4ef6\u4eba|\u5bc4\u4ef6\u8005|\u5dee\u51fa\u4eba)"
    r"|(?P<date>Sent|Date|Gesendet|Datum|Envoy\u00e9(?: le)?|Enviado(?: el)?|Fecha"
    r"|Verzonden|Inviato|Data|Enviada(?: em)?|Skickat|Sendt|Dato|L\u00e4hetetty"
    r"|P\u00e4iv\u00e4m\u00e4\u00e4r\u00e4|\u041e\u0442\u043f\u0440\u0430\u0432\u043b\u0435\u043d\u043e"
    r"|\u0414\u0430\u0442\u0430|Wys\u0142ano|Message du|\u53d1\u9001\u65f6\u95f4"
    r"|\u65e5\u671f|\u5bc4\u4ef6\u65e5\u671f|\u9001\u4fe1\u65e5\u6642)"
    r"|(?P<to>To|An|\u00c0|A|Para|Aan|Til|Till|Vastaanottaja|\u041a\u043e\u043c\u0443|Do"
    r"|C\u00edmzett|Kime|\u6536\u4ef6\u4eba|\u5b9b\u5148)"
    r"|(?P<subject>Subject|Betreff|Objet|Sujet|Asunto|Onderwerp|Oggetto|Assunto"
    r"|\u00c4mne|Emne|Aihe|\u0422\u0435\u043c\u0430|Temat|T\u00e1rgy|Konu"
    r"|\u4e3b\u9898|\u4e3b\u65e8|\u4ef6\u540d)"
    r"|(?P<cc>Cc|Kopie|Copie(?: \u00e0)?|Kopia|\u041a\u043e\u043f\u0438\u044f|M\u00e1solat"
    r"|\u6284\u9001)"
    r")\*?[ \t\u00a0]*[:\uff1a]",
    re.IGNORECASE,
)

# Reply headers: "On <date>, <name> wrote:" and its relatives.
_OPENER = re.compile(
    r"[-\u2013\u2014 \t]*(?:On|Am|Le|El|Op|Il|In data|Em|Den|Dne|Dnia|W dniu)\s"
)
_VERB_AT_END = re.compile(
    r"(?<!\w)(?:wrote|a \u00e9crit|a ecrit|escribi\u00f3|escribio|ha scritto|escreveu"
    r"|kirjoitti|skrev|schrieb|schreef|\u00edrta"
    r"|napisa\u0142(?:\(a\)|a)?|napsal(?:\(a\)|a)?"
    r"|\u043d\u0430\u043f\u0438\u0441\u0430\u043b(?:\(\u0430\)|\u0430)?"
    r"|\u043d\u0430\u043f\u0438\u0441\u0430\u0432(?:\(\u043b\u0430\)|\u043b\u0430)?)"
    r"\s*(?P<end>[:\uff1a]|-{2,})?\s*$",
    re.IGNORECASE,
)
_VERB_IN_MIDDLE = re.compile(r"(?<!\w)(?:schrieb|schreef|skrev)(?!\w)", re.IGNORECASE)
_ADDRESS_COLON = re.compile(r"@[^\s@<>()\[\]]+[>)\]]{0,2}\s*[:\uff1a]\s*$")
_CLOCK = re.compile(r"\d{1,2}:\d{2}")
_DATE_OR_TIME = re.compile(r"\d{1,2}[:.h]\d{2}")
_DIGIT = re.compile(r"\d")
_SENTENCE_END = (".", "!", "?")


def new_text(text: str) -> str:
    """The new text of a plain-text mail body: without quoted history and without the sender's signature. When stripping would leave nothing, return the full text (stripped of surrounding whitespace)."""
    lines = _LINE_BREAK.split(text)
    kept = _new_lines(lines)
    result = "\n".join(lines[i] for i in kept).strip()
    return result or text.strip()


def _new_lines(lines: list[str]) -> list[int]:
    """Indexes of the lines that belong to the new text, in order."""
    kept: list[int] = []
    dropped = False  # a quote was dropped since the last kept non-blank line
    for i, line in enumerate(lines):
        if _is_quoted(line) or _is_wrapped_quote(lines, i):
            dropped = True
            continue
        stop = _stop_at(lines, i)
        if stop is not None:
            _cut(kept, lines, i, labels=stop)
            return kept
        start = _reply_header_start(lines, i)
        if start is not None:
            if not _quote_follows(lines, i + 1):
                _cut(kept, lines, start, labels=False)
                return kept
            _cut(kept, lines, start, labels=False, trim=False)
            dropped = True
            continue
        blank = not line.strip()
        if blank and dropped and kept and not lines[kept[-1]].strip():
            continue
        dropped = dropped and blank
        kept.append(i)
    return kept


def _is_quoted(line: str) -> bool:
    """A ">" line; up to three leading spaces allowed (four make code).

    ">:" alone is not a quote but the end of a header wrapped inside "<addr>".
    """
    head = line[:4].lstrip(" ")
    return head.startswith(">") and not head.startswith(">:")


def _is_wrapped_quote(lines: list[str], i: int) -> bool:
    """An unquoted line between quoted ones that a client wrapped out of a quote."""
    if i == 0 or i + 1 >= len(lines) or not lines[i].strip():
        return False
    above, below = lines[i - 1], lines[i + 1]
    return _is_quoted(above) and len(above) >= _WRAP_MIN and _is_quoted(below)


def _stop_at(lines: list[str], i: int) -> bool | None:
    """Whether everything from line i on is history or signature.

    None: no. False: yes. True: yes, and i starts a header block, so header
    label lines just above it belong to the history too.
    """
    line = lines[i]
    head = line[:_SCAN]
    if _SIGNATURE.match(head) or _DELIMITER.match(head):
        return False
    if len(line) <= _FOOTER_MAX and _MOBILE_FOOTER.match(line):
        return False
    if _is_header_block(lines, i):
        return True
    return None


def _is_header_block(lines: list[str], i: int) -> bool:
    """A "From:" line followed by at least two of Sent/Date, To, Subject, Cc."""
    match = _LABEL.match(lines[i][:_SCAN])
    if match is None or match.lastgroup != "from":
        return False
    kinds = set()
    for line in lines[i + 1 : i + 1 + _BLOCK_LOOKAHEAD]:
        if not line.strip():
            break
        match = _LABEL.match(line[:_SCAN])
        if match is not None:
            kinds.add(match.lastgroup)
    kinds.discard("from")
    return len(kinds) >= 2


def _cut(kept: list[int], lines: list[str], start: int, *, labels: bool, trim: bool = True) -> None:
    """Drop kept lines from start on, then what only announced the cut part."""
    while kept and kept[-1] >= start:
        kept.pop()
    while labels and kept and kept[-1] == start - 1 and _LABEL.match(lines[start - 1][:_SCAN]):
        kept.pop()
        start -= 1
    while trim and kept and (not lines[kept[-1]].strip() or _SEPARATOR.match(lines[kept[-1]][:_SCAN])):
        kept.pop()


def _quote_follows(lines: list[str], j: int) -> bool:
    """Whether the next non-blank line from j on is a ">" quote."""
    for line in lines[j : j + _QUOTE_LOOKAHEAD]:
        if line.strip():
            return _is_quoted(line)
    return False


def _reply_header_start(lines: list[str], end: int) -> int | None:
    """First line of a reply header ending at line end (which may wrap), or None."""
    tail = lines[end][-_SCAN:].rstrip()
    if not tail.endswith((":", "\uff1a", "--")) and not tail.lower().endswith("wrote"):
        return None
    for start in range(end, max(end - 3, -1), -1):
        window = lines[start : end + 1]
        if len(window[0]) > _HEADER_MAX:
            return None
        if start < end and (not window[0].strip() or _is_quoted(window[0])):
            return None
        text = " ".join(line.strip() for line in window)
        if len(text) > _HEADER_MAX:
            return None
        if _looks_like_reply_header(text):
            return _extend_header(lines, start, end)
    return None


def _extend_header(lines: list[str], start: int, end: int) -> int:
    """Take in the lines above that a client wrapped off the header's start."""
    while start > end - 2 and start > 0 and not _OPENER.match(lines[start]):
        above = lines[start - 1].strip()
        if not above or _is_quoted(above) or len(above) > _HEADER_MAX // 2:
            break
        if above.endswith(_SENTENCE_END):
            break
        if not (_OPENER.match(above) or _DIGIT.search(above)):
            break
        start -= 1
    return start


def _looks_like_reply_header(text: str) -> bool:
    """Whether text (one header, joined over its lines) introduces a quote."""
    text = text.lstrip("-\u2013\u2014> \t")
    has_at = "@" in text
    opener = _OPENER.match(text) is not None
    verb = _VERB_AT_END.search(text[-80:])
    if verb is not None:
        if verb.group("end") is None and not has_at:
            return False
        return has_at or _CLOCK.search(text) is not None or (opener and _DIGIT.search(text) is not None)
    if not text.endswith((":", "\uff1a")) or _DIGIT.search(text) is None:
        return False
    if _VERB_IN_MIDDLE.search(text):
        return has_at or opener or _CLOCK.search(text) is not None
    return has_at and _DATE_OR_TIME.search(text) is not None and _ADDRESS_COLON.search(text[-120:]) is not None
