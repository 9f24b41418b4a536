"""Commands that bring mail in: ingest (MTA pipe), import (mbox/Maildir), parse."""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from maild.ingest import quarantine as quarantine_view
from maild.app import build
from maild.config import IngestConfig, Settings
from maild.db import first_line, is_transient
from maild.ingest.stages.classify import OwnMail, classify
from maild.ingest.intake import Incoming, accept_many
from maild.ingest.pipeline import Ahead
from maild.ingest.stages.parse import as_json as parsed_json
from maild.ingest.stages.parse import NestingTooDeep, parse
from maild.ingest.sources import SourceError, open_source
from maild.cli import (EX_DATAERR, EX_TEMPFAIL, json_option, main, print_json, settle, with_optional_settings,
                       with_settings)


def _read_limited(stream, limit: int, name: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        click.echo(f"maild: {name}: message larger than ingest.max_message_size ({limit} bytes)", err=True)
        sys.exit(EX_DATAERR)
    return data


@main.command()
@with_settings
@click.option("--mailbox", "mailbox_name", help="Mailbox the mail arrived at (default: the first).")
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False))
def ingest(settings: Settings, mailbox_name: str | None, files: tuple[str, ...]) -> None:
    """Store and process mail from FILES, or one message on stdin (for an MTA pipe).

    Exit 0 when every message is stored (or quarantined), 75 on a transient
    failure such as a locked or unreachable database, so the MTA retries.
    A message stored earlier but never processed (the run that stored it
    died) is processed now.
    """
    mailbox = settings.mailbox_named(mailbox_name) if mailbox_name else settings.mailbox[0]
    limit = settings.ingest.max_message_size
    items = []
    for f in files or ("-",):
        if f == "-":
            data = _read_limited(sys.stdin.buffer, limit, "stdin")
        else:
            with open(f, "rb") as fh:
                data = _read_limited(fh, limit, f)
        items.append(Incoming(data, mailbox.name, "pipe"))
    try:
        app = build(settings)
        accepted = accept_many(app.sessions, items)
    except Exception as exc:
        if is_transient(exc):
            click.echo(f"maild: cannot store the message now, try again later: {first_line(exc)}", err=True)
            sys.exit(EX_TEMPFAIL)
        raise
    # Stored: from here on the message is ours; processing failures quarantine it.
    # Duplicates go in too: the pipeline takes only rows still pending, so a copy
    # stranded by an earlier run that died before processing it is processed now.
    processed: set[int] = set()
    try:
        for o in app.pipeline.process(list(dict.fromkeys(a.raw_id for a in accepted))):
            processed.add(o.raw_id)
            detail = o.stored.outcome if o.stored else f"quarantined at {o.stage}: {o.error}"
            issue = f" issue {o.stored.issue_id}" if o.stored and o.stored.issue_id else ""
            click.echo(f"raw {o.raw_id}: {detail}{issue}", err=True)
    except Exception as exc:
        click.echo(f"maild: stored, processing deferred: {first_line(exc)}", err=True)
    for a in accepted:
        if a.duplicate and a.raw_id not in processed:
            click.echo(f"raw {a.raw_id}: duplicate, nothing new", err=True)
    app.close()


BATCH_BYTES = 64 * 1024 * 1024  # at most two batches' worth of messages are in memory: parsing, and storing
AHEAD = 2  # stored batches parsing ahead of the one being processed, while they fit in BATCH_BYTES


def _batches(messages: Iterable[bytes], size: int, max_bytes: int = BATCH_BYTES) -> Iterator[list[bytes]]:
    """Up to `size` messages, fewer when they add up to more than max_bytes."""
    chunk: list[bytes] = []
    total = 0
    for data in messages:
        if chunk and (len(chunk) >= size or total + len(data) > max_bytes):
            yield chunk
            chunk, total = [], 0
        chunk.append(data)
        total += len(data)
    if chunk:
        yield chunk


def _process_oldest(app, waiting: deque[tuple[list[int], Ahead, int]]) -> int:
    """Process the oldest stored batch (its parsing started earlier); how many messages it held."""
    raw_ids, ahead, _ = waiting.popleft()
    app.pipeline.process(raw_ids, ahead)
    return len(raw_ids)


