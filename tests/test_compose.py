"""The hand-written plain-text composer says what the email package would say.

Each case is composed both ways and read back with the email package: the same
headers with the same values, the same text, and no line over 998 octets. The
plain cases must take the hand-written path (else this would compare the email
package with itself); the others must leave it to the email package.
"""

from __future__ import annotations

import email
import email.policy
from datetime import datetime, UTC

import pytest

from maild.outbound.compose import OutAttachment, Outgoing, _compose_email, _compose_plain, compose

DATE = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
LONG_SUBJECT = "Printer on the third floor prints every page twice, and the toner runs out before noon " * 2
BODY = "Hello Jane,\n\nWe received your mail and will answer within a day.\n\n-- \nAcme Support\n"
LONG_LINE = "This paragraph was typed without a single hard line break, as most mail clients send it. " * 5
UNSUBSCRIBE = "<https://desk.acme.test/unsubscribe/" + "a" * 120 + ">, <mailto:unsubscribe@acme.test?subject=x>"


def out(**kw) -> Outgoing:
    base = dict(kind="acknowledgement", mailbox="support", to=("jane@example.com",), subject="[#12] Printer",
                body=BODY, issue_id=12, to_customer=True)
    base.update(kw)
    return Outgoing(**base)  # type: ignore[arg-type]


PLAIN = {
    "acknowledgement": (out(), "Acme Support"),
    "reply to a thread": (out(in_reply_to="abc@mail.example.com", references=("root@x.test", "abc@mail.example.com"),
                              auto=False), "Acme Support"),
    "long subject folded": (out(subject=LONG_SUBJECT), "Acme Support"),
    "twenty-five references": (out(references=tuple(f"msg{i}.{'x' * 30}@example.com" for i in range(25)),
                                   in_reply_to="msg24@example.com"), "Acme Support"),
    "cc and reply-to": (out(to=("a@example.com", "b.c@example.org"), cc=("lead@acme.test",),
                            reply_to="support+12@acme.test"), "Acme Support"),
    "display name with a dot": (out(), "J. Smith (Acme)"),
    "no display name": (out(), ""),
    "campaign headers": (out(headers=(("List-Unsubscribe", UNSUBSCRIBE), ("Precedence", "bulk"))), "Acme"),
    "long lines quoted-printable": (out(body=LONG_LINE + "\n\n" + LONG_LINE + "  \n"), "Acme Support"),
    "non-ASCII text": (out(body="Grüße aus Köln,\nnous avons reçu votre message.\n"), "Acme Support"),
    "non-ASCII long lines": (out(body="Привет! " * 40 + "\n"), "Acme Support"),
    "lines that need care": (out(body="From the top\n.\n..dots\r\nold mac\rline\n\n\ttab\ntrailing  \n"), "Acme"),
    "no final line break": (out(body="one line only"), "Acme Support"),
    "empty body": (out(body=""), "Acme Support"),
    "injection flattened": (out(subject="Hi\r\nBcc: victim@example.org", body="x\n"), "Support\r\nX-Evil: 1"),
}

OTHER = {
    "non-ASCII subject": (out(subject="Drucker kaputt – schon wieder"), "Acme Support"),
    "non-ASCII display name": (out(), "Acme Kundendienst Zürich"),
    "quote in display name": (out(), 'Acme "Best" Support'),
    "text like an encoded word": (out(subject="=?utf-8?q?caf=C3=A9?="), "Acme Support"),
    "address that needs quoting": (out(to=('"john smith"@example.com',)), "Acme Support"),
    "international domain": (out(to=("jane@bücher.example",)), "Acme Support"),
    "empty subject": (out(subject=""), "Acme Support"),
    "an attachment": (out(attachments=(OutAttachment("a.txt", "text/plain", b"hi\n", "0" * 64),)), "Acme"),
    "a lone surrogate": (out(body="broken \udcff byte\n"), "Acme Support"),
}


def read(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)  # type: ignore[return-value]


def meaning(data: bytes) -> tuple[list[tuple[str, str]], str]:
    msg = read(data)
    headers = [(name.lower(), str(value)) for name, value in msg.items()
               if name.lower() != "content-transfer-encoding"]
    return headers, msg.get_content().replace("\r\n", "\n")


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_plain_mail_is_written_by_hand_and_means_what_the_email_package_writes(name: str) -> None:
    o, display = PLAIN[name]
    fast = _compose_plain(o, "support@acme.test", display, "maild.1@acme.test", DATE, "loop-1")
    assert fast is not None, "a plain mail must not need the email package"
    slow = _compose_email(o, "support@acme.test", display, "maild.1@acme.test", DATE, "loop-1")
    assert meaning(fast) == meaning(slow)
    assert all(len(line) <= 998 for line in fast.split(b"\r\n"))
    assert b"\n" not in fast.replace(b"\r\n", b""), "every line ends in CRLF"
    head = fast.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):  # a line over 78 is one word that no space could split
        words = line.strip().split(b" ")
        assert len(line) <= 78 or len(words) == 1 or (len(words) == 2 and words[0].endswith(b":")), line
    assert compose(o, "support@acme.test", display, "maild.1@acme.test", DATE, "loop-1") == fast


@pytest.mark.parametrize("name", sorted(OTHER))
def test_mail_beyond_plain_ascii_is_left_to_the_email_package(name: str) -> None:
    o, display = OTHER[name]
    assert _compose_plain(o, "support@acme.test", display, "maild.1@acme.test", DATE, "loop-1") is None


def test_customer_text_never_becomes_a_header() -> None:
    o, display = PLAIN["injection flattened"]
    msg = read(compose(o, "support@acme.test", display, "maild.1@acme.test", DATE, "loop-1"))
    assert msg["Bcc"] is None and msg["X-Evil"] is None
    assert msg["Subject"] == "Hi Bcc: victim@example.org"
    assert msg["From"].addresses[0].display_name == "Support X-Evil: 1"


def test_text_survives_the_trip_exactly() -> None:
    body = LONG_LINE + "\n=3D is not an escape\nGrüße \t\n"
    msg = read(compose(out(body=body), "support@acme.test", "Acme", "maild.1@acme.test", DATE, "loop-1"))
    assert msg["Content-Transfer-Encoding"] == "quoted-printable"
    assert msg.get_content().replace("\r\n", "\n") == body
