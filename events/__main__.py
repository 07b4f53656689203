"""`python -m events` is the `modelplane` command."""

from events.cli import main

main()
