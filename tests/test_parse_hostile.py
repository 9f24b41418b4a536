"""Hostile mail the parse stage reads instead of failing on: charset labels that
name codecs which are no text encodings, winmail.dat files whose counts ask
for billions of values, messages attached hundreds deep, a million tiny MIME
parts, characters no database stores. Each must come back as a message with
its sender, subject and text and a defect saying what was odd, be stored on
both backends, and `maild parse` must answer with one line and exit 65 for the
one shape that cannot be read (nesting past what the parser can walk).

The bombs run through the daemon's own parse budget (a worker process with a
memory limit and a timeout), so a regression shows as a failed test, not as a
machine out of memory."""

from __future__ import annotations

import base64
import random
import re
import struct
from pathlib import Path

import pytest

from conftest import run_maild
from maild.ingest.budget import Budget
from maild.ingest.intake import Incoming, accept
from maild.ingest.stages.classify import OwnMail
from maild.ingest.stages.parse import NestingTooDeep, parse
from maild.ingest.stages.records import ParsedMessage

NOT_TEXT = ["zlib", "base64", "hex", "rot13", "uu", "bz2", "undefined", "idna", "punycode"]
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
MAIL = Path(__file__).parent / "mail"


def mail(headers: str, body: bytes = b"hello\r\n") -> bytes:
    head = "From: Pat <pat@example.com>\nTo: support@acme.test\n" + headers
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


def with_winmail(blob: bytes) -> bytes:
    b64 = base64.encodebytes(blob)
    return mail(
        "Subject: the file\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n",
        b"--b\r\nContent-Type: text/plain\r\n\r\nplease see the file\r\n--b\r\n"
        b"Content-Type: application/ms-tnef; name=winmail.dat\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + b64 + b"--b--\r\n",
    )


def tnef(*objects: bytes) -> bytes:
    return struct.pack("<IH", 0x223E9F78, 0) + b"".join(objects)


def tnef_object(level: int, name: int, data: bytes, kind: int = 6) -> bytes:
    return bytes([level]) + struct.pack("<HHI", name, kind, len(data)) + data + struct.pack("<H", sum(data) & 0xFFFF)


def nested_messages(depth: int) -> bytes:
    raw = b"From: inner@example.com\r\nSubject: innermost\r\n\r\nthe deepest text\r\n"
    for level in range(depth):
        raw = b"From: pat@example.com\r\nSubject: level %d\r\nContent-Type: message/rfc822\r\n\r\n" % level + raw
    return raw


def many_parts(count: int, eol: bytes = b"\r\n") -> bytes:
    head = mail("Subject: many parts\nContent-Type: multipart/mixed; boundary=b\n", b"").replace(b"\r\n", eol)
    first = b"--b" + eol + b"Content-Type: text/plain" + eol + eol + b"the first part's text" + eol
    return head + first + (b"--b" + eol + eol + b"x" + eol) * count + b"--b--" + eol


# A 21-byte winmail.dat: MAPI properties whose count is 2**32 - 1 (tnefparse loops that often).
SPIN = tnef(tnef_object(1, 0x9003, b"\xff\xff\xff\xff"))
# A 29-byte one: one multi-value SHORT property of 0x7fffffff values (tnefparse makes each).
GREEDY = tnef(tnef_object(1, 0x9003, struct.pack("<IHHI", 1, 0x1002, 0x0001, 0x7FFFFFFF)))
# A recipient table: a first row without properties, a second asking for 2**32 - 1.
ROWS = tnef(tnef_object(1, 0x9004, struct.pack("<III", 2, 0, 0xFFFFFFFF)))
# An Outlook message attached inside the file (tnefparse reads it as a TNEF of its own) that spins.
_EMBEDDED = b"\x07\x03\x02\x00\x00\x00\x00\x00\xc0\x00\x00\x00\x00\x00\x00\x46" + SPIN
_EMBEDDED += b"\x00" * (-len(_EMBEDDED) % 4)
EMBEDDED = tnef(
    tnef_object(2, 0x9002, b"\x01\x00\xff\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00"),
    tnef_object(2, 0x9005, struct.pack("<IHHII", 1, 0x000D, 0x3701, 1, len(_EMBEDDED)) + _EMBEDDED),
)


