"""Classify stage: is this mail automatic, a bounce, list traffic or our own?

It exists so that maild never answers a machine and never opens an issue for
one. It is pure: it reads the parsed message and its arguments only, and it
must never raise on hostile input, send, store or look anything up.
"""

from __future__ import annotations

import email.message
import re
from dataclasses import dataclass
from email.utils import collapse_rfc2231_value

from maild.ingest.stages import headers
from maild.ingest.stages.parts import raw_payload
from maild.ingest.stages.records import Bounce, Classification

Message = email.message.Message

_MAX_PARTS = 64  # MIME parts looked at; a report keeps its parts near the top
_MAX_TEXT = 64 * 1024  # bytes of any one part read as text


@dataclass(frozen=True)
class OwnMail:
    addresses: frozenset[str]  # our mailbox addresses and aliases, lowercased
    message_id_domain: str | None  # the domain part of Message-IDs we generate, e.g. "maild.acme.test"
    names: frozenset[str] = frozenset()  # our mailboxes' display names (replies quote them)


def classify(message: Message, sender: str | None, own: OwnMail) -> Classification:
    sender = (sender or "").strip().lower()
    parts = _parts(message)
    bounce, auto = _report(message, parts)
    if bounce is None and auto is None:
        bounce = _non_delivery(message, parts, sender)
    if bounce is not None:
        auto = f"bounce: {bounce.kind}"
    return Classification(
        auto=auto or _auto_reason(message, sender),
        bounce=bounce,
        mailing_list=_mailing_list(message),
        own_mail=_own_mail(message, sender, own),
        probe=_header(message, "X-Maild-Probe")[:200] or None,  # a self-test probe, if signed (pipeline)
    )


# --- reading headers and parts: never raises, always str ---------------------


def _decode(value: object) -> str:
    """A header value as text: plain, RFC 2047 encoded words, or a raw 8-bit Header.

    Linear and capped (headers.py): the stdlib's decoder is quadratic in the
    number of encoded words, which a hostile Subject exploits."""
    return headers.decode(value).replace("\x00", "").strip()


def _bytes_text(data: bytes, charset: str | None) -> str:
    for name in (charset, "utf-8"):
        if name and name != "unknown-8bit":
            try:
                return data.decode(name)
            except (LookupError, ValueError):
                pass
    return data.decode("latin-1")


def _headers(message: Message, name: str) -> list[str]:
    return [_decode(v) for v in message.get_all(name) or ()]


def _header(message: Message, name: str) -> str:
    """The first copy of a header, decoded (the others are not read)."""
    value = message.get(name)
    return "" if value is None else _decode(value)


def _message_id(value: str) -> str | None:
    found = re.search(r"<\s*([^<>\s]+)\s*>", value)
    return (found.group(1) if found else value.strip("<> \t")) or None


def _local_part(address: str) -> str:
    return address.rpartition("@")[0] if "@" in address else address


def _parts(message: Message) -> list[Message]:
    """The message and its descendants, breadth first, not entering attached messages."""
    found: list[Message] = []
    todo = [message]
    while todo and len(found) < _MAX_PARTS:
        part = todo.pop(0)
        found.append(part)
        # is_multipart() before get_payload(): on a leaf, get_payload() decodes
        # 8-bit text with the declared charset, which may raise for a hostile one.
        if part.get_content_maintype() != "message" and part.is_multipart():
            payload = part.get_payload()
            todo.extend(p for p in payload if isinstance(p, Message))
    return found


def _text(part: Message) -> str:
    payload = None if part.is_multipart() else part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    try:
        charset = part.get_content_charset()
    except (LookupError, ValueError, TypeError):
        charset = None
    return _bytes_text(payload[:_MAX_TEXT], charset)


def _attached(part: Message) -> Message | None:
    """The message inside a message/rfc822 or text/rfc822-headers part."""
    if part.is_multipart():
        payload = part.get_payload()
        return payload[0] if isinstance(payload, list) and payload and isinstance(payload[0], Message) else None
    text = _text(part)  # the bytes, decoded without trusting the declared charset to work
    return email.message_from_string(text) if text.strip() else None


