"""The fault suite by hand: maild under kill -9, hostile mail and misbehaving relays.

    python bench/faults.py smtp-kill   [--n 200] [--kills 10] [--clients 4] [--seed S] [--db URL]
    python bench/faults.py import-kill [--n 1000] [--kills 12] [--batch 20] [--seed S] [--db URL]
    python bench/faults.py outbox-kill [--n 40]  [--kills 10] [--delay 0.02] [--seed S] [--db URL]
    python bench/faults.py hostile     [--n 20]  [--size 2500000] [--db URL]
    python bench/faults.py two-senders [--n 8]   [--delay 0.2] [--db URL]
    python bench/faults.py refusal     [--db URL]
    python bench/faults.py all         [--db URL]

Each prints its seed (when it has one) and its figures: kills, mails, lost,
doubled, extra copies at the relay. `--db postgresql://...` runs in a fresh
schema on that server, dropped afterwards; the default is SQLite in a
temporary folder (`--keep DIR` keeps the folder: configs, logs, sink files).
Exit status 1 when a promise was broken. tests/test_faults.py runs the same
functions and asserts on the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fault_kills
import fault_relay
from fault_kit import scratch_db, workdir


def broken(name: str, f: dict) -> list[str]:
    """The promises a run's figures break (empty when all hold)."""
    out = []
    if name in ("smtp-kill", "import-kill"):
        if f["lost"] or f["doubled"] or f.get("quarantined"):
            out.append(f"lost {f['lost']}, doubled {f['doubled']}, quarantined {f.get('quarantined')}")
        if name == "smtp-kill" and f["acked"] != f["mails"]:
            out.append(f"only {f['acked']} of {f['mails']} mails got a 250")
    if name in ("outbox-kill", "two-senders") and (f["undelivered"] or f["foreign_message_ids"]
                                                   or f["differing_copies"] or f["max_resends"] > 1):
        out.append(f"undelivered {f['undelivered']}, foreign ids {f['foreign_message_ids']}, "
                   f"differing {f['differing_copies']}, max resends {f['max_resends']}")
    if name == "outbox-kill" and f["max_copies"] > 2:
        out.append(f"a mail reached the relay {f['max_copies']} times")
    if name == "two-senders" and f["extra_copies"]:
        out.append(f"{f['extra_copies']} extra copies at the relay")
    if name == "hostile" and (f["normal_250"] != f["normal"] or f["lost"] or f["doubled"]
                              or f["hostile_state"] not in ("done", "quarantined") or f["exit"] != 0):
        out.append("normal mail stalled or the hostile mail hung")
    if name == "refusal" and (f["delivered_to"] != ["pat@example.com"] or not f["notes_naming_refused"]):
        out.append("the refused recipient was not recorded, or the other not delivered")
    return out


def run_one(name: str, args: argparse.Namespace, work: Path) -> dict:
    with scratch_db(args.db, work) as url:
        if name == "smtp-kill":
            return fault_kills.smtp_kill(url, work, n=args.n or 200, kills=args.kills or 10, clients=args.clients,
                                         seed=args.seed)
        if name == "import-kill":
            return fault_kills.import_kill(url, work, n=args.n or 1000, kills=args.kills or 12, batch=args.batch,
                                           seed=args.seed)
        if name == "outbox-kill":
            return fault_kills.outbox_kill(url, work, mails=args.n or 40, kills=args.kills or 10,
                                           delay=args.delay or 0.02, seed=args.seed)
        if name == "hostile":
            return fault_relay.hostile(url, work, normal=args.n or 20, size=args.size)
        if name == "two-senders":
            return fault_relay.two_senders(url, work, mails=args.n or 8, delay=args.delay or 0.2)
        return fault_relay.refusal(url, work)


NAMES = ("smtp-kill", "import-kill", "outbox-kill", "hostile", "two-senders", "refusal")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("fault", choices=(*NAMES, "all"))
    ap.add_argument("--n", type=int, help="mails (default: per fault, see above)")
    ap.add_argument("--kills", type=int)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--delay", type=float, help="seconds the relay waits before each 250")
    ap.add_argument("--size", type=int, default=2_500_000, help="bytes of the hostile Subject")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--db", help="database URL (default: SQLite in the work folder)")
    ap.add_argument("--keep", type=Path, help="work in DIR and keep it")
    args = ap.parse_args(argv)
    failures = 0
    for name in NAMES if args.fault == "all" else (args.fault,):
        with workdir(args.keep / name if args.keep else None) as work:
            problems = broken(name, run_one(name, args, work))
        for p in problems:
            print(f"{name}: BROKEN: {p}", flush=True)
        failures += bool(problems)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
