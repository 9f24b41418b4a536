"""new_text() over the shared replies corpus (talon's standard replies carry
their expected text as data); skipped when the corpus is absent."""

from __future__ import annotations

import email
import email.policy
from pathlib import Path

import pytest

from maild.ingest.stages.quotes import new_text
from conftest import CORPUS, corpus_params

REPLIES = CORPUS / "replies"

STANDARD = REPLIES / "talon" / "standard_replies"
STANDARD_EMLS = sorted(STANDARD.glob("*.eml"))
ALL_FILES = sorted(p for p in REPLIES.rglob("*") if p.is_file())


def first_plain_part(path: Path) -> str:
    message = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    for part in message.walk():
        if part.get_content_type() == "text/plain":
            return part.get_content()
    raise AssertionError(f"{path.name} has no text/plain part")


@pytest.mark.parametrize("path", corpus_params(STANDARD_EMLS, ids=lambda p: p.stem))
def test_talon_standard_reply(path: Path) -> None:
    expected_file = STANDARD / f"{path.stem}_reply_text"
    expected = expected_file.read_text().strip() if expected_file.exists() else "Hello"
    # talon strips quotations only; maild also drops the signature, so where
    # talon's expected reply keeps one (iphone, sparrow) it must be exactly
    # that reply with its signature taken off.
    assert new_text(first_plain_part(path)) == new_text(expected)
    assert expected.startswith(new_text(expected))


@pytest.mark.parametrize("path", corpus_params(ALL_FILES, ids=lambda p: str(p.relative_to(REPLIES))))
def test_corpus_file_gives_nonempty_text_made_of_its_own_lines(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    result = new_text(text)
    if text.strip():
        assert result
    source_lines = {line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")}
    assert {line.strip() for line in result.split("\n")} <= source_lines