# --- multipart/report: DSN (RFC 3464), ARF (RFC 5965), MDN (RFC 8098) ---------

_RETURNED = ("message/rfc822", "text/rfc822-headers", "text/rfc822-header", "message/rfc822-headers")
_RETURNED_MARKER = re.compile(r"^Content-Type:[ \t]*(?:message/rfc822|text/rfc822-headers?)", re.I | re.M)
_EMBEDDED_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*(?:\r?\n[ \t]+)?<?([^\s<>]+@[^\s<>]+?)>?[ \t\r]*$", re.I | re.M)
_FIELD = re.compile(r"^([A-Za-z][\w-]*):[ \t]*(.*(?:\n[ \t]+.*)*)", re.M)


def _report(message: Message, parts: list[Message]) -> tuple[Bounce | None, str | None]:
    """A report recognised by its structure, and the auto reason when it is no bounce."""
    types = {p.get_content_type() for p in parts}
    kinds = {_report_type(p) for p in parts if p.get_content_type() == "multipart/report"}
    if "message/feedback-report" in types or "feedback-report" in kinds or _is_jmrp(parts):
        return Bounce("feedback-report", _returned_id(message, parts), _arf_recipients(parts)), None
    if _header(message, "X-Apple-Unsubscribe").lower() == "true":  # Apple Mail's one-tap opt-out
        return Bounce("feedback-report", None), None
    if "message/disposition-notification" in types or "disposition-notification" in kinds:
        return None, "mdn"
    status_parts = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    if not status_parts and "delivery-status" not in kinds:
        return None, None
    fields = [block for p in status_parts for block in _field_blocks(p)]
    failed = [f for f in fields if _failed(f)]
    if fields and not failed and any(_action(f) in ("delivered", "relayed", "expanded") for f in fields):
        return None, "delivery-status: delivered"
    recipients = tuple(dict.fromkeys(r for r in map(_recipient, failed) if r))
    status = next((f["status"].split()[0] for f in failed if f.get("status", "").strip()), None)
    return Bounce("dsn", _returned_id(message, parts) or _body_id(message, parts), recipients, status), None


def _report_type(part: Message) -> str:
    value = part.get_param("report-type") or ""
    return str(collapse_rfc2231_value(value) if isinstance(value, tuple) else value).strip().lower()


def _field_blocks(part: Message) -> list[dict[str, str]]:
    """Field blocks of a report part, names lowercased (compat32 parses them as Messages)."""
    payload = raw_payload(part)
    if isinstance(payload, list):
        return [{k.lower(): _decode(v) for k, v in b.items()} for b in payload if isinstance(b, Message)]
    blocks = re.split(r"\r?\n[ \t\r]*\n", _text(part))
    return [{k.lower(): v.strip() for k, v in _FIELD.findall(block)} for block in blocks]


def _action(fields: dict[str, str]) -> str:
    return next(iter(fields.get("action", "").lower().split()), "")


def _failed(fields: dict[str, str]) -> bool:
    """A per-recipient block that reports a failure or a delay (not delivered/relayed)."""
    if not (fields.get("final-recipient") or fields.get("original-recipient")):
        return False
    if _action(fields):
        return _action(fields) in ("failed", "failure", "delayed")
    return fields.get("status", "").strip()[:1] in ("4", "5")


def _recipient(fields: dict[str, str]) -> str | None:
    for name in ("original-recipient", "final-recipient", "x-actual-recipient"):
        value = fields.get(name, "")
        address = (value.partition(";")[2] or value).strip().strip("<>").strip().lower()
        if "@" in address:
            return address
    return None


