"""What every config section shares: strict models and the checks of addresses,
host:port values and environment variable names.

A leaf that config.py, config_desk.py and config_backoffice.py build on, so
each rule is written once; it imports nothing of maild's.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

ADDRESS_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
HOSTPORT_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.:-]*?):(\d{1,5})$")


class Strict(BaseModel):
    """A config section: unknown keys are errors, values never change after load."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def check_address(value: str) -> str:
    if not ADDRESS_RE.match(value):
        raise ValueError(f"{value!r} is not an email address")
    return value.strip()


def check_addresses(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(check_address(a) for a in values)


def check_hostport(value: str) -> str:
    m = HOSTPORT_RE.match(value)
    if not m or not 0 < int(m.group(2)) < 65536:
        raise ValueError(f"{value!r} is not host:port")
    return value


def check_env_name(value: str | None) -> str | None:
    if value is not None and not ENV_NAME_RE.match(value):
        raise ValueError(f"{value!r} is not an environment variable name")
    return value


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
