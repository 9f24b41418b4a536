"""The helpdesk's own rules: a rep's mail understood and applied.

Rep replies and notes, commands, canned responses, spell check, and the
pipeline's emit hook that turns stored mail into notifications. The desk
knows the store's records and the outbox's queueing call; nothing lower
imports it.
"""
