"""Site facts on identification records (customers import) and segments over them (maild bulk preview)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from maild.models import Customer, CustomerAddress, utcnow
from customer_helpers import ingest, mail

USERS = """user_id,emails,name,products_bought,products_viewed,last_visit,total_spent,currency,mailing_lists,tags,language
u1,pat@example.com,Pat,SKU-1;SKU-2,SKU-9,2026-01-10,150.00,EUR,newsletter,vip,en
u2,kim@example.com,Kim,SKU-2,,2025-05-01,20,EUR,newsletter promo,,pt-BR
u3,lee@example.com,Lee,,SKU-1,2024-12-24,0,USD,,,de
u4,alice@acme.test,Alice at home,SKU-1,,2026-01-01,500,EUR,newsletter,,en
"""


def _import(cli, tmp_path, text: str = USERS, name: str = "users.csv"):
    path = tmp_path / name
    path.write_text(text)
    return cli("customers", "import", str(path))


def _ids(cli, *flags: str) -> list[str]:
    data = cli.json("bulk", "preview", "--sample", "100", *flags)
    assert data["count"] == len(data["sample"])
    return sorted(m["email"] for m in data["sample"])


def test_import_keeps_site_facts_typed_and_shows_them(cli, tmp_path):
    assert _import(cli, tmp_path).exit_code == 0
    (pat,) = [c for c in cli.json("customers", "list") if c["registered_user_id"] == "u1"]
    shown = cli.json("customers", "show", str(pat["id"]))
    assert shown["products_bought"] == ["SKU-1", "SKU-2"] and shown["products_viewed"] == ["SKU-9"]
    assert (shown["last_visit"], shown["total_spent"], shown["currency"]) == ("2026-01-10", "150.00", "EUR")
    assert shown["mailing_lists"] == ["newsletter"] and shown["opted_out"] is None
    text = cli("customers", "show", str(pat["id"])).output
    assert "products_bought: SKU-1 SKU-2" in text and "total_spent: 150.00 EUR" in text


def test_reimport_replaces_lists_given_and_keeps_what_is_empty(cli, tmp_path):
    _import(cli, tmp_path)
    again = ("user_id,emails,name,products_bought,mailing_lists,total_spent,last_visit\n"
             "u1,pat@example.com,Pat,SKU-3,,,\n")
    result = _import(cli, tmp_path, again, "again.csv")
    assert result.exit_code == 0 and "1 updated" in result.output
    (pat,) = [c for c in cli.json("customers", "list") if c["registered_user_id"] == "u1"]
    shown = cli.json("customers", "show", str(pat["id"]))
    assert shown["products_bought"] == ["SKU-3"]  # a list given replaces the record's
    assert shown["mailing_lists"] == ["newsletter"] and shown["total_spent"] == "150.00"  # empty keeps
    assert shown["last_visit"] == "2026-01-10" and shown["products_viewed"] == ["SKU-9"]
    assert "0 updated, 1 unchanged" in _import(cli, tmp_path, again, "again.csv").output


def test_json_import_takes_lists_and_numbers(cli, tmp_path):
    text = ('[{"user_id": "j1", "emails": ["jo@example.com"], "name": "Jo", "products_bought": ["A", "B"],'
            ' "total_spent": 12.5, "currency": "eur", "mailing_lists": ["news"], "last_visit": "2026-02-01"}]')
    assert _import(cli, tmp_path, text, "users.json").exit_code == 0
    assert _ids(cli, "--bought", "B", "--spent-over", "12", "--list", "news") == ["jo@example.com"]
    (jo,) = cli.json("customers", "list")
    assert (jo["total_spent"], jo["currency"]) == ("12.50", "EUR")


def test_bad_site_facts_name_the_line_and_import_nothing(cli, tmp_path):
    for cells, problem in [
        ("u9,x@example.com,X,,,yesterday,,", "last_visit 'yesterday' is not an ISO date"),
        ("u9,x@example.com,X,,,,lots,", "total_spent 'lots' is not an amount"),
        ("u9,x@example.com,X,,,,-5,", "total_spent '-5' is not an amount"),
        ("u9,x@example.com,X,,,,,euro", "currency 'euro' is not a three-letter code"),
    ]:
        text = "user_id,emails,name,products_bought,products_viewed,last_visit,total_spent,currency\n" + cells + "\n"
        result = _import(cli, tmp_path, text, "bad.csv")
        assert result.exit_code == 1 and "line 2 (user_id u9)" in result.output and problem in result.output
    assert cli.json("customers", "list") == []


def test_segment_flags_select_known_members(cli, tmp_path):
    _import(cli, tmp_path)
    assert _ids(cli) == ["kim@example.com", "lee@example.com", "pat@example.com"]  # alice@acme.test is a rep
    assert _ids(cli, "--bought", "SKU-1") == ["pat@example.com"]
    assert _ids(cli, "--bought", "SKU-1", "--bought", "SKU-2") == ["kim@example.com", "pat@example.com"]
    assert _ids(cli, "--viewed", "SKU-1") == ["lee@example.com"]
    assert _ids(cli, "--spent-over", "100") == ["pat@example.com"]
    assert _ids(cli, "--spent-under", "100") == ["kim@example.com", "lee@example.com"]
    assert _ids(cli, "--last-visit-before", "2026-01-01") == ["kim@example.com", "lee@example.com"]
    assert _ids(cli, "--last-visit-after", "2026-01-10") == ["pat@example.com"]
    assert _ids(cli, "--list", "newsletter", "--list", "promo") == ["kim@example.com", "pat@example.com"]
    assert _ids(cli, "--list", "promo", "--bought", "SKU-1") == []
    assert _ids(cli, "--tag", "VIP") == ["pat@example.com"]
    assert _ids(cli, "--language", "pt") == ["kim@example.com"]
    assert _ids(cli, "--registered") == ["kim@example.com", "lee@example.com", "pat@example.com"]
    assert _ids(cli, "--unregistered") == []


def test_segment_over_maild_data_issues_contact_and_registration(app, cli, tmp_path):
    _import(cli, tmp_path)
    ingest(app, mail("Pat <pat@example.com>", subject="Refund please"))
    ingest(app, mail("Walk In <walk@example.org>", subject="Question"))
    assert _ids(cli, "--has-open-issue") == ["pat@example.com", "walk@example.org"]
    assert _ids(cli, "--no-open-issue", "--registered") == ["kim@example.com", "lee@example.com"]
    assert _ids(cli, "--unregistered") == ["walk@example.org"]
    assert _ids(cli, "--category", "uncategorized", "--registered") == ["pat@example.com"]
    today = utcnow().date()
    assert _ids(cli, "--contacted-after", str(today - timedelta(days=1))) == ["pat@example.com", "walk@example.org"]
    assert _ids(cli, "--contacted-before", str(today - timedelta(days=1))) == [
        "kim@example.com", "lee@example.com"]


def test_preview_leaves_out_merged_opted_out_failing_and_reps_and_counts_each(app, cli, tmp_path):
    _import(cli, tmp_path)
    ingest(app, mail("Pat Again <pat.old@example.org>"))
    with app.sessions() as s, s.begin():
        old = s.query(CustomerAddress).filter_by(key="pat.old@example.org").one().customer_id
        pat = s.query(Customer).filter_by(registered_user_id="u1").one().id
    assert cli("customers", "merge", str(old), str(pat)).exit_code == 0
    with app.sessions() as s, s.begin():
        s.execute(update(Customer).where(Customer.registered_user_id == "u2").values(opted_out_at=utcnow()))
        s.execute(update(CustomerAddress).where(CustomerAddress.key == "lee@example.com")
                  .values(failing_until=utcnow() + timedelta(days=3)))
    data = cli.json("bulk", "preview")
    assert data["count"] == 1 and [m["email"] for m in data["sample"]] == ["pat@example.com"]
    assert data["excluded"] == {"failing": 1, "merged": 1, "opted-out": 1, "rep-or-own-address": 1}
    text = cli("bulk", "preview").output
    assert "1 customer(s) get the mail" in text and "left out, opted-out: 1" in text
    # A record with a failing address and a good one gets the oldest good one (here: the merged record's).
    with app.sessions() as s, s.begin():
        s.execute(update(CustomerAddress).where(CustomerAddress.key == "pat@example.com")
                  .values(failing_until=utcnow() + timedelta(days=3)))
    assert [m["email"] for m in cli.json("bulk", "preview")["sample"]] == ["pat.old@example.org"]


def test_bad_flags_are_refused_with_the_reason(cli):
    result = cli("bulk", "preview", "--spent-over", "lots")
    assert result.exit_code == 2 and "'lots' is not an amount" in result.output
    result = cli("bulk", "preview", "--last-visit-before", "31.12.2026")
    assert result.exit_code == 2 and "is not a date as YYYY-MM-DD" in result.output
