"""Entry point of ``containerd-shim-pyoci-v2``."""

from __future__ import annotations

import sys

from pyoci.runtime import __version__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "-v" in args or "--v" in args:
        print(f"containerd-shim-pyoci-v2:\n  Version:  {__version__}")
        return 0
    print("containerd-shim-pyoci-v2: not implemented yet", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
