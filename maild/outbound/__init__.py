"""Only what leaves: the durable outbox, the sender, composing, templates,
automatic emails and the pure notification decisions.
"""