def _returned_id(message: Message, parts: list[Message]) -> str | None:
    """Message-ID of the returned original: in an attached message or header block."""
    for part in parts:
        kind, payload, mid = part.get_content_type(), raw_payload(part), None
        attached = _attached(part) if kind in _RETURNED and part is not message else None
        if attached is not None:
            mid = _message_id(_header(attached, "Message-ID"))
            mid = mid or _embedded_id("\n".join(_text(p) for p in _parts(attached)))
        elif kind == "message/delivery-status" and isinstance(payload, list):
            # a lost boundary leaves the returned headers as one more field block
            blocks = [b for b in payload[1:] if isinstance(b, Message) and b.get("Message-ID")]
            mid = next((_message_id(_header(b, "Message-ID")) for b in blocks), None)
        elif part.get_content_maintype() in ("multipart", "message") and isinstance(payload, str):
            marker = _RETURNED_MARKER.search(payload[:_MAX_TEXT])  # a lost boundary: read the raw text
            mid = _embedded_id(payload[marker.end() : _MAX_TEXT]) if marker else None
        if mid:
            return mid
    return None


def _embedded_id(text: str) -> str | None:
    found = _EMBEDDED_ID.search(text)
    return found.group(1) if found else None


def _body_id(message: Message, parts: list[Message]) -> str | None:
    """Message-ID of the original where the report quotes its headers as text."""
    own = _message_id(_header(message, "Message-ID"))
    for part in parts:
        if part.get_content_maintype() in ("text", "multipart"):
            mid = _embedded_id(_text(part))
            if mid and mid != own:
                return mid
    return None


def _is_jmrp(parts: list[Message]) -> bool:
    """Microsoft's pre-ARF complaint: the original attached, with a reporter header."""
    return any(
        (attached := _attached(p)) is not None and attached.get("X-HmXmrOriginalRecipient") is not None
        for p in parts
        if p.get_content_type() == "message/rfc822"
    )


def _arf_recipients(parts: list[Message]) -> tuple[str, ...]:
    found = []
    for part in parts:
        if part.get_content_type() == "message/feedback-report":
            found += [b.get(k, "") for b in _field_blocks(part) for k in ("original-rcpt-to", "removal-recipient")]
        elif part.get_content_type() == "message/rfc822" and (attached := _attached(part)) is not None:
            found.append(_header(attached, "X-HmXmrOriginalRecipient"))
    return tuple(dict.fromkeys(a.strip("<> ").lower() for a in found if "@" in a))


# --- free-text non-delivery reports (qmail, Exim, old Sendmail, Exchange, ...) -

_DAEMON = re.compile(r"^(?:mailer[-_.]?daemon|post[-_.]?master)$", re.I)
_DAEMON_NAME = re.compile(r"mailer[-_ ]?daemon|post[-_ ]?master|mail deliver(?:y)? (?:sub)?system", re.I)
_FAILURE = (
    r"undeliver|could ?n[o']t be deliver|can ?n[o']t be deliver|was ?n[o']t deliver|not (?:yet )?been deliver|"
    r"delivery (?:to the following recipients? )?(?:has )?fail|delivery status notification|failure notice|"
    r"mail(?: delivery)? fail|failed mail|returned mail|return(?:ed|ing) (?:mail )?to (?:the )?sender|"
    r"(?:could not|unable to) (?:deliver|send)|non[- ]?deliver|delivery (?:failure|problem|error|delayed|warning)|"
    r"delayed \d+ hours|permanent(?: fatal)? (?:error|failure)|(?:user|recipient|address|mailbox) (?:unknown|"
    r"not found|unavailable|is full|full)|full mailbox|unknown (?:user|recipient)|no such (?:user|recipient|"
    r"mailbox|address)|not a valid (?:user|recipient|address)|invalid (?:user|recipient)|"
    r"following address(?:es|\(es\))? failed|message (?:was )?rejected"
)
_BOUNCE_SUBJECT = re.compile(rf"^\W*(?:mail error|processing error|delivery (?:report|notification))|{_FAILURE}", re.I)
_BOUNCE_BODY = re.compile(
    rf"{_FAILURE}|qmail-send program|this is the mail system at host|rejected (?:your|the) message|"
    r"\b[45]\d\d[ -][45]\.\d{1,3}\.\d{1,3}\b",
    re.I,
)
_FORWARDED = re.compile(r"^\s*(?:fwd?|wg|tr|rv|enc|doorst)\s*:", re.I)  # a person passing a bounce on
_STATUS = re.compile(r"(?<![\d.])([45]\.\d{1,3}\.\d{1,3})(?![\d.])")
_ADDRESS = r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+"
_RECIPIENT_LINE = re.compile(
    rf"^[ \t]*(?:>>> ?)?(?:rcpt to:|(?:original|final)-recipient:[ \t]*rfc822;)?[ \t]*<?({_ADDRESS})>?"
    r"[ \t]*(?::|$|\.{3}|\()",
    re.I | re.M,
)
_FAILED_LINE = re.compile(rf"{_FAILURE}|unknown|invalid|error|reach", re.I)
_FAILED_ADDRESS = re.compile(rf"(?:\bto|user|recipient|address)\s*:?\s*<?({_ADDRESS})", re.I)
_ORIGINAL_STARTS = re.compile(r"^(?:Received|Return-Path|Message-ID|From|Date):", re.I | re.M)
_SES = re.compile(r'"notificationType"\s*:\s*"(Bounce|Complaint)"')


