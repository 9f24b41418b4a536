"""The parse stage over the hand-written mails in tests/mail/, one class of
real-world breakage per folder, against the expected results kept beside them
as data (tests/mail/EXPECTED.json); plus a hostile header flood."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maild.ingest.stages.parse import parse

MAIL = Path(__file__).parent / "mail"
EXPECTED = {k: v for k, v in json.loads((MAIL / "EXPECTED.json").read_text(encoding="utf-8")).items() if k != "_about"}


def test_every_mail_has_expectations_and_every_expectation_a_mail():
    files = {str(p.relative_to(MAIL)) for p in MAIL.rglob("*.eml")}
    assert files == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_mail_reads_as_expected(name):
    want = EXPECTED[name]
    p = parse((MAIL / name).read_bytes(), own_names=want.get("own_names", ()))
    if "from" in want:
        assert p.from_ is not None and p.from_.as_json() == want["from"]
    if "subject" in want:
        assert p.subject == want["subject"]
    if "attachments" in want:
        assert [a.filename for a in p.attachments] == want["attachments"]
    if "new_text" in want:
        assert p.new_text == want["new_text"]
    if "new_text_lines" in want:
        assert [line.strip() for line in p.new_text.splitlines() if line.strip()] == want["new_text_lines"]
    for piece in want.get("text_has", ()):
        assert piece in p.text
    for piece in want.get("defects_have", ()):
        assert any(piece in d for d in p.defects), p.defects
    assert not any(a.content_type.startswith("multipart/") for a in p.attachments)


def test_a_subject_flood_of_encoded_words_is_decoded_up_to_a_cap_with_a_defect():
    # 2.5 MB of encoded words: the stdlib's decoder takes minutes on this.
    flood = " ".join(["=?utf-8?q?caf=C3=A9?="] * 120_000)
    raw = f"From: a@example.com\r\nTo: support@acme.test\r\nSubject: {flood}\r\n\r\nhello\r\n".encode()
    assert len(raw) > 2_500_000
    p = parse(raw)
    assert p.subject.startswith("cafécafé")
    assert any("encoded words" in d for d in p.defects)
    assert p.new_text == "hello"


def test_a_display_name_flood_is_capped_too():
    flood = " ".join(["=?utf-8?b?w6k=?="] * 50_000)
    p = parse(f"From: {flood} <pat@example.com>\r\nSubject: x\r\n\r\nhi\r\n".encode())
    assert p.from_ is not None and p.from_.email == "pat@example.com"
    assert p.from_.name.startswith("éé") and len(p.from_.name) <= 16 * 1024
    assert any("encoded words" in d for d in p.defects)


def test_no_recoverable_sender_is_none_with_the_reason():
    p = parse(b"From: Nobody Here\r\nReturn-Path: <>\r\nSubject: x\r\n\r\nhi\r\n")
    assert p.from_ is None
    assert any("no Sender, Reply-To, Return-Path or envelope sender" in d for d in p.defects)


def test_envelope_sender_is_the_last_resort():
    p = parse(b"From: Nobody Here\r\nSubject: x\r\n\r\nhi\r\n", envelope_from="bounce+x@example.com")
    assert p.from_ is not None and p.from_.email == "bounce+x@example.com" and p.from_.name == "Nobody Here"
    assert any("envelope" in d for d in p.defects)
