"""Gift certificates: unguessable codes, and the shop's commands (list, show, export, void)."""

from __future__ import annotations

import csv
import io
import json
import re

from maild.bulk.gifts import ALPHABET, new_code, normal_code


def test_codes_are_random_unambiguous_and_grouped():
    codes = {new_code() for _ in range(2000)}
    assert len(codes) == 2000
    for code in codes:
        assert re.fullmatch(r"[A-Z2-9]{4}(-[A-Z2-9]{4}){3}", code)
        assert not set(code.replace("-", "")) - set(ALPHABET) and not set(code) & set("01OIL")
    assert normal_code("abcd efgh-jkmn pqrs") == "ABCD-EFGH-JKMN-PQRS"


def _campaign(cli, tmp_path) -> dict:
    path = tmp_path / "users.csv"
    path.write_text("user_id,emails,name\nu1,pat@example.com,Pat\nu2,kim@example.com,Kim\n")
    assert cli("customers", "import", str(path)).exit_code == 0
    result = cli("bulk", "send", "--template", "newsletter", "--gift", "12.5", "usd", "--gift-expires",
                 "2099-06-30", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_list_show_export_void(cli, tmp_path):
    campaign = _campaign(cli, tmp_path)
    listed = cli.json("gifts", "list")
    assert len(listed) == 2
    for g in listed:
        assert {"code", "amount", "currency", "expires", "customer_id", "email", "campaign", "state"} <= set(g)
        assert (g["amount"], g["currency"], g["expires"], g["campaign"], g["state"]) == (
            "12.50", "USD", "2099-06-30", campaign["id"], "issued")
    first = listed[0]
    shown = cli.json("gifts", "show", first["code"].lower().replace("-", ""))
    assert shown == first
    exported = cli("gifts", "export", "--csv")
    assert exported.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert [r["code"] for r in rows] == [g["code"] for g in listed] and rows[0]["email"] == first["email"]
    voided = cli("gifts", "void", first["code"])
    assert voided.exit_code == 0 and first["code"] in voided.output
    assert cli.json("gifts", "show", first["code"])["state"] == "void"
    assert [g["code"] for g in cli.json("gifts", "list", "--state", "issued")] == [listed[1]["code"]]
    again = cli("gifts", "void", first["code"])
    assert again.exit_code == 1 and "void already" in again.output
    unknown = cli("gifts", "show", "NOPE-NOPE-NOPE-NOPE")
    assert unknown.exit_code == 1 and "no gift certificate" in unknown.output
    shown_customer = cli.json("customers", "show", str(first["customer_id"]))
    assert [g["code"] for g in shown_customer["gift_certificates"]] == [first["code"]]


def test_export_of_nothing_is_the_header(cli):
    result = cli("gifts", "export", "--csv")
    assert result.exit_code == 0 and result.stdout.splitlines() == [
        "code,amount,currency,expires,customer_id,email,campaign,state,issue,created"]
