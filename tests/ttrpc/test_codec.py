"""The sans-IO frame codec: framing, limits, and robustness against arbitrary bytes."""

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyoci.ttrpc.codec import (
    HEADER_SIZE,
    MAX_MESSAGE,
    ClientStreams,
    Frame,
    FrameDecoder,
    FrameType,
    ProtocolError,
    ServerStreams,
    encode_frame,
)


def test_header_is_ten_bytes_big_endian():
    data = encode_frame(Frame(0x01020304, FrameType.RESPONSE, b"xyz", flags=1))
    assert HEADER_SIZE == 10
    assert data == b"\x00\x00\x00\x03" + b"\x01\x02\x03\x04" + b"\x02" + b"\x01" + b"xyz"


def test_round_trip_of_several_frames_fed_byte_by_byte():
    frames = [
        Frame(1, FrameType.REQUEST, b"a" * 300),
        Frame(3, FrameType.REQUEST, b""),
        Frame(2, FrameType.DATA, b"z"),
    ]
    wire = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder()
    out = []
    for i in range(len(wire)):
        out += decoder.feed(wire[i : i + 1])
    assert out == frames
    assert decoder.buffered == 0


def test_message_at_the_limit_passes_and_one_byte_more_is_refused_both_ways():
    payload = b"\0" * MAX_MESSAGE
    assert FrameDecoder().feed(encode_frame(Frame(1, FrameType.REQUEST, payload)))[0].payload == payload
    with pytest.raises(ProtocolError, match="exceeds"):
        encode_frame(Frame(1, FrameType.REQUEST, payload + b"\0"))
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameDecoder().feed(struct.pack(">IIBB", MAX_MESSAGE + 1, 1, 1, 0))


@pytest.mark.parametrize(
    "header, reason",
    [(struct.pack(">IIBB", 1, 1, 9, 0), "unknown type 9"), (struct.pack(">IIBB", 0, 0, 1, 0), "stream 0")],
)
def test_malformed_headers_break_the_decoder_for_good(header, reason):
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError, match=reason):
        decoder.feed(header + b"\0")
    with pytest.raises(ProtocolError):
        decoder.feed(encode_frame(Frame(1, FrameType.REQUEST, b"")))


def test_stream_id_bookkeeping():
    ids = ClientStreams()
    assert [ids.next_id() for _ in range(3)] == [1, 3, 5]
    server = ServerStreams()
    assert server.accept(1) is None
    assert "even" in server.accept(2)
    assert "not greater" in server.accept(1)
    assert server.accept(7) is None


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_give_frames_or_a_protocol_error(chunks):
    decoder = FrameDecoder()
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert frame.stream_id != 0 and len(frame.payload) <= MAX_MESSAGE
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 2**32 - 1), st.sampled_from(list(FrameType)), st.binary(max_size=2000))))
def test_any_valid_frame_sequence_round_trips(specs):
    frames = [Frame(sid, ftype, payload) for sid, ftype, payload in specs]
    wire = b"".join(encode_frame(f) for f in frames)
    assert FrameDecoder().feed(wire) == frames


def test_frames_are_taken_one_at_a_time_after_receive():
    frames = [Frame(1, FrameType.REQUEST, b"a"), Frame(3, FrameType.REQUEST, b"bb")]
    wire = b"".join(encode_frame(f) for f in frames)
    decoder = FrameDecoder()
    decoder.receive(wire[:-1])
    assert decoder.next_frame() == frames[0]
    assert decoder.next_frame() is None  # the second one is one byte short
    decoder.receive(wire[-1:])
    assert decoder.next_frame() == frames[1]
    assert decoder.next_frame() is None and decoder.buffered == 0
