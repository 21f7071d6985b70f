"""StreamSession and the watermarks with a fake transport (no sockets)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator

import pytest
from isthmus.edge.buffers import BufferLimits, FlowAction, StreamFlow
from isthmus.edge.session import StreamHooks, StreamSession
from isthmus.protocol import (
    Cancel,
    Done,
    Error,
    ErrorCode,
    FrameDecoder,
    GenerateRequest,
    ProtocolError,
    Route,
    TokenChunk,
    encode_frame,
)

pytestmark = pytest.mark.timeout(20)


# --- StreamFlow (sans-IO) ---------------------------------------------------------------------------
def test_flow_pauses_above_high_and_resumes_at_low() -> None:
    flow = StreamFlow(BufferLimits(stream_high=100, stream_low=10, stream_hard=1000, stall_timeout_s=5))
    assert flow.update(100, 100, now=0.0) is FlowAction.FLOW
    assert flow.update(101, 101, now=1.0) is FlowAction.PAUSE
    assert flow.update(50, 50, now=2.0) is FlowAction.PAUSE  # between the marks: still paused
    assert flow.remaining_stall_s(2.0) == pytest.approx(4.0)
    assert flow.update(10, 10, now=3.0) is FlowAction.FLOW


def test_flow_aborts_after_stall_or_at_hard_limit() -> None:
    limits = BufferLimits(stream_high=100, stream_low=10, stream_hard=1000, stall_timeout_s=5)
    flow = StreamFlow(limits)
    assert flow.update(200, 200, now=0.0) is FlowAction.PAUSE
    assert flow.update(200, 200, now=4.9) is FlowAction.PAUSE
    assert flow.update(200, 200, now=5.0) is FlowAction.ABORT
    assert StreamFlow(limits).update(1000, 1000, now=0.0) is FlowAction.ABORT


def test_connection_watermark_pauses_a_quiet_stream() -> None:
    flow = StreamFlow(BufferLimits(connection_high=500, connection_low=100))
    assert flow.update(0, 501, now=0.0) is FlowAction.PAUSE
    assert flow.update(0, 200, now=1.0) is FlowAction.PAUSE
    assert flow.update(0, 100, now=2.0) is FlowAction.FLOW


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ValueError, match="stream_low"):
        BufferLimits(stream_high=10, stream_low=20)


# --- StreamSession -------------------------------------------------------------------------------
class FakeTransport:
    """Buffers everything written until `ack()`; records the frames and resets."""

    def __init__(self) -> None:
        self.unacked = 0
        self.frames = FrameDecoder()
        self.messages: list[object] = []
        self.ended = False
        self.resets: list[int] = []
        self.time = 0.0

    def send(self, stream_id: int, data: bytes, end_stream: bool) -> None:
        self.unacked += len(data)
        self.messages.extend(self.frames.feed(data))
        self.ended = self.ended or end_stream

    def reset(self, stream_id: int, code: int) -> None:
        self.resets.append(code)

    def stream_buffered(self, stream_id: int) -> int:
        return self.unacked

    def connection_buffered(self) -> int:
        return self.unacked

    def now(self) -> float:
        return self.time


def handler_of(n: int, closed: list[int]):  # type: ignore[no-untyped-def]
    async def handler(req: GenerateRequest) -> AsyncIterator[TokenChunk | Done | Error]:
        try:
            for _ in range(n):
                yield TokenChunk(id=req.id, text="x" * 100, tier="edge")
                await asyncio.sleep(0)
            yield Done(id=req.id, finish_reason="length", route=Route(tier="edge"))
        finally:
            closed.append(1)

    return handler


def make_stream(n: int, limits: BufferLimits | None = None) -> tuple[StreamSession, FakeTransport, list[int]]:
    transport = FakeTransport()
    closed: list[int] = []
    stream = StreamSession(0, transport, handler_of(n, closed), limits or BufferLimits(), 4096)
    return stream, transport, closed


async def test_request_in_pieces_is_answered() -> None:
    stream, transport, _ = make_stream(3)
    data = encode_frame(GenerateRequest(id="a", prompt="hi"))
    for i in range(len(data)):
        stream.feed(data[i : i + 1], end_stream=i == len(data) - 1)
    await stream.wait()
    assert [type(m) for m in transport.messages] == [TokenChunk] * 3 + [Done]
    assert transport.ended and stream.is_finished


async def test_oversized_frame_is_refused_before_buffering() -> None:
    stream, transport, _ = make_stream(1)
    stream.feed(struct.pack(">I", 10**6), end_stream=False)
    assert isinstance(transport.messages[0], Error)
    assert transport.messages[0].code == ErrorCode.INVALID_FRAME and transport.ended


async def test_cancel_frame_aborts_the_answer() -> None:
    stream, transport, closed = make_stream(10**6)
    stream.feed(encode_frame(GenerateRequest(id="a", prompt="hi")), end_stream=False)
    await asyncio.sleep(0.01)
    stream.feed(encode_frame(Cancel(id="a")), end_stream=True)
    await stream.wait()
    last = transport.messages[-1]
    assert isinstance(last, Error) and last.code == ErrorCode.CANCELLED and closed == [1]


async def test_paused_stream_resumes_on_ack_and_aborts_when_stuck() -> None:
    limits = BufferLimits(stream_high=500, stream_low=100, stream_hard=10_000, stall_timeout_s=1.0)
    stream, transport, closed = make_stream(50, limits)
    stream.feed(encode_frame(GenerateRequest(id="a", prompt="hi")), end_stream=True)
    await asyncio.sleep(0.05)
    assert stream.is_paused and len(transport.messages) < 10
    transport.unacked = 0  # the peer acknowledged everything
    stream.notify()
    await asyncio.sleep(0.05)
    assert len(transport.messages) > 5
    transport.time = 100.0  # and now it stopped reading for good
    stream.notify()
    await stream.wait()
    last = transport.messages[-1]
    assert isinstance(last, Error) and last.code == ErrorCode.SLOW_READER and closed == [1]
    assert stream.max_buffered <= limits.stream_high + 200


async def test_reset_aborts_without_writing() -> None:
    stream, transport, closed = make_stream(10**6)
    stream.feed(encode_frame(GenerateRequest(id="a", prompt="hi")), end_stream=True)
    await asyncio.sleep(0.01)
    n = len(transport.messages)
    stream.on_reset()
    await stream.wait()
    assert closed == [1] and transport.resets and len(transport.messages) == n


async def test_partial_frame_bytes_are_counted_and_released_when_the_stream_fails() -> None:
    stream, transport, _ = make_stream(1)
    frame = encode_frame(GenerateRequest(id="a", prompt="x" * 2000))
    stream.feed(frame[:1500], end_stream=False)
    assert stream.held_bytes == 1500
    stream.fail(ProtocolError(ErrorCode.OVERLOADED, "receive buffer: full", retryable=True))
    assert stream.held_bytes == 0
    last = transport.messages[-1]
    assert isinstance(last, Error) and last.code == ErrorCode.OVERLOADED and last.retryable


async def test_a_big_partial_frame_after_the_request_is_refused() -> None:
    transport = FakeTransport()
    stream = StreamSession(0, transport, handler_of(10**6, []), BufferLimits(), 4096, max_after_request=100)
    stream.feed(encode_frame(GenerateRequest(id="a", prompt="hi")) + struct.pack(">I", 1000), False)
    stream.feed(b"\0" * 101, end_stream=False)
    await stream.wait()
    last = transport.messages[-1]
    assert isinstance(last, Error) and last.code == ErrorCode.INVALID_FRAME and stream.held_bytes == 0


async def test_hooks_can_refuse_a_request_and_see_the_last_message() -> None:
    finals: list[object] = []

    def admit(req: GenerateRequest) -> None:
        if req.api_key == "throttled":
            raise ProtocolError(ErrorCode.RATE_LIMITED, "slow down", retryable=True)

    hooks = StreamHooks(admit=admit, on_final=finals.append)
    closed: list[int] = []
    for key in ("throttled", "fine"):
        transport = FakeTransport()
        stream = StreamSession(0, transport, handler_of(1, closed), BufferLimits(), 4096, hooks=hooks)
        stream.feed(encode_frame(GenerateRequest(id=key, prompt="hi", api_key=key)), end_stream=True)
        await stream.wait()
    assert [type(m) for m in finals] == [Error, Done] and closed == [1]  # the refused one never ran
    assert isinstance(finals[0], Error) and finals[0].code == ErrorCode.RATE_LIMITED and finals[0].retryable
