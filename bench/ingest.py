"""Ingest benchmark: how fast `maild import` threads a mailbox, and whether it threads it right.

Generates a corpus, times a stdlib floor (parse + one sqlite row per message)
and `maild import` over the same files, then checks that every conversation
became exactly one issue. It reads maild only through its CLI, never its schema.

    python bench/ingest.py [--n 5000] [--seed 1] [--format maildir] [--keep DIR] [--repeat K]
"""

from __future__ import annotations

import argparse
import email
import email.policy
import json
import mailbox
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from pathlib import Path

import corpusgen

REPO = Path(__file__).resolve().parent.parent
BATCH = 500
SAMPLE = 50


@dataclass(frozen=True)
class Timing:
    seconds: float
    messages: int
    peak_rss_mb: float | None = None

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


@dataclass
class VerifyReport:
    conversations: int
    issues: int
    messages: int
    interactions: int
    sizes_matched: int  # conversations whose size some issue's interaction count matches
    sampled: int = 0
    sampled_exact: int = 0  # one whole conversation, nothing else
    merged: int = 0  # sampled issues holding messages of more than one conversation
    fragments: int = 0  # sampled issues holding replies without their conversation's start
    replies: int = 0
    replies_right: int = 0
    duplicates: int = 0  # Message-IDs shown more than once
    foreign: int = 0  # interactions whose Message-ID is not in the corpus
    wrong_author: int = 0  # rep messages not marked as a rep's, or customer messages marked so
    problems: list[str] = field(default_factory=list)

    @property
    def replies_right_pct(self) -> float:
        return 100.0 * self.replies_right / self.replies if self.replies else 100.0

    @property
    def ok(self) -> bool:
        return (self.issues == self.conversations and self.interactions == self.messages
                and self.sampled_exact == self.sampled and not self.duplicates
                and not self.foreign and not self.wrong_author)


# -- the floor ------------------------------------------------------------------


def raw_messages(manifest: corpusgen.Manifest):
    """Each message's bytes, in delivery order."""
    path = Path(manifest.path)
    if manifest.fmt == "maildir":
        for sub in ("cur", "new"):
            for file in sorted((path / sub).iterdir()):
                yield file.read_bytes()
        return
    box = mailbox.mbox(path, create=False)
    try:
        for key in box.iterkeys():
            yield box.get_bytes(key)
    finally:
        box.close()


def _header(msg: email.message.Message, name: str) -> str:
    value = msg.get(name)
    if value is None:
        return ""
    try:
        return str(make_header(decode_header(str(value))))
    except (HeaderParseError, LookupError, UnicodeError):
        return str(value)


def _first_text(msg: email.message.Message) -> str:
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not part.get_filename():
            payload = part.get_payload(decode=True) or b""
            try:
                return payload.decode(part.get_content_charset() or "us-ascii", "replace")
            except LookupError:
                return payload.decode("latin-1")
    return ""


FLOOR_SCHEMA = """
CREATE TABLE message (
    id INTEGER PRIMARY KEY, message_id TEXT, parent INTEGER, in_reply_to TEXT,
    refs TEXT, sender TEXT, recipients TEXT, subject TEXT, body TEXT);
CREATE INDEX message_by_message_id ON message (message_id);
"""


def floor(manifest: corpusgen.Manifest, db_path: Path) -> tuple[Timing, int]:
    """Parse every message with the stdlib and store a row; returns the timing and parents found."""
    start = time.perf_counter()
    db = sqlite3.connect(db_path)
    db.executescript(FLOOR_SCHEMA)
    count = linked = 0
    for raw in raw_messages(manifest):
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        in_reply_to = _header(msg, "In-Reply-To").strip().strip("<>")
        parent = db.execute("SELECT id FROM message WHERE message_id = ?", (in_reply_to,)).fetchone()
        linked += parent is not None
        db.execute(
            "INSERT INTO message (message_id, parent, in_reply_to, refs, sender, recipients, subject, body)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (_header(msg, "Message-ID").strip().strip("<>"), parent[0] if parent else None, in_reply_to,
             _header(msg, "References"), _header(msg, "From"), _header(msg, "To"),
             _header(msg, "Subject"), _first_text(msg)))
        count += 1
        if count % BATCH == 0:
            db.commit()
    db.commit()
    db.close()
    return Timing(time.perf_counter() - start, count), linked


