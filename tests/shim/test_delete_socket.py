"""The delete action removes a dead shim's socket, never a live one (of the same pod)."""

import os
import socket

from pyoci.shim.delete import _remove_dead_socket
from pyoci.shim.flags import Flags
from pyoci.shim.paths import socket_address


def test_dead_socket_removed_live_socket_kept(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    flags = Flags(namespace="unit", address=f"/nonexistent/pyoci-unit-{os.getpid()}", id="c1")
    path = socket_address(flags.address, flags.namespace, "c1").removeprefix("unix://")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(path)
        live.listen()
        _remove_dead_socket(flags, str(tmp_path))
        assert os.path.exists(path), "a socket that accepts connections was removed"
    finally:
        live.close()  # the file stays: the socket is now dead
    assert os.path.exists(path)
    _remove_dead_socket(flags, str(tmp_path))
    assert not os.path.exists(path)
