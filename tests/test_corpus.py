"""Every file of the shared corpus goes through maild without a crash.

Each becomes an interaction, a recorded automatic/bounce message, or a
quarantine entry with its reason; none of the bounces, complaints and
auto-replies opens an issue. Skipped when the corpus is absent.
"""

from __future__ import annotations

import json
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
