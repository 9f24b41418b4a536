"""One-click unsubscribe (RFC 8058) through the web console: a campaign mail's https link,
POSTed by a mailbox provider from another origin, opts the customer out; a GET only asks."""

from __future__ import annotations

import re

import pytest

from conftest import Cli
from web_helpers import running_console, wait_for_mail

PUBLIC = "https://console.example"
USERS = "user_id,emails,name,mailing_lists\nu1,pat@example.com,Pat,newsletter\nu2,kim@example.com,Kim,newsletter\n"


@pytest.fixture
def console(tmp_path, db_url, monkeypatch, caplog):
    yield from running_console(tmp_path, db_url, monkeypatch, caplog, web=f'public_url = "{PUBLIC}"')


def test_one_click_unsubscribe_from_a_campaign_mail(console, tmp_path):
    cli = Cli(console.config)
    users = tmp_path / "users.csv"
    users.write_text(USERS)
    assert cli("customers", "import", str(users)).exit_code == 0
    result = cli("bulk", "send", "--template", "newsletter", "--list", "newsletter")
    assert result.exit_code == 0, result.output
    (msg,) = wait_for_mail(console.sink, "pat@example.com")
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    links = re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
    assert links[0].startswith(PUBLIC + "/unsubscribe/") and links[1].startswith("mailto:support+")
    path = links[0][len(PUBLIC):]

    c = console.client
    asked = c.get(path)  # a person or a link scanner: a button, and nothing changes yet
    assert asked.status == 200 and "Unsubscribe me" in asked.text
    assert not _opted_out(cli, "u1")
    # The provider's one-click POST: no session, another origin.
    done = c.post(path, {"List-Unsubscribe": "One-Click"}, headers={"Origin": "https://mail.example.net"})
    assert done.status == 200 and "You are unsubscribed" in done.text
    assert _opted_out(cli, "u1") and not _opted_out(cli, "u2")
    forged = path[:-4] + ("aaaa" if not path.endswith("aaaa") else "bbbb")
    assert c.post(forged, {"List-Unsubscribe": "One-Click"}).status == 404

    again = cli("bulk", "send", "--template", "newsletter", "--list", "newsletter", "--json")
    assert '"opted-out": 1' in again.stdout


def _opted_out(cli: Cli, user_id: str) -> bool:
    record = next(c for c in cli.json("customers", "list") if c["registered_user_id"] == user_id)
    return bool(cli.json("customers", "show", str(record["id"]))["opted_out"])


def test_behind_a_tls_proxy_forms_from_the_public_address_are_ours(console):
    """The console sees http from the proxy; the browser's Origin is the public https address."""
    c = console.client
    ours = c.post("/signin", {"address": "alice@acme.test"}, headers={"Origin": PUBLIC})
    assert ours.status == 200
    theirs = c.post("/signin", {"address": "alice@acme.test"}, headers={"Origin": "https://evil.example"})
    assert theirs.status == 403