# -- maild through its CLI --------------------------------------------------------


def write_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    lines = ["[database]", f"url = {json.dumps('sqlite:///' + str(directory / 'maild.db'))}", "",
             "[[mailbox]]", 'name = "support"', f"address = {json.dumps(corpusgen.SUPPORT)}"]
    for name, address in corpusgen.REPS:
        lines += ["", "[[rep]]", f"name = {json.dumps(name.split()[0])}", f"email = {json.dumps(address)}"]
    config = directory / "maild.toml"
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def compile_maild() -> None:
    """maild's bytecode written before anything is timed, as an installed package has it.

    Where PYTHONDONTWRITEBYTECODE is set, Python never writes it, so each timed
    maild start would compile maild's modules again (about 0.15 s) while the
    stdlib and the other packages come compiled; compileall writes it anyway."""
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "maild")], env=_env(), check=True,
                   stdout=subprocess.DEVNULL)


def maild_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "maild", *args]


def _peak_kb(pid: int) -> int:
    """A process's own peak RSS since exec (VmHWM), in KiB; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            return next((int(line.split()[1]) for line in f if line.startswith("VmHWM:")), 0)
    except (OSError, ValueError):
        return 0


class Peaks:
    """Each process's own VmHWM (KiB), sampled from /proc while the tree runs."""

    def __init__(self, pid: int) -> None:
        self.pid, self.kb = pid, {}  # type: int, dict[int, int]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _tree(self) -> list[int]:
        """The process and its descendants, whichever of its threads started them."""
        pids, i = [self.pid], 0
        while i < len(pids):
            for task in Path(f"/proc/{pids[i]}/task").glob("*"):
                try:
                    pids += [int(c) for c in (task / "children").read_text().split()]
                except (OSError, ValueError):
                    pass
            i += 1
        return pids

    def _watch(self) -> None:
        while not self.stop.wait(0.1):
            for pid in self._tree():
                self.kb[pid] = max(self.kb.get(pid, 0), _peak_kb(pid))

    def done(self) -> tuple[float, float]:
        """Stop sampling: the peak of the largest process and the sum of the peaks, in MB."""
        self.stop.set()
        self.thread.join()
        return max(self.kb.values(), default=0) / 1024, sum(self.kb.values()) / 1024


def run_measured(argv: list[str], messages: int, log: Path, env: dict[str, str] | None = None) -> tuple[Timing, int]:
    """Run a child; wall clock from spawn to exit, and the peak RSS of its largest process.

    The peak is each process's own high-water mark, read from /proc while it
    runs: the rusage of wait4 would also count the benchmark's own memory,
    which the child shares between fork and exec. Without /proc, that rusage.
    """
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env or _env())
        peaks = Peaks(proc.pid)  # sampled beside the wait, so the exit is timed to the moment
        proc.wait()
        seconds = time.perf_counter() - start
        peak_mb, _ = peaks.done()
    if not peak_mb:
        import resource
        peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // (1024 if sys.platform == "darwin" else 1)
        peak_mb = peak_kb / 1024
    return Timing(seconds, messages, peak_mb), proc.returncode


def run_import(config: Path, manifest: corpusgen.Manifest, log: Path) -> tuple[Timing, int]:
    argv = maild_argv("import", "-c", str(config), "--mailbox", "support", manifest.path)
    return run_measured(argv, len(manifest.messages), log)


def maild_json(config: Path, *args: str):
    argv = maild_argv(*args[:2], "-c", str(config), *args[2:], "--json")
    done = subprocess.run(argv, capture_output=True, env=_env(), timeout=600)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {done.returncode}: {_tail(done.stderr)}")
    return json.loads(done.stdout)


def _tail(data: bytes, lines: int = 8) -> str:
    return "\n".join(data.decode("utf-8", "replace").rstrip().splitlines()[-lines:])


def _count(value) -> int:
    return value if isinstance(value, int) else len(value or ())


# -- verification ---------------------------------------------------------------


