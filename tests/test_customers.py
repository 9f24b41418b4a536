"""Customer identification records: matching, registered users, merging, history.

Every rule runs end to end: mail through the real pipeline, changes through the
`maild customers` commands, against SQLite and PostgreSQL.
"""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from conftest import SECRET, Cli, write_config
from customer_helpers import fails, ingest, live_ids, mail, record, write_users_csv, write_users_json
from maild.addresses import AddressRules
from maild.app import build
from maild.config import load
from maild.ingest.stages.identify import IdentifyContext, identify
from maild.ingest.stages.parse import parse
from maild.ingest.stages.lookup import DbLookup
from maild.ingest.stages.records import HUMAN
from maild.models import Customer, CustomerAddress, Interaction, OutboxMessage

RELAY = '[ingest]\nrelay_senders = ["noreply@site.example"]\n'


@pytest.fixture
def make(tmp_path, db_url, monkeypatch):
    """An app and a CLI on a config with extra TOML (e.g. ingest rules); closed afterwards."""
    monkeypatch.setenv("MAILD_SECRET", SECRET)
    apps = []

    def _make(extra: str = "", name: str = "maild.toml"):
        path = write_config(tmp_path / name, db_url, extra=extra)
        app = build(load(path))
        apps.append(app)
        return app, Cli(path)

    yield _make
    for app in apps:
        app.close()


# --- matching ---------------------------------------------------------------------


def test_case_and_plus_variants_are_one_customer_by_default(app, cli):
    a = ingest(app, mail("Pat <Pat@Example.COM>"))
    b = ingest(app, mail("pat+orders@example.com", subject="Order 7"))
    c = ingest(app, mail("PAT@EXAMPLE.com", subject="Again"))
    assert a.customer_id == b.customer_id == c.customer_id
    assert record(cli, a.customer_id)["emails"] == ["Pat@Example.COM"]
    assert len(record(cli, a.customer_id)["issues"]) == 3


def test_local_part_case_and_plus_folding_are_configurable(make):
    app, cli = make("[ingest]\nfold_plus_addresses = false\ncase_sensitive_local_part = true\n")
    pat = ingest(app, mail("pat@example.com")).customer_id
    assert ingest(app, mail("pat+orders@example.com")).customer_id != pat
    assert ingest(app, mail("Pat@example.com")).customer_id != pat
    # The domain is never case-sensitive.
    assert ingest(app, mail("pat@EXAMPLE.COM")).customer_id == pat
    assert len(live_ids(cli)) == 3


def test_customer_writing_from_two_addresses_is_one_record(app, cli):
    home = ingest(app, mail("Pat <pat@home.example>", subject="Printer")).customer_id
    r = cli("customers", "add-address", str(home), "Pat.Person@Work.example")
    assert r.exit_code == 0, r.output
    work = ingest(app, mail("pat.person@work.example", subject="Scanner"))
    assert work.customer_id == home
    shown = record(cli, home)
    assert shown["emails"] == ["pat@home.example", "Pat.Person@Work.example"]
    assert [i["subject"] for i in shown["issues"]] == ["Printer", "Scanner"]


def test_registered_user_is_matched_by_any_of_their_addresses(app, cli, tmp_path):
    users = write_users_csv(tmp_path / "users.csv", "u1,pat@home.example;pat@work.example,Pat Person,,,,")
    assert cli.json("customers", "import", str(users))["created"] == 1
    (user,) = cli.json("customers", "list")
    stored = ingest(app, mail("Someone <PAT@work.example>"))
    assert stored.customer_id == user["id"]
    assert live_ids(cli) == [user["id"]]
    # The registered user's name stays; the mail's display name does not replace it.
    assert record(cli, user["id"])["name"] == "Pat Person"


def test_identify_is_pure_and_asks_one_lookup_per_sender():
    asked = []

    def lookup(key):
        asked.append(key)
        return 42 if key == "kim@kim.example" else None

    ctx = IdentifyContext(AddressRules(), frozenset({"support@acme.test"}), {"alice@acme.test": 1})
    msg = parse(mail("Kim <Kim+form@Kim.Example>"))
    match = identify(msg, HUMAN, ctx, lookup)
    assert (match.customer_id, match.email, match.name) == (42, "Kim+form@Kim.Example", "Kim")
    assert asked == ["kim@kim.example"]
    assert identify(parse(mail("alice@acme.test")), HUMAN, ctx, lookup).is_rep


