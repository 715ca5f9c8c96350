"""The D-Bus client: marshalling round-trips (hypothesis), known wire bytes, malformed input, and a real bus."""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as stf

from pyoci.runtime import dbus

# --------------------------------------------------------------------------------- typed value strategies

_INTS = {
    "y": (0, 255),
    "n": (-(2**15), 2**15 - 1),
    "q": (0, 2**16 - 1),
    "i": (-(2**31), 2**31 - 1),
    "u": (0, 2**32 - 1),
    "x": (-(2**63), 2**63 - 1),
    "t": (0, 2**64 - 1),
}
_text = stf.text(stf.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=20)
_path = stf.lists(stf.from_regex(r"[A-Za-z0-9_]{1,5}", fullmatch=True), max_size=3).map(lambda p: "/" + "/".join(p))


def _basic() -> stf.SearchStrategy[tuple[str, object]]:
    ints = [stf.tuples(stf.just(c), stf.integers(lo, hi)) for c, (lo, hi) in _INTS.items()]
    return stf.one_of(
        *ints,
        stf.tuples(stf.just("b"), stf.booleans()),
        stf.tuples(stf.just("d"), stf.floats(allow_nan=False)),
        stf.tuples(stf.just("s"), _text),
        stf.tuples(stf.just("o"), _path),
        stf.tuples(stf.just("g"), stf.sampled_from(["", "s", "a(sv)", "a{sv}", "(iu)"])),
    )


def _typed(sig_value: stf.SearchStrategy[tuple[str, object]]) -> stf.SearchStrategy[tuple[str, object]]:
    """Containers of ``sig_value``: arrays (of one element type), structs, dicts, variants."""

    def array(elem: tuple[str, object]) -> stf.SearchStrategy[tuple[str, object]]:
        sig, value = elem
        if sig == "y":
            return stf.binary(max_size=10).map(lambda b: ("ay", b))
        return stf.lists(stf.just(value), max_size=3).map(lambda vs: ("a" + sig, vs))

    structs = stf.lists(sig_value, min_size=1, max_size=3).map(
        lambda items: ("(" + "".join(s for s, _ in items) + ")", tuple(v for _, v in items))
    )
    dicts = stf.tuples(stf.sampled_from(["s", "u", "t"]), sig_value).flatmap(
        lambda kv: stf.dictionaries(
            stf.text(max_size=5).filter(lambda s: "\0" not in s) if kv[0] == "s" else stf.integers(0, 2**32 - 1),
            stf.just(kv[1][1]),
            max_size=3,
        ).map(lambda d, kv=kv: ("a{" + kv[0] + kv[1][0] + "}", d))
    )
    variants = sig_value.map(lambda sv: ("v", dbus.Variant(sv[0], sv[1])))
    return stf.one_of(sig_value.flatmap(array), structs, dicts, variants)


TYPED = stf.recursive(_basic(), _typed, max_leaves=12)


@settings(max_examples=150, deadline=None)
@given(stf.lists(TYPED, max_size=4), stf.integers(0, 7))
def test_body_round_trip(items, start):
    signature = "".join(s for s, _ in items)
    values = tuple(v for _, v in items)
    data = dbus.encode_body(signature, values, start)
    assert dbus.decode_body(signature, data, start) == values
    assert dbus.split_signature(signature) == [s for s, _ in items]


