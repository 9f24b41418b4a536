"""IMAP intake benchmark: initial sync from a real Dovecot beside `maild import` of the same mail.

Generates a corpus, imports it from its Maildir with `maild import` and syncs the
same messages from a Dovecot folder with `maild poll --once`, each a child process
on a fresh database (wall clock from spawn to exit, that child's peak RSS), and
checks that both made the same issues. Then times polls that find nothing new in
keep_on_server folders of --small and --n messages: a whole `poll_once`
(connect, log in, look, log out) and a pass on an open connection (what the
daemon does every poll_interval). It needs Dovecot (Debian's dovecot-imapd) and,
as the tests do, root to run it.

    python bench/imap_sync.py [--n 5000] [--small 100] [--seed 1] [--repeat 3] [--polls 21] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import corpusgen
import ingest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from dovecot import PASSWORD, Dovecot  # noqa: E402

PASSWORD_ENV = "MAILD_BENCH_IMAP_PASSWORD"


def write_config(directory: Path, server: Dovecot, folder: str, small: int, big: int) -> Path:
    """Mailbox "support" (move mode, draining `folder`) and two keep_on_server mailboxes for the quiet polls."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["[database]", f"url = {json.dumps('sqlite:///' + str(directory / 'maild.db'))}", ""]
    boxes = [("support", corpusgen.SUPPORT, folder, False),
             (f"quiet{small}", f"quiet{small}@acme.test", f"Quiet{small}", True),
             (f"quiet{big}", f"quiet{big}@acme.test", f"Quiet{big}", True)]
    for name, address, box_folder, keep in boxes:
        lines += ["[[mailbox]]", f"name = {json.dumps(name)}", f"address = {json.dumps(address)}", "",
                  "[mailbox.imap]", 'host = "127.0.0.1"', f"port = {server.port}", 'tls = "none"',
                  f"user = {json.dumps(server.user)}", f"password_env = {json.dumps(PASSWORD_ENV)}",
                  f"folder = {json.dumps(box_folder)}", f"keep_on_server = {json.dumps(keep)}", ""]
    for name, address in corpusgen.REPS:
        lines += ["[[rep]]", f"name = {json.dumps(name.split()[0])}", f"email = {json.dumps(address)}", ""]
    config = directory / "maild.toml"
    config.write_text("\n".join(lines), encoding="utf-8")
    return config


def run_child(argv: list[str], messages: int, log: Path) -> tuple[ingest.Timing, int]:
    """Wall clock from spawn to exit, and the child's peak RSS (as bench/ingest.py measures)."""
    return ingest.run_measured(argv, messages, log, ingest._env() | {PASSWORD_ENV: PASSWORD})


def quiet_polls(config: Path, names: list[str], polls: int) -> dict[str, tuple[float, float]]:
    """Median seconds of a poll_once and of a pass on an open connection that find nothing new."""
    os.environ[PASSWORD_ENV] = PASSWORD
    from maild.app import build
    from maild.config import load
    from maild.ingest.imap.poller import imap_services

    app = build(load(config))
    out = {}
    try:
        for service in (s for s in imap_services(app) if s.name in names):
            once = []
            for _ in range(polls):
                start = time.perf_counter()
                report = service.poll_once()
                once.append(time.perf_counter() - start)
                assert not report, f"{service.name}: a quiet poll found {report}"
            passes = []
            with service.connect() as link:
                link.sync()
                for _ in range(polls):
                    start = time.perf_counter()
                    link.sync()
                    passes.append(time.perf_counter() - start)
            out[service.name] = (statistics.median(once), statistics.median(passes))
    finally:
        app.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="messages to sync and import")
    parser.add_argument("--small", type=int, default=100, help="messages in the small quiet folder")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3, help="time import and sync K times, report medians")
    parser.add_argument("--polls", type=int, default=21, help="quiet polls timed per folder (median)")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep corpus and databases")
    args = parser.parse_args(argv)
    if args.n < args.small or args.small < 1 or args.repeat < 1:
        parser.error("need 1 <= --small <= --n and --repeat >= 1")
    return ingest.in_workdir(args, "maild-bench-imap-", run)


def run(args: argparse.Namespace, work: Path) -> int:
    shutil.rmtree(work / "corpus", ignore_errors=True)
    manifest = corpusgen.generate(args.n, args.seed, work / "corpus", "maildir")
    print(f"corpus   {args.n} messages, {len(manifest.conversations)} conversations, "
          f"mean {manifest.total_bytes / args.n / 1024:.1f} KB")
    with Dovecot() as server:
        # One folder per timed sync (a sync drains its folder), delivered as an MTA would.
        for k in range(1, args.repeat + 1):
            server.deliver(ingest.raw_messages(manifest), folder=f"Run{k}")
        server.deliver(ingest.raw_messages(manifest), folder=f"Quiet{args.n}")
        server.deliver((raw for _, raw in zip(range(args.small), ingest.raw_messages(manifest))),
                       folder=f"Quiet{args.small}")
        return measure(args, work, manifest, server)


