"""The classify stage: hand-written cases, then the shared bounce corpus.

Pure tests, no servers. The corpus checks run over every labelled file and fail
once, listing the offending files, rather than as 880 separate cases.
"""

from __future__ import annotations

import email
import re
from email.utils import parseaddr
from functools import cache
from pathlib import Path

import pytest

from maild.ingest.stages.classify import OwnMail, classify
from maild.ingest.stages.records import HUMAN, Classification
from corpus_labels import RELABELLED, effective_label
from conftest import CORPUS, CORPUS_ABSENT

BOUNCES = CORPUS / "bounces"
needs_corpus = pytest.mark.skipif(not (BOUNCES / "LABELS.tsv").is_file(), reason=CORPUS_ABSENT)

OWN = OwnMail(frozenset({"support@acme.test", "help@acme.test"}), "maild.acme.test")


def _classify(raw: bytes, own: OwnMail = OWN) -> Classification:
    message = email.message_from_bytes(raw)
    try:
        sender = parseaddr(str(message.get("From") or ""))[1]
    except Exception:
        sender = ""
    return classify(message, sender, own)


def _mail(headers: str, body: str = "Hello,\n\nmy printer is on fire.\n") -> bytes:
    return (headers.strip() + "\n\n" + body).encode()


HUMAN_HEADERS = """
From: Jane Customer <jane.customer@gmail.com>
To: support@acme.test
Subject: Printer on fire
Date: Tue, 4 Jun 2024 10:00:00 +0000
Message-ID: <CAF=abc123@mail.gmail.com>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
"""


# --- hand-written cases -------------------------------------------------------------


def test_plain_human_mail_from_gmail_is_fully_human():
    assert _classify(_mail(HUMAN_HEADERS)) == HUMAN


def test_auto_submitted_no_wins_over_an_out_of_office_subject():
    raw = _mail(HUMAN_HEADERS.replace("Printer on fire", "Out of office") + "Auto-Submitted: no\n")
    assert _classify(raw).auto is None


def test_out_of_office_subject_alone_is_auto():
    assert _classify(_mail(HUMAN_HEADERS.replace("Printer on fire", "Out of Office: Printer on fire"))).auto


@pytest.mark.parametrize(
    "subject",
    ["Automatic reply: Printer", "Abwesenheitsnotiz: Drucker", "Réponse automatique : Imprimante",
     "Autosvar: Skrivare", "AUTO: Jane is out of the office", "Re: Printer (Automatic Response)"],
)
def test_vacation_subjects_are_auto(subject):
    raw = _mail(HUMAN_HEADERS.replace("Printer on fire", subject), "I am away.\n")
    assert _classify(raw).auto.startswith("subject: ")


@pytest.mark.parametrize("subject", ["Vacation request for June", "Auto: Termin zur Inspektion", "Out of office hours support?"])
def test_subjects_that_only_start_like_vacation_replies_stay_human(subject):
    assert _classify(_mail(HUMAN_HEADERS.replace("Printer on fire", subject))).auto is None


@pytest.mark.parametrize(
    ("header", "reason"),
    [("Auto-Submitted: auto-replied", "auto-submitted: auto-replied"), ("Precedence: bulk", "precedence: bulk"),
     ("Precedence: junk", "precedence: junk"), ("X-Autoreply: yes", "x-autoreply"),
     ("X-Autorespond: yes", "x-autorespond"), ("Return-Path: <>", "empty return-path")],
)
def test_auto_headers(header, reason):
    assert _classify(_mail(HUMAN_HEADERS + header + "\n")).auto == reason


@pytest.mark.parametrize("local", ["noreply", "no-reply", "do-not-reply", "donotreply", "MAILER-DAEMON", "postmaster"])
def test_machine_sender_local_parts_are_auto(local):
    raw = _mail(HUMAN_HEADERS.replace("jane.customer@gmail.com", f"{local}@shop.example"), "Your order shipped.\n")
    assert _classify(raw).auto is not None


def test_x_auto_response_suppress_alone_is_not_auto():
    # Exchange Online stamps "DR, RN, NRN, OOF, AutoReply" on people's own mail
    # (seen on LKML); it asks others not to auto-reply, it does not mark a robot.
    raw = _mail(HUMAN_HEADERS + "X-Auto-Response-Suppress: DR, RN, NRN, OOF, AutoReply\n")
    assert _classify(raw).auto is None


def test_list_id_gives_mailing_list():
    raw = _mail(HUMAN_HEADERS + "List-Id: Printer users <printers.lists.example.org>\n")
    result = _classify(raw)
    assert result.mailing_list == "printers.lists.example.org"
    assert result.auto is None  # a person may write to us through a list


def test_list_post_without_list_id_gives_mailing_list():
    raw = _mail(HUMAN_HEADERS + "List-Post: <mailto:printers@lists.example.org>\n")
    assert _classify(raw).mailing_list == "printers@lists.example.org"


