"""`python -m maild`: the same as the `maild` command."""

from maild.cli import process_main

process_main()
