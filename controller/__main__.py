"""`python -m controller run …` — the same as `stokehold controller run …`."""

from controller.cli import main

main()