def test_own_mail_by_message_id_domain():
    raw = _mail(HUMAN_HEADERS.replace("CAF=abc123@mail.gmail.com", "issue-42.7f3a@maild.acme.test"))
    assert _classify(raw).own_mail is True


def test_own_mail_by_our_address_and_loop_header():
    headers = HUMAN_HEADERS.replace("jane.customer@gmail.com", "Support@acme.test")
    assert _classify(_mail(headers + "X-Maild-Loop: 1\n")).own_mail is True
    assert _classify(_mail(headers)).own_mail is False


def test_customer_reply_to_our_mail_is_not_own_mail():
    raw = _mail(HUMAN_HEADERS + "In-Reply-To: <issue-42.7f3a@maild.acme.test>\nReferences: <issue-42.7f3a@maild.acme.test>\n")
    assert _classify(raw) == HUMAN


DSN = b"""From: Mail Delivery System <MAILER-DAEMON@mx.acme.test>
To: support@acme.test
Subject: Undelivered Mail Returned to Sender
Message-ID: <20240604.ABC@mx.acme.test>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

I'm sorry to have to inform you that your message could not be delivered.

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.acme.test

Final-Recipient: rfc822; gone@example.org
Action: failed
Status: 5.1.1

Final-Recipient: rfc822; fine@example.org
Action: delivered
Status: 2.0.0

--B
Content-Type: text/rfc822-headers

From: support@acme.test
To: gone@example.org
Subject: [#42] Your printer
Message-ID: < issue-42.7f3a@maild.acme.test >

--B--
"""


def test_dsn_gives_failed_recipients_status_and_original_message_id():
    result = _classify(DSN)
    assert result.bounce is not None
    assert (result.bounce.kind, result.bounce.recipients, result.bounce.status) == ("dsn", ("gone@example.org",), "5.1.1")
    assert result.bounce.original_message_id == "issue-42.7f3a@maild.acme.test"
    assert result.auto == "bounce: dsn"
    assert result.own_mail is False


def test_dsn_that_only_reports_delivery_is_auto_but_not_a_bounce():
    raw = DSN.replace(b"Action: failed", b"Action: relayed")
    result = _classify(raw)
    assert result.bounce is None and result.auto == "delivery-status: delivered"


def test_qmail_free_text_bounce():
    raw = b"""From: MAILER-DAEMON@mx.example.org
To: support@acme.test
Subject: failure notice

Hi. This is the qmail-send program at mx.example.org.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<gone@example.org>:
Sorry, no mailbox here by that name. (#5.1.1)

--- Below this line is a copy of the message.

Return-Path: <support@acme.test>
From: support@acme.test
Message-ID: <issue-7.1b2c@maild.acme.test>
Subject: hello

hi
"""
    result = _classify(raw)
    assert result.bounce is not None
    assert result.bounce.kind == "non-delivery"
    assert result.bounce.recipients == ("gone@example.org",)
    assert result.bounce.original_message_id == "issue-7.1b2c@maild.acme.test"


def test_person_forwarding_a_bounce_is_human():
    raw = _mail(HUMAN_HEADERS.replace("Printer on fire", "Fwd: Undelivered Mail Returned to Sender"),
                "Why does this keep bouncing?\n\n> Delivery to the following recipient failed permanently:\n")
    assert _classify(raw) == HUMAN


def test_read_receipt_is_auto_mdn_not_a_bounce():
    raw = b"""From: jane.customer@gmail.com
To: support@acme.test
Subject: Read: Printer on fire
MIME-Version: 1.0
Content-Type: multipart/report; report-type=disposition-notification; boundary="M"

--M
Content-Type: text/plain

Your message was displayed.

--M
Content-Type: message/disposition-notification

Final-Recipient: rfc822; jane.customer@gmail.com
Disposition: manual-action/MDN-sent-manually; displayed

--M--
"""
    result = _classify(raw)
    assert (result.auto, result.bounce) == ("mdn", None)


HOSTILE = {
    "8-bit subject and from": b"From: J\xe9r\xf4me \xff <jerome@example.fr>\nSubject: caf\xe9 \xff\xfe\x00\nTo: support@acme.test\n\nhi\n",
    "8-bit auto headers": b"From: x@example.org\nAuto-Submitted: \xff\xfe\nPrecedence: b\xfclk\nList-Id: \xe9<\xff>\n\nhi\n",
    "whitespace-only headers": b"From:   \nReturn-Path:  \t \nMessage-ID:   \nList-Id:  \nAuto-Submitted:  \n\nhi\n",
    "report without boundary": b"From: MAILER-DAEMON@x.example\nContent-Type: multipart/report; report-type=delivery-status\n\n"
    b"Final-Recipient: rfc822; a@b.example\nAction: failed\n",
    "bad encoded words": b"From: =?utf-8?b?====?= <a@b.example>\nSubject: =?x-unknown?q?=ff=fe?= =?utf-8?B?#?=\n\nhi\n",
    "delivery-status as base64 junk": b"From: postmaster@x.example\nContent-Type: multipart/report; boundary=Z\n\n--Z\n"
    b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n!!!!\n--Z\n"
    b"Content-Type: text/rfc822-headers; charset=bogus-7\n\nMessage-ID: <\xff@\xfe>\n--Z--\n",
    "rfc2231 report-type": b"Content-Type: multipart/report; report-type*=us-ascii''delivery-status\n\n",
    "empty message": b"",
}


