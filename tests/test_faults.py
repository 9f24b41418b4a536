"""The fault suite: maild killed with SIGKILL at random moments, hostile mail, two
senders before a slow relay, a relay refusing one recipient, and one message by
LMTP and IMAP. Each ends with exact counts, on SQLite and PostgreSQL.

The loops are bench/fault_kills.py and bench/fault_relay.py (run by hand with
bench/faults.py, which prints the same figures); MAILD_FAULT_SEED repeats a
run. Every test is slow: `-m "not slow"` skips them.
"""

from __future__ import annotations

import pytest

from fault_helpers import Dovecot, lmtp_and_imap, seed
from fault_kills import import_kill, outbox_kill, smtp_kill

from fault_relay import hostile, refusal, two_senders

pytestmark = pytest.mark.slow

CONNECTIONS = 8  # outbound.connections: the default, which the fault configs keep


def test_smtp_intake_killed_at_random_every_250_is_one_interaction(db_url, tmp_path):
    f = smtp_kill(db_url, tmp_path, n=200, kills=10, clients=4, seed=seed())
    assert f["kills"] >= 10
    assert f["acked"] == f["mails"] == 200  # the senders retried until each got its 250
    assert (f["lost"], f["doubled"], f["quarantined"]) == (0, 0, 0)
    assert f["exactly_once"] == f["interactions"] == f["raw"] == 200
    assert f["drained"] and f["exit"] == 0


def test_import_killed_and_rerun_imports_every_message_once(db_url, tmp_path):
    f = import_kill(db_url, tmp_path, n=1000, kills=12, batch=20, seed=seed())
    assert f["kills"] >= 10
    assert f["final_exit"] == 0 and f["rerun_exit"] == 0
    assert (f["lost"], f["doubled"], f["quarantined"], f["pending"]) == (0, 0, 0, 0)
    assert f["exactly_once"] == f["interactions"] == f["raw"] == 1000
    assert f["rerun_says"].startswith("imported 0 new message(s), 1000 already stored")


def test_outbox_sender_killed_at_random_delivers_every_row_resending_at_most_once(db_url, tmp_path):
    """Every row ends sent (and at the relay) or unknown; a row is resent at most once in its life.

    A row the sender had in hand when it was killed may or may not have reached the relay:
    it is sent again once; in hand at a second kill it stops as `unknown` rather than risk a
    third copy. The sender holds one row per relay connection, so a kill makes at most
    `connections` rows ambiguous, and a row needs two ambiguities to end unknown."""
    f = outbox_kill(db_url, tmp_path, mails=60, kills=10, delay=0.02, seed=seed())
    assert f["kills"] >= 10
    assert f["rows"] >= 180  # an acknowledgement and two rep notifications per mail
    assert set(f["statuses"]) <= {"sent", "unknown"}, f["statuses"]
    assert f["sent_not_delivered"] == 0 and f["undelivered_not_unknown"] == 0
    assert f["statuses"].get("unknown", 0) <= f["kills"] * CONNECTIONS // 2
    assert f["max_copies"] <= 2 and f["max_resends"] <= 1
    assert f["foreign_message_ids"] == 0 and f["differing_copies"] == 0  # one Message-ID and one text per row


def test_hostile_encoded_word_subject_does_not_stop_normal_mail(db_url, tmp_path):
    f = hostile(db_url, tmp_path, normal=20, size=2_500_000)
    assert f["normal_250"] == f["normal"] == 20
    assert (f["exactly_once"], f["lost"], f["doubled"]) == (20, 0, 0)
    assert f["hostile_answer"] == "250"  # well under max_message_size: stored, then processed or quarantined
    assert f["hostile_state"] in ("done", "quarantined")
    assert f["hostile_quarantined"] == (f["hostile_state"] == "quarantined")
    assert f["drained"] and f["exit"] == 0


def test_two_senders_before_a_slow_relay_never_send_a_message_twice(db_url, tmp_path):
    f = two_senders(db_url, tmp_path, mails=8, delay=0.2, timeout=1.0)
    assert f["senders_exit"] == [0, 0]
    assert f["rows"] == 24 and f["delivered"] == 24
    assert f["extra_copies"] == 0 and f["max_copies"] == 1
    assert f["statuses"] == {"sent": 24}


def test_a_refused_recipient_is_recorded_and_the_other_delivered(db_url, tmp_path):
    f = refusal(db_url, tmp_path)
    assert f["reply_copies"] == 1 and f["delivered_to"] == ["pat@example.com"]
    assert f["reply_status"] == ["sent"]
    assert f["notes_naming_refused"] == 1


def test_one_message_by_lmtp_and_by_imap_is_one_interaction(db_url, tmp_path):
    with Dovecot() as server:
        f = lmtp_and_imap(db_url, tmp_path, server)
    assert all(a == {} for a in f["lmtp_answers"])  # 250 for the recipient
    assert f["interactions"] == {"Fault both paths 1": 1, "Fault both paths 2": 1}
    assert f["raw"] == 2 and f["quarantined"] == 0
    assert f["exit"] == 0
