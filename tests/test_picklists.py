"""Picklists: a rep's #type and #used checked against the configured lists and
recorded on the action; a typo is answered with the choices and the closest one."""

from __future__ import annotations

import pytest

from maild.app import build
from maild.config import load
from maild.desk.picklists import Picklists, PicklistError
from conftest import Cli, SECRET, write_config
from test_rep_commands import open_issue, outbox, rep_mail

PICKLISTS = """
[[picklist]]
name = "issue_type"
values = ["billing", "delivery", "returns", "product question"]

[[picklist]]
name = "info_used"
values = ["order history", "shipping status", "policy"]

[[picklist]]
name = "contact_method"
values = ["email", "phone", "letter"]
"""


@pytest.fixture
def picky(tmp_path, db_url, monkeypatch):
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    path = write_config(tmp_path / "maild.toml", db_url, extra=PICKLISTS)
    app = build(load(path))
    yield app, Cli(path)
    app.close()


def test_picks_are_recorded_on_the_reps_action(picky):
    app, cli = picky
    n = open_issue(app)
    stored = rep_mail(app, n, "#type Product  Question\n#used order history, POLICY\n#note")
    (mine,) = [i for i in cli.json("issues", "show", str(n))["interactions"] if i["id"] == stored.interaction_id]
    assert mine["picks"] == {"issue_type": ["product question"], "info_used": ["order history", "policy"]}
    assert "Picked issue_type: product question" in cli("issues", "show", str(n)).output


def test_a_typo_is_answered_with_the_choices_and_nothing_changes(picky):
    app, cli = picky
    n = open_issue(app)
    before = outbox(app)
    stored = rep_mail(app, n, "#type biling\n#close\nThanks, we sorted it.")
    shown = cli.json("issues", "show", str(n))
    assert shown["status"] == "open"
    assert all(i["picks"] == {} for i in shown["interactions"] if i["id"] == stored.interaction_id)
    (notice,) = outbox(app)[len(before):]
    assert notice["kind"] == "rep-notice" and notice["to"] == ["alice@acme.test"]
    assert "'biling' is not on the issue_type picklist. Did you mean 'billing'?" in notice["body"]
    assert "Choices: billing, delivery, returns, product question" in notice["body"]


def test_without_a_configured_list_the_rep_is_told_how_to_add_one(app, cli):
    n = open_issue(app)
    before = outbox(app)
    rep_mail(app, n, "#used policy")
    (notice,) = outbox(app)[len(before):]
    assert "no picklist 'info_used' is configured" in notice["body"]


def test_the_validation_function_other_commands_use():
    from maild.config_desk import PicklistConfig

    lists = Picklists([PicklistConfig(name="contact_method", values=("email", "phone", "in person"))])
    assert lists.check("contact_method", "In  Person") == "in person"
    with pytest.raises(PicklistError, match=r"Did you mean 'phone'.*Choices: email, phone, in person"):
        lists.check("contact_method", "phnoe")
    with pytest.raises(PicklistError, match=r"Choices: email, phone, in person$"):
        lists.check("contact_method", "carrier pigeon")


def test_config_refuses_duplicate_values(tmp_path, db_url):
    from maild.config import ConfigError

    path = write_config(tmp_path / "bad.toml", db_url,
                        extra='[[picklist]]\nname = "issue_type"\nvalues = ["billing", "Billing"]\n')
    with pytest.raises(ConfigError, match=r"picklist.*unique"):
        load(path)
