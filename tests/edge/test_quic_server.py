"""The edge QUIC server over real QUIC on loopback, with a fake request handler (no model)."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from isthmus.edge.buffers import BufferLimits
from isthmus.edge.quic_server import EdgeQuicServer, QuicLimits
from isthmus.protocol import (
    Cancel,
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    Route,
    SamplingOptions,
    StatusRequest,
    TokenChunk,
    encode_frame,
)

from .quic_helpers import final, raw_client, write_self_signed

pytestmark = pytest.mark.timeout(60)


class FakeHandler:
    """Answers `"<n> <size>"` prompts with n chunks of `size` chars; `forever` never ends."""

    def __init__(self) -> None:
        self.num_pulled = 0
        self.num_closed = 0
        self.started = asyncio.Event()

    async def __call__(self, req: GenerateRequest) -> AsyncIterator[TokenChunk | Done | Error]:
        self.started.set()
        try:
            words = (req.prompt or "").split()
            forever = words[0] == "forever"
            n = 10**9 if forever else int(words[0])
            size = int(words[1]) if len(words) > 1 else 4
            for i in range(n):
                self.num_pulled += 1
                yield TokenChunk(id=req.id, text=str(i % 10) * size, tier="edge")
                await asyncio.sleep(0.002 if forever else 0)
            yield Done(id=req.id, finish_reason="length", route=Route(tier="edge", reason="wish_edge"))
        finally:
            self.num_closed += 1


def req(prompt: str, id: str = "r1") -> GenerateRequest:
    return GenerateRequest(id=id, prompt=prompt, sampling=SamplingOptions(max_tokens=8))


async def wait_until(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


@pytest.fixture
def certs(tmp_path: Path) -> tuple[str, str]:
    return write_self_signed(tmp_path)


@pytest.fixture
async def served(certs: tuple[str, str]):  # type: ignore[no-untyped-def]
    servers: list[EdgeQuicServer] = []

    async def make(limits: QuicLimits | None = None) -> tuple[EdgeQuicServer, FakeHandler]:
        handler = FakeHandler()
        errors: list[ErrorCode] = []
        server = EdgeQuicServer(
            handler, certfile=certs[0], keyfile=certs[1], limits=limits, on_error=errors.append
        )
        server.errors = errors  # type: ignore[attr-defined]
        await server.start()
        servers.append(server)
        return server, handler

    yield make
    for server in servers:
        await server.close()


async def test_request_streams_chunks_then_done(served) -> None:  # type: ignore[no-untyped-def]
    server, _ = await served()
    async with raw_client(server.port) as client:
        msgs = await client.request(req("5"))
    assert [type(m) for m in msgs] == [TokenChunk] * 5 + [Done]
    assert "".join(m.text for m in msgs[:-1]) == "0000111122223333" + "4444"
    assert server.num_active_streams == 0


async def test_bad_frames_get_errors_and_other_streams_are_unaffected(served) -> None:  # type: ignore[no-untyped-def]
    server, _ = await served(QuicLimits(max_frame_size=1024))
    async with raw_client(server.port) as client:
        good = client.send_message(req("forever", id="good"), end_stream=True)
        await client.first_message(good)
        too_big = client.send(struct.pack(">I", 10_000) + b"x" * 10)
        garbage = client.send(struct.pack(">I", 3) + b"\xc1\xc1\xc1")
        wrong_first = client.send(encode_frame(StatusRequest()))
        truncated = client.send(struct.pack(">I", 50) + b"\x81")
        codes = {}
        streams = [("big", too_big), ("garbage", garbage), ("first", wrong_first), ("trunc", truncated)]
        for name, sid in streams:
            codes[name] = final(await client.wait_end(sid)).code
        assert codes == {
            "big": ErrorCode.INVALID_FRAME,
            "garbage": ErrorCode.INVALID_MESSAGE,
            "first": ErrorCode.INVALID_MESSAGE,
            "trunc": ErrorCode.INVALID_FRAME,
        }
        assert sorted(server.errors) == sorted(codes.values())  # reported for metrics
        # the long-running stream kept streaming through all of it
        n = len(client.messages[good])
        await wait_until(lambda: len(client.messages[good]) > n + 3)
        assert all(isinstance(m, TokenChunk) for m in client.messages[good])
        ok = await client.request(req("2", id="after"))
        assert isinstance(final(ok), Done)


async def test_stream_reset_cancels_the_request(served) -> None:  # type: ignore[no-untyped-def]
    server, handler = await served()
    async with raw_client(server.port) as client:
        sid = client.send_message(req("forever"))
        await client.first_message(sid)
        client.reset(sid)
        await wait_until(lambda: handler.num_closed == 1)
        await wait_until(lambda: server.num_active_streams == 0)


async def test_cancel_frame_ends_with_cancelled(served) -> None:  # type: ignore[no-untyped-def]
    server, handler = await served()
    async with raw_client(server.port) as client:
        sid = client.send_message(req("forever", id="c1"), end_stream=False)
        await client.first_message(sid)
        client.send_message(Cancel(id="c1"), end_stream=True, stream_id=sid)
        last = final(await client.wait_end(sid))
        assert isinstance(last, Error) and last.code == ErrorCode.CANCELLED
        await wait_until(lambda: handler.num_closed == 1)


async def test_streams_per_connection_is_a_transport_parameter(served) -> None:  # type: ignore[no-untyped-def]
    server, _ = await served(QuicLimits(max_streams_per_connection=3))
    async with raw_client(server.port) as client:
        assert client._quic._remote_max_streams_bidi == 3


async def test_connection_limit_refuses_extra_connections(served) -> None:  # type: ignore[no-untyped-def]
    server, _ = await served(QuicLimits(max_connections=1, evict_idle_after_s=60.0))
    async with raw_client(server.port) as first:
        async with raw_client(server.port) as second:
            await asyncio.wait_for(second.wait_closed(), 10)
        assert isinstance(final(await first.request(req("1"))), Done)


async def test_slow_reader_is_paused_then_cancelled_within_the_watermark(served) -> None:  # type: ignore[no-untyped-def]
    buffers = BufferLimits(
        stream_high=8 * 1024, stream_low=2 * 1024, stream_hard=256 * 1024, stall_timeout_s=0.5
    )
    server, handler = await served(QuicLimits(buffers=buffers))
    async with raw_client(server.port) as client:
        sid = client.send_message(req("forever 1000"))
        await client.first_message(sid)
        client.stop_reading()
        await wait_until(lambda: handler.num_closed == 1)  # paused, then cancelled after the stall
        frame = len(encode_frame(TokenChunk(id="r1", text="0" * 1000, tier="edge")))
        assert server.max_stream_buffered >= buffers.stream_high  # it did fill up to the watermark
        assert server.max_stream_buffered <= buffers.stream_high + frame + 64
        client.resume_reading()
        last = final(await client.wait_end(sid))
        assert isinstance(last, Error) and last.code == ErrorCode.SLOW_READER


async def test_reader_that_catches_up_gets_the_whole_answer(served) -> None:  # type: ignore[no-untyped-def]
    buffers = BufferLimits(stream_high=4 * 1024, stream_low=1024, stall_timeout_s=20.0)
    server, handler = await served(QuicLimits(buffers=buffers))
    async with raw_client(server.port) as client:
        client.stop_reading()
        sid = client.send_message(req("60 500"))
        await wait_until(lambda: handler.num_pulled > 0)
        await asyncio.sleep(0.3)
        assert handler.num_pulled < 60  # paused by the watermark, not run to the end
        assert server.max_stream_buffered <= buffers.stream_high + 600
        client.resume_reading()
        msgs = await client.wait_end(sid)
        assert [type(m) for m in msgs] == [TokenChunk] * 60 + [Done]


async def test_returning_client_resumes_with_0rtt_request(served) -> None:  # type: ignore[no-untyped-def]
    server, _ = await served()
    tickets: list = []
    async with raw_client(server.port, tickets) as client:
        assert isinstance(final(await client.request(req("1"))), Done)
    await wait_until(lambda: bool(tickets))
    async with raw_client(server.port, tickets, wait_connected=False) as client:
        sid = client.send_message(req("2", id="early"))  # written before the handshake completes
        msgs = await client.wait_end(sid)
        assert isinstance(final(msgs), Done)
        assert client._quic.tls.session_resumed
        assert client._quic.tls.early_data_accepted


async def test_drain_finishes_in_flight_and_refuses_new(served) -> None:  # type: ignore[no-untyped-def]
    server, _ = await served()
    async with raw_client(server.port) as client:
        sid = client.send_message(req("forever"))
        await client.first_message(sid)
        drained = asyncio.create_task(server.drain(grace_s=0.3))
        await asyncio.sleep(0.05)
        refused = final(await client.request(req("1", id="late")))
        assert isinstance(refused, Error) and refused.code == ErrorCode.DRAINING
        assert await drained == 1
        last = final(await client.wait_end(sid))
        assert isinstance(last, Error) and last.code == ErrorCode.DRAINING


def test_serves_under_uvloop(certs: tuple[str, str]) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list:
        server = EdgeQuicServer(FakeHandler(), certfile=certs[0], keyfile=certs[1])
        await server.start()
        try:
            async with raw_client(server.port) as client:
                return await client.request(req("3"))
        finally:
            await server.close()

    msgs = uvloop.run(main())
    assert [type(m) for m in msgs] == [TokenChunk] * 3 + [Done]
