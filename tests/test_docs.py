"""The README documents every command; a new command without docs fails here."""

from __future__ import annotations

import click

from maild.cli import main
from conftest import REPO


def _commands(group: click.Group, prefix: str = "maild") -> list[str]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        out.extend(_commands(cmd, path) if isinstance(cmd, click.Group) else [path])
    return out


def test_every_command_is_in_the_readme():
    readme = REPO.joinpath("README.md").read_text()
    missing = []
    for path in _commands(main):
        group, _, leaf = path.rpartition(" ")
        # "maild issues list" may be written "maild issues list" or "... / `list`" in a group's row.
        if path not in readme and not (group != "maild" and group in readme and f"`{leaf}" in readme):
            missing.append(path)
    assert not missing, f"commands missing from README.md: {missing}"