def test_an_address_left_on_a_merged_record_matches_the_survivor(app):
    with app.sessions() as s, s.begin():  # as an older version left merges: addresses not moved
        survivor = Customer(name="Pat", tags=[])
        s.add(survivor)
        s.flush()
        old = Customer(name="", tags=[], merged_into_id=survivor.id)
        old.addresses.append(CustomerAddress(email="pat@old.example", key="pat@old.example"))
        s.add(old)
        s.flush()
        assert DbLookup(s).live_customer_by_key("pat@old.example") == survivor.id
        assert DbLookup(s).live_customer_by_key("nobody@old.example") is None
        survivor_id = survivor.id
    assert ingest(app, mail("Pat@old.example")).customer_id == survivor_id


def test_a_sender_another_delivery_just_recorded_is_not_doubled(app, cli, monkeypatch):
    first = ingest(app, mail("Pat <pat@example.com>", subject="To support and billing"))
    # The same mail's other delivery: identify looked before the first one committed.
    monkeypatch.setattr(DbLookup, "live_customer_by_key", lambda self, key: None)
    second = ingest(app, mail("Pat <PAT@example.com>", subject="To support and billing"))
    assert second.customer_id == first.customer_id
    assert live_ids(cli) == [first.customer_id]


# --- web-form relays --------------------------------------------------------------------


def test_web_form_relay_is_identified_by_reply_to(make):
    app, cli = make(RELAY)
    form = mail("Our Site <noreply@site.example>", subject="Contact form", reply_to="Kim Doe <kim@kim.example>")
    stored = ingest(app, form)
    # The relay's noreply address does not make the customer's message automatic.
    assert stored.outcome == "interaction" and stored.new_issue and stored.auto is None
    kim = record(cli, stored.customer_id)
    assert (kim["name"], kim["emails"]) == ("Kim Doe", ["kim@kim.example"])
    # Kim's own mail later lands on the same record; the relay never gets one.
    assert ingest(app, mail("kim@kim.example", subject="Follow-up")).customer_id == stored.customer_id
    assert live_ids(cli) == [stored.customer_id]
    with app.sessions() as s:
        interaction = s.get(Interaction, stored.interaction_id)
        assert interaction.from_email == "kim@kim.example"
        acks = s.scalars(select(OutboxMessage.recipients).where(OutboxMessage.kind == "acknowledgement")).all()
    assert ["kim@kim.example"] in acks and not any("noreply@site.example" in r for r in acks)


def test_reply_to_never_identifies_anyone_but_a_relay(make):
    app, cli = make(RELAY)
    stored = ingest(app, mail("Pat <pat@example.com>", reply_to="Eve <eve@evil.example>"))
    assert record(cli, stored.customer_id)["emails"] == ["pat@example.com"]
    assert cli.json("customers", "search", "eve@evil") == []


def test_relay_mail_without_a_customer_creates_no_record(make):
    app, cli = make(RELAY)
    for reply_to in (None, "support@acme.test"):
        stored = ingest(app, mail("noreply@site.example", subject="Form", reply_to=reply_to))
        assert stored.customer_id is None
    assert live_ids(cli) == []


def test_relay_sender_without_config_is_an_ordinary_automatic_sender(app, cli):
    stored = ingest(app, mail("noreply@site.example", subject="Form", reply_to="kim@kim.example"))
    assert stored.outcome == "unmatched-auto" and stored.customer_id is None
    assert live_ids(cli) == []


# --- registered users: import, later registration, link ----------------------------------


def test_later_registration_by_import_links_the_record_with_its_history(app, cli, tmp_path):
    first = ingest(app, mail("Kim <kim@kim.example>", subject="Where is my order"))
    second = ingest(app, mail("kim@kim.example", subject="Still waiting"))
    users = write_users_csv(tmp_path / "users.csv", "site-17,kim@kim.example,Kim Doe,10115,,vip,1990-02-03")
    report = cli.json("customers", "import", str(users))
    assert report == {"created": 0, "updated": 0, "unchanged": 0, "linked": 1, "merged": 0}
    kim = record(cli, first.customer_id)
    assert kim["registered_user_id"] == "site-17" and kim["name"] == "Kim Doe"
    assert (kim["postal_code"], kim["tags"], kim["birthday"]) == ("10115", ["vip"], "1990-02-03")
    assert [i["id"] for i in kim["issues"]] == [first.issue_id, second.issue_id]
    assert ingest(app, mail("kim@kim.example", subject="Thanks")).customer_id == first.customer_id


