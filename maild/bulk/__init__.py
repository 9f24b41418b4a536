"""Bulk mail: segments of customers, campaigns to them, opt-outs and gift certificates.

The seed's "spam system", done the way a careful sender does it. Everything a
campaign sends goes through the one outbox; this room never talks SMTP and
never imports the desk.
"""