def _non_delivery(message: Message, parts: list[Message], sender: str) -> Bounce | None:
    """A free-text bounce: a daemon sender or failure subject, backed by failure wording."""
    failed = [a.strip().lower() for v in _headers(message, "X-Failed-Recipients") for a in v.split(",")]
    machine = _DAEMON.match(_local_part(sender)) or _DAEMON_NAME.search(_header(message, "From"))
    null = not sender or re.fullmatch(r"<\s*>", _header(message, "Return-Path"))
    subject_text = _header(message, "Subject")
    subject = bool(_BOUNCE_SUBJECT.search(subject_text)) and not _FORWARDED.match(subject_text)
    noreply = _NOREPLY.match(_local_part(sender)) or message.get("x-amz-sns-message-id") is not None
    if not (failed or machine or subject or null or noreply):
        return None
    text = "\n".join(_text(p) for p in parts if p.get_content_maintype() in ("text", "multipart"))
    if ses := _SES.search(text[:2000]):
        return _ses_bounce(ses.group(1), text)
    report = text[: m.start()] if (m := _ORIGINAL_STARTS.search(text)) else text
    scraped, wording = _scrape_recipients(report), _BOUNCE_BODY.search(text)
    if not (failed or (machine and (subject or wording or scraped)) or ((subject or null or noreply) and wording)):
        return None
    recipients = tuple(dict.fromkeys([a for a in failed if "@" in a] + scraped))
    status = m.group(1) if (m := _STATUS.search(report)) else None
    return Bounce("non-delivery", _returned_id(message, parts) or _body_id(message, parts), recipients, status)


def _scrape_recipients(report: str) -> list[str]:
    """Addresses a report names as failed: alone on a line, or after "to"/"user" on a failure line."""
    found = _RECIPIENT_LINE.findall(report)
    for line in report.splitlines()[:200]:
        if _FAILED_LINE.search(line):
            found += _FAILED_ADDRESS.findall(line)
    return list(dict.fromkeys(a.lower() for a in found))


def _ses_bounce(kind: str, text: str) -> Bounce:
    """Amazon SES bounce or complaint notification, mailed as JSON through SNS."""
    found = re.search(r'"name"\s*:\s*"Message-ID"\s*,\s*"value"\s*:\s*"([^"]*)"', text, re.I)
    status = re.search(r'"status"\s*:\s*"([45]\.\d{1,3}\.\d{1,3})"', text)
    return Bounce(
        "non-delivery" if kind == "Bounce" else "feedback-report",
        _message_id(found.group(1)) if found else None,
        tuple(dict.fromkeys(a.lower() for a in re.findall(r'"emailAddress"\s*:\s*"([^"]+)"', text))),
        status.group(1) if status else None,
    )


# --- automatic mail ----------------------------------------------------------------
# Left out on purpose: X-Auto-Response-Suppress asks others not to auto-reply and
# Exchange Online stamps it on people's own mail; X-MS-Exchange-Inbox-Rules-Loop
# is also on mail a rule merely redirected, with the customer's words intact.

