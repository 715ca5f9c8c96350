"""Entry point of ``containerd-shim-pyoci-v2``: Go-style flags, then ``start``, ``delete``, ``-v`` or ``-info``.

This module is on every shim invocation's path, so it imports almost nothing; each action imports
what it needs. Unknown flags are accepted and ignored (containerd versions add flags over time).
"""

from __future__ import annotations

import os
import sys

RUNTIME_TYPE = "io.containerd.pyoci.v2"
_VALUE_FLAGS = {"namespace", "address", "publish-binary", "id", "bundle", "socket"}
_BOOL_FLAGS = {"debug", "v", "info"}


class Flags:
    """The shim's command line. A plain class: ``dataclasses`` would cost 13 ms of imports on every start."""

    FIELDS = ("namespace", "address", "publish_binary", "id", "bundle", "socket", "debug", "v", "info", "action")

    def __init__(self, **values: object) -> None:
        self.namespace = self.address = self.publish_binary = self.id = self.bundle = self.socket = ""
        self.action = ""
        self.debug = self.v = self.info = False
        self.ignored: list[str] = []
        for key, value in values.items():
            if key in self.FIELDS:
                setattr(self, key, value)

    @property
    def ttrpc_address(self) -> str:
        return os.environ.get("TTRPC_ADDRESS") or (self.address + ".ttrpc" if self.address else "")


def parse_flags(argv: list[str]) -> Flags:
    flags = Flags()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if not arg.startswith("-") or arg in ("-", "--"):
            if not flags.action:
                flags.action = arg
            continue
        name, eq, value = arg.lstrip("-").partition("=")
        if name in _VALUE_FLAGS:
            if not eq:
                value = argv[i] if i < len(argv) else ""
                i += 1
            setattr(flags, name.replace("-", "_"), value)
        elif name in _BOOL_FLAGS:
            setattr(flags, name, value.lower() not in ("false", "0") if eq else True)
        else:
            flags.ignored.append(arg)
    if not flags.namespace:
        flags.namespace = os.environ.get("NAMESPACE", "")
    if not flags.address:
        flags.address = os.environ.get("GRPC_ADDRESS", "")
    return flags


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
