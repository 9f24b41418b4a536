"""A generated mailbox of conversations: every reply on its issue, one issue
per conversation, and nothing doubled however often it arrives."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))
import corpusgen


@pytest.mark.slow
@pytest.mark.parametrize("batch", ["200", "7"])  # 7: many batches parsing ahead of the one stored
def test_generated_corpus_threads_perfectly_and_imports_once(cli, tmp_path, batch):
    manifest = corpusgen.generate(300, 3, tmp_path / "md", "maildir")
    assert cli("import", "--mailbox", "support", "--batch", batch, str(tmp_path / "md")).exit_code == 0
    issues = cli.json("issues", "list")
    assert len(issues) == len(manifest.conversations)
    of_message = {mid: c.number for c in manifest.conversations for mid in c.message_ids}
    size = {c.number: len(c.message_ids) for c in manifest.conversations}
    conversation_of = {}
    for issue in issues:
        shown = cli.json("issues", "show", str(issue["id"]))
        conversations = {of_message[i["message_id"]] for i in shown["interactions"]}
        assert len(conversations) == 1, f"issue {issue['id']} mixes conversations {conversations}"
        conversation_of[issue["id"]] = conversations.pop()
        assert len(shown["interactions"]) == size[conversation_of[issue["id"]]]
    assert len(set(conversation_of.values())) == len(issues)  # no conversation split over two issues
    # Again, and through the MTA pipe too: nothing new.
    again = cli("import", "--mailbox", "support", str(tmp_path / "md"))
    assert "imported 0 new message(s), 300 already stored" in again.output
    files = sorted(str(p) for p in (tmp_path / "md" / "cur").iterdir())[:40]
    assert cli("ingest", "--mailbox", "support", *files).exit_code == 0
    assert cli.json("issues", "list") == issues


def test_import_batches_are_bounded_by_count_and_by_bytes():
    from maild.cli.intake import _batches

    sizes = lambda chunks: [[len(m) for m in c] for c in chunks]  # noqa: E731
    assert sizes(_batches([b"x" * 10] * 5, size=2, max_bytes=1000)) == [[10, 10], [10, 10], [10]]
    assert sizes(_batches([b"x" * 10] * 5, size=10, max_bytes=25)) == [[10, 10], [10, 10], [10]]
    # A message larger than the byte bound travels alone; nothing is dropped.
    assert sizes(_batches([b"x" * 5, b"x" * 50, b"x" * 5], size=10, max_bytes=20)) == [[5], [50], [5]]
    assert list(_batches([], size=10)) == []
