"""Finding any case again: `maild issues search` and `maild issues list`'s filters.

Mail goes through the real intake and pipeline into SQLite and PostgreSQL
(the `db_url` fixture); the search index is kept by the migration's triggers,
never by the test. Results are read back as the CLI prints them.
"""

from __future__ import annotations

from email.message import EmailMessage
from itertools import count

from conftest import run_maild
from test_rep_commands import deliver, rep_mail

_n = count(1)


def mail(frm: str, subject: str, body: str, in_reply_to: str | None = None) -> tuple[bytes, str]:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, "support@acme.test", subject
    m["Message-ID"] = mid = f"<s{next(_n)}.search@example.com>"
    if in_reply_to:
        m["In-Reply-To"] = m["References"] = in_reply_to
    m.set_content(body)
    return m.as_bytes(), mid


def conversation(app, frm: str, subject: str, bodies: list[str]) -> int:
    """A first mail and replies to it, each replying to the one before; the issue's id."""
    raw, mid = mail(frm, subject, bodies[0])
    issue_id = deliver(app, raw).issue_id
    for body in bodies[1:]:
        raw, mid = mail(frm, f"Re: {subject}", body, in_reply_to=mid)
        assert deliver(app, raw).issue_id == issue_id
    assert issue_id is not None
    return issue_id


def test_search_finds_a_word_from_the_third_reply_with_a_snippet(app, cli):
    wanted = conversation(app, "Pat <pat@example.com>", "Printer trouble", [
        "My printer does not print.", "I tried turning it off and on.", "Still nothing.",
        "Now the display shows a flashing xylophone icon next to the tray.",
    ])
    other = conversation(app, "Sam <sam@example.com>", "Invoice question", ["Why is my invoice so high?"])
    found = cli.json("issues", "search", "xylophone")
    assert [r["id"] for r in found] == [wanted]
    assert "[xylophone]" in found[0]["snippet"] and found[0]["matches"] == 1
    # Every word must occur; a prefix with *; subjects count as text; case does not matter.
    assert [r["id"] for r in cli.json("issues", "search", "FLASHING", "tray")] == [wanted]
    assert cli.json("issues", "search", "flashing", "invoice") == []
    assert [r["id"] for r in cli.json("issues", "search", "xylo*")] == [wanted]
    assert [r["id"] for r in cli.json("issues", "search", "invoice")] == [other]
    text = cli("issues", "search", "xylophone")
    assert text.exit_code == 0 and f"#{wanted}" in text.output and "[xylophone]" in text.output


def test_search_ranks_the_issue_where_the_word_matters_most_first(app, cli):
    once = conversation(app, "Pat <pat@example.com>", "Lost parcel", ["The parcel never came, the refund please."])
    often = conversation(app, "Sam <sam@example.com>", "Refund", ["Refund refund refund: I want my refund."])
    assert [r["id"] for r in cli.json("issues", "search", "refund")] == [often, once]
    assert [r["id"] for r in cli.json("issues", "search", "refund", "--limit", "1", "--offset", "1")] == [once]


def test_search_answers_nonsense_with_a_precise_error(app, cli):
    conversation(app, "Pat <pat@example.com>", "Hello", ["Hello there"])
    for query in ('"', "* ( ) NEAR", "-"):
        r = cli("issues", "search", query)
        assert r.exit_code in (0, 1), r.output  # never a traceback
    r = cli("issues", "search", "%%%")
    assert r.exit_code == 1 and "nothing to search for" in r.output
    assert cli.json("issues", "search", 'hello"', "AND", "OR") == []  # operators are plain words here
    assert len(cli.json("issues", "search", 'hello"')) == 1


def test_order_and_gift_references_are_shown_listed_and_searchable(app, cli):
    n = conversation(app, "Pat <pat@example.com>", "Where is my order", ["It has been a week."])
    conversation(app, "Sam <sam@example.com>", "Other", ["Something else."])
    rep_mail(app, n, "#order A-1001\n#gift GC-77")
    shown = cli.json("issues", "show", str(n))
    assert (shown["order_id"], shown["gift_certificate_id"]) == ("A-1001", "GC-77")
    assert [r["id"] for r in cli.json("issues", "list", "--order", "a-1001")] == [n]
    assert [r["id"] for r in cli.json("issues", "list", "--gift", "GC-77")] == [n]
    hits = cli.json("issues", "search", "A-1001")
    assert [r["id"] for r in hits] == [n] and hits[0]["reference_match"]
    assert "A-1001" in cli("issues", "show", str(n)).output


def test_notify_var_order_id_sets_the_order_on_its_issue(app, cli, config_path):
    r = run_maild("notify", "--to", "pat@example.com", "--template", "order_shipped", "--var", "order_id=A-1001",
                  "--var", "tracking=ZX9", "-c", str(config_path))
    assert r.returncode == 0, r.stderr
    (issue,) = cli.json("issues", "list", "--order", "A-1001", "--status", "closed")
    assert issue["order_id"] == "A-1001"


def test_list_filters_sorts_and_pages(app, cli):
    a = conversation(app, "Pat <pat@example.com>", "Alpha", ["first"])
    b = conversation(app, "Sam <sam@example.com>", "Bravo", ["second"])
    c = conversation(app, "Kim <kim@example.com>", "Charlie", ["third"])
    rep_mail(app, a, "#assign Bob\n#priority urgent\n#tag refund")
    rep_mail(app, b, "#priority low\n#tag Refund\n#tag vip\n#pending")
    rep_mail(app, c, "#close")

    def ids(*args: str) -> list[int]:
        return [r["id"] for r in cli.json("issues", "list", *args)]

    assert ids() == [a, b, c]
    assert ids("--status", "open") == [a]
    assert ids("--status", "open", "--status", "pending") == [a, b]
    assert ids("--unassigned") == [b, c]
    assert ids("--assignee", "bob@acme.test") == ids("--assignee", "bob") == [a]
    assert ids("--tag", "refund") == [a, b] and ids("--tag", "refund", "--tag", "VIP") == [b]
    assert ids("--priority", "urgent", "--priority", "low") == [a, b]
    assert ids("--customer", "Sam@Example.com") == [b]
    assert ids("--mailbox", "support", "--category", "uncategorized") == [a, b, c]
    assert ids("--sort", "priority", "--desc") == [a, c, b]
    assert ids("--sort", "subject", "--desc", "--limit", "2") == [c, b]
    assert ids("--sort", "subject", "--limit", "2", "--offset", "2") == [c]
    assert ids("--opened-after", "2000-01-01") == [a, b, c]
    assert ids("--opened-before", "2000-01-01") == [] and ids("--updated-before", "2000-01-01T00:00+02:00") == []
    r = cli("issues", "list", "--assignee", "Nobody")
    assert r.exit_code == 1 and "no rep called 'Nobody'" in r.output and "Alice" in r.output
    r = cli("issues", "list", "--opened-after", "last tuesday")
    assert r.exit_code == 2 and "is not an ISO date" in r.output
