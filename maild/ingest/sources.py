"""Reading stored mail for `maild import`: an mbox file or a Maildir folder.

Messages come out in delivery order (mbox order; Maildir file names, which
start with the delivery time), so a reply is imported after what it answers.
"""

from __future__ import annotations

import mailbox
import os
from pathlib import Path
from collections.abc import Iterator


class SourceError(Exception):
    pass


def _maildir_files(path: Path) -> list[str]:
    """Plain strings: a Path caches its text form once read, growing the list as it is read."""
    files: list[tuple[str, str]] = []
    for sub in ("cur", "new"):
        folder = path / sub
        if folder.is_dir():
            files.extend((e.name, e.path) for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    files.sort()
    return [file for _, file in files]


def _read(file: str) -> bytes:
    with open(file, "rb") as f:
        return f.read()


def open_source(path: str | os.PathLike) -> tuple[int, Iterator[bytes]]:
    """How many messages there are, and an iterator over their raw bytes."""
    p = Path(path)
    if p.is_dir():
        if not (p / "cur").is_dir() and not (p / "new").is_dir():
            raise SourceError(f"{p}: a folder, but not a Maildir (no cur/ or new/)")
        files = _maildir_files(p)
        return len(files), (_read(f) for f in files)
    if p.is_file():
        box = mailbox.mbox(p, create=False)
        keys = box.keys()
        if not keys and p.stat().st_size:
            raise SourceError(f"{p}: not an mbox file (no 'From ' separator lines)")
        return len(keys), (box.get_bytes(k) for k in keys)
    raise SourceError(f"{p}: no such file or folder")