def verify(manifest: corpusgen.Manifest, issues_list: list[dict], shown_issues) -> VerifyReport:
    """Compare what maild made with the manifest: one issue per conversation, all of its messages on it.

    `issues_list` is `maild issues list --json`; `shown_issues` maps issue id to
    `maild issues show ID --json` (or is a list of those) for a sample of issues.
    """
    counts = [_count(i.get("interactions")) for i in issues_list]
    sizes = Counter(len(c.message_ids) for c in manifest.conversations)
    report = VerifyReport(
        conversations=len(manifest.conversations), issues=len(issues_list),
        messages=len(manifest.messages), interactions=sum(counts),
        sizes_matched=sum((sizes & Counter(counts)).values()))
    shown = shown_issues.values() if isinstance(shown_issues, dict) else shown_issues
    convs = {c.number: c for c in manifest.conversations}
    outbound = set(manifest.outbound)
    seen: Counter[str] = Counter()
    for issue in shown:
        ids = [str(i.get("message_id") or "").strip().strip("<>") for i in issue.get("interactions", [])]
        seen.update(m for m in ids if m)
        report.sampled += 1
        _check_authors(report, issue, manifest.messages, outbound)
        _check_issue(report, issue, ids, manifest.messages, convs)
    report.duplicates = sum(n - 1 for n in seen.values() if n > 1)
    return report


def _check_issue(report: VerifyReport, issue: dict, ids: list[str], owner: dict[str, int],
                 convs: dict[int, corpusgen.Conversation]) -> None:
    known = [m for m in ids if m in owner]
    report.foreign += len(ids) - len(known)
    numbers = {owner[m] for m in known}
    starts = {owner[m] for m in known if convs[owner[m]].message_ids[0] == m}
    report.merged += len(numbers) > 1
    report.fragments += bool(known) and not starts
    mine = set(known)
    for number in numbers:
        conv = convs[number]
        replies = conv.message_ids[1:]
        if number in starts:  # replies elsewhere, or sharing a merged issue, count as wrong
            report.replies += len(replies)
            report.replies_right += sum(m in mine for m in replies) if len(starts) == 1 else 0
    if len(numbers) == 1 and len(known) == len(ids) == len(set(ids)):
        conv = convs[numbers.pop()]
        if len(conv.message_ids) == len(ids) and set(conv.message_ids) == mine:
            report.sampled_exact += 1
            return
    found = ", ".join(f"{sum(owner.get(m) == n for m in ids)} of the {len(convs[n].message_ids)}"
                      f" of conversation {n}" for n in sorted(numbers))
    report.problems.append(f"issue {issue.get('id')}: {len(ids)} interactions: {found or 'none known'}")


def _check_authors(report: VerifyReport, issue: dict, owner: dict[str, int],
                   outbound: set[str]) -> None:
    """A rep's message must be marked as the rep's (outbound, or naming the rep); a customer's not."""
    for interaction in issue.get("interactions", []):
        mid = str(interaction.get("message_id") or "").strip().strip("<>")
        marked = str(interaction.get("direction") or "").startswith("out") or bool(interaction.get("rep"))
        if mid in owner and marked != (mid in outbound):
            report.wrong_author += 1


def check(config: Path, manifest: corpusgen.Manifest, seed: int) -> tuple[VerifyReport, list[dict]]:
    issues = maild_json(config, "issues", "list")
    sample = random.Random(seed).sample(issues, min(SAMPLE, len(issues)))
    shown = {i["id"]: maild_json(config, "issues", "show", str(i["id"])) for i in sample}
    return verify(manifest, issues, shown), issues


# -- the run --------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="messages to generate")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--format", choices=("maildir", "mbox"), default="maildir")
    parser.add_argument("--keep", type=Path, help="work in DIR and keep corpus and databases")
    parser.add_argument("--repeat", type=int, default=1, help="time floor and import K times, report medians")
    args = parser.parse_args(argv)
    if args.n < 1 or args.repeat < 1:
        parser.error("--n and --repeat must be at least 1")
    return in_workdir(args, "maild-bench-", run)


def in_workdir(args: argparse.Namespace, prefix: str, run) -> int:
    """run(args, DIR): in --keep DIR when given (kept), else in a temporary folder."""
    compile_maild()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return run(args, args.keep)
    with tempfile.TemporaryDirectory(prefix=prefix) as work:
        return run(args, Path(work))


