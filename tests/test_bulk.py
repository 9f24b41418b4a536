"""Campaigns end to end through a real SMTP sink: site facts in, a segment out, one mail each with its
own gift code and unsubscribe address, opt-outs honoured, a kill -9 mid-campaign resumed without a
second copy, and a reply that reopens the campaign issue."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, func, select, text

from maild.app import build
from maild.config import load
from maild.models import CampaignRecipient, Customer, GiftCertificate, Issue, OutboxMessage
from conftest import REPO, SECRET, Cli, run_maild, write_config
from customer_helpers import ingest, mail


@pytest.fixture
def bulk_app(tmp_path, db_url, sink, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    extra = f'[outbound]\nrelay = "127.0.0.1:{sink.port}"\nretry_base = 1.0\n\n[bulk]\nrate = 60000\n'
    path = write_config(tmp_path / "maild.toml", db_url, extra=extra)
    app = build(load(path))
    app.config_path = path
    app.cli = Cli(path)
    yield app
    app.close()


USERS = """user_id,emails,name,products_bought,last_visit,total_spent,currency,mailing_lists
u1,pat@example.com,Pat,SKU-1,2026-01-10,150.00,EUR,newsletter
u2,kim@example.com,Kim,SKU-2,2025-05-01,20,EUR,newsletter
u3,lee@example.com,Lee,SKU-1,2024-12-24,300,EUR,
u4,alice@acme.test,Alice at home,SKU-1,2026-01-01,500,EUR,newsletter
"""


def _import(app, tmp_path, text: str = USERS) -> None:
    path = tmp_path / "users.csv"
    path.write_text(text)
    result = app.cli("customers", "import", str(path))
    assert result.exit_code == 0, result.output


def _send_all(app) -> None:
    while app.sender.run_once().get("sent"):
        pass


def _unsubscribe_address(msg) -> str:
    m = re.fullmatch(r"<mailto:([^?>]+)\?subject=unsubscribe>", str(msg["List-Unsubscribe"]).strip())
    assert m, msg["List-Unsubscribe"]
    return m.group(1)


def test_campaign_with_gifts_one_mail_each_then_unsubscribe_and_the_next_campaign_skips(bulk_app, sink, tmp_path):
    app, cli = bulk_app, bulk_app.cli
    _import(app, tmp_path)
    result = cli("bulk", "send", "--template", "newsletter", "--list", "newsletter", "--gift", "25", "EUR",
                 "--gift-expires", "2099-12-31", "--json")
    assert result.exit_code == 0, result.output
    campaign = json.loads(result.stdout)
    assert (campaign["queued"], campaign["excluded"]) == (2, {"rep-or-own-address": 1})
    _send_all(app)
    got = {env["to"][0]: msg for env, msg in sink.messages()}
    assert sorted(got) == ["kim@example.com", "pat@example.com"]  # never alice@acme.test, a rep
    assert len(sink.messages()) == 2
    codes = {}
    for to, msg in got.items():
        assert msg["Precedence"] == "bulk" and msg["Auto-Submitted"] == "auto-generated"
        unsubscribe = _unsubscribe_address(msg)
        assert unsubscribe.startswith("support+") and unsubscribe in msg.get_content()
        (code,) = re.findall(r"\b[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}-[A-Z2-9]{4}\b", msg.get_content())
        codes[to] = code
    assert len(set(codes.values())) == 2
    gifts = {g["email"]: g for g in cli.json("gifts", "list", "--campaign", str(campaign["id"]))}
    assert {e: g["code"] for e, g in gifts.items()} == codes
    assert all(g["amount"] == "25.00" and g["currency"] == "EUR" and g["expires"] == "2099-12-31"
               and g["state"] == "issued" for g in gifts.values())
    with app.sessions() as s:  # each mail is on a closed issue of the customer's, with its certificate
        for g in gifts.values():
            issue = s.get_one(Issue, g["issue"])
            assert (issue.status, issue.gift_certificate_id, issue.customer_id) == ("closed", g["code"],
                                                                                  g["customer_id"])
    status = cli.json("bulk", "status", str(campaign["id"]))
    assert (status["status"], status["sent"], status["waiting"]) == ("done", 2, 0)

    # Kim writes to the unsubscribe address: an opt-out, no issue opened, nothing sent.
    issues_before = _count(app, Issue)
    stored = ingest(app, mail("Kim <kim@example.com>", subject="unsubscribe", body="").replace(
        b"To: support@acme.test", b"To: " + _unsubscribe_address(got["kim@example.com"]).encode()))
    assert stored.token_purpose == "unsubscribe" and not stored.new_issue and not stored.reopened
    assert _count(app, Issue) == issues_before
    assert app.sender.run_once().get("sent", 0) == 0  # no acknowledgement
    kim = next(c for c in cli.json("customers", "list") if c["registered_user_id"] == "u2")
    assert cli.json("customers", "show", str(kim["id"]))["opted_out"]

    again = json.loads(cli("bulk", "send", "--template", "newsletter", "--list", "newsletter", "--json").stdout)
    assert again["queued"] == 1 and again["excluded"] == {"opted-out": 1, "rep-or-own-address": 1}
    _send_all(app)
    assert [env["to"][0] for env, _ in sink.messages()[2:]] == ["pat@example.com"]


def _count(app, model) -> int:
    with app.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_a_reply_to_a_campaign_mail_reopens_its_issue(bulk_app, sink, tmp_path):
    app, cli = bulk_app, bulk_app.cli
    _import(app, tmp_path)
    assert cli("bulk", "send", "--template", "newsletter", "--bought", "SKU-2").exit_code == 0
    _send_all(app)
    ((_, sent),) = sink.messages()
    reply = mail("Kim <kim@example.com>", subject="Re: " + sent["Subject"], body="Do you ship to Lisbon?",
                 in_reply_to=sent["Message-ID"])
    stored = ingest(app, reply)
    assert stored.reopened and not stored.new_issue and stored.thread_reason == "in-reply-to"
    with app.sessions() as s:
        assert s.get_one(Issue, stored.issue_id).status == "open"


def test_test_to_sends_one_sample_to_the_rep_and_nothing_else(bulk_app, sink, tmp_path):
    app, cli = bulk_app, bulk_app.cli
    _import(app, tmp_path)
    result = cli("bulk", "send", "--template", "newsletter", "--list", "newsletter", "--gift", "5", "EUR",
                 "--test-to", "Bob")
    assert result.exit_code == 0 and "nothing else sent" in result.output
    _send_all(app)
    ((env, msg),) = sink.messages()
    assert env["to"] == ["bob@acme.test"] and msg["Subject"].startswith("[test] ")
    assert _count(app, GiftCertificate) == 0 and cli.json("bulk", "list") == []
    assert cli("bulk", "send", "--template", "newsletter", "--test-to", "nobody").exit_code == 1


def test_refusals_say_why(bulk_app, tmp_path):
    cli = bulk_app.cli
    _import(bulk_app, tmp_path)
    for args, words in [
        (["--template", "no_such"], "no template 'no_such'"),
        (["--template", "newsletter", "--gift", "0", "EUR"], "must be above 0"),
        (["--template", "newsletter", "--gift", "5", "euros"], "three-letter code"),
        (["--template", "newsletter", "--gift", "5", "EUR", "--gift-expires", "2001-01-01"], "not in the future"),
    ]:
        result = cli("bulk", "send", *args)
        assert result.exit_code == 1 and words in result.output, result.output
    assert cli.json("bulk", "list") == []
    assert cli("bulk", "status", "99").exit_code == 1 and cli("bulk", "cancel", "99").exit_code == 1


def test_throttled_campaign_waits_its_turn_and_cancel_stops_what_is_not_sent(bulk_app, sink, tmp_path):
    app, cli = bulk_app, bulk_app.cli
    _import(app, tmp_path)
    sent = json.loads(cli("bulk", "send", "--template", "newsletter", "--registered", "--rate", "1",
                          "--json").stdout)
    assert sent["queued"] == 3
    app.sender.run_once()  # one a minute: the first is due now, the others later
    assert len(sink.messages()) == 1
    result = cli("bulk", "cancel", str(sent["id"]))
    assert result.exit_code == 0 and "2 queued mail(s) stopped" in result.output
    status = cli.json("bulk", "status", str(sent["id"]))
    assert (status["status"], status["sent"], status["cancelled"]) == ("cancelled", 1, 2)
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(OutboxMessage)
                        .where(OutboxMessage.status == "cancelled")) == 2
    assert cli("bulk", "cancel", str(sent["id"])).exit_code == 1


def _generated_users(n: int) -> str:
    lines = ["user_id,emails,name,mailing_lists"]
    lines += [f"g{i},user{i}@example.net,User {i},newsletter" for i in range(n)]
    return "\n".join(lines) + "\n"


@pytest.mark.slow
def test_kill_9_mid_campaign_then_resume_sends_nobody_twice(bulk_app, sink, tmp_path, db_url):
    app, cli = bulk_app, bulk_app.cli
    n = 1500
    _import(app, tmp_path, _generated_users(n))
    env = {**os.environ, "MAILD_SECRET": SECRET}
    engine = create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    proc = subprocess.Popen([sys.executable, "-m", "maild", "bulk", "send", "--template", "newsletter",
                             "--list", "newsletter", "-c", str(app.config_path)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    queued = 0
    deadline = time.monotonic() + 120
    while queued == 0 and proc.poll() is None:  # kill it after its first committed chunk, mid-campaign
        assert time.monotonic() < deadline
        try:
            with engine.connect() as conn:
                queued = conn.scalar(text("SELECT count(*) FROM campaign_recipients WHERE state = 'queued'")) or 0
        except Exception:
            queued = 0  # the table is not there yet, or SQLite is busy
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    engine.dispose()
    (campaign,) = cli.json("bulk", "list")
    assert 0 < campaign["queued"] < n and campaign["status"] == "queueing"
    result = run_maild("bulk", "resume", str(campaign["id"]), "-c", str(app.config_path))
    assert result.returncode == 0, result.stderr
    assert cli("bulk", "resume", str(campaign["id"])).exit_code == 1  # nothing left to queue
    _send_all(app)
    received = [env["to"][0] for env, _ in sink.messages()]
    assert len(received) == n and len(set(received)) == n
    with app.sessions() as s:
        assert s.scalar(select(func.count()).select_from(CampaignRecipient)) == n
        assert s.scalar(select(func.count(func.distinct(Issue.customer_id)))) == n
        assert s.scalar(select(func.count()).select_from(Customer).where(Customer.opted_out_at.is_not(None))) == 0


def test_unsubscribing_from_a_campaign_mail_whose_issue_was_merged_opts_out_its_own_customer(bulk_app, sink,
                                                                                              tmp_path):
    app, cli = bulk_app, bulk_app.cli
    _import(app, tmp_path)
    assert cli("bulk", "send", "--template", "newsletter", "--list", "newsletter").exit_code == 0
    _send_all(app)
    got = {env["to"][0]: msg for env, msg in sink.messages()}
    issue_of = {to: int(re.search(r"\[#(\d+)\]", str(msg["Subject"])).group(1)) for to, msg in got.items()}
    r = cli("issues", "merge", str(issue_of["pat@example.com"]), str(issue_of["kim@example.com"]))
    assert r.exit_code == 0, r.output
    ingest(app, mail("Pat <pat@example.com>", subject="unsubscribe", body="").replace(
        b"To: support@acme.test", b"To: " + _unsubscribe_address(got["pat@example.com"]).encode()))
    opted = {c["registered_user_id"]: cli.json("customers", "show", str(c["id"]))["opted_out"]
             for c in cli.json("customers", "list") if c["registered_user_id"] in ("u1", "u2")}
    assert bool(opted["u1"]) and not opted["u2"]


def test_an_opt_out_stops_campaign_mail_still_waiting_in_the_outbox(bulk_app, sink, tmp_path):
    """A throttled campaign queued hours of mail; who unsubscribes meanwhile gets none of it."""
    from datetime import timedelta

    from maild.models import utcnow

    app, cli = bulk_app, bulk_app.cli
    _import(app, tmp_path)
    assert cli("bulk", "send", "--template", "newsletter", "--list", "newsletter").exit_code == 0
    _send_all(app)
    first = {env["to"][0]: msg for env, msg in sink.messages()}
    slow = json.loads(cli("bulk", "send", "--template", "newsletter", "--list", "newsletter", "--rate", "1",
                          "--json").stdout)
    assert slow["queued"] == 2
    # Kim unsubscribes (from the first campaign's mail) before the second reaches her.
    ingest(app, mail("Kim <kim@example.com>", subject="unsubscribe", body="").replace(
        b"To: support@acme.test", b"To: " + _unsubscribe_address(first["kim@example.com"]).encode()))
    app.sender.run_once(now=utcnow() + timedelta(hours=1))
    later = [env["to"][0] for env, _ in sink.messages()[len(first):]]
    assert later == ["pat@example.com"]
    status = cli.json("bulk", "status", str(slow["id"]))
    assert status["sent"] == 1
