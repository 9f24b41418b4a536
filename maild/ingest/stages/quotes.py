"""The new text of a plain-text reply: quoted history and signature removed.

The parse stage calls this on every ingested message so an interaction shows
what the sender wrote now, not the thread below it. It is a pure function of
the text. It must never raise, never return an empty string for a non-blank
body, and never let a pattern look at more than a bounded slice of a line
(multi-megabyte quote chains arrive too).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

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
    rf"|Envoyé (?:de|depuis) mon {_WORDS}"
    r"|Envoyé à partir de Outlook pour (?:iOS|Android)"
    rf"|Von meinem {_WORDS} gesendet"
    rf"|Gesendet von (?:meinem {_WORDS}|Outlook für (?:iOS|Android)"
    r"|Mail für Windows(?: 10)?)"
    rf"|Enviado desde mi {_WORDS}"
    rf"|Enviado do meu {_WORDS}"
    rf"|Verzonden (?:vanaf|met) (?:mijn )?{_WORDS}"
    rf"|Inviato da(?:l mio)? {_WORDS}"
    rf"|Skickat från min {_WORDS}"
    rf"|Sendt fra min {_WORDS}"
    rf"|Отправлено с {_WORDS}"
    rf"|Wysłane z {_WORDS}"
    r")[ \t]*(?:<[^<>\s]*>|\([^()\s]*\))?\.?[ \t]*$",
    re.IGNORECASE,
)

# "-----Original Message-----" and its localised and forwarding relatives.
_DELIMITER = re.compile(
    r"[ \t]*(?:[-_=*]{2,}[ \t]*(?:Original Message|Ursprüngliche Nachricht"
    r"|Message d'origine|Oprindelig (?:besked|meddelelse)|Mensaje original"
    r"|Oorspronkelijk bericht|Messaggio originale|Mensagem original"
    r"|Ursprungligt meddelande|Opprinnelig melding|Alkuperäinen viesti"
    r"|Исходное сообщение|Oryginalna wiadomość|Forwarded message|Weitergeleitete Nachricht"
    r"|Message transféré|Mensaje reenviado|Doorgestuurd bericht"
    r"|Messaggio inoltrato|Mensagem encaminhada|Vidarebefordrat meddelande"
    r"|Videresendt (?:besked|meddelelse|melding)|Reply message)"
    r"[ \t]*(?:[-_=*]{2,})?|Begin forwarded message:)[ \t]*$",
    re.IGNORECASE,
)

_SEPARATOR = re.compile(r"[ \t]*[-_=*~]{4,}[ \t]*$")

# Header labels of an Outlook-style block, grouped by what they name.
_LABEL = re.compile(
    r"[ \t\u00a0]*\*?(?:"
    r"(?P<from>From|Von|De|Van|Da|Fra|Från|Lähettäjä|От|Od|Feladó|Kimden"
    r"|发件人|寄件者|差出人)"
    r"|(?P<date>Sent|Date|Gesendet|Datum|Envoyé(?: le)?|Enviado(?: el)?|Fecha"
    r"|Verzonden|Inviato|Data|Enviada(?: em)?|Skickat|Sendt|Dato|Lähetetty"
    r"|Päivämäärä|Отправлено|Дата|Wysłano|Message du|发送时间|日期|寄件日期|送信日時)"
    r"|(?P<to>To|An|À|A|Para|Aan|Til|Till|Vastaanottaja|Кому|Do|Címzett|Kime"
    r"|收件人|宛先)"
    r"|(?P<subject>Subject|Betreff|Objet|Sujet|Asunto|Onderwerp|Oggetto|Assunto"
    r"|Ämne|Emne|Aihe|Тема|Temat|Tárgy|Konu|主题|主旨|件名)"
    r"|(?P<cc>Cc|Kopie|Copie(?: à)?|Kopia|Копия|Másolat|抄送)"
    r")\*?[ \t\u00a0]*[:\uff1a]",
    re.IGNORECASE,
)

# Reply headers: "On <date>, <name> wrote:" and its relatives.
_OPENER = re.compile(
    r"[-\u2013\u2014 \t]*(?:On|Am|Le|El|Op|Il|In data|Em|Den|Dne|Dnia|W dniu)\s"
)
_VERB_AT_END = re.compile(
    r"(?<!\w)(?:wrote|a\s+écrit|a\s+ecrit|escribió|escribio|ha\s+scritto|escreveu"
    r"|kirjoitti|skrev|schrieb|schreef|írta"
    r"|napisał(?:\(a\)|a)?|napsal(?:\(a\)|a)?|написал(?:\(а\)|а)?|написав(?:\(ла\)|ла)?)"
    r"\s*(?P<end>[:\uff1a]|-{2,})?\s*$",
    re.IGNORECASE,
)
_VERB_IN_MIDDLE = re.compile(r"(?<!\w)(?:schrieb|schreef|skrev)(?!\w)", re.IGNORECASE)
_ADDRESS_COLON = re.compile(r"@[^\s@<>()\[\]]+[>)\]]{0,2}\s*[:\uff1a]\s*$")
_CLOCK = re.compile(r"\d{1,2}:\d{2}")
_DATE_OR_TIME = re.compile(r"\d{1,2}[:.h]\d{2}")
_DIGIT = re.compile(r"\d")
_SENTENCE_END = (".", "!", "?")


def new_text(text: str, own_names: Iterable[str] = ()) -> str:
    """The new text of a plain-text mail body: without quoted history and without the sender's signature. When stripping would leave nothing, return the full text (stripped of surrounding whitespace).

    own_names: our mailboxes' addresses and display names; an attribution that
    names one ("On Sun, ACME Support wrote:") needs no date or address to count.
    """
    lines = _LINE_BREAK.split(text)
    own = tuple(n.strip().lower() for n in own_names if len(n.strip()) >= 3)
    kept = _new_lines(lines, own)
    result = "\n".join(lines[i] for i in kept).strip()
    return result or text.strip()


def _new_lines(lines: list[str], own: tuple[str, ...] = ()) -> list[int]:
    """Indexes of the lines that belong to the new text, in order."""
    kept: list[int] = []
    dropped = False  # a quote was dropped since the last kept non-blank line
    for i, line in enumerate(lines):
        if _is_quoted(line) or _is_wrapped_quote(lines, i):
            dropped = True
            continue
        block = _is_header_block(lines, i)
        if block or _ends_new_text(line):
            _cut(kept, lines, i, labels=block)
            return kept
        start = _reply_header_start(lines, i, own)
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

    A line starting ">:" is no quote but the end of a header wrapped in "<addr>".
    """
    head = line[:4].lstrip(" ")
    return head.startswith(">") and not head.startswith(">:")


