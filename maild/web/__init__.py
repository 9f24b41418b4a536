"""The web console: a read side over the helpdesk, plus /metrics and /healthz for the operator.

Pages only query (on a read-only connection); the one thing a page may do is
queue mail through the outbox (a sign-in link, an issue's history to the rep
asking). Nothing in ingest/, desk/ or outbound/ imports this package; the
daemon starts it through `server.WebService` when `[web] listen` is set.
"""
