"""The config file: validated at load, every key documented, errors precise."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from maild.config import ConfigError, Settings, load
from conftest import REPO, run_maild

EXAMPLE = REPO / "config" / "maild.example.toml"


def test_example_config_is_valid_and_check_summarises_it():
    settings = load(EXAMPLE)
    assert [m.name for m in settings.mailbox] == ["support", "billing"]
    r = run_maild("check", "-c", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    assert b"mailbox support: support@acme.test" in r.stdout


def test_config_path_defaults_to_environment(monkeypatch):
    monkeypatch.setenv("MAILD_CONFIG", str(EXAMPLE))
    assert load(None).mailbox[0].address == "support@acme.test"


def _keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    out = set()
    for name, field in model.model_fields.items():
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))
        sub = next((a for a in inner if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is None and inner and hasattr(inner[0], "__args__"):
            sub = next((a for a in inner[0].__args__ if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if sub is not None:
            out |= _keys(sub, f"{prefix}{name}.")
        else:
            out.add(prefix + name)
    return out


def test_every_config_key_is_documented_in_the_example():
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"^#?\s*([a-z_0-9]+)\s*=", text, re.M))
    missing = {k for k in _keys(Settings) if k.rsplit(".", 1)[-1] not in documented}
    assert not missing, f"undocumented config keys: {sorted(missing)}"


def _write(tmp_path, text: str):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    return p


BASE = '[[mailbox]]\nname = "support"\naddress = "support@acme.test"\n'


@pytest.mark.parametrize(
    "text, expected",
    [
        (BASE + "[smtp]\nlisten = 25\n", "smtp.listen"),
        (BASE + "[database]\nurl = \"sqlite:///x\"\ncolour = \"blue\"\n", "database.colour: unknown key"),
        ('[[mailbox]]\nname = "support"\n', "mailbox[0].address: missing value"),
        (BASE + '[smtp]\nlisten = "nohost"\n', "smtp.listen"),
        (BASE + "[smtp]\nmax_message_size = \"big\"\n", "smtp.max_message_size"),
        (BASE + '[[rep]]\nname = "x"\nemail = "not-an-address"\n', "rep[0].email"),
        (BASE + '[mailbox.imap]\nhost = "h"\nuser = "u"\n', "password_env and oauth2_token_env"),
        (BASE + '[security]\nsecret_env = "not a name"\n', "security.secret_env"),
        ("", "mailbox: missing value"),
        ("[database\n", "not valid TOML"),
        (BASE + '[database]\nurl = "nonsense"\n', "database.url: not a database URL"),
        (BASE + '[database]\nurl = "mysql://u@h/db"\n', "database.url: 'mysql' databases are not supported"),
    ],
)
def test_invalid_config_names_file_key_and_problem(tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_check_exits_78_with_the_error(tmp_path):
    path = _write(tmp_path, BASE + "[smtp]\nlisten = 25\n")
    r = run_maild("check", "-c", str(path))
    assert r.returncode == 78
    assert f"{path}: smtp.listen".encode() in r.stderr


def test_missing_config_file_is_a_clear_error(tmp_path):
    r = run_maild("check", "-c", str(tmp_path / "nope.toml"))
    assert r.returncode == 78 and b"no such file" in r.stderr


def test_secret_comes_from_the_named_environment_variable(monkeypatch, tmp_path):
    settings = load(_write(tmp_path, BASE + '[security]\nsecret_env = "MY_SECRET"\n'))
    monkeypatch.delenv("MY_SECRET", raising=False)
    with pytest.raises(ConfigError, match="MY_SECRET"):
        settings.secret()
    monkeypatch.setenv("MY_SECRET", "s" * 32)
    assert settings.secret() == b"s" * 32


def test_secret_keys_only_name_environment_variables():
    # Commented-out optional keys count too: whatever an admin may uncomment.
    keys = re.findall(r"^#?\s*([a-z_0-9]+)\s*=", EXAMPLE.read_text(), re.M)
    secret_keys = [k for k in keys if re.search(r"password|secret|token|users", k)]
    assert secret_keys and all(k.endswith("_env") for k in secret_keys), secret_keys