@main.command("import")
@with_settings
@click.option("--mailbox", "mailbox_name", required=True, help="Mailbox to import into.")
@click.option("--batch", default=200, show_default=True, help="Messages per transaction.")
@click.argument("path", type=click.Path(exists=True))
def import_(settings: Settings, mailbox_name: str, batch: int, path: str) -> None:
    """Import an mbox file or a Maildir folder; running it again imports nothing twice."""
    mailbox = settings.mailbox_named(mailbox_name)
    try:
        total, messages = open_source(path)
    except SourceError as exc:
        raise click.ClickException(str(exc)) from None
    # Every core parses: the storing process mostly waits for the disk and the parsers.
    app = build(settings, workers=(os.cpu_count() or 1) + 1)
    settle()  # before the workers fork: they share what is built
    app.pipeline.drain()
    app.pipeline.start()  # before the progress bar's thread: the workers are forked, not spawned
    new = dup = 0
    columns = (TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    limit = settings.ingest.max_message_size
    # Stored batches whose parsing runs while later ones are read and stored: the
    # workers stay up to AHEAD batches in front of the store, which evens out their pace.
    waiting: deque[tuple[list[int], Ahead, int]] = deque()
    with Progress(*columns, console=None, transient=False) as progress:
        task = progress.add_task("import", total=total)
        for chunk in _batches(messages, batch):
            items = [Incoming(d, mailbox.name, "import") for d in chunk if len(d) <= limit]
            accepted = accept_many(app.sessions, items)
            fresh = [(a.raw_id, item.data, ()) for a, item in zip(accepted, items) if not a.duplicate]
            dup += len(items) - len(fresh)
            new += len(fresh)
            held = sum(len(data) for _, data, _ in fresh)
            waiting.append(([raw_id for raw_id, _, _ in fresh], app.pipeline.prepare_ahead(fresh), held))
            while len(waiting) > AHEAD or (len(waiting) > 1 and sum(w[2] for w in waiting) > BATCH_BYTES):
                progress.advance(task, _process_oldest(app, waiting))
            skipped = len(chunk) - len(items)
            if skipped:
                click.echo(f"maild: skipped {skipped} message(s) over ingest.max_message_size", err=True)
            progress.advance(task, len(chunk) - len(fresh))
        while waiting:
            progress.advance(task, _process_oldest(app, waiting))
    with app.sessions() as session:
        quarantined = len(quarantine_view.list_quarantine(session))
    app.close()
    click.echo(f"imported {new} new message(s), {dup} already stored; {quarantined} in quarantine")


@main.command("parse")
@with_optional_settings
@json_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def parse_cmd(settings: Settings | None, as_json: bool, file: str) -> None:
    """Show how maild reads one message (without -c: built-in defaults, no own addresses)."""
    limit = settings.ingest.max_message_size if settings else IngestConfig().max_message_size
    with open(file, "rb") as fh:
        raw = _read_limited(fh, limit, file)
    own = OwnMail(settings.own_addresses, settings.message_id_domain) if settings else OwnMail(frozenset(), None)
    stage = "parse"
    try:
        msg = parse(raw)
        if msg.message is None:  # parse keeps the MIME tree for classify; a record without one is a bug
            raise click.ClickException(f"{file}: the parser kept no message to classify")
        stage = "classify"
        cls = classify(msg.message, msg.from_.email if msg.from_ else None, own)
    except (NestingTooDeep, RecursionError):
        click.echo(f"maild: {file}: MIME parts nested too deeply to read", err=True)
        sys.exit(EX_DATAERR)
    except click.ClickException:
        raise
    except Exception as exc:  # input the stages cannot read: what the quarantine would record
        click.echo(f"maild: {file}: cannot read the message ({stage}): {type(exc).__name__}: {first_line(exc)}",
                   err=True)
        sys.exit(EX_DATAERR)
    data = parsed_json(msg, cls.auto, cls.bounce.as_json() if cls.bounce else None)
    if as_json:
        print_json(data)
        return
    for key in ("message_id", "in_reply_to", "subject", "date", "auto"):
        click.echo(f"{key}: {data[key]}")
    click.echo(f"from: {data['from']}")
    click.echo(f"to: {', '.join(a['email'] for a in data['to'])}")
    for a in data["attachments"]:
        click.echo(f"attachment: {a['filename']} ({a['content_type']}, {a['size']} bytes)")
    click.echo("")
    click.echo(data["new_text"])
