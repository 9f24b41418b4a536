"""maild: an email-ingestion helpdesk daemon (see README.md)."""

__version__ = "0.1.0"
