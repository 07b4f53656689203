"""Write (or with --check, verify) the JSON Schemas in events/schemas/."""

from __future__ import annotations

import argparse
import sys

from events.schemas import SCHEMA_DIR, drift, write


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m events.schemas", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report schemas that differ from the models")
    args = parser.parse_args(argv)
    if args.check:
        stale = drift()
        for name in stale:
            print(f"stale: {SCHEMA_DIR / name}", file=sys.stderr)
        if stale:
            print("run `make schemas` to regenerate", file=sys.stderr)
        return 1 if stale else 0
    for path in write():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
