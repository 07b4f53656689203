"""`python -m controller run …` — the same as `modelplane controller run …`."""

from controller.cli import main

main()