@pytest.fixture(scope="module")
def budget():
    """The daemon's parse budget: a worker process, 512 MB beyond its own, 60 s."""
    b = Budget(OwnMail(frozenset({"support@acme.test"}), None), 60, 512 * 1024 * 1024)
    yield b
    b.close()


def test_warm_answers_once_the_worker_is_up_and_parsing_works_after(budget):
    assert budget.warm(60)  # the daemon waits for this before it listens
    assert budget.warm(60)  # a second call finds the worker running
    assert read(budget, mail("Subject: after warm\n")).subject == "after warm"


def _hang(data, envelope_to, own, memory, envelope_from=None):
    """A worker task that never ends: the worker is busy when the daemon asks whether it is up."""
    import time

    time.sleep(3600)


def test_warm_gives_up_at_once_when_the_pool_is_closed_meanwhile():
    """A daemon stopped while it waits for its workers at start must not wait out the whole timeout."""
    import threading

    other = threading.Event()  # the daemon has threads: its workers come from a forkserver
    threading.Thread(target=other.wait, daemon=True).start()
    b = Budget(OwnMail(frozenset(), None), 3600, 512 * 1024 * 1024, task=_hang)
    b.submit(mail("Subject: hang\n"), ())  # the only worker is taken: its answer cannot come
    answer: list[bool] = []
    waiting = threading.Thread(target=lambda: answer.append(b.warm(3600)))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and not answer  # still waiting for the worker
    b.close()
    waiting.join(30)
    other.set()
    assert answer == [False]


def read(budget: Budget, raw: bytes) -> ParsedMessage:
    prepared = budget.prepare(raw, ())
    assert prepared.error is None, f"{prepared.stage}: {prepared.error}"
    assert prepared.msg is not None
    return prepared.msg


# --- finding 1: charset labels that name codecs which are no text encodings ---------------------


@pytest.mark.parametrize("label", NOT_TEXT)
def test_an_encoded_word_in_such_a_charset_keeps_its_text_with_a_defect(label):
    p = parse(mail(f"Subject: =?{label}?q?abc?= order 42\n"))
    assert p.subject == "abc order 42"
    assert f"Subject: unknown charset '{label}'" in p.defects


@pytest.mark.parametrize("label", NOT_TEXT)
def test_a_body_in_such_a_charset_is_read_as_unlabelled_with_a_defect(label):
    p = parse(mail(f"Subject: x\nContent-Type: text/plain; charset={label}\n", b"caf\xc3\xa9 is closed\r\n"))
    assert p.text.strip() == "café is closed"
    assert f"body: unknown charset '{label}'" in p.defects


@pytest.mark.parametrize("label", NOT_TEXT)
def test_a_file_name_in_such_a_charset_is_still_the_name(label):
    p = parse(mail(
        "Subject: x\nContent-Type: multipart/mixed; boundary=b\n",
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf\r\n"
        b"Content-Disposition: attachment; filename*=" + label.encode() + b"''invoice%2042.pdf\r\n\r\n%PDF\r\n--b--\r\n",
    ))
    assert [a.filename for a in p.attachments] == ["invoice 42.pdf"]
    assert p.text.strip() == "see attached"


def test_characters_no_database_stores_are_left_out():
    # NUL (PostgreSQL text refuses it) and a lone surrogate (UTF-7 makes one; no database encodes it)
    p = parse(mail("Subject: printer\x00 =?utf-7?q?+2AA-?=\nContent-Type: text/plain; charset=utf-7\n",
                   b"it burns\x00 +2AA- still\r\n"))
    assert p.subject == "printer \ufffd"
    assert p.text.strip() == "it burns \ufffd still"


