"""Entry point of ``containerd-shim-pyoci-v2``: Go-style flags, then ``start``, ``delete``, ``-v`` or ``-info``.

This module is on every shim invocation's path, so it imports almost nothing; each action imports
what it needs. Nothing imports this module (the flags live in ``flags``, the paths in ``paths``).
"""

import sys

from .flags import RUNTIME_TYPE, parse_flags


def main(argv: list[str] | None = None) -> int:
    flags = parse_flags(sys.argv[1:] if argv is None else argv)
    if flags.v:
        from pyoci.runtime import __version__

        print(f"containerd-shim-pyoci-v2:\n  Runtime: {RUNTIME_TYPE}\n  Version: {__version__}")
        return 0
    if flags.info:
        from .info import write_info

        return write_info()
    if flags.action == "start":
        from .start import start

        return start(flags)
    if flags.action == "zygote":
        from .zygote import main as template

        return template(flags)
    if flags.action == "delete":
        from .delete import delete

        return delete(flags)
    print(f"containerd-shim-pyoci-v2: unknown action {flags.action!r} (start, delete, -v, -info)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
