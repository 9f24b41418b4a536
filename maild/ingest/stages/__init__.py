"""The pipeline's stages: parse, classify, identify, thread, store.

Each stage is a small function of typed records (records.py) plus a lookup;
only `store` writes. Nothing here knows transports, the desk or the outbox.
"""