def test_import_merges_every_unregistered_record_of_the_user(app, cli, tmp_path):
    home = ingest(app, mail("kim@home.example", subject="One"))
    work = ingest(app, mail("Kim W <kim@work.example>", subject="Two"))
    users = write_users_json(tmp_path / "users.json", [
        {"user_id": 17, "emails": ["kim@home.example", "kim@work.example", "kim@new.example"], "name": "Kim Doe"},
    ])
    report = cli.json("customers", "import", str(users))
    assert (report["linked"], report["merged"], report["created"]) == (1, 1, 0)
    assert live_ids(cli) == [home.customer_id]
    kim = record(cli, home.customer_id)
    assert kim["registered_user_id"] == "17" and kim["merged_ids"] == [work.customer_id]
    assert sorted(kim["emails"]) == ["kim@home.example", "kim@new.example", "kim@work.example"]
    assert [i["subject"] for i in kim["issues"]] == ["One", "Two"]
    assert ingest(app, mail("kim@work.example")).customer_id == home.customer_id


def test_reimport_updates_fields_and_adds_addresses_but_never_clears(app, cli, tmp_path):
    path = tmp_path / "users.csv"
    write_users_csv(path, "u1,pat@example.com,Pat,,+49 30 1234,vip;press,", "u2,sam@example.com,Sam,,,,")
    assert cli.json("customers", "import", str(path))["created"] == 2
    write_users_csv(path, "u1,pat@example.com pat@other.example,Pat Person,,,vip,", "u2,sam@example.com,Sam,,,,")
    assert cli.json("customers", "import", str(path)) == {
        "created": 0, "updated": 1, "unchanged": 1, "linked": 0, "merged": 0}
    (pat,) = cli.json("customers", "search", "u1")
    assert pat["name"] == "Pat Person" and pat["tags"] == ["vip"]
    assert pat["phone"] == "+49 30 1234"  # an empty cell leaves the field as it was
    assert pat["emails"] == ["pat@example.com", "pat@other.example"]