_NOREPLY = re.compile(r"^(?:mailer[-_.]?daemon|post[-_.]?master|no[-_.]?reply|do[-_.]?not[-_.]?reply)(?:[-+_.].*)?$")
_AUTO_HEADERS = (
    "X-Autoreply", "X-Autorespond", "X-Autogenerated", "X-AutoReply-From", "X-Mail-Autoreply",
    "X-MS-Exchange-Generated-Message-Source", "X-Bluebottle-Request", "X-Boxbe-Original-Sender",
    "X-ChoiceMail-Registration-Request", "X-MLServer",
)
_CHALLENGE_AGENT = re.compile(r"^(?:TMDA|ChoiceMail|Spam ?Arrest)", re.I)  # X-Delivery-Agent
# The words must end the subject or be followed by ":", "]" or ")", so that
# "Vacation request for June" or "Auto: Termin" (a car) stay human.
_AUTO_SUBJECT = re.compile(
    r"^\W*(?:out of (?:the )?office(?: auto-?reply)?|auto(?:matic|matische|matisk|matyczna)?[- ]?(?:reply|"
    r"response|respons|antwort|svar|odpowied\w*)|autosvar|abwesenheitsnotiz|abwesend|r[ée]ponse automatique|"
    r"risposta automatica|respuesta autom[aá]tica|resposta autom[aá]tica|automatisch antwoord|afwezig|"
    r"fuera de la oficina|vacation(?: reply| message| notice)?|absence|ooo|自動応答|自动回复|自動回覆)\s*(?:[:\])]|$)"
    r"|\((?:auto(?:matic)?[- ]?(?:reply|response)|out of (?:the )?office)\)\s*$"
    r"|^please confirm your (?:message|e-?mail)\s*$",
    re.I,
)


def _auto_reason(message: Message, sender: str) -> str | None:
    submitted = _header(message, "Auto-Submitted").lower().split(";")[0].strip()
    if submitted == "no":
        return None  # the sender says a person wrote it; the weaker signals below yield
    if submitted:
        return f"auto-submitted: {submitted}"
    precedence = _header(message, "Precedence").lower()
    if precedence in ("bulk", "junk", "list", "auto_reply"):
        return f"precedence: {precedence}"
    if name := next((n for n in _AUTO_HEADERS if message.get(n) is not None), None):
        return name.lower()
    if _CHALLENGE_AGENT.match(_header(message, "X-Delivery-Agent")):
        return "challenge-response"
    if re.fullmatch(r"<\s*>", _header(message, "Return-Path")):
        return "empty return-path"
    if _NOREPLY.match(_local_part(sender)):
        return f"sender: {_local_part(sender)}"
    subject = _header(message, "Subject")
    if _AUTO_SUBJECT.search(subject) or subject.startswith("AUTO:"):  # Lotus Notes, upper case only
        return f"subject: {subject[:60].lower()}"
    return None


# --- mailing lists and our own mail ---------------------------------------------


def _mailing_list(message: Message) -> str | None:
    """The List-Id, else the list address a list header names, else a marker."""
    if list_id := _header(message, "List-Id"):
        return _message_id(list_id) or list_id
    for name in ("List-Post", "Mailing-List", "List-Unsubscribe"):
        if value := _header(message, name):
            found = re.search(_ADDRESS, value)
            return found.group(0).lower() if found else value[:200]
    return "precedence: list" if _header(message, "Precedence").lower() == "list" else None


def _own_mail(message: Message, sender: str, own: OwnMail) -> bool:
    """Our Message-ID domain, or one of our addresses plus the loop header we set.

    In-Reply-To pointing at our domain proves nothing: that is a customer replying.
    """
    mid = _message_id(_header(message, "Message-ID")) or ""
    domain = (own.message_id_domain or "").lower()
    if domain and mid.rpartition("@")[2].lower() == domain:
        return True
    return sender in own.addresses and message.get("X-Maild-Loop") is not None
