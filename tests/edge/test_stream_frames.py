"""`StreamFrames`, the sans-IO frame state machine of a request stream: bytes in, events out."""

from __future__ import annotations

import struct

import pytest
from isthmus.edge.stream_frames import CancelReceived, RequestReceived, StreamFailed, StreamFrames
from isthmus.protocol import Cancel, Error, ErrorCode, GenerateRequest, encode_frame

MAX_FRAME = 64 * 1024  # bytes


def request(rid: str = "r1") -> GenerateRequest:
    return GenerateRequest(id=rid, prompt="hello")


def failure(events: list[object]) -> StreamFailed:
    assert len(events) >= 1 and isinstance(events[-1], StreamFailed), events
    return events[-1]


def test_request_then_cancel() -> None:
    frames = StreamFrames(MAX_FRAME)
    assert frames.receive(encode_frame(request()), end_stream=False) == [RequestReceived(request())]
    assert frames.has_request and not frames.is_closed
    assert frames.receive(encode_frame(Cancel(id="r1")), end_stream=False) == [CancelReceived()]
    assert frames.is_closed
    assert frames.receive(encode_frame(Cancel(id="r1")), end_stream=True) == []  # closed: ignored


def test_request_split_byte_by_byte_and_fin() -> None:
    frames = StreamFrames(MAX_FRAME)
    data = encode_frame(request())
    events = []
    for i in range(len(data)):
        events += frames.receive(data[i : i + 1], end_stream=False)
        if i < len(data) - 1:
            assert frames.held_bytes == i + 1
    assert events == [RequestReceived(request())]
    assert frames.held_bytes == 0
    assert frames.receive(b"", end_stream=True) == []  # a FIN after the request is fine


def test_request_and_cancel_in_one_read_keep_their_order() -> None:
    frames = StreamFrames(MAX_FRAME)
    events = frames.receive(encode_frame(request()) + encode_frame(Cancel(id="r1")), end_stream=False)
    assert events == [RequestReceived(request()), CancelReceived()]


def test_first_message_must_be_a_request() -> None:
    frames = StreamFrames(MAX_FRAME)
    error = failure(frames.receive(encode_frame(Cancel(id="x")), end_stream=False)).error
    assert error.code == ErrorCode.INVALID_MESSAGE and "first message" in error.message
    assert frames.is_closed and frames.held_bytes == 0


def test_other_messages_after_the_request_fail() -> None:
    frames = StreamFrames(MAX_FRAME)
    stray = Error(id="r1", code=ErrorCode.INTERNAL, message="x")
    events = frames.receive(encode_frame(request()) + encode_frame(stray), end_stream=False)
    assert isinstance(events[0], RequestReceived)
    error = failure(events).error
    assert error.code == ErrorCode.INVALID_MESSAGE and "unexpected Error" in error.message


def test_second_request_fails() -> None:
    frames = StreamFrames(MAX_FRAME)
    frames.receive(encode_frame(request()), end_stream=False)
    error = failure(frames.receive(encode_frame(request("r2")), end_stream=False)).error
    assert error.code == ErrorCode.INVALID_MESSAGE


def test_end_before_request() -> None:
    frames = StreamFrames(MAX_FRAME)
    error = failure(frames.receive(b"", end_stream=True)).error
    assert error.code == ErrorCode.INVALID_FRAME and "before a request" in error.message


def test_truncated_frame_at_end_of_stream() -> None:
    frames = StreamFrames(MAX_FRAME)
    data = encode_frame(request())
    error = failure(frames.receive(data[:-1], end_stream=True)).error
    assert error.code == ErrorCode.INVALID_FRAME


def test_oversized_frame_refused_before_its_body() -> None:
    frames = StreamFrames(1024)
    error = failure(frames.receive(struct.pack(">I", 10_000), end_stream=False)).error
    assert error.code == ErrorCode.INVALID_FRAME and "exceeds the limit" in error.message
    assert frames.is_closed


def test_garbage_body_is_an_error_not_an_exception() -> None:
    frames = StreamFrames(MAX_FRAME)
    body = b"\xc1\xc1\xc1"  # 0xc1 is never valid msgpack
    error = failure(frames.receive(struct.pack(">I", len(body)) + body, end_stream=False)).error
    assert error.code in (ErrorCode.INVALID_FRAME, ErrorCode.INVALID_MESSAGE)


@pytest.mark.parametrize("held", [100, 101])
def test_bytes_held_after_the_request_are_bounded(held: int) -> None:
    frames = StreamFrames(MAX_FRAME, max_after_request=100)
    frames.receive(encode_frame(request()), end_stream=False)
    partial = struct.pack(">I", 1000) + b"x" * (held - 4)  # a frame announced, never completed
    events = frames.receive(partial, end_stream=False)
    if held <= 100:
        assert events == [] and frames.held_bytes == held
    else:
        assert failure(events).error.code == ErrorCode.INVALID_FRAME and frames.is_closed


def test_close_drops_a_partial_frame() -> None:
    frames = StreamFrames(MAX_FRAME)
    frames.receive(encode_frame(request())[:5], end_stream=False)
    assert frames.held_bytes == 5
    frames.close()
    assert frames.held_bytes == 0 and frames.receive(b"x", end_stream=True) == []


def test_a_request_header_announcing_more_than_a_request_can_be_fails_at_once() -> None:
    frames = StreamFrames(MAX_FRAME, max_request_size=1000)
    # 2 + 2 header bytes: the failure comes with the header, before any of the body
    assert frames.receive(struct.pack(">I", 5000)[:2], end_stream=False) == []
    err = failure(frames.receive(struct.pack(">I", 5000)[2:], end_stream=False)).error
    assert err.code == ErrorCode.PROMPT_TOO_LONG and "5000" in err.message and "1000" in err.message
    assert frames.is_closed and frames.held_bytes == 0


def test_a_request_within_the_request_size_is_served() -> None:
    data = encode_frame(request())
    frames = StreamFrames(MAX_FRAME, max_request_size=len(data) - 4)
    assert frames.receive(data, end_stream=True) == [RequestReceived(request())]


def test_a_prompt_too_long_by_its_size_fails_from_the_first_bytes_of_the_body() -> None:
    from isthmus.protocol import ProtocolError

    def check(num_bytes: int) -> None:
        if num_bytes > 1000:
            raise ProtocolError(ErrorCode.PROMPT_TOO_LONG, f"prompt: {num_bytes} bytes")

    data = encode_frame(GenerateRequest(id="r1", prompt="x" * 100_000))
    frames = StreamFrames(1024 * 1024, prompt_check=check)
    err = failure(frames.receive(data[:1200], end_stream=False)).error  # of 100 kB
    assert err.code == ErrorCode.PROMPT_TOO_LONG and "100000" in err.message
    # a prompt within the check is served, also when it arrives byte by byte
    frames = StreamFrames(MAX_FRAME, prompt_check=check)
    data = encode_frame(GenerateRequest(id="r1", prompt="x" * 900))
    events = [e for i in range(len(data)) for e in frames.receive(data[i : i + 1], end_stream=False)]
    assert events == [RequestReceived(GenerateRequest(id="r1", prompt="x" * 900))]