@pytest.mark.parametrize("name, content, message", [
    ("users.csv", "user_id,emails,name\nu1,a@example.com,A\nu2,not-an-address,B\n",
     "line 3 (user_id u2): 'not-an-address' is not an email address"),
    ("users.csv", "user_id,emails,name,zip\nu1,a@example.com,A,123\n", "line 1: the header has unknown column 'zip'"),
    ("users.csv", "user_id,emails,name\nu1,a@example.com,A\nu1,b@example.com,B\n",
     "line 3 (user_id u1): the same user as line 2"),
    ("users.json", '[{"user_id": "u1", "emails": ["a@example.com"], "name": "A"},'
                   ' {"user_id": "u2", "emails": ["b@example.com"], "name": "B", "birthday": "03/02/1990"}]',
     "entry 2 (user_id u2): birthday '03/02/1990' is not a date as YYYY-MM-DD"),
    ("users.json", '[{"user_id": "u1", "emails": "a@example.com", "name": "A", "time_zone": "Mars/Olympus"}]',
     "entry 1 (user_id u1): time_zone 'Mars/Olympus' is not a time zone"),
])
def test_bad_user_list_names_the_row_and_imports_nothing(cli, tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    output = fails(cli, "customers", "import", str(path))
    assert message in output and "nothing imported" in output
    assert live_ids(cli) == []


def test_import_refuses_an_address_of_another_registered_user(app, cli, tmp_path):
    path = write_users_csv(tmp_path / "a.csv", "u1,shared@example.com,Ann,,,,")
    cli.json("customers", "import", str(path))
    path = write_users_csv(tmp_path / "b.csv", "u2,bo@example.com,Bo,,,,", "u3,SHARED@example.com,Cy,,,,")
    output = fails(cli, "customers", "import", str(path))
    assert "line 3 (user_id u3): SHARED@example.com belongs to customer 1 (registered user u1)" in output
    assert cli.json("customers", "search", "bo@example.com") == []  # the good row was not kept either
    # Two users of one file claiming one address: the second is refused.
    path = write_users_csv(tmp_path / "c.csv", "u4,dee@example.com,Dee,,,,", "u5,Dee@Example.com,Eve,,,,")
    output = fails(cli, "customers", "import", str(path))
    assert "line 3 (user_id u5): Dee@Example.com belongs to customer" in output and "(registered user u4)" in output
    assert live_ids(cli) == [1]


def test_link_registers_a_record_and_merges_into_the_users_record(app, cli):
    a = ingest(app, mail("Kim <kim@home.example>", subject="One")).customer_id
    b = ingest(app, mail("kim@work.example", subject="Two")).customer_id
    assert cli.json("customers", "link", str(a), "u9")["registered_user_id"] == "u9"
    linked = cli.json("customers", "link", str(b), "u9")
    assert linked["id"] == a and sorted(linked["emails"]) == ["kim@home.example", "kim@work.example"]
    assert [i["subject"] for i in record(cli, a)["issues"]] == ["One", "Two"]
    c = ingest(app, mail("cy@example.com")).customer_id
    assert f"customer {a} (registered user u9) is already" in fails(cli, "customers", "link", str(a), "u10")
    assert "no customer 999" in fails(cli, "customers", "link", "999", "u11")
    assert cli.json("customers", "link", str(c), "u10")["registered_user_id"] == "u10"


def test_show_rechecks_a_record_against_registered_users(make, tmp_path):
    # Made while +subaddresses were separate customers...
    app, cli = make("[ingest]\nfold_plus_addresses = false\n", name="before.toml")
    shop = ingest(app, mail("Kim <kim+shop@kim.example>", subject="Order")).customer_id
    users = write_users_csv(tmp_path / "users.csv", "u5,kim@kim.example,Kim Doe,,,,")
    assert cli.json("customers", "import", str(users))["created"] == 1
    user = cli.json("customers", "search", "u5")[0]["id"]
    # ...and shown after the rule changed: the record is the registered user's.
    app, cli = make("", name="after.toml")
    result = cli("customers", "show", str(shop), "--json")
    assert f"customer {shop} is registered user u5: merged into customer {user}" in result.stderr
    shown = json.loads(result.stdout)
    assert shown["id"] == user and shown["merged_ids"] == [shop]
    assert [i["subject"] for i in shown["issues"]] == ["Order"]
    assert live_ids(cli) == [user]


# --- merge, edit, addresses ----------------------------------------------------------------


def test_merge_keeps_every_issue_and_interaction(app, cli):
    a1 = ingest(app, mail("Pat <pat@old.example>", subject="First"))
    a2 = ingest(app, mail("pat@old.example", subject="Second"))
    b = ingest(app, mail("Pat Person <pat@new.example>", subject="Third"))
    merged = cli.json("customers", "merge", str(a1.customer_id), str(b.customer_id))
    assert merged["id"] == b.customer_id and merged["name"] == "Pat Person"
    assert merged["emails"] == ["pat@old.example", "pat@new.example"]
    shown = record(cli, b.customer_id)
    assert [i["id"] for i in shown["issues"]] == [a1.issue_id, a2.issue_id, b.issue_id]
    assert shown["merged_ids"] == [a1.customer_id]
    with app.sessions() as s:
        owners = s.scalars(select(Interaction.customer_id).where(Interaction.direction == "inbound")).all()
        assert set(owners) == {b.customer_id}
        assert s.get(Customer, a1.customer_id).merged_into_id == b.customer_id  # kept, for the record
    # The merged record is gone from lists and searches; its address matches the survivor.
    assert live_ids(cli) == [b.customer_id]
    assert [c["id"] for c in cli.json("customers", "search", "pat")] == [b.customer_id]
    assert ingest(app, mail("pat@old.example", subject="Fourth")).customer_id == b.customer_id
    # Showing the merged record shows the survivor, and says so.
    result = cli("customers", "show", str(a1.customer_id))
    assert f"customer {a1.customer_id} was merged into customer {b.customer_id}" in result.stderr
    assert "Fourth" in result.stdout


def test_merge_refusals_change_nothing(app, cli, tmp_path):
    users = write_users_csv(tmp_path / "u.csv", "u1,ann@example.com,Ann,,,,", "u2,bo@example.com,Bo,,,,")
    cli.json("customers", "import", str(users))
    ann, bo = live_ids(cli)
    assert "both registered users" in fails(cli, "customers", "merge", str(ann), str(bo))
    assert "cannot be merged into itself" in fails(cli, "customers", "merge", str(ann), str(ann))
    assert "no customer 999" in fails(cli, "customers", "merge", "999", str(ann))
    cy = ingest(app, mail("cy@example.com")).customer_id
    cli.json("customers", "merge", str(cy), str(ann))
    assert f"customer {cy} was merged into customer {ann}" in fails(cli, "customers", "merge", str(cy), str(bo))
    assert live_ids(cli) == [ann, bo]


def test_merging_a_registered_record_into_an_unregistered_one_moves_the_user(app, cli, tmp_path):
    cli.json("customers", "import", str(write_users_csv(tmp_path / "u.csv", "u1,ann@example.com,Ann,,,,")))
    (ann,) = live_ids(cli)
    other = ingest(app, mail("ann@elsewhere.example")).customer_id
    merged = cli.json("customers", "merge", str(ann), str(other))
    assert merged["id"] == other and merged["registered_user_id"] == "u1"
    assert ingest(app, mail("ann@example.com")).customer_id == other


def test_adding_an_address_another_record_owns_names_it(app, cli):
    pat = ingest(app, mail("Pat <pat@example.com>")).customer_id
    sam = ingest(app, mail("sam@example.com")).customer_id
    output = fails(cli, "customers", "add-address", str(sam), "PAT+x@example.com")
    assert f"belongs to customer {pat} (Pat)" in output and f"maild customers merge {pat} {sam}" in output
    assert "is not an email address" in fails(cli, "customers", "add-address", str(sam), "pat at example")
    assert record(cli, sam)["emails"] == ["sam@example.com"]


def test_removed_address_matches_nobody_but_history_stays(app, cli):
    first = ingest(app, mail("pat@example.com", subject="Old"))
    pat = first.customer_id
    cli.json("customers", "add-address", str(pat), "pat@work.example")
    assert cli.json("customers", "remove-address", str(pat), "PAT@example.com")["emails"] == ["pat@work.example"]
    assert "has no address nobody@example.com" in fails(cli, "customers", "remove-address", str(pat),
                                                       "nobody@example.com")
    again = ingest(app, mail("pat@example.com", subject="New"))
    assert again.customer_id != pat
    assert [i["subject"] for i in record(cli, pat)["issues"]] == ["Old"]


def test_edit_sets_and_clears_the_fields_reps_expect(app, cli):
    pat = str(ingest(app, mail("pat@example.com")).customer_id)
    data = cli.json("customers", "edit", pat, "--name", "Pat Person", "--postal-code", "10115",
                    "--phone", "+49 30 1234", "--other-id-info", "calls from the office", "--tags", "vip,press",
                    "--language", "de-DE", "--time-zone", "Europe/Berlin", "--birthday", "1990-02-03")
    assert {k: data[k] for k in ("name", "postal_code", "phone", "other_id_info", "tags", "language",
                                 "time_zone", "birthday")} == {
        "name": "Pat Person", "postal_code": "10115", "phone": "+49 30 1234",
        "other_id_info": "calls from the office", "tags": ["vip", "press"], "language": "de-DE",
        "time_zone": "Europe/Berlin", "birthday": "1990-02-03"}
    data = cli.json("customers", "edit", pat, "--phone", "", "--add-tag", "new", "--remove-tag", "VIP")
    assert data["phone"] is None and data["tags"] == ["press", "new"] and data["name"] == "Pat Person"
    assert "is in the future" in fails(cli, "customers", "edit", pat, "--birthday", "2090-01-01")
    assert "not a language tag" in fails(cli, "customers", "edit", pat, "--language", "English please")
    assert "postal_code is longer than 20" in fails(cli, "customers", "edit", pat, "--postal-code", "1" * 21)
    assert record(cli, int(pat))["birthday"] == "1990-02-03"


# --- find and see -----------------------------------------------------------------------------


def test_search_by_name_address_phone_and_tag(app, cli):
    pat = str(ingest(app, mail("Pat Person <pat@example.com>")).customer_id)
    sam = str(ingest(app, mail("Sam Smith <sam@shop.example>")).customer_id)
    cli.json("customers", "edit", pat, "--phone", "+49 (30) 555-1234", "--tags", "VIP")
    cli.json("customers", "edit", sam, "--tags", "vipish 50%off")

    def found(text):
        return [str(c["id"]) for c in cli.json("customers", "search", text)]

    assert found("person") == [pat]
    assert found("SHOP.example") == [sam]
    assert found("5551234") == [pat] and found("30 555") == [pat]
    assert found("vip") == [pat]  # a tag matches whole, case-insensitively
    assert found("50%") == []  # no wildcard: % is a character like any other
    assert found("nobody") == []
    text = cli("customers", "search", "smith").stdout
    assert "sam@shop.example" in text


def test_show_lists_every_issue_the_customer_raised_or_wrote_in(app, cli):
    pat = ingest(app, mail("pat@example.com", subject="Printer", msgid="<printer@example.com>"))
    sam = ingest(app, mail("sam@example.com", subject="Re: Printer", in_reply_to="<printer@example.com>"))
    assert sam.issue_id == pat.issue_id and sam.customer_id != pat.customer_id
    issues = record(cli, sam.customer_id)["issues"]
    assert [(i["id"], i["role"]) for i in issues] == [(pat.issue_id, "participant")]
    assert record(cli, pat.customer_id)["issues"][0]["role"] == "customer"
    text = cli("customers", "show", str(sam.customer_id)).stdout
    assert "Printer (wrote in it)" in text
