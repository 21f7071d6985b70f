"""Stream framing: any split, bounded buffer, oversize headers refused before buffering."""

from __future__ import annotations

import struct

import pytest
from isthmus.protocol import (
    Cancel,
    ErrorCode,
    FrameDecoder,
    GenerateRequest,
    ProtocolError,
    TokenChunk,
    encode,
    encode_frame,
    limits,
)

from .samples import SAMPLES

MESSAGES = [m for m, _ in SAMPLES]


def test_frame_layout_is_u32_big_endian_length_then_body() -> None:
    msg = Cancel(id="abc")
    frame = encode_frame(msg)
    body = encode(msg)
    assert frame == struct.pack(">I", len(body)) + body
    assert encode_frame(body) == frame
    assert encode_frame(bytearray(body)) == frame


def test_encode_frame_refuses_oversize_and_empty_bodies() -> None:
    with pytest.raises(ProtocolError) as info:
        encode_frame(b"x" * 101, max_frame_size=100)
    assert info.value.code == ErrorCode.INVALID_FRAME
    assert encode_frame(b"x" * 100, max_frame_size=100)[:4] == struct.pack(">I", 100)
    with pytest.raises(ProtocolError) as info:
        encode_frame(b"")
    assert info.value.code == ErrorCode.INVALID_FRAME
    with pytest.raises(ProtocolError):
        encode_frame(b"\x00" * (limits.MAX_FRAME_SIZE + 1))


def test_all_messages_in_one_feed() -> None:
    stream = b"".join(encode_frame(m) for m in MESSAGES)
    dec = FrameDecoder()
    assert dec.feed(stream) == MESSAGES
    assert dec.at_boundary and dec.buffered == 0
    dec.eof()


def test_byte_at_a_time() -> None:
    stream = b"".join(encode_frame(m) for m in MESSAGES)
    dec = FrameDecoder()
    out = []
    for i in range(len(stream)):
        out += dec.feed(stream[i : i + 1])
        assert dec.buffered <= limits.FRAME_HEADER_SIZE + max(len(encode(m)) for m in MESSAGES)
    assert out == MESSAGES
    assert dec.at_boundary


def test_partial_frame_is_not_at_boundary_and_eof_refuses_it() -> None:
    frame = encode_frame(Cancel(id="a"))
    for cut in (1, 3, 4, 5, len(frame) - 1):
        dec = FrameDecoder()
        assert dec.feed(frame[:cut]) == []
        assert not dec.at_boundary
        with pytest.raises(ProtocolError) as info:
            dec.eof()
        assert info.value.code == ErrorCode.INVALID_FRAME


def test_oversize_header_refused_before_any_body_is_buffered() -> None:
    dec = FrameDecoder(max_frame_size=1024)
    with pytest.raises(ProtocolError) as info:
        dec.feed(struct.pack(">I", 1025))
    assert info.value.code == ErrorCode.INVALID_FRAME
    assert "1025" in info.value.message
    assert dec.buffered == 0


def test_huge_header_with_body_bytes_keeps_buffer_small() -> None:
    dec = FrameDecoder()
    header = struct.pack(">I", 0xFFFFFFFF)
    assert dec.feed(header[:2]) == []
    assert dec.buffered == 2
    with pytest.raises(ProtocolError):
        dec.feed(header[2:] + b"\x00" * 65536)
    assert dec.buffered == 0


def test_errors_are_final() -> None:
    dec = FrameDecoder(max_frame_size=16)
    with pytest.raises(ProtocolError):
        dec.feed(struct.pack(">I", 17))
    with pytest.raises(ProtocolError):
        dec.feed(encode_frame(b"\x80"))
    with pytest.raises(ProtocolError):
        dec.eof()


def test_zero_length_frame_is_invalid() -> None:
    dec = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        dec.feed(b"\x00\x00\x00\x00")
    assert info.value.code == ErrorCode.INVALID_FRAME


def test_bad_body_is_invalid_message_and_final() -> None:
    dec = FrameDecoder()
    with pytest.raises(ProtocolError) as info:
        dec.feed(encode_frame(b"\xc1"))  # 0xc1 is never valid msgpack
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    with pytest.raises(ProtocolError):
        dec.feed(encode_frame(Cancel(id="a")))


def test_buffer_bounded_by_one_frame_when_fed_many_frames_at_once() -> None:
    dec = FrameDecoder(max_frame_size=64)
    frame = encode_frame(Cancel(id="a"))
    stream = frame * 1000
    half = len(frame) // 2
    assert len(dec.feed_raw(stream + frame[:half])) == 1000
    assert dec.buffered == half


def test_feed_raw_returns_bodies() -> None:
    dec = FrameDecoder()
    bodies = dec.feed_raw(encode_frame(b"abc") + encode_frame(b"de")[:5])
    assert bodies == [b"abc"]
    assert dec.feed_raw(b"e") == [b"de"]


def test_expected_type_checked_per_frame() -> None:
    dec = FrameDecoder(expected=(TokenChunk,))
    assert dec.feed(encode_frame(TokenChunk(id="a", tier="edge"))) == [TokenChunk(id="a", tier="edge")]
    with pytest.raises(ProtocolError) as info:
        dec.feed(encode_frame(GenerateRequest(id="a", prompt="p")))
    assert info.value.code == ErrorCode.INVALID_MESSAGE


def test_accepts_memoryview_and_bytearray() -> None:
    frame = encode_frame(Cancel(id="a"))
    dec = FrameDecoder()
    assert dec.feed(memoryview(frame)[:6]) == []
    assert dec.feed(bytearray(frame[6:])) == [Cancel(id="a")]


def test_max_frame_size_must_be_sane() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=0)
    with pytest.raises(ValueError):
        FrameDecoder(max_frame_size=2**32)