def run(args: argparse.Namespace, work: Path) -> int:
    shutil.rmtree(work / "corpus", ignore_errors=True)
    start = time.perf_counter()
    manifest = corpusgen.generate(args.n, args.seed, work / "corpus", args.format)
    n = len(manifest.messages)
    print(f"corpus   {n} messages, {len(manifest.conversations)} conversations, "
          f"{100 * manifest.replies / n:.1f}% replies, mean {manifest.total_bytes / n / 1024:.1f} KB, "
          f"{args.format}, generated in {time.perf_counter() - start:.1f} s")
    floors, imports = [], []
    config = None
    for k in range(args.repeat):
        run_dir = work / f"run-{k + 1}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir()
        timing, linked = floor(manifest, run_dir / "floor.db")
        floors.append(timing)
        print(f"floor    {timing.messages} msgs in {timing.seconds:.2f} s = {timing.rate:.0f} msgs/s "
              f"(stdlib email + sqlite3, {linked} parents found)")
        config = write_config(run_dir)
        timing, code = run_import(config, manifest, run_dir / "import.log")
        if code:
            print(f"maild    import exited {code}:\n{_tail((run_dir / 'import.log').read_bytes())}")
            return 1
        imports.append(timing)
        print(f"maild    {timing.messages} msgs in {timing.seconds:.2f} s = {timing.rate:.0f} msgs/s, "
              f"peak RSS {timing.peak_rss_mb:.0f} MB")
    return finish(args, manifest, config, floors, imports)


def finish(args: argparse.Namespace, manifest: corpusgen.Manifest, config: Path,
           floors: list[Timing], imports: list[Timing]) -> int:
    try:
        report, issues = check(config, manifest, args.seed)
        again, code = run_import(config, manifest, config.parent / "reimport.log")
        said = _tail((config.parent / "reimport.log").read_bytes(), 1)
        issues_after = maild_json(config, "issues", "list") if code == 0 else issues
    except (RuntimeError, ValueError, KeyError, subprocess.TimeoutExpired) as exc:
        print(f"verify   failed: {exc}")
        return 1
    before = (len(issues), sum(_count(i.get("interactions")) for i in issues))
    after = (len(issues_after), sum(_count(i.get("interactions")) for i in issues_after))
    for line in report.problems[:10]:
        print(f"         {line}")
    floor_rate = statistics.median(t.rate for t in floors)
    maild_rate = statistics.median(t.rate for t in imports)
    median = f" (median of {len(floors)})" if len(floors) > 1 else ""
    reimport_ok = code == 0 and before == after
    rows = [
        (f"floor msgs/s{median}", f"{floor_rate:.0f}"),
        (f"maild msgs/s{median}", f"{maild_rate:.0f} (wall clock, process start included)"),
        ("maild / floor", f"{maild_rate / floor_rate:.3f}"),
        ("peak RSS", f"{statistics.median(t.peak_rss_mb for t in imports):.0f} MB"),
        ("issues / conversations", f"{report.issues} / {report.conversations}"),
        ("interactions / messages", f"{report.interactions} / {report.messages}"),
        ("issue sizes matching", f"{report.sizes_matched} of {report.conversations} conversations"),
        ("sampled issues exact", f"{report.sampled_exact} / {report.sampled}"),
        ("replies on right issue",
         f"{report.replies_right_pct:.1f}% ({report.replies_right} / {report.replies}, sampled)"),
        ("merged / fragments", f"{report.merged} / {report.fragments} (sampled)"),
        ("duplicates / foreign", f"{report.duplicates} / {report.foreign} (sampled)"),
        ("wrong author (rep/customer)", f"{report.wrong_author} (sampled)"),
        ("re-import", f"{again.seconds:.2f} s, exit {code}: {said}"),
        ("after re-import", f"issues {before[0]} -> {after[0]}, interactions {before[1]} -> {after[1]}"
                            + ("" if reimport_ok else "  CHANGED")),
    ]
    print("\nsummary")
    for label, value in rows:
        print(f"  {label:<28} {value}")
    return 0 if report.ok and reimport_ok else 1


if __name__ == "__main__":
    sys.exit(main())
