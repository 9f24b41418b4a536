"""The console's HTTP server (aiohttp) on the daemon's event loop: routes, session check, security headers.

Handlers are thin: each page is a query in `queries` run on a worker thread
(never on the event loop, which also serves SMTP) and a Jinja2 template.
Every page needs a signed-in rep except sign-in, /healthz, /metrics and the
stylesheet. No page runs script; the CSP forbids it.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from maild import db
from maild.config import Settings
from maild.config_base import split_hostport
from maild.outbound.outbox import OutboxPolicy
from maild.tokens import TokenSigner
from maild.web.mailme import mail_issue_to_rep
from maild.web.metrics import Metrics
from maild.web.signin import RepView, Signin, SignedIn, active_rep

log = logging.getLogger("maild.web")

STATIC = Path(__file__).parent / "static"
COOKIE = "maild_session"
PUBLIC = ("/signin", "/static/", "/metrics", "/healthz", "/unsubscribe/")
CSP = ("default-src 'none'; script-src 'none'; style-src 'self'; img-src 'self' data:; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SIGNED = web.RequestKey("signed", SignedIn)
REP = web.RequestKey("rep", RepView)
PUBLIC_ORIGIN = web.AppKey("public_origin", str)


class Console:
    """What the handlers share: settings, the two session factories, sign-in, metrics, templates, a thread pool."""

    def __init__(self, settings: Settings, read: sessionmaker[Session], write: sessionmaker[Session],
                 signin: Signin, metrics: Metrics, listening: Callable[[], dict[str, bool]],
                 mail_issue: Callable[[int, RepView], bool] | None = None, reports: Any = None) -> None:
        self.settings, self.read, self.write = settings, read, write
        self.signin, self.metrics, self.listening = signin, metrics, listening
        self.mail_issue, self.reports = mail_issue, reports
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="web")
        self.templates = Environment(loader=PackageLoader("maild.web", "templates"),
                                     autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True)
        self.templates.filters.update(when=when, filesize=filesize, cell=cell)

    async def query(self, fn: Callable[..., Any], *args: Any) -> Any:
        """fn(session, *args) on a read-only session, off the event loop."""
        def run() -> Any:
            with self.read() as session:
                return fn(session, *args)
        return await asyncio.get_running_loop().run_in_executor(self.pool, run)

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def render(self, request: web.Request, name: str, status: int = 200, **context: Any) -> web.Response:
        signed = request.get(SIGNED)
        html = self.templates.get_template(name).render(
            rep=request.get(REP), csrf=signed.csrf if signed else "", path=request.path, **context)
        return web.Response(text=html, status=status, content_type="text/html")


def when(value: str | None) -> str:
    """An ISO timestamp as the pages show it: minutes, UTC."""
    return f"{value[:10]} {value[11:16]} UTC" if value and len(value) >= 16 else (value or "")


def filesize(n: int | None) -> str:
    size = float(n or 0)
    if size < 1024:
        return f"{int(size)} bytes"
    return f"{size / 1024:.1f} KB" if size < 1024 * 1024 else f"{size / 1024 / 1024:.1f} MB"


def cell(value: Any, kind: str = "text") -> str:
    """A report cell as shown: hours and percentages to one decimal, nothing as a dash."""
    if value is None:
        return "-"
    if kind in ("hours", "percent", "float") and isinstance(value, (int, float)):
        return f"{value:.1f}"
    return str(value)


def is_public(path: str) -> bool:
    return any(path == p or (p.endswith("/") and path.startswith(p)) or path.startswith(p + "/") for p in PUBLIC)


def same_origin(request: web.Request) -> bool:
    """A POST from our own pages: no Origin header (old clients), or ours."""
    origin = request.headers.get("Origin")
    if origin is None or origin == f"{request.scheme}://{request.host}":
        return True
    # Behind a TLS-terminating proxy the request arrives as http: the public address counts too.
    public = request.app.get(PUBLIC_ORIGIN)
    return public is not None and origin == public


def check_csrf(request: web.Request, form: Any) -> None:
    signed = request.get(SIGNED)
    token = form.get("csrf", "") if form is not None else ""
    if signed is None or not isinstance(token, str) or not hmac.compare_digest(token, signed.csrf):
        raise web.HTTPForbidden(text="The form is stale: reload the page and try again.")


def make_app(console: Console, signer: TokenSigner | None = None) -> web.Application:
    from maild.web import pages, unsubscribe  # the handlers, which need the Console type from here

    @web.middleware
    async def session_check(request: web.Request, handler):
        # A one-click unsubscribe comes from a mailbox provider's servers: its token is its authority.
        if request.method == "POST" and not same_origin(request) and not request.path.startswith("/unsubscribe/"):
            raise web.HTTPForbidden(text="Cross-site form posts are refused.")
        signed = console.signin.read_cookie(request.cookies.get(COOKIE))
        rep: RepView | None = await console.query(active_rep, signed.rep_id) if signed else None
        if signed is not None and rep is not None:
            request[SIGNED] = signed
            request[REP] = rep
        elif not is_public(request.path):
            if request.method in ("GET", "HEAD"):
                raise web.HTTPSeeOther("/signin")
            raise web.HTTPForbidden(text="Sign in first.")
        return await handler(request)

    async def headers(request: web.Request, response: web.StreamResponse) -> None:
        h = response.headers
        h.setdefault("Content-Security-Policy", CSP)
        h["X-Content-Type-Options"] = "nosniff"
        # Sign-in links carry their token in the path: never sent to another site. (no-referrer would
        # also make browsers send "Origin: null" on our own form posts.)
        h["Referrer-Policy"] = "same-origin"
        h["X-Frame-Options"] = "DENY"
        if request.path.startswith("/static/"):
            h["Cache-Control"] = "public, max-age=3600"
        else:
            h["Cache-Control"] = "no-store"

    app = web.Application(middlewares=[session_check], client_max_size=64 * 1024)
    if console.settings.web.public_url:
        parts = urlsplit(console.settings.web.public_url)
        app[PUBLIC_ORIGIN] = f"{parts.scheme}://{parts.netloc}"
    app.on_response_prepare.append(headers)
    pages.add_routes(app, console)
    if signer is not None:
        unsubscribe.add_routes(app, console, signer)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app


def set_session(response: web.StreamResponse, console: Console, value: str | None) -> None:
    if value is None:
        response.del_cookie(COOKIE, path="/")
        return
    response.set_cookie(COOKIE, value, max_age=int(console.signin.session_ttl.total_seconds()), path="/",
                        httponly=True, samesite="Lax", secure=console.settings.web.secure_cookies)


class WebService:
    """The console as a part of `maild run`: started after the mail listeners, stopped before them."""

    def __init__(self, console: Console, engine: Engine | None = None, signer: TokenSigner | None = None) -> None:
        self.console, self.engine = console, engine  # the pages' read engine, disposed at stop
        self.signer = signer  # one-click unsubscribe links are signed with the reply-token secret
        self.address = console.settings.web.listen or ""
        self._runner: web.AppRunner | None = None

    def serving(self) -> bool:
        return self._runner is not None and bool(self._runner.sites)

    async def start(self) -> None:
        host, port = split_hostport(self.address)
        self._runner = web.AppRunner(make_app(self.console, self.signer), access_log=None, handle_signals=False,
                                     shutdown_timeout=2.0)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, host, port).start()
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self.console.metrics.install()
        log.info("web console listening on %s", self.address)

    async def stop(self) -> None:
        self.console.metrics.uninstall()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self.console.pool.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.dispose()


def web_service(settings: Settings, sessions: sessionmaker[Session], signer: TokenSigner | None,
                listening: Callable[[], dict[str, bool]],
                sessions_opened: Callable[[], dict[str, int]]) -> WebService | None:
    """The console for `maild run`, or None when `[web] listen` is not set. Needs the signing secret.

    `sessions` writes (sign-in links, queued mail: the daemon's, so the sender wakes on commit);
    pages read on an engine of their own that never waits for a writer.
    """
    if not settings.web.listen:
        return None
    secret = settings.secret()  # a ConfigError naming security.secret_env when unset or short
    engine = db.make_engine(settings.database.url, write_first=False)
    read = db.session_factory(engine)
    policy = OutboxPolicy.from_settings(settings)
    base_url = settings.web.public_url or f"http://{settings.web.listen}"
    signin = Signin(settings, secret, sessions, policy, base_url)

    def mail_issue(issue_id: int, rep: RepView) -> bool:
        if signer is None:
            return False
        with sessions() as session, session.begin():
            return mail_issue_to_rep(session, issue_id, rep.id, rep.email, signer, policy,
                                     settings.threading.tag_prefix)

    from maild.web import reports
    console = Console(settings, read, sessions, signin, Metrics(read, sessions_opened), listening,
                      mail_issue if signer is not None else None, reports.pages(settings))
    return WebService(console, engine, signer)
