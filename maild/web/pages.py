"""The console's pages: each one a query from `queries` (or the reports API) and a template.

Read only, except the two forms that queue mail through the outbox: a sign-in
link and "mail me this issue".
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from email.utils import encode_rfc2231
from typing import Any

from aiohttp import web

from maild.web import queries
from maild.web.server import REP, Console, check_csrf, set_session
from maild.web.signin import RepView

log = logging.getLogger("maild.web")

ID = r"{id:\d{1,9}}"


def _id(request: web.Request, key: str = "id") -> int:
    return int(request.match_info[key])


def disposition(filename: str) -> str:
    """Content-Disposition: attachment with an ASCII fallback name and the RFC 6266/5987 UTF-8 one."""
    clean = "".join(ch for ch in filename if ch.isprintable() and ch not in '"\\/')[:150] or "attachment"
    ascii_name = clean.encode("ascii", "replace").decode().replace("?", "_")
    return f'attachment; filename="{ascii_name}"; filename*={encode_rfc2231(clean, "utf-8")}'


def add_routes(app: web.Application, console: Console) -> None:
    r = app.router
    h = Handlers(console)
    r.add_get("/", h.front)
    r.add_get(f"/issues/{ID}", h.issue)
    r.add_get(f"/issues/{ID}/attachments/{{att:\\d{{1,9}}}}", h.attachment)
    r.add_post(f"/issues/{ID}/mail-me", h.mail_me)
    r.add_get(f"/customers/{ID}", h.customer)
    r.add_get("/search", h.search)
    r.add_get("/signin", h.signin_form)
    r.add_post("/signin", h.signin_request)
    r.add_get("/signin/{token}", h.signin_confirm)
    r.add_post("/signin/{token}", h.signin_use)
    r.add_post("/signout", h.signout)
    r.add_get("/healthz", h.healthz)
    r.add_get("/metrics", h.metrics)
    if console.reports is not None:
        console.reports.add_routes(app, console)


class Snapshot:
    """A value shared by the requests of a few seconds: the front page's figures are the same for
    every rep, so reps opening it at once cost one set of queries. Once there is a value, a stale one
    is served while a single refresh runs in the background; only the very first request waits."""

    def __init__(self, ttl: float) -> None:
        self.ttl, self.value, self.at = ttl, None, -1e9
        self._lock: asyncio.Lock | None = None
        self._refreshing: asyncio.Task | None = None

    async def get(self, compute: Callable[[], Awaitable[Any]]) -> Any:
        if self.value is not None:
            stale = time.monotonic() - self.at >= self.ttl
            if stale and (self._refreshing is None or self._refreshing.done()):
                self._refreshing = asyncio.ensure_future(self._refresh(compute))
            return self.value
        self._lock = self._lock or asyncio.Lock()
        async with self._lock:
            if self.value is None:
                self.value, self.at = await compute(), time.monotonic()
            return self.value

    async def _refresh(self, compute: Callable[[], Awaitable[Any]]) -> None:
        try:
            self.value = await compute()
        except Exception:  # the figures stay as they were; tried again after ttl
            log.exception("front page figures not refreshed")
        self.at = time.monotonic()


FRONT_TTL = 2.0  # seconds a front page's figures are shared


class Handlers:
    def __init__(self, console: Console) -> None:
        self.c = console
        self.front_page = Snapshot(FRONT_TTL)

    # -- pages ----------------------------------------------------------------------------

    async def front(self, request: web.Request) -> web.Response:
        return self.c.render(request, "front.html", **await self.front_page.get(self._front_data))

    async def _front_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"attention": await self.c.query(queries.attention)}
        if self.c.reports is not None:
            data.update(await self.c.reports.front(self.c))
        return data

    async def issue(self, request: web.Request) -> web.Response:
        issue = await self.c.query(queries.issue_page, _id(request))
        if issue is None:
            return self.c.render(request, "error.html", status=404, message=f"There is no issue #{_id(request)}.")
        sent = request.query.get("sent") == "1"
        return self.c.render(request, "issue.html", issue=issue, sent=sent)

    async def attachment(self, request: web.Request) -> web.Response:
        found = await self.c.query(queries.attachment, _id(request), _id(request, "att"))
        if found is None:
            return self.c.render(request, "error.html", status=404, message="No such attachment on this issue.")
        filename, content_type, data = found
        if "/" not in content_type or any(ch in content_type for ch in "\r\n"):
            content_type = "application/octet-stream"
        return web.Response(body=data, headers={"Content-Type": content_type,
                                                "Content-Disposition": disposition(filename)})

    async def mail_me(self, request: web.Request) -> web.Response:
        check_csrf(request, await request.post())
        rep: RepView = request[REP]
        if self.c.mail_issue is None:
            return self.c.render(request, "error.html", status=503,
                                 message="Mail me this issue needs the signing secret for reply addresses.")
        queued = await self.c.call(self.c.mail_issue, _id(request), rep)
        if not queued:
            return self.c.render(request, "error.html", status=404, message=f"There is no issue #{_id(request)}.")
        raise web.HTTPSeeOther(f"/issues/{_id(request)}?sent=1")

    async def customer(self, request: web.Request) -> web.Response:
        customer = await self.c.query(queries.customer_page, _id(request))
        if customer is None:
            return self.c.render(request, "error.html", status=404, message=f"There is no customer {_id(request)}.")
        return self.c.render(request, "customer.html", customer=customer)

    async def search(self, request: web.Request) -> web.Response:
        q = request.query.get("q", "")
        found = await self.c.query(queries.search, q) if q.strip() else None
        return self.c.render(request, "search.html", q=q, found=found)

    # -- sign-in --------------------------------------------------------------------------

    async def signin_form(self, request: web.Request) -> web.Response:
        if request.get(REP) is not None:
            raise web.HTTPSeeOther("/")
        return self.c.render(request, "signin.html")

    async def signin_request(self, request: web.Request) -> web.Response:
        form = await request.post()
        address = form.get("address", "")
        if isinstance(address, str) and address.strip():
            # Queued after the answer, off the request: neither the page nor its timing tells
            # anyone who is a rep (only a rep's address costs a write).
            self.c.pool.submit(self._request_link, address)
        # The same answer whoever asked: the page tells nobody who is a rep.
        return self.c.render(request, "signin_sent.html", minutes=round(self.c.settings.web.signin_minutes))

    def _request_link(self, address: str) -> None:
        try:
            self.c.signin.request_link(address)
        except Exception:
            log.exception("sign-in link for %r could not be queued", address[:320])

    async def signin_confirm(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if not await self.c.query(self.c.signin.usable, token):
            return self.c.render(request, "signin_refused.html", status=403)
        return self.c.render(request, "signin_confirm.html", token=token)

    async def signin_use(self, request: web.Request) -> web.Response:
        rep_id = await self.c.call(self.c.signin.consume, request.match_info["token"])
        if rep_id is None:
            return self.c.render(request, "signin_refused.html", status=403)
        log.info("signed in rep=%s", rep_id)
        response = web.HTTPSeeOther("/")
        set_session(response, self.c, self.c.signin.cookie(rep_id))
        raise response

    async def signout(self, request: web.Request) -> web.Response:
        check_csrf(request, await request.post())
        response = web.HTTPSeeOther("/signin")
        set_session(response, self.c, None)
        raise response

    # -- for the operator -------------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        listeners = self.c.listening()
        database = await self.c.call(self.c.metrics.database_ok)
        ok = database is None and all(listeners.values())
        body = {"status": "ok" if ok else "unhealthy", "listeners": listeners,
                "database": "ok" if database is None else database}
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        body = await self.c.call(self.c.metrics.render)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

