"""Intake: the edges mail comes in by (SMTP/LMTP, IMAP, the MTA pipe, archive
import), the durable raw-message store they hand it to, and the pipeline that
runs the stages over it. Nothing here imports the desk, the outbox or the web.
"""
