"""Every file of the shared corpus goes through maild without a crash.

Each becomes an interaction, a recorded automatic/bounce message, or a
quarantine entry with its reason; none of the bounces, complaints and
auto-replies opens an issue. Skipped when the corpus is absent.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest
from sqlalchemy import func, select

from maild.ingest.stages.classify import OwnMail, classify
from maild.ingest.intake import Incoming, accept_many
from maild.ingest.stages.parse import as_json, parse
from maild.models import Interaction, Issue, OutboxMessage, RawMessage
from conftest import CORPUS, corpus_dir
from corpus_labels import effective_label


def corpus_files(*parts: str):
    root = CORPUS.joinpath(*parts)
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name not in ("SOURCES.md", "LABELS.tsv"))


@pytest.mark.parametrize("folder", ["mime", "replies", "bounces"])
def test_parse_json_never_crashes(folder):
    corpus_dir(folder)
    own = OwnMail(frozenset({"support@acme.test"}), "acme.test")
    for path in corpus_files(folder):
        p = parse(path.read_bytes())
        cls = classify(p.message, p.from_.email if p.from_ else None, own)
        data = json.loads(json.dumps(as_json(p, cls.auto, cls.bounce.as_json() if cls.bounce else None)))
        assert isinstance(data["text"], str) and isinstance(data["defects"], list), path


def _ingest_all(app, files) -> dict[int, str]:
    names: dict[int, str] = {}
    for i in range(0, len(files), 100):
        chunk = files[i : i + 100]
        accepted = accept_many(app.sessions, [Incoming(p.read_bytes(), "support", "test") for p in chunk])
        for a, p in zip(accepted, chunk):
            names.setdefault(a.raw_id, str(p.relative_to(CORPUS)))
        app.pipeline.process([a.raw_id for a in accepted if not a.duplicate])
    return names


@pytest.mark.slow
def test_every_corpus_file_is_recorded_or_quarantined_with_reason(app):
    corpus_dir()
    files = corpus_files("mime") + corpus_files("replies") + corpus_files("bounces")
    names = _ingest_all(app, files)
    with app.sessions() as s:
        rows = s.execute(select(RawMessage.id, RawMessage.state, RawMessage.outcome, RawMessage.error)).all()
        interactions = s.scalar(select(func.count(Interaction.id)).where(Interaction.raw_message_id.is_not(None)))
    states = Counter(r.state for r in rows)
    assert set(states) <= {"done", "quarantined"}, states
    assert all(r.error for r in rows if r.state == "quarantined")
    assert {r.outcome for r in rows if r.state == "done"} <= {"interaction", "unmatched-auto", "unmatched-bounce", "own-mail"}
    assert interactions == sum(1 for r in rows if r.outcome == "interaction")
    # Every file is accounted for: its own raw row or a duplicate of one.
    assert len(names) == len(rows)
    # Quarantine is only for what names no sender at all (bare reply bodies,
    # a non-RFC 822 Outlook file, header-less test fragments).
    for r in rows:
        if r.state == "quarantined":
            assert "no From address" in r.error, (names[r.id], r.error)
            assert parse(CORPUS.joinpath(names[r.id]).read_bytes()).from_ is None, names[r.id]


def test_no_bounce_complaint_or_auto_reply_opens_an_issue(app):
    labels = corpus_dir("bounces") / "LABELS.tsv"
    automatic = []
    for line in labels.read_text().splitlines():
        if line.startswith("#"):
            continue
        path, label, *_ = line.split("\t")
        if effective_label(path, label) not in ("not-bounce", "human"):
            automatic.append(CORPUS / "bounces" / path)
    _ingest_all(app, automatic)
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Issue)) == 0
        assert s.scalar(select(func.count()).select_from(OutboxMessage)) == 0  # no automatic mail in answer
        outcomes = Counter(s.scalars(select(RawMessage.outcome)))
    assert set(outcomes) <= {"unmatched-auto", "unmatched-bounce"}, outcomes


_MOJIBAKE = re.compile("[\ufffd\u0080-\u009f]")  # replacement characters, C1 controls
_SENDER_HEADER = re.compile(rb"^(?:From|Sender|Reply-To|Return-Path):[^\n]*@", re.M | re.I)


def _parsed_corpus():
    for folder in ("mime", "bounces"):
        for path in corpus_files(folder):
            raw = path.read_bytes()
            yield path, raw, parse(raw)


def test_no_message_that_names_a_sender_is_left_without_one():
    corpus_dir("mime")
    missing = []
    for path, raw, p in _parsed_corpus():
        head = re.split(rb"\r?\n\r?\n", raw, maxsplit=1)[0]
        if p.from_ is None and _SENDER_HEADER.search(head):
            missing.append(str(path.relative_to(CORPUS)))
    assert missing == []


def test_decoded_subjects_and_names_have_no_mojibake():
    corpus_dir("mime")
    bad = []
    for path, raw, p in _parsed_corpus():
        if b"\xef\xbf\xbd" in raw:  # the sender's own replacement characters are kept as sent
            continue
        for text in (p.subject, *(a.name for a in (p.from_, *p.to, *p.cc, *p.reply_to) if a is not None)):
            if _MOJIBAKE.search(text):
                bad.append((str(path.relative_to(CORPUS)), text[:80]))
    assert bad == []


def test_no_multipart_container_becomes_an_attachment():
    corpus_dir("mime")
    found = [
        (str(path.relative_to(CORPUS)), a.filename)
        for path, _, p in _parsed_corpus()
        for a in p.attachments
        if a.content_type.startswith("multipart/")
    ]
    assert found == []