@settings(max_examples=100, deadline=None)
@given(stf.lists(TYPED, max_size=3), stf.integers(1, 2**32 - 1), stf.sampled_from([1, 2, 3, 4]))
def test_message_round_trip(items, serial, mtype):
    msg = dbus.Message(
        mtype,
        serial=serial,
        path="/org/freedesktop/systemd1",
        interface="org.freedesktop.systemd1.Manager",
        member="StartTransientUnit",
        destination="org.freedesktop.systemd1",
        reply_serial=7 if mtype in (2, 3) else None,
        error_name="org.x.Error" if mtype == 3 else None,
        signature="".join(s for s, _ in items),
        body=tuple(v for _, v in items),
    )
    data = dbus.encode_message(msg)
    assert len(data) == dbus.message_length(data[:16])
    assert dbus.decode_message(data) == msg
    for cut in (0, 15, len(data) // 2, len(data) - 1):
        with pytest.raises(dbus.DBusError):
            dbus.decode_message(data[:cut])


def test_known_wire_bytes_of_a_hello():
    """The bytes of a Hello call as libdbus writes them (dbus-monitor --binary of `dbus-send ... Hello`)."""
    msg = dbus.Message(
        dbus.METHOD_CALL,
        serial=1,
        path="/org/freedesktop/DBus",
        interface="org.freedesktop.DBus",
        member="Hello",
        destination="org.freedesktop.DBus",
    )
    data = dbus.encode_message(msg)
    assert data[:12] == b"l\x01\x00\x01" + struct.pack("<II", 0, 1)
    assert b"\x01\x01o\x00\x15\x00\x00\x00/org/freedesktop/DBus\x00" in data  # field 1 (path), signature "o"
    assert len(data) % 8 == 0


def test_struct_and_array_alignment():
    # a(sv) with one ("A", uint64 5): array length 4, pad to 8, string, variant "t" aligned to 8
    data = dbus.encode_body("a(sv)", ([("A", dbus.Variant("t", 5))],))
    assert data == (
        struct.pack("<I", 24) + b"\0" * 4 + struct.pack("<I", 1) + b"A\0" + b"\1t\0" + b"\0" * 7 + struct.pack("<Q", 5)
    )
    assert dbus.encode_body("at", ([],)) == b"\0\0\0\0" + b"\0" * 4  # padding to the element counts, not in length
    assert dbus.encode_body("ay", (b"\1\2",)) == struct.pack("<I", 2) + b"\1\2"


def test_big_endian_messages_decode():
    fields = b"\x05\x01u\x00" + struct.pack(">I", 9)  # REPLY_SERIAL 9 (at offset 16)
    fields += b"\x08\x01g\x00" + b"\x01s\x00"  # SIGNATURE "s" (at offset 24)
    body = struct.pack(">I", 3) + b"abc\0"
    raw = b"B\x02\x00\x01" + struct.pack(">III", len(body), 4, len(fields)) + fields + b"\0" + body
    msg = dbus.decode_message(raw)
    assert (msg.type, msg.serial, msg.reply_serial, msg.signature, msg.body) == (2, 4, 9, "s", ("abc",))


@pytest.mark.parametrize(
    "signature", ["a", "(", "()", "a{vs}", "a{s}", "a{sss}", "z", "(s", "a" * 40 + "s", "(" * 40 + "s" + ")" * 40]
)
def test_invalid_signatures_are_refused(signature):
    with pytest.raises(dbus.DBusError, match="InvalidSignature"):
        dbus.split_signature(signature)


@pytest.mark.parametrize(
    ("signature", "value"),
    [("y", 256), ("u", -1), ("s", "a\0b"), ("(ss)", ("a",)), ("v", dbus.Variant("ss", ("a", "b"))), ("i", "x")],
)
def test_values_that_do_not_fit_are_refused(signature, value):
    with pytest.raises(dbus.DBusError, match="InvalidArgs"):
        dbus.encode_body(signature, (value,))


def test_malformed_bodies_are_refused():
    with pytest.raises(dbus.DBusError):
        dbus.decode_body("b", struct.pack("<I", 2))  # a boolean must be 0 or 1
    with pytest.raises(dbus.DBusError):
        dbus.decode_body("s", struct.pack("<I", 3) + b"abcd")  # no NUL
    with pytest.raises(dbus.DBusError):
        dbus.decode_body("au", struct.pack("<I", 6) + b"\0" * 8)  # the length cuts an element
    with pytest.raises(dbus.DBusError):
        dbus.decode_body("u", struct.pack("<II", 1, 2))  # trailing bytes
    with pytest.raises(dbus.DBusError, match="endianness"):
        dbus.message_length(b"X" + b"\0" * 15)
    with pytest.raises(dbus.DBusError, match="LimitsExceeded"):
        dbus.message_length(b"l\1\0\1" + struct.pack("<III", 2**28, 1, 0))


def test_auth_external_sends_the_uid_in_hex():
    assert dbus.auth_external(0) == b"\0AUTH EXTERNAL 30\r\n"
    assert dbus.auth_external(1000) == b"\0AUTH EXTERNAL 31303030\r\n"


# ------------------------------------------------------------------------------ a real bus (dbus-daemon)

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>custom</type><listen>unix:path={sock}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/>
<allow own="*"/></policy>
</busconfig>
"""


@pytest.fixture
def bus(tmp_path):
    daemon = shutil.which("dbus-daemon")
    assert daemon, "dbus-daemon is missing (Debian package dbus-daemon)"
    sock = tmp_path / "bus.sock"
    (tmp_path / "bus.conf").write_text(BUS_CONFIG.format(sock=sock))
    proc = subprocess.Popen(
        [daemon, f"--config-file={tmp_path / 'bus.conf'}", "--nofork", "--nopidfile"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.01)
        yield str(sock)
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait()


def test_hello_calls_replies_and_errors_on_a_real_bus(bus):
    with dbus.Connection(bus, timeout=5) as conn:
        assert conn.unique_name.startswith(":1.")
        (names,) = conn.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "ListNames")
        assert conn.unique_name in names
        with pytest.raises(dbus.DBusError) as err:
            conn.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "NoSuchMethod")
        assert err.value.name == "org.freedesktop.DBus.Error.UnknownMethod"
        with pytest.raises(dbus.DBusError, match="ServiceUnknown"):
            conn.call("org.freedesktop.systemd1", "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "X")


def test_signals_are_matched_and_kept_while_waiting_for_replies(bus):
    with dbus.Connection(bus, timeout=5) as listener, dbus.Connection(bus, timeout=5) as sender:
        rule = "type='signal',interface='org.example.Jobs',member='JobRemoved'"
        listener.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", "s", rule)
        for job in (1, 2):
            sender.send(
                dbus.Message(
                    dbus.SIGNAL,
                    path="/org/example",
                    interface="org.example.Jobs",
                    member="JobRemoved",
                    signature="uoss",
                    body=(job, f"/job/{job}", "x.scope", "done"),
                )
            )
        # a call made after the signals were sent: they arrive before its reply and are kept for wait_signal
        listener.call("org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId")
        second = listener.wait_signal(lambda m: m.member == "JobRemoved" and m.body[0] == 2, timeout=5)
        first = listener.wait_signal(lambda m: m.member == "JobRemoved" and m.body[0] == 1, timeout=5)
        assert (first.body, second.body) == ((1, "/job/1", "x.scope", "done"), (2, "/job/2", "x.scope", "done"))
        with pytest.raises(dbus.DBusError, match="Timeout"):
            listener.wait_signal(lambda m: m.member == "JobRemoved", timeout=0.2)


def test_a_socket_that_is_not_there_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        dbus.Connection(str(tmp_path / "none.sock"))