def test_html_with_characters_lxml_refuses_is_still_converted():
    body = '<p>see <a href="https://shop.example.com/\ufffe">my order</a>\x0b now</p>'.encode("utf-16-le")
    p = parse(mail("Subject: x\nContent-Type: text/html; charset=utf-16-le\n", body))
    assert "my order [https://shop.example.com/]" in p.text


# --- finding 2: winmail.dat counts that ask for more than the file holds -----------------------


@pytest.mark.parametrize(
    "blob, reason",
    [
        (SPIN, "4294967295 MAPI properties in 0 bytes"),
        (GREEDY, "2147483647 values of MAPI type 0x0002 in 0 bytes"),
        (ROWS, "4294967295 MAPI properties in 0 bytes"),
        (EMBEDDED, "4294967295 MAPI properties in 0 bytes"),
    ],
    ids=["property-count", "multi-value-count", "recipient-row", "attached-message"],
)
def test_a_winmail_dat_whose_counts_cannot_fit_is_kept_as_it_came(budget, blob, reason):
    p = read(budget, with_winmail(blob))
    assert [(a.filename, a.data) for a in p.attachments] == [("winmail.dat", blob)]
    assert f"winmail.dat not decoded ({reason}); kept as it came" in p.defects
    assert p.subject == "the file" and p.text.strip() == "please see the file"


# --- finding 3: the MIME walker ----------------------------------------------------------------


def test_messages_attached_three_hundred_deep_are_one_attachment_holding_them_all(budget):
    p = read(budget, nested_messages(300))
    assert p.subject == "level 299"
    (attached,) = p.attachments
    assert attached.filename == "level 298.eml" and attached.content_type == "message/rfc822"
    assert attached.data.startswith(b"From: pat@example.com\nSubject: level 298\n")
    assert attached.data.count(b"Content-Type: message/rfc822") == 299
    assert attached.data.endswith(b"Subject: innermost\n\nthe deepest text\r\n")


def test_nesting_past_what_the_parser_walks_is_a_precise_error():
    with pytest.raises(NestingTooDeep):
        parse(nested_messages(5000))


@pytest.mark.parametrize("eol", [b"\r\n", b"\n", b"\r"], ids=["crlf", "lf", "cr"])
def test_a_million_tiny_parts_keep_sender_subject_and_first_text_with_a_defect(budget, eol):
    raw = many_parts(1_000_000, eol)
    assert raw.count(b"--b") > 1_000_000
    p = read(budget, raw)
    assert p.from_ is not None and p.from_.email == "pat@example.com"
    assert p.subject == "many parts"
    assert p.text.startswith("the first part's text")
    assert any("more than 10000 MIME boundary lines" in d and "the rest left in the raw message" in d
               for d in p.defects), p.defects


def test_ten_thousand_parts_are_all_built_and_the_walk_stops_at_its_own_cap():
    p = parse(many_parts(9_998))
    assert not any("boundary lines" in d for d in p.defects)
    assert "more than 1000 MIME parts; the rest left in the raw message" in p.defects


# --- what `maild parse` says ---------------------------------------------------------------------


def test_maild_parse_answers_nesting_too_deep_in_one_line_with_exit_65(tmp_path):
    f = tmp_path / "deep.eml"
    f.write_bytes(nested_messages(5000))
    r = run_maild("parse", str(f))
    assert r.returncode == 65
    assert r.stderr.decode() == f"maild: {f}: MIME parts nested too deeply to read\n"


def test_maild_parse_reads_a_zlib_subject(tmp_path):
    f = tmp_path / "zlib.eml"
    f.write_bytes(mail("Subject: =?zlib?q?abc?=\n"))
    r = run_maild("parse", str(f))
    assert r.returncode == 0, r.stderr
    assert "subject: abc\n" in r.stdout.decode()


# --- stored on both backends ---------------------------------------------------------------------

