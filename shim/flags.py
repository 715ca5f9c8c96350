"""The shim's command line: containerd's Go-style flags (``-namespace ns``, ``-debug``), parsed without argparse.

Unknown flags are accepted and ignored (containerd versions add flags over time).
"""

import os

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