def timed_pair(args: argparse.Namespace, work: Path, manifest, server: Dovecot, k: int):
    """`maild import` and `maild poll --once` of the same messages, each on a fresh database."""
    for sub in (f"import-{k}", f"imap-{k}"):
        shutil.rmtree(work / sub, ignore_errors=True)
    import_config = ingest.write_config(work / f"import-{k}")
    config = write_config(work / f"imap-{k}", server, f"Run{k}", args.small, args.n)
    jobs = {
        "import": (ingest.maild_argv("import", "-c", str(import_config), "--mailbox", "support", manifest.path),
                   work / f"import-{k}" / "out.log"),
        "imap": (ingest.maild_argv("poll", "-c", str(config), "--mailbox", "support", "--once"),
                 work / f"imap-{k}" / "out.log"),
    }
    timings = {}
    for name in (("import", "imap") if k % 2 else ("imap", "import")):  # alternate against drift
        argv, log = jobs[name]
        timing, code = run_child(argv, args.n, log)
        if code:
            raise RuntimeError(f"{name} exited {code}:\n{ingest._tail(log.read_bytes())}")
        timings[name] = timing
        print(f"{name:<8} run {k}: {args.n} msgs in {timing.seconds:.2f} s = {timing.rate:.0f} msgs/s, "
              f"peak RSS {timing.peak_rss_mb:.0f} MB")
    return timings["import"], timings["imap"], import_config, config


def measure(args: argparse.Namespace, work: Path, manifest, server: Dovecot) -> int:
    imports, syncs = [], []
    try:
        for k in range(1, args.repeat + 1):
            imported, synced, import_config, config = timed_pair(args, work, manifest, server, k)
            imports.append(imported)
            syncs.append(synced)
            if k == 1:
                same, detail = compare(import_config, config, manifest, args.seed, server, args.n)
                print(f"check    {detail}")
                first_config = config
    except RuntimeError as exc:
        print(exc)
        return 1
    for name, count in ((f"quiet{args.small}", args.small), (f"quiet{args.n}", args.n)):
        timing, code = run_child(ingest.maild_argv("poll", "-c", str(first_config), "--mailbox", name, "--once"),
                                 count, work / f"{name}.log")
        print(f"keep     initial sync of {count} (keep_on_server) in {timing.seconds:.2f} s = "
              f"{timing.rate:.0f} msgs/s, exit {code}")
    quiet = quiet_polls(first_config, [f"quiet{args.small}", f"quiet{args.n}"], args.polls)
    summary(args, imports, syncs, detail, quiet)
    return 0 if same else 1


def summary(args: argparse.Namespace, imports, syncs, detail: str, quiet) -> None:
    median = f" (median of {args.repeat})" if args.repeat > 1 else ""
    imported = statistics.median(t.rate for t in imports)
    synced = statistics.median(t.rate for t in syncs)
    small, big = quiet[f"quiet{args.small}"], quiet[f"quiet{args.n}"]
    rows = [
        (f"maildir import msgs/s{median}", f"{imported:.0f} (peak RSS {max(t.peak_rss_mb for t in imports):.0f} MB)"),
        (f"imap initial sync msgs/s{median}", f"{synced:.0f} (peak RSS {max(t.peak_rss_mb for t in syncs):.0f} MB)"),
        ("imap / import", f"{synced / imported:.3f}  (target >= 0.8)"),
        ("same issues both ways", detail),
        (f"quiet poll_once, {args.small} msgs", f"{small[0] * 1000:.1f} ms"),
        (f"quiet poll_once, {args.n} msgs", f"{big[0] * 1000:.1f} ms"),
        (f"poll_once {args.n} / {args.small}", f"{big[0] / small[0]:.2f}  (target <= 1.5)"),
        (f"quiet pass, {args.small} msgs", f"{small[1] * 1000:.2f} ms (open connection)"),
        (f"quiet pass, {args.n} msgs", f"{big[1] * 1000:.2f} ms (open connection)"),
        (f"pass {args.n} / {args.small}", f"{big[1] / small[1]:.2f}"),
    ]
    print("\nsummary")
    for label, value in rows:
        print(f"  {label:<36} {value}")


def compare(import_config: Path, imap_config: Path, manifest, seed: int, server: Dovecot,
            n: int) -> tuple[bool, str]:
    """Both paths made one issue per conversation, and the IMAP folder was drained."""
    report_import, _ = ingest.check(import_config, manifest, seed)
    report_imap, _ = ingest.check(imap_config, manifest, seed)
    with server.client() as c:
        left = c.select_folder("Run1", readonly=True)[b"EXISTS"]
        moved = c.select_folder("maild-processed", readonly=True)[b"EXISTS"]
    made = [(r.issues, r.interactions, r.sampled_exact, r.duplicates) for r in (report_import, report_imap)]
    ok = made[0] == made[1] and left == 0 and moved == n
    detail = (f"import {report_import.issues} issues / {report_import.interactions} interactions, "
              f"imap {report_imap.issues} / {report_imap.interactions} "
              f"({report_imap.sampled_exact}/{report_imap.sampled} sampled exact); "
              f"{left} left in the folder, {moved} in maild-processed")
    return ok, detail


if __name__ == "__main__":
    sys.exit(main())