STORED = {
    "zlib-subject": mail("Subject: =?zlib?q?abc?=\n"),
    "idna-subject": mail("Subject: =?idna?q?caf=E9?=\n"),
    "nul-and-surrogate": mail("Subject: a\x00b =?utf-7?q?+2AA-?=\nContent-ID: <\x00\xff>\n", b"x\x00y\r\n"),
    "spinning-winmail": with_winmail(SPIN),
    "greedy-winmail": with_winmail(GREEDY),
    "nested-300": nested_messages(300).replace(b"pat@", b"lee@", 1),
    "20000-parts": many_parts(20_000),
}


def test_every_hostile_mail_is_stored_as_an_interaction(app):
    outcomes = {}
    for name, raw in STORED.items():
        accepted = accept(app.sessions, Incoming(raw, "support", "test"))
        (outcome,) = app.pipeline.process([accepted.raw_id])
        outcomes[name] = outcome.stored.outcome if outcome.stored else f"{outcome.stage}: {outcome.error}"
    assert outcomes == {name: "interaction" for name in STORED}


def test_an_8bit_body_in_a_charset_that_cannot_decode_it_is_stored(app):
    raw = mail("Subject: x\nContent-Type: text/plain; charset=idna\n", b"caf\xe9\r\n")
    accepted = accept(app.sessions, Incoming(raw, "support", "test"))
    (outcome,) = app.pipeline.process([accepted.raw_id])
    assert outcome.stored is not None and outcome.stored.outcome == "interaction", outcome.error


# --- a little fuzzing with a fixed seed ----------------------------------------------------------

_TOKENS = [b"=?zlib?q?a?=", b"charset=idna", b"charset*=hex''zz", b"\r\n--", b"\xff\xfe", b"\x00",
           b"Content-Type: message/rfc822\r\n\r\n", b"charset=utf-7", b"+2AA-", b"\r\n\r\n", b"=?utf-8?q?=C3?="]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(len(out) + 1)
        op = rng.random()
        if op < 0.4 and out:
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif op < 0.7:
            out[pos:pos] = rng.choice(_TOKENS)
        else:
            del out[pos : pos + rng.randint(1, 40)]
    return bytes(out)


def test_mangled_test_mails_always_parse_to_storable_text():
    rng = random.Random(20261129)
    seeds = [p.read_bytes() for p in sorted(MAIL.rglob("*.eml"))]
    for _ in range(400):
        raw = _mutate(rng, rng.choice(seeds))
        p = parse(raw)
        texts = [p.subject, p.text, p.new_text, p.html or "", p.message_id or "", *p.in_reply_to, *p.references]
        texts += [t for a in (p.from_, *p.to, *p.cc, *p.reply_to) if a for t in (a.name, a.email)]
        texts += [t for a in p.attachments for t in (a.filename, a.content_type, a.content_id or "")]
        assert not any(UNSTORABLE.search(t) for t in texts), raw


def test_a_bounce_whose_returned_headers_declare_a_charset_that_cannot_decode_them_is_stored(app):
    raw = (b"From: MAILER-DAEMON@mx.example.org\r\nTo: support@acme.test\r\nSubject: Undelivered\r\n"
           b"Message-ID: <dsn-idna@mx.example.org>\r\n"
           b"Content-Type: multipart/report; report-type=delivery-status; boundary=XX\r\n\r\n"
           b"--XX\r\nContent-Type: text/plain\r\n\r\nIt bounced.\r\n"
           b"--XX\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.org\r\n\r\n"
           b"Final-Recipient: rfc822; pat@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
           b"--XX\r\nContent-Type: text/rfc822-headers; charset=idna\r\n\r\n"
           b"Subject: caf\xe9\r\nMessage-ID: <orig-idna@maild.acme.test>\r\n--XX--\r\n")
    accepted = accept(app.sessions, Incoming(raw, "support", "test"))
    (outcome,) = app.pipeline.process([accepted.raw_id])
    assert outcome.stored is not None, outcome.error
    assert outcome.stored.outcome == "unmatched-bounce"
