"""``pyoci``: the runc-compatible command line over the runtime core."""

from __future__ import annotations

import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-v", "--version", "version"):
        print(f"pyoci version {__version__}")
        return 0
    print("pyoci: the runtime CLI is not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
