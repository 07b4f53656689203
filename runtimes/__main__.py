"""`python -m runtimes head|worker …`: the runtime's entrypoint (see runtimes/launcher.py)."""

import sys

from runtimes.launcher import main

if __name__ == "__main__":
    sys.exit(main())
