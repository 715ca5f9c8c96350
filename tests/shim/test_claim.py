"""Exactly one daemon serves a shim socket: the second to claim it is refused."""

import socket

from pyoci.shim.daemon import claim


def test_second_claim_of_a_socket_is_refused(tmp_path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(tmp_path / "shim.sock"))
    first = claim(sock)
    assert first is not None
    assert claim(sock) is None
    import os

    os.close(first)
    again = claim(sock)
    assert again is not None
    os.close(again)
    sock.close()
