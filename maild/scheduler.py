"""Periodic jobs of the daemon, run by APScheduler in background threads.

The one module that imports APScheduler, so the rest of maild speaks only of
`Job`s. A job that raises is logged and runs again at its next interval; it
never stops the scheduler or the daemon. Runs of one job never overlap.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, UTC
from collections.abc import Callable, Iterable

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger("maild.scheduler")


@dataclass(frozen=True)
class Job:
    name: str
    interval: float  # seconds between the starts of two runs
    run: Callable[[], object]


def _guarded(job: Job) -> Callable[[], None]:
    def run() -> None:
        try:
            job.run()
        except Exception:
            log.exception("job=%s failed; next run in %ss", job.name, job.interval)

    return run


class Scheduler:
    """Runs each job every `interval` seconds from start until shutdown."""

    def __init__(self, jobs: Iterable[Job]) -> None:
        self.jobs = list(jobs)
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max(1, len(self.jobs)))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        now = datetime.now(UTC)
        for job in self.jobs:
            self._scheduler.add_job(
                _guarded(job), IntervalTrigger(seconds=job.interval), id=job.name, name=job.name, next_run_time=now
            )

    def start(self) -> None:
        self._scheduler.start()
        for job in self.jobs:
            log.info("job=%s scheduled every %ss", job.name, job.interval)

    def shutdown(self) -> None:
        """Stop scheduling; waits for runs in progress to finish."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
