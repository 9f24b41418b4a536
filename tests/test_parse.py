"""The parse stage on the hard cases: encodings, broken MIME, HTML, forwards."""

from __future__ import annotations

import json

from maild.ingest.stages.parse import parse
from conftest import REPO, run_maild

EXAMPLE = REPO / "config" / "maild.example.toml"


def raw(headers: str, body: bytes = b"hello\r\n") -> bytes:
    return headers.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


def test_rfc2047_words_split_across_folded_lines_decode_whole():
    p = parse(raw(
        "From: =?UTF-8?Q?J=C3=BCrgen_?=\n =?UTF-8?Q?M=C3=BCller?= <jm@example.de>\n"
        "Subject: =?UTF-8?Q?Bestellung_=C3?=\n =?UTF-8?Q?=BCberf=C3=A4llig?=\nTo: support@acme.test\n"
    ))
    assert p.subject == "Bestellung überfällig"
    assert p.from_.name == "Jürgen Müller" and p.from_.email == "jm@example.de"


def test_raw_8bit_latin1_header_and_body_without_charset():
    p = parse(raw("From: Fran\xe7ois <f@example.fr>\nSubject: r\xe9ponse\nTo: support@acme.test\n",
                  "Voil\xe0, merci\r\n".encode("latin-1")))
    assert p.subject == "réponse"
    assert p.text.strip() == "Voilà, merci"


def test_unknown_charset_decodes_and_is_recorded_as_defect():
    p = parse(raw("From: a@example.com\nSubject: x\nContent-Type: text/plain; charset=x-klingon\n",
                  "caf\xc3\xa9\r\n".encode("latin-1")))
    assert p.text.strip() == "café"
    assert any("x-klingon" in d for d in p.defects)


def test_html_only_mail_becomes_text_and_inline_image_is_kept():
    body = (
        b"--B\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><body><p>Hi <b>team</b>,</p><p>see <img src=\"cid:img1\"></p></body></html>\r\n"
        b"--B\r\nContent-Type: image/png\r\nContent-ID: <img1>\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"iVBORw0KGgo=\r\n--B--\r\n"
    )
    p = parse(raw("From: a@example.com\nSubject: html\nMIME-Version: 1.0\n"
                  "Content-Type: multipart/related; boundary=B\n", body))
    assert "Hi team," in p.text and "<b>" not in p.text
    assert p.html and "<b>team</b>" in p.html
    (img,) = p.attachments
    assert img.content_type == "image/png" and img.inline and img.content_id == "img1"
    assert img.data.startswith(b"\x89PNG")


def test_forwarded_message_is_an_attachment_and_its_headers_stay_inside():
    inner = (b"From: boss@inner.test\r\nMessage-ID: <inner@inner.test>\r\nIn-Reply-To: <x@y>\r\n"
             b"Subject: Quarterly\r\n\r\ninner body\r\n")
    body = (b"--B\r\nContent-Type: text/plain\r\n\r\nFYI\r\n--B\r\nContent-Type: message/rfc822\r\n\r\n"
            + inner + b"--B--\r\n")
    p = parse(raw("From: fwd@example.com\nMessage-ID: <outer@example.com>\nSubject: Fwd: Quarterly\n"
                  "Content-Type: multipart/mixed; boundary=B\n", body))
    assert p.message_id == "outer@example.com" and p.in_reply_to == () and p.from_.email == "fwd@example.com"
    assert p.text.strip() == "FYI"
    (att,) = p.attachments
    assert att.content_type == "message/rfc822" and att.filename == "Quarterly.eml"
    assert b"inner body" in att.data


def test_references_and_in_reply_to_are_message_id_lists():
    p = parse(raw("From: a@example.com\nIn-Reply-To: <b@x> (comment)\n"
                  "References: <a@x>\n\t<b@x> junk <c@x>\nMessage-ID: <m@x>\n"))
    assert p.in_reply_to == ("b@x",) and p.references == ("a@x", "b@x", "c@x")


def test_missing_header_body_separator_and_garbage_do_not_raise():
    for data in (b"", b"\x00\xff\xfe garbage", b"Subject: only headers", b"From: <>\r\n\r\n",
                 b"Content-Type: multipart/mixed\r\n\r\nno boundary at all"):
        p = parse(data)
        assert isinstance(p.text, str)


def test_quoted_history_is_kept_out_of_new_text():
    p = parse(raw("From: a@example.com\nSubject: Re: x\n",
                  b"Thanks, that worked.\r\n\r\nOn Mon, 2 Nov 2026 at 09:30, Support <support@acme.test> wrote:\r\n"
                  b"> Try turning it off and on again.\r\n"))
    assert p.new_text == "Thanks, that worked."
    assert "turning it off" in p.text


def test_parse_command_prints_the_documented_json(tmp_path):
    f = tmp_path / "m.eml"
    f.write_bytes(raw("From: Pat <pat@example.com>\nTo: support@acme.test\nCc: x@example.com\n"
                      "Subject: hi\nMessage-ID: <p@example.com>\nDate: Mon, 2 Nov 2026 09:30:00 +0100\n"))
    r = run_maild("parse", str(f), "--json", "-c", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("message_id", "in_reply_to", "references", "from", "to", "cc", "reply_to", "subject", "date",
                "text", "new_text", "attachments", "auto", "bounce", "defects"):
        assert key in data
    assert data["from"] == {"name": "Pat", "email": "pat@example.com"}
    assert data["date"] == "2026-11-02T08:30:00+00:00"
    assert data["auto"] is None and data["bounce"] is None