@pytest.mark.parametrize("raw", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_input_never_raises(raw):
    assert isinstance(_classify(raw), Classification)
    assert isinstance(classify(email.message_from_bytes(raw), None, OwnMail(frozenset(), None)), Classification)


def test_whitespace_only_return_path_is_not_an_empty_return_path():
    assert _classify(_mail(HUMAN_HEADERS + "Return-Path:    \n")).auto is None


# --- the shared corpus ----------------------------------------------------------------

AUTOMATIC = {"bounce", "feedback-report", "auto-reply", "challenge-response", "mdn", "delivered"}


@cache
def _labelled() -> dict[str, tuple[str, Classification]]:
    """Every labelled file: (effective label, classification)."""
    found = {}
    for line in (BOUNCES / "LABELS.tsv").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, label = line.split("\t")[:2]
        found[path] = (effective_label(path, label), _classify((BOUNCES / path).read_bytes()))
    return found


def _offenders(label_set: set[str], bad) -> list[str]:
    return sorted(f"{path}: {result}" for path, (label, result) in _labelled().items() if label in label_set and bad(result))


@needs_corpus
def test_corpus_labels_are_as_counted():
    labels = [label for label, _ in _labelled().values()]
    assert len(labels) == 880
    assert all(path in _labelled() for path in RELABELLED)


@needs_corpus
def test_every_automatic_corpus_file_is_auto():
    offenders = _offenders(AUTOMATIC, lambda r: r.auto is None)
    assert not offenders, "\n".join(offenders)


@needs_corpus
def test_people_and_non_bounces_are_not_bounces():
    offenders = _offenders({"not-bounce", "human", "delivered", "auto-reply", "mdn"}, lambda r: r.bounce is not None)
    assert not offenders, "\n".join(offenders)
    offenders = _offenders({"human"}, lambda r: r.auto is not None)
    assert not offenders, "\n".join(offenders)


@needs_corpus
def test_feedback_reports_are_feedback_reports():
    offenders = _offenders({"feedback-report"}, lambda r: r.bounce is None or r.bounce.kind != "feedback-report")
    assert not offenders, "\n".join(offenders)


@needs_corpus
def test_bounce_detection_rate():
    bounces = [r for label, r in _labelled().values() if label == "bounce"]
    missed = _offenders({"bounce"}, lambda r: r.bounce is None)
    # 835 of 837: the two misses are fml list-manager notices (auto, not bounces)
    assert len(bounces) == 837
    assert (len(bounces) - len(missed)) / len(bounces) >= 0.9976, "\n".join(missed)


_RETURNED_PART = re.compile(rb"^Content-Type:[ \t]*(?:message/rfc822|text/rfc822-headers)", re.I | re.M)
_RETURNED_ID = re.compile(rb"^Message-ID:[ \t]*(?:\r?\n[ \t]+)?<?([^\s<>]+@[^\s<>]+?)>?\s*$", re.I | re.M)


def _returned_message_id(raw: bytes) -> str | None:
    """Independent of classify: the first Message-ID line after the returned part starts."""
    part = _RETURNED_PART.search(raw)
    found = _RETURNED_ID.search(raw, part.end()) if part else None
    return found.group(1).decode("latin-1") if found else None


@needs_corpus
def test_dsn_original_message_id_rate():
    expected, wrong = 0, []
    for path, (label, result) in _labelled().items():
        if label != "bounce" or result.bounce is None or result.bounce.kind != "dsn":
            continue
        want = _returned_message_id((BOUNCES / path).read_bytes())
        if want:
            expected += 1
            if result.bounce.original_message_id != want:
                wrong.append(f"{path}: want {want!r}, got {result.bounce.original_message_id!r}")
    assert expected >= 449
    assert (expected - len(wrong)) / expected >= 1.0, "\n".join(wrong)


def _eml_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return [p for p in sorted((CORPUS / "mime").rglob("*")) if p.is_file()] + sorted(
        (CORPUS / "replies" / "talon").rglob("*.eml")
    )


@needs_corpus
def test_never_raises_on_mime_and_talon_corpus():
    failures = []
    for path in _eml_files():
        try:
            _classify(path.read_bytes())
        except Exception as exc:
            failures.append(f"{path.relative_to(CORPUS)}: {exc!r}")
    assert len(_eml_files()) > 200
    assert not failures, "\n".join(failures)
