"""`python -m maild`: the same as the `maild` command."""

from maild.cli import main

main(prog_name="maild")
