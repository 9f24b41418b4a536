"""One-click unsubscribe (RFC 8058): the https link in a campaign mail's List-Unsubscribe.

A mailbox provider POSTs `List-Unsubscribe=One-Click` to it from its own
servers, without a session and from another origin, so the route is public
and exempt from the console's same-origin check: the signed token in the path
is the authority, the same token as the campaign's mailto unsubscribe address.
A GET (a person following the link, or a scanner fetching it) only shows a
button; nothing changes without the POST. The opt-out is recorded by the
same function the mail path uses (`maild.bulk.optout.opt_out`).
"""

from __future__ import annotations

import logging

from aiohttp import web

from maild.bulk.optout import opt_out
from maild.tokens import TokenSigner

log = logging.getLogger("maild.web")

PATH = "/unsubscribe/"


def add_routes(app: web.Application, console, signer: TokenSigner) -> None:
    def issue_of(request: web.Request) -> int:
        token = signer.verify(request.match_info["token"])
        if token is None or token.purpose != "unsubscribe" or token.issue_id is None:
            raise web.HTTPNotFound(text="This unsubscribe link is not valid.")
        return token.issue_id

    async def confirm(request: web.Request) -> web.Response:
        issue_of(request)
        return console.render(request, "unsubscribe.html", done=False)

    async def unsubscribe(request: web.Request) -> web.Response:
        issue_id = issue_of(request)

        def record() -> int | None:
            with console.write() as session, session.begin():
                return opt_out(session, issue_id)

        customer_id = await console.call(record)
        log.info("one-click unsubscribe issue=%s customer=%s", issue_id, customer_id)
        return console.render(request, "unsubscribe.html", done=True)

    app.router.add_get(PATH + "{token}", confirm)
    app.router.add_post(PATH + "{token}", unsubscribe)
