"""`python -m events` is the `stokehold` command."""

from events.cli import main

main()