def _is_wrapped_quote(lines: list[str], i: int) -> bool:
    """An unquoted line between quoted ones that a client wrapped out of a quote."""
    if i == 0 or i + 1 >= len(lines) or not lines[i].strip():
        return False
    above, below = lines[i - 1], lines[i + 1]
    return _is_quoted(above) and len(above) >= _WRAP_MIN and _is_quoted(below)


def _ends_new_text(line: str) -> bool:
    """A signature delimiter, a mobile footer or an "Original Message" line."""
    head = line[:_SCAN]
    if _SIGNATURE.match(head) or _DELIMITER.match(head):
        return True
    return len(line) <= _FOOTER_MAX and _MOBILE_FOOTER.match(line) is not None


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
    """Drop kept lines from start on, then what only announced the cut part.

    labels: header lines (Date:, ...) just above start go too. trim: so do
    blank and separator lines (____, ====) that end what is left.
    """
    while kept and kept[-1] >= start:
        kept.pop()
    while labels and kept and kept[-1] == start - 1 and _LABEL.match(lines[start - 1][:_SCAN]):
        kept.pop()
        start -= 1
    while trim and kept and _is_blank_or_separator(lines[kept[-1]]):
        kept.pop()


def _is_blank_or_separator(line: str) -> bool:
    return not line.strip() or _SEPARATOR.match(line[:_SCAN]) is not None


def _quote_follows(lines: list[str], j: int) -> bool:
    """Whether the next non-blank line from j on is a ">" quote."""
    for line in lines[j : j + _QUOTE_LOOKAHEAD]:
        if line.strip():
            return _is_quoted(line)
    return False


def _reply_header_start(lines: list[str], end: int, own: tuple[str, ...] = ()) -> int | None:
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
        if _looks_like_reply_header(text, own):
            return _extend_header(lines, start, end)
    return None


def _extend_header(lines: list[str], start: int, end: int) -> int:
    """Take in the lines above that a client wrapped off the header's start.

    Up to the header's third line: to an opener ("On", "Am", ...) if there is
    one, else one line if it carries the date (Finnish, Russian headers).
    """
    if _OPENER.match(lines[start]):
        return start
    above = []
    for k in range(start - 1, max(end - 3, -1), -1):
        line = lines[k].strip()
        if not line or _is_quoted(line) or len(line) > _HEADER_MAX // 2:
            break
        if line.endswith(_SENTENCE_END):
            break
        if _OPENER.match(line):
            return k
        above.append(k)
    if above and _DIGIT.search(lines[above[0]]):
        return above[0]
    return start


def _looks_like_reply_header(text: str, own: tuple[str, ...] = ()) -> bool:
    """Whether text (one header, joined over its lines) introduces a quote."""
    text = text.lstrip("-\u2013\u2014> \t")
    has_at = "@" in text
    opener = _OPENER.match(text) is not None
    verb = _VERB_AT_END.search(text[-80:])
    has_clock = _CLOCK.search(text) is not None
    has_digit = _DIGIT.search(text) is not None
    if verb is not None:  # "... wrote:", "... a écrit :", "... napisał(a):"
        if verb.group("end") is None:  # a bare "wrote" needs an address
            return has_at
        return has_at or has_clock or (opener and has_digit) or _names_own(text, own)
    if not text.endswith((":", "\uff1a")) or not has_digit:
        return False
    if _VERB_IN_MIDDLE.search(text):  # "Am <date> schrieb <name>:"
        return has_at or opener or has_clock
    # Gmail in some locales: "<date>, <time>, <name> <addr>:"
    if not has_at or _DATE_OR_TIME.search(text) is None:
        return False
    return _ADDRESS_COLON.search(text[-120:]) is not None


def _names_own(text: str, own: tuple[str, ...]) -> bool:
    """Whether a header names one of our own mailboxes or their display names."""
    if not own:
        return False
    lowered = text.lower()
    return any(name in lowered for name in own)
