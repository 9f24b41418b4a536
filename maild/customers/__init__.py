"""Customer identification records: queries, admin (edit, link, merge) and
the registered-user import. The pipeline's `identify` stage matches senders;
this package is where people look records up and change them.
"""
