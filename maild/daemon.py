"""`maild run`: the listeners, the drain worker, the periodic jobs and signals.

This is the daemon's wiring on top of `app.build()`. It never processes mail
on the event loop, never acknowledges mail before the durable intake has
returned, and on SIGTERM loses nothing: what was stored stays stored, and
what was not processed yet is processed at the next start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
import time
import weakref
from typing import Protocol
from collections.abc import Callable, Sequence

from maild import db
from maild.app import App, build
from maild.config import Settings
from maild.config_base import split_hostport
from maild.drain import DrainWorker, Intake, intake_engine
from maild.ingest import smtp
from maild.ingest.imap.poller import imap_services
from maild.outbound.outbox import wake_on_queued
from maild.outbound.sender import Sender
from maild.scheduler import Job, Scheduler
from maild.sendproc import SenderProcess
from maild.writegate import WriteGate, WriterTurn
from maild.web.server import WebService, web_service

log = logging.getLogger("maild.daemon")

WARM_TIMEOUT = 30.0  # seconds the listeners wait at start for the sender process and the parse workers
LISTEN_BACKLOG = 100  # connections the kernel queues until they are accepted (asyncio's default)


class Service(Protocol):
    """A long-running part of the daemon: runs in a thread of its own until `stop` is set."""

    name: str

    def run(self, stop: threading.Event) -> None: ...


def sd_notify(state: str) -> None:
    """Tell systemd (Type=notify) about readiness and stopping; a no-op elsewhere."""
    if addr := os.environ.get("NOTIFY_SOCKET"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), "\0" + addr[1:] if addr.startswith("@") else addr)


class Daemon:
    """Listeners on the event loop; services in threads; jobs on the scheduler."""

    def __init__(self, settings: Settings, intake: Intake, listeners: Sequence[smtp.Listener],
                 jobs: Sequence[Job], services: Sequence[Service], on_hup: Callable[[], None] | None = None,
                 closers: Sequence[Callable[[], None]] = (), banner: str = "") -> None:
        self.settings, self.intake, self.on_hup = settings, intake, on_hup
        self.web: WebService | None = None  # the console, started after the mail listeners
        self.sessions_opened: dict[str, int] = {}  # connections per protocol, for /metrics
        self._servers: list[tuple[str, str, asyncio.AbstractServer]] = []
        self.banner = banner  # logged once listening: what a first run needs to know
        self.listeners, self.jobs, self.services = list(listeners), list(jobs), list(services)
        self.closers = list(closers)
        self.ready = threading.Event()  # set once listening and running
        self._stop = threading.Event()
        self._stopping: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sessions: weakref.WeakSet = weakref.WeakSet()

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT (main thread only); the exit status."""
        asyncio.run(self._main())
        return 0

    async def _main(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._signalled, sig)
        loop.add_signal_handler(signal.SIGHUP, self._hup)
        await self.serve()

    def _signalled(self, sig: signal.Signals) -> None:
        log.info("stopping on %s", signal.Signals(sig).name)
        self.stop()

    def _hup(self) -> None:
        if self.on_hup is None:
            log.warning("SIGHUP ignored: maild applies its config only at start")
        else:
            asyncio.get_running_loop().run_in_executor(None, self.on_hup)

    def stop(self) -> None:
        """Ask the daemon to stop; safe from any thread."""
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set)

    def _track(self, proto: asyncio.Protocol, kind: str = "smtp") -> asyncio.Protocol:
        self._sessions.add(proto)  # to close it at shutdown
        self.sessions_opened[kind] = self.sessions_opened.get(kind, 0) + 1
        return proto

    def listening(self) -> dict[str, bool]:
        """Each listener ("smtp=127.0.0.1:8025") and whether it is serving: for /healthz."""
        out = {f"{proto}={address}": server.is_serving() for proto, address, server in self._servers}
        if self.web is not None:
            out[f"web={self.web.address}"] = self.web.serving()
        return out

    async def serve(self) -> None:
        """Listen, run the services and jobs, and shut down cleanly once stopped."""
        self._loop = asyncio.get_running_loop()
        self._stopping = self._stopping or asyncio.Event()
        await self._loop.run_in_executor(None, self.intake.recount)
        pending = self.intake.pending  # left from the last run: the drain starts on it at once
        servers: list[asyncio.Server] = []
        try:  # listening now (a port in use fails the start here), answering once the services are up
            for lst in self.listeners:
                host, port = split_hostport(lst.address)
                factory = lambda f=lst.factory, p=lst.proto: self._track(f(), p)  # noqa: E731
                servers.append(await self._loop.create_server(factory, host, port, start_serving=False))
                self._servers.append((lst.proto, lst.address, servers[-1]))
                _listen(servers[-1])
            if self.web is not None:
                await self.web.start()
        except OSError:
            for server in servers:
                server.close()
            raise
        threads = [threading.Thread(target=s.run, args=(self._stop,), name=s.name, daemon=True) for s in self.services]
        for t in threads:
            t.start()
        scheduler = Scheduler(self.jobs)
        scheduler.start()
        stopping: asyncio.Future[object] = asyncio.ensure_future(self._stopping.wait())
        try:
            # The sender process and the parse workers start and import first, so the
            # first mail after a start is answered and acknowledged as fast as any other.
            warming: asyncio.Future[object] = self._loop.run_in_executor(None, self._warm, WARM_TIMEOUT)
            await asyncio.wait([warming, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not self._stopping.is_set():
                for server in servers:
                    await server.start_serving()
                log.info("started %s pending=%d", " ".join(f"{lst.proto}={lst.address}" for lst in self.listeners),
                         pending)
                if self.banner:
                    log.info("%s", self.banner)
                sd_notify("READY=1")
                self.ready.set()
            await stopping
        finally:
            stopping.cancel()
            await self._shutdown(servers, threads, scheduler)

    def _warm(self, timeout: float) -> None:
        """Each service that starts processes waits (within `timeout` s in all) until they are up."""
        deadline = time.monotonic() + timeout
        for service in self.services:
            warm = getattr(service, "warm", None)
            try:
                ready = warm is None or warm(max(0.0, deadline - time.monotonic()))
            except Exception:
                log.exception("service=%s failed to start its processes: listening anyway", service.name)
                continue
            if not ready:
                log.warning("service=%s not ready %gs after the start: listening anyway", service.name, timeout)

    async def _shutdown(self, servers: list, threads: list[threading.Thread], scheduler: Scheduler) -> None:
        sd_notify("STOPPING=1")
        grace = self.settings.daemon.shutdown_grace
        if self.web is not None:
            await self.web.stop()
        for server in servers:
            server.close()  # no new connections
        await self.intake.settle(grace)  # stores in progress finish and are answered
        for proto in list(self._sessions):
            transport = getattr(proto, "transport", None)
            if transport is not None and not transport.is_closing():
                transport.write(b"421 4.3.2 Service shutting down, try again later\r\n")
                transport.close()
        await asyncio.get_running_loop().run_in_executor(None, self._stop_threads, threads, scheduler, grace)
        log.info("stopped")

    def _stop_threads(self, threads: list[threading.Thread], scheduler: Scheduler, grace: float) -> None:
        self.intake.close()  # every store started has committed or failed
        self._stop.set()
        self.intake.wake.set()
        for t in threads:
            t.join(grace)
            if t.is_alive():
                log.warning("service=%s still busy after %ss; exiting anyway", t.name, grace)
        scheduler.shutdown()
        for close in self.closers:
            close()


def _listen(server: asyncio.Server) -> None:
    """The kernel queues connections from now on; they are answered once the server starts
    serving. A client that connects while the daemon starts waits for the greeting (RFC 5321
    gives it minutes) rather than being refused and retrying much later."""
    for listening in server.sockets:
        sock = socket.socket(fileno=listening.fileno())
        try:
            sock.listen(LISTEN_BACKLOG)
        finally:
            sock.detach()  # the server's socket stays open: this object only borrowed it


def describe_outbound(relay: str) -> str:
    """Where outgoing mail goes, in words: a relay, or a local Maildir or mbox (outbound.relay)."""
    kind, _, path = relay.partition(":")
    if kind == "maildir":
        return f"written to the Maildir {os.path.abspath(path)}"
    if kind == "mbox":
        return f"appended to the mbox file {os.path.abspath(path)}"
    return f"sent through the relay {relay}"


def start_banner(settings: Settings, tokens: bool) -> str:
    """One line at start: where maild listens, its database, where mail goes, reply tokens."""
    listen = f"SMTP on {settings.smtp.listen}"
    if settings.smtp.lmtp_listen:
        listen += f", LMTP on {settings.smtp.lmtp_listen}"
    return (f"listening: {listen}; database {db.display_url(settings.database.url)}; "
            f"outgoing mail {describe_outbound(settings.outbound.relay)}; "
            f"reply tokens {'on' if tokens else 'off (' + settings.security.secret_env + ' not set or too short)'}")


def build_daemon(settings: Settings, on_hup: Callable[[], None] | None = None, app: App | None = None) -> Daemon:
    """The daemon's composition root, on top of app.build()."""
    app = app or build(settings, workers=os.cpu_count() or 1)  # parse in worker processes
    engine = intake_engine(settings.database.url, settings.smtp.store_timeout)
    # The sender process writes to the same SQLite file: it gets its turn (writegate.WriterTurn).
    turn = WriterTurn.beside(db.sqlite_file(settings.database.url))
    gate = WriteGate(exclusive=engine.dialect.name == "sqlite", turn=turn)
    intake = Intake(db.session_factory(engine), settings.smtp.max_backlog, gate)
    cfg = settings.daemon
    # Periodic jobs and long-running services: add the daemon's other parts here.
    jobs: list[Job] = [
        Job("backlog", cfg.drain_interval, intake.recount),
        Job("sla", settings.sla.interval, app.reminders.check),  # turnaround reminders and escalations
    ]
    if settings.selftest.interval > 0:  # probes to every support address
        if app.selftest.signer is None:
            log.warning("selftest.interval is set but %s is not: no self-test probes", settings.security.secret_env)
        else:
            jobs.append(Job("selftest", settings.selftest.interval, app.selftest.run))
    if settings.digest:  # mailed digests: each queued once per period, when due
        from maild.reports.digest import CHECK_INTERVAL, Digests

        jobs.append(Job("digest", CHECK_INTERVAL, Digests(app.sessions, settings).run))
    if any(m.pending_close_days for m in settings.mailbox):  # pending issues the customer abandoned
        from maild.desk.lifecycle import INTERVAL, PendingCloser

        jobs.append(Job("pending-close", INTERVAL, PendingCloser(settings, app.sessions, app.templates).run))
    # The outbox sender runs every outbound.send_interval, and at once when a commit queued mail:
    # in a process of its own (a core to itself), unless the database lives in this process's memory.
    sender: Sender | SenderProcess
    if db.in_memory(settings.database.url):
        sender = app.sender
        wake_on_queued(app.sessions, app.sender.wake.set)
    else:
        sender = SenderProcess(settings)
        wake_on_queued(app.sessions, sender.wake)
    services: list[Service] = [
        sender,
        DrainWorker(app.pipeline, intake, cfg.drain_batch, cfg.drain_interval, cfg.max_drain_batch),
        *imap_services(app, on_stored=intake.arrived),
    ]
    daemon = Daemon(settings, intake, smtp.listeners(settings, intake), jobs, services, on_hup,
                    closers=[app.close, engine.dispose, *([turn.close] if turn is not None else [])],
                    banner=start_banner(settings, app.signer is not None))
    daemon.web = web_service(settings, app.sessions, app.signer, daemon.listening, lambda: dict(daemon.sessions_opened))
    return daemon
