"""IMAP intake: the client connection, the UID bookkeeping, and the poller.

An edge like SMTP: it fetches raw bytes, hands them to the durable intake,
and only then moves or marks anything on the server.
"""
